-- One-shot runs (`POST /v1/runs`) and their results, kept for `RUNNER_RUN_RETENTION_SECS`.
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    -- What it ran in: a registered runtime or an exercise's published image (one of them).
    runtime TEXT,
    exercise TEXT,
    -- The learner the web app said it is for (erased with them), if any.
    learner TEXT,
    -- `crate::lifecycle::RunState`.
    state TEXT NOT NULL,
    -- The verdict (`crate::runs::Verdict`) once finished.
    status TEXT,
    -- JSON of `crate::runs::RunOutcome` once finished.
    result TEXT,
    -- 1: `run.finished` is told when it finishes (`"wait": false`).
    notify BIGINT NOT NULL,
    -- The process that runs it, and until when that process answers for it.
    owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX runs_by_learner ON runs (learner);
CREATE INDEX runs_by_state ON runs (state, lease_until);
