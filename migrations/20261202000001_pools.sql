-- Warm pools: sandboxes made ahead of time for an exercise's published image, each on a fresh
-- workspace seeded with the starting files and its IDE agent answering. A row exists from just
-- before its container is created until a learner claims it (the row is deleted in the same
-- transaction that inserts the learner's session, which names the container, and the learner's
-- workspace, which names the volume) or it is discarded. Container labels cannot change after
-- creation, so the database is where reconciliation learns whose a pooled container is now.
CREATE TABLE pool_sandboxes (
    id            TEXT PRIMARY KEY,
    exercise      TEXT NOT NULL REFERENCES exercises (slug),
    image         TEXT NOT NULL,
    spec          TEXT NOT NULL,
    volume        TEXT NOT NULL UNIQUE,
    size_mb       BIGINT NOT NULL,
    state         TEXT NOT NULL,
    container_id  TEXT,
    created_at    BIGINT NOT NULL,
    ready_at      BIGINT,
    -- While `starting`: until when the replica making it holds it (a crashed replica's expires).
    lease_until   BIGINT NOT NULL
);
CREATE INDEX pool_sandboxes_claim ON pool_sandboxes (exercise, state, ready_at);
