-- An idempotency key is claimed for a lease: a request that dies mid-way (a crash, a dropped
-- connection, its own timeout) no longer holds its key forever. A retry after the lease finds
-- what the first attempt created by the id stored with the key.
ALTER TABLE idempotency ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE idempotency ADD COLUMN resource_id TEXT;

-- A resumed start asks whether its SMS was recorded.
CREATE INDEX sms_message_verification ON sms_message (verification_id);

-- The batch an outbox row was claimed in: a batch whose write may have reached ClickHouse is
-- claimed again whole, so its retry carries the same deduplication token.
ALTER TABLE outbox ADD COLUMN batch TEXT;
CREATE INDEX outbox_batch ON outbox (batch, outbox_id) WHERE batch IS NOT NULL;

-- The number's pseudonym and prefix, computed once at start: events read them from the row, so
-- they stay the same after a retention purge blanks the number.
ALTER TABLE verification ADD COLUMN phone_pseudonym TEXT NOT NULL DEFAULT '';
ALTER TABLE verification ADD COLUMN number_prefix TEXT NOT NULL DEFAULT '';
