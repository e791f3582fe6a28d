-- An erasure is an event too: `privacy_erasure` records that one happened and which operator
-- asked (in `reason`), never whose data it was.
ALTER TABLE events DROP CONSTRAINT IF EXISTS known_event_type;

ALTER TABLE events ADD CONSTRAINT known_event_type CHECK event_type IN (
    'verification_started', 'verification_blocked', 'sms_sent', 'sms_failed', 'sms_delivered',
    'sms_undelivered', 'code_resent', 'code_checked', 'verification_approved',
    'verification_locked', 'verification_expired', 'verification_aborted', 'order_held',
    'order_forwarded', 'order_forward_failed', 'prefix_block_placed', 'prefix_block_lifted',
    'privacy_erasure');
