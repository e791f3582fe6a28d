-- An idempotency key is claimed for a lease: a request that dies mid-way (a crash, a dropped
-- connection, its own timeout) no longer holds its key forever. A retry after the lease finds
-- what the first attempt created by the id stored with the key.
ALTER TABLE idempotency ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE idempotency ADD COLUMN resource_id TEXT;

-- A resumed start asks whether its SMS was recorded.
CREATE INDEX sms_message_verification ON sms_message (verification_id);
