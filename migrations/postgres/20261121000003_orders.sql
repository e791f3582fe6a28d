-- Orders held by gate mode until their verification is approved, then forwarded upstream
-- exactly once (the order id is the upstream Idempotency-Key). A forwarder claims a due order
-- with a lease; a forward interrupted by a crash is resumed when the lease runs out.
CREATE TABLE held_order (
    order_id         TEXT    PRIMARY KEY,
    brand_id         TEXT    NOT NULL,
    verification_id  TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL,
    order_reference  TEXT    NOT NULL,
    amount_minor     BIGINT  NOT NULL,
    currency         TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    callback_url     TEXT,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT ,
    lease_owner      TEXT,
    lease_until      BIGINT  NOT NULL DEFAULT 0,
    upstream_status  BIGINT ,
    upstream_body    TEXT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    finished_at      BIGINT 
);

CREATE INDEX held_order_due ON held_order (next_attempt_at) WHERE status = 'forwarding';
CREATE INDEX held_order_brand_created ON held_order (brand_id, created_at);

-- Webhooks to the shop's callback_url, queued in the same transaction as the order change
-- they announce; the body is built from the order when it is sent.
CREATE TABLE webhook_delivery (
    webhook_id       BIGSERIAL PRIMARY KEY,
    order_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    delivered_at     BIGINT 
);

CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at) WHERE status = 'pending';
