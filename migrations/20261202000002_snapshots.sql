-- Snapshots of learners' files: one row per snapshot taken (a passing check, a reset), naming a
-- content-addressed blob under `<data_dir>/snapshots/` (the sha256 of a deterministic tar), so
-- identical workspaces share one blob. A blob is removed when no row names it any more.
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    learner     TEXT NOT NULL,
    exercise    TEXT NOT NULL,
    session_id  TEXT,
    check_id    TEXT,
    reason      TEXT NOT NULL,
    blob        TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX snapshots_learner ON snapshots (learner, exercise, created_at);
CREATE INDEX snapshots_check ON snapshots (check_id);
CREATE INDEX snapshots_blob ON snapshots (blob);
