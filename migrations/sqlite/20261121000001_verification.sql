-- Verifications: one row per started verification. Times are Unix milliseconds.
CREATE TABLE verification (
    verification_id         TEXT    PRIMARY KEY,
    brand_id                TEXT    NOT NULL,
    status                  TEXT    NOT NULL,
    phone_e164              TEXT    NOT NULL,
    phone_country           TEXT    NOT NULL,
    order_reference         TEXT    NOT NULL,
    amount_minor            INTEGER NOT NULL,
    currency                TEXT    NOT NULL,
    locale                  TEXT,
    code_hash               BLOB    NOT NULL,
    code_length             INTEGER NOT NULL,
    max_checks              INTEGER NOT NULL,
    max_sends               INTEGER NOT NULL,
    resend_cooldown_ms      INTEGER NOT NULL,
    checks_used             INTEGER NOT NULL DEFAULT 0,
    sends                   INTEGER NOT NULL DEFAULT 0,
    last_sent_at            INTEGER,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    expires_at              INTEGER NOT NULL,
    finished_at             INTEGER
);

CREATE INDEX verification_pending_expiry ON verification (expires_at) WHERE status = 'pending';
CREATE INDEX verification_brand_created ON verification (brand_id, created_at);

-- Idempotency keys of start requests: the first response is stored and replayed.
CREATE TABLE idempotency (
    brand_id         TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    request_hash     BLOB    NOT NULL,
    response_status  INTEGER,
    response_body    TEXT,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (brand_id, idempotency_key)
);
