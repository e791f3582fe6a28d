-- The cluster variant of 0001_events.sql, applied instead of it when `clickhouse.cluster` is
-- set: each shard keeps its events in `events_local` (ReplicatedReplacingMergeTree, one
-- replica per {replica} macro of the shard's servers), and `events` is a Distributed table over
-- them, which the service writes to and the dashboards read. Rows are sharded by verification,
-- so a verification's events (and any copy of one) live on one shard, where
-- ReplacingMergeTree and the deduplication token can collapse them. `__CLUSTER__` is the
-- configured cluster name; {shard} and {replica} are the servers' own macros.
CREATE TABLE IF NOT EXISTS events_local ON CLUSTER __CLUSTER__
(
    event_id            UUID,
    ts                  DateTime64(3, 'UTC'),
    brand               LowCardinality(String),
    event_type          LowCardinality(String),
    verification_id     UUID,
    order_id            UUID,
    channel             LowCardinality(String),
    country             LowCardinality(String),
    number_prefix       LowCardinality(String),
    phone_pseudonym     String,
    customer_pseudonym  String,
    ip_pseudonym        String,
    attempt             UInt16,
    outcome             LowCardinality(String),
    reason              LowCardinality(String),
    amount_minor        Int64,
    currency            LowCardinality(String),
    ms_since_start      Int64,
    sms_provider        LowCardinality(String),
    sms_segments        UInt8,
    locale              LowCardinality(String),
    user_agent_family   LowCardinality(String),
    instance            LowCardinality(String),
    CONSTRAINT known_event_type CHECK event_type IN (
        'verification_started', 'verification_blocked', 'sms_sent', 'sms_failed', 'sms_delivered',
        'sms_undelivered', 'code_resent', 'code_checked', 'verification_approved',
        'verification_locked', 'verification_expired', 'verification_aborted', 'order_held',
        'order_forwarded', 'order_forward_failed')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events_local', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (brand, event_type, ts, event_id)
TTL toDateTime(ts) + INTERVAL 13 MONTH;

CREATE TABLE IF NOT EXISTS events ON CLUSTER __CLUSTER__ AS events_local
ENGINE = Distributed(__CLUSTER__, currentDatabase(), events_local, cityHash64(verification_id));
