-- check: update by key + outbox insert, one transaction.
\set r random(1, 100000)
BEGIN;
UPDATE bench_verification SET checks = checks + 1, status = 'approved' WHERE id = 'seed-' || :r;
INSERT INTO bench_outbox (payload) VALUES (repeat('e', 600));
COMMIT;
