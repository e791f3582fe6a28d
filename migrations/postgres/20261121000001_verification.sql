-- Verifications: one row per started verification. Times are Unix milliseconds.
CREATE TABLE verification (
    verification_id         TEXT    PRIMARY KEY,
    brand_id                TEXT    NOT NULL,
    status                  TEXT    NOT NULL,
    phone_e164              TEXT    NOT NULL,
    phone_country           TEXT    NOT NULL,
    order_reference         TEXT    NOT NULL,
    amount_minor            BIGINT  NOT NULL,
    currency                TEXT    NOT NULL,
    locale                  TEXT,
    code_hash               BYTEA   NOT NULL,
    code_length             BIGINT  NOT NULL,
    max_checks              BIGINT  NOT NULL,
    max_sends               BIGINT  NOT NULL,
    resend_cooldown_ms      BIGINT  NOT NULL,
    checks_used             BIGINT  NOT NULL DEFAULT 0,
    sends                   BIGINT  NOT NULL DEFAULT 0,
    last_sent_at            BIGINT ,
    created_at              BIGINT  NOT NULL,
    updated_at              BIGINT  NOT NULL,
    expires_at              BIGINT  NOT NULL,
    finished_at             BIGINT 
);

CREATE INDEX verification_pending_expiry ON verification (expires_at) WHERE status = 'pending';
CREATE INDEX verification_brand_created ON verification (brand_id, created_at);

-- Idempotency keys of start requests: the first response is stored and replayed.
CREATE TABLE idempotency (
    brand_id         TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    request_hash     BYTEA   NOT NULL,
    response_status  BIGINT ,
    response_body    TEXT,
    created_at       BIGINT  NOT NULL,
    PRIMARY KEY (brand_id, idempotency_key)
);
