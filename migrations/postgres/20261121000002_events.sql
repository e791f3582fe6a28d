-- Pseudonyms kept with a verification so that its later events carry them too (never raw values).
ALTER TABLE verification ADD COLUMN customer_pseudonym TEXT NOT NULL DEFAULT '';
ALTER TABLE verification ADD COLUMN ip_pseudonym TEXT NOT NULL DEFAULT '';
ALTER TABLE verification ADD COLUMN user_agent_family TEXT NOT NULL DEFAULT '';

-- Events waiting for the relay, written in the same transaction as the change they describe.
-- A relay claims rows by setting claimed_by / claimed_until (a lease) and deletes them once the
-- sink acknowledged them.
CREATE TABLE outbox (
    outbox_id      BIGSERIAL PRIMARY KEY,
    event_id       TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    payload        TEXT    NOT NULL,
    claimed_by     TEXT,
    claimed_until  BIGINT  NOT NULL DEFAULT 0
);

-- Events the sink refused as bad data, kept with the refusal for inspection and replay.
CREATE TABLE dead_letter (
    dead_letter_id BIGSERIAL PRIMARY KEY,
    event_id       TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    error          TEXT    NOT NULL,
    failed_at      BIGINT  NOT NULL
);

-- Every SMS handed to (or refused by) the providers, for delivery receipts.
CREATE TABLE sms_message (
    message_id          TEXT    PRIMARY KEY,
    verification_id     TEXT    NOT NULL,
    brand_id            TEXT    NOT NULL,
    provider            TEXT    NOT NULL,
    provider_reference  TEXT,
    segments            BIGINT  NOT NULL,
    status              TEXT    NOT NULL,
    sent_at             BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);

CREATE INDEX sms_message_provider_reference ON sms_message (provider_reference);
