-- The outbox: what happened that the web app is told about (session.running, session.ended,
-- check.completed, build.finished, version.published). Each event is written in the same
-- transaction as the change it describes, numbered by `event_seq` (one row, bumped in that
-- transaction: on PostgreSQL the row lock makes writers commit in the order of their numbers,
-- so a reader that has seen number n will never later find a smaller one).
CREATE TABLE event_seq (
    id    INTEGER PRIMARY KEY,
    last  BIGINT NOT NULL
);
INSERT INTO event_seq (id, last) VALUES (1, 0);

CREATE TABLE events (
    seq         BIGINT PRIMARY KEY,
    -- The idempotency key receivers drop duplicates by (`evt_<uuid>`).
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    session_id  TEXT,
    -- Whose event it is, so a learner's erasure finds it.
    learner     TEXT,
    exercise    TEXT,
    created_at  BIGINT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_learner ON events (learner);

-- The web app's endpoints. `cursor` is the last event seq this webhook is done with (delivered,
-- filtered out or given up); one replica at a time delivers a webhook's events (the lease), in
-- order.
CREATE TABLE webhooks (
    name          TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    -- Sealed with the runner's secrets key.
    secret        TEXT NOT NULL,
    -- JSON array of event types.
    events        TEXT NOT NULL,
    cursor        BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    lease_holder  TEXT,
    lease_until   BIGINT
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook          TEXT NOT NULL REFERENCES webhooks (name) ON DELETE CASCADE,
    event_seq        BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_status      BIGINT,
    last_error       TEXT,
    next_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (webhook, event_seq)
);
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (webhook, event_seq);

-- Why a session ended (deleted, idle, lifetime, failed, operator), told in session.ended.
ALTER TABLE sessions ADD COLUMN end_reason TEXT;
