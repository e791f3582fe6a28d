-- The fraud rules' columns: which rule refused (or, monitored, would have refused) or placed a
-- block, what it counted by (never the key), and flags on served verifications
-- (`sim_swap_flagged`, `monitored:<rule>`). Prefix blocks placed and lifted are events too.
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS rule LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS key_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String));

ALTER TABLE events DROP CONSTRAINT IF EXISTS known_event_type;

ALTER TABLE events ADD CONSTRAINT known_event_type CHECK event_type IN (
    'verification_started', 'verification_blocked', 'sms_sent', 'sms_failed', 'sms_delivered',
    'sms_undelivered', 'code_resent', 'code_checked', 'verification_approved',
    'verification_locked', 'verification_expired', 'verification_aborted', 'order_held',
    'order_forwarded', 'order_forward_failed', 'prefix_block_placed', 'prefix_block_lifted');
