-- The hourly funnel per brand × country × number prefix, kept up to date by a materialized
-- view so dashboards read a few rows per hour instead of scanning events.
-- Read it with sum(...) and GROUP BY: SummingMergeTree adds rows up only when parts merge.
-- The deduplication window lets a repeated batch (same insert_deduplication_token) be dropped
-- here too: the view's block is deduplicated in this target table, not by the source table.
CREATE TABLE IF NOT EXISTS funnel_hourly
(
    hour           DateTime('UTC'),
    brand          LowCardinality(String),
    country        LowCardinality(String),
    number_prefix  LowCardinality(String),
    starts         UInt64,
    sends          UInt64,
    approvals      UInt64,
    aborts         UInt64,
    expiries       UInt64,
    locks          UInt64,
    blocks         UInt64,
    checks         UInt64,
    wrong_checks   UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (brand, hour, country, number_prefix)
TTL hour + INTERVAL 13 MONTH
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_hourly_mv TO funnel_hourly AS
SELECT
    toStartOfHour(ts) AS hour,
    brand,
    country,
    number_prefix,
    countIf(event_type = 'verification_started') AS starts,
    countIf(event_type = 'sms_sent') AS sends,
    countIf(event_type = 'verification_approved') AS approvals,
    countIf(event_type = 'verification_aborted') AS aborts,
    countIf(event_type = 'verification_expired') AS expiries,
    countIf(event_type = 'verification_locked') AS locks,
    countIf(event_type = 'verification_blocked') AS blocks,
    countIf(event_type = 'code_checked') AS checks,
    countIf(event_type = 'code_checked' AND outcome = 'incorrect') AS wrong_checks
FROM events
GROUP BY hour, brand, country, number_prefix;
