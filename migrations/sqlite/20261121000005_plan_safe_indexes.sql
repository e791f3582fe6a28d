-- Indexes a lookup by primary key can never be planned onto.
--
-- On a table whose statistics are stale (a fresh database before its first ANALYZE, or a
-- server with autovacuum off), PostgreSQL planned `WHERE verification_id = $1 AND brand_id
-- = $2 AND status = 'pending' AND expires_at > $3` onto the (brand_id, created_at) index or
-- the pending-expiry partial index, and kept that generic plan as the table grew: every check
-- then scanned all of the brand's (or all pending) rows. The (brand_id, created_at) indexes
-- served no query; the sweeper's index now keys on `finished_at IS NULL` (pending and not
-- finished are the same rows), which no lookup by key states.
DROP INDEX IF EXISTS verification_brand_created;
DROP INDEX IF EXISTS held_order_brand_created;
DROP INDEX IF EXISTS verification_pending_expiry;
CREATE INDEX verification_unfinished_expiry ON verification (expires_at) WHERE finished_at IS NULL;
