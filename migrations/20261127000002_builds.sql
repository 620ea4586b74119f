-- Builds of exercise repositories, the versions they produce, and checks of learners' work.

CREATE TABLE builds (
    id              TEXT PRIMARY KEY,
    exercise        TEXT NOT NULL,
    state           TEXT NOT NULL,
    source          TEXT NOT NULL,
    version         TEXT,
    image           TEXT,
    cached          BIGINT NOT NULL DEFAULT 0,
    failure_reason  TEXT,
    self_test       TEXT,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);
CREATE INDEX builds_state ON builds (state, created_at);
CREATE INDEX builds_exercise ON builds (exercise, created_at);

CREATE TABLE exercise_versions (
    exercise      TEXT NOT NULL,
    version       TEXT NOT NULL,
    image         TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    published_at  BIGINT,
    PRIMARY KEY (exercise, version)
);

CREATE TABLE checks (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id),
    passed       BIGINT NOT NULL,
    exit_code    BIGINT NOT NULL,
    output       TEXT NOT NULL,
    truncated    BIGINT NOT NULL,
    timed_out    BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX checks_session ON checks (session_id, created_at);
