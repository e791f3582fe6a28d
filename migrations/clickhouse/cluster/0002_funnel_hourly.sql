-- The cluster variant of 0002_funnel_hourly.sql: the hourly funnel per shard, fed by a
-- materialized view on each shard's `events_local` (never on the Distributed table, which
-- would count every row once per shard), and a Distributed `funnel_hourly` over them.
CREATE TABLE IF NOT EXISTS funnel_hourly_local ON CLUSTER __CLUSTER__
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/funnel_hourly_local', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (brand, hour, country, number_prefix)
TTL hour + INTERVAL 13 MONTH;

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_hourly_mv ON CLUSTER __CLUSTER__ TO funnel_hourly_local AS
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
FROM events_local
GROUP BY hour, brand, country, number_prefix;

CREATE TABLE IF NOT EXISTS funnel_hourly ON CLUSTER __CLUSTER__ AS funnel_hourly_local
ENGINE = Distributed(__CLUSTER__, currentDatabase(), funnel_hourly_local, rand());
