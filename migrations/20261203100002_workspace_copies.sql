-- Copies of learners' workspaces off their fleet node (docs/ARCHITECTURE.md, "Fleet"): the
-- workspace's tar.gz as `tar` wrote it inside a sandbox as the learner, one per learner and
-- exercise (each new copy replaces the last), at most RUNNER_WORKSPACE_READ_MAX_BYTES. Taken when
-- a session ends and every RUNNER_WORKSPACE_COPY_SECS while it runs; a session that starts on a
-- node without the workspace begins with it. Deleted with the workspace (retention, erasure).
CREATE TABLE workspace_copies (
    learner   TEXT NOT NULL,
    exercise  TEXT NOT NULL,
    -- The node it was taken on, and when.
    node      TEXT NOT NULL,
    taken_at  BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    content   BYTEA NOT NULL,
    PRIMARY KEY (learner, exercise)
);
