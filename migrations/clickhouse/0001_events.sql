-- Every event orderguard emits: one row per state change. Personal data only as keyed hashes.
--
-- ReplacingMergeTree keyed on the event: a row delivered twice (a batch whose acknowledgement
-- was lost) collapses to one on merge, and `FINAL` queries never see it twice. Inserts also
-- carry `insert_deduplication_token`, which drops a repeated batch at once (window below).
-- Retention: rows older than the TTL are removed; the service sets the configured number of
-- months (default 13) at start.
CREATE TABLE IF NOT EXISTS events
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (brand, event_type, ts, event_id)
TTL toDateTime(ts) + INTERVAL 13 MONTH
SETTINGS non_replicated_deduplication_window = 10000;
