-- The retention purge finds what is due without scanning every row: finished verifications
-- and orders that still hold personal data, and idempotency keys by age.
CREATE INDEX verification_purge ON verification (finished_at) WHERE phone_e164 <> '';
CREATE INDEX held_order_purge ON held_order (finished_at) WHERE payload <> '';
CREATE INDEX idempotency_created ON idempotency (created_at);
