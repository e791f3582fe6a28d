-- Orders held by gate mode until their verification is approved, then forwarded upstream
-- exactly once (the order id is the upstream Idempotency-Key). A forwarder claims a due order
-- with a lease; a forward interrupted by a crash is resumed when the lease runs out.
CREATE TABLE held_order (
    order_id         TEXT    PRIMARY KEY,
    brand_id         TEXT    NOT NULL,
    verification_id  TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL,
    order_reference  TEXT    NOT NULL,
    amount_minor     INTEGER NOT NULL,
    currency         TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    callback_url     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER NOT NULL DEFAULT 0,
    upstream_status  INTEGER,
    upstream_body    TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);

CREATE INDEX held_order_due ON held_order (next_attempt_at) WHERE status = 'forwarding';
CREATE INDEX held_order_brand_created ON held_order (brand_id, created_at);

-- Webhooks to the shop's callback_url, queued in the same transaction as the order change
-- they announce; the body is built from the order when it is sent.
CREATE TABLE webhook_delivery (
    webhook_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_until      INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);

CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at) WHERE status = 'pending';
