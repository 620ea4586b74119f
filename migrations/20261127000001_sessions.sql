-- Portable SQL: runs unchanged on SQLite and PostgreSQL (runtime queries through sqlx::Any).
-- Times are milliseconds since the Unix epoch (BIGINT); ids are text UUIDs; JSON is TEXT.

CREATE TABLE exercises (
    slug        TEXT PRIMARY KEY,
    image       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    learner           TEXT NOT NULL,
    exercise          TEXT NOT NULL REFERENCES exercises (slug),
    image             TEXT NOT NULL,
    spec              TEXT NOT NULL,
    state             TEXT NOT NULL,
    failure_reason    TEXT,
    container_id      TEXT,
    created_at        BIGINT NOT NULL,
    last_activity_at  BIGINT NOT NULL,
    ended_at          BIGINT
);

-- At most one live session per learner and exercise: concurrent creates race on this index.
CREATE UNIQUE INDEX sessions_one_live ON sessions (learner, exercise)
    WHERE state IN ('starting', 'running');
CREATE INDEX sessions_state ON sessions (state);
CREATE INDEX sessions_learner ON sessions (learner, exercise);

-- A learner's files for an exercise, kept across sessions until retention ends.
CREATE TABLE workspaces (
    learner       TEXT NOT NULL,
    exercise      TEXT NOT NULL,
    volume        TEXT NOT NULL UNIQUE,
    size_mb       BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    PRIMARY KEY (learner, exercise)
);
