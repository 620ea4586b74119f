-- Operators' actions (who, what, when, outcome), readable through GET /v1/audit; and what
-- happened to each session's sandbox (started, OOM-killed, exited, restarted, reaped, stopped),
-- readable through GET /v1/sessions/{id}/events. Both append-only.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT,
    request_id  TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE session_events (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX session_events_session ON session_events (session_id, at);
