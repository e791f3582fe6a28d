-- Fraud rules' shared state: every instance reads and updates it in one statement per start.
--
-- One row per counter: a rate-limit bucket (`phone_10m:<pseudonym>`, `ip:<pseudonym>`, ...) or
-- a number prefix (`prefix:+49151`). `hits` counts starts in the window that began at
-- `window_start` (the first start after the last window ended); `approvals` counts the
-- approvals of those starts (prefix rows), `prev_hits` and `prev_approvals` those of the window
-- just before (so a ratio is never judged on a window that has barely begun: the latest starts
-- are still waiting for their codes), and
-- refunded starts lower `hits` (rows that count only starts that never converted). A prefix row also carries its block: `blocked_until`
-- (0 = never blocked), how often it was blocked (`block_level`, doubling the cool-down), when
-- and with which counts it was placed, and who lifted it early.
CREATE TABLE fraud_counter (
    brand_id        TEXT   NOT NULL,
    bucket          TEXT   NOT NULL,
    window_start    BIGINT NOT NULL,
    window_ms       BIGINT NOT NULL,
    hits            BIGINT NOT NULL,
    approvals       BIGINT NOT NULL DEFAULT 0,
    prev_hits       BIGINT NOT NULL DEFAULT 0,
    prev_approvals  BIGINT NOT NULL DEFAULT 0,
    blocked_at      BIGINT NOT NULL DEFAULT 0,
    blocked_until   BIGINT NOT NULL DEFAULT 0,
    block_level     BIGINT NOT NULL DEFAULT 0,
    block_starts    BIGINT NOT NULL DEFAULT 0,
    block_approvals BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (brand_id, bucket)
);

-- Active blocks, for the operators' list.
CREATE INDEX fraud_counter_blocked ON fraud_counter (blocked_until) WHERE blocked_until > 0;

-- Numbers and customers with an approved verification: they pass a prefix block.
CREATE TABLE known_good (
    brand_id    TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    approved_at BIGINT NOT NULL,
    PRIMARY KEY (brand_id, subject)
);

-- The /24 (IPv4) or /64 (IPv6) of the buyer's address, keyed like the other pseudonyms: an
-- approval refunds the start to the IP and range counters it was counted in.
ALTER TABLE verification ADD COLUMN ip_range_pseudonym TEXT NOT NULL DEFAULT '';
