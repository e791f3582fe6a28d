-- The cluster variant of 0003_fraud_rules.sql: the fraud rules' columns on every shard's local
-- table and on the Distributed table over them; the event types of prefix blocks.
ALTER TABLE events_local ON CLUSTER __CLUSTER__
    ADD COLUMN IF NOT EXISTS rule LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS key_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String));

ALTER TABLE events ON CLUSTER __CLUSTER__
    ADD COLUMN IF NOT EXISTS rule LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS key_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String));

ALTER TABLE events_local ON CLUSTER __CLUSTER__ DROP CONSTRAINT IF EXISTS known_event_type;

ALTER TABLE events_local ON CLUSTER __CLUSTER__ ADD CONSTRAINT known_event_type CHECK event_type IN (
    'verification_started', 'verification_blocked', 'sms_sent', 'sms_failed', 'sms_delivered',
    'sms_undelivered', 'code_resent', 'code_checked', 'verification_approved',
    'verification_locked', 'verification_expired', 'verification_aborted', 'order_held',
    'order_forwarded', 'order_forward_failed', 'prefix_block_placed', 'prefix_block_lifted');
