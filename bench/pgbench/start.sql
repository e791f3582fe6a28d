-- start: rate-limit upsert + verification insert + outbox insert, one transaction.
\set p random(1, 100000000)
BEGIN;
INSERT INTO bench_rate (key, count, window_start) VALUES ('phone:' || :p, 1, 0)
  ON CONFLICT (key) DO UPDATE SET count = bench_rate.count + 1;
INSERT INTO bench_verification (id, brand, status, phone, code_hash, created_at, payload)
  VALUES (gen_random_uuid()::text, 'bench', 'pending', '+49151' || :p, '\x00112233', 0, repeat('v', 200));
INSERT INTO bench_outbox (payload) VALUES (repeat('e', 600));
COMMIT;
