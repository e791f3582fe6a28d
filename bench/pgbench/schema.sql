-- The writes of one verification flow, without the service: the database bound of the bench.
DROP TABLE IF EXISTS bench_rate, bench_verification, bench_outbox;
CREATE TABLE bench_rate (key TEXT PRIMARY KEY, count BIGINT NOT NULL, window_start BIGINT NOT NULL);
CREATE TABLE bench_verification (
    id TEXT PRIMARY KEY, brand TEXT NOT NULL, status TEXT NOT NULL, phone TEXT NOT NULL,
    code_hash BYTEA NOT NULL, checks BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE bench_outbox (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL);
INSERT INTO bench_verification (id, brand, status, phone, code_hash, created_at, payload)
SELECT 'seed-' || n, 'bench', 'pending', '+49151' || n, '\x00112233', 0, 'x' FROM generate_series(1, 100000) AS n;
