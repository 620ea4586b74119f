-- Runtimes of one-shot runs (`PUT /v1/runtimes/{name}`): an image and how a submission is
-- compiled and run in it.
CREATE TABLE runtimes (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    -- JSON arrays of argv.
    run TEXT NOT NULL,
    compile TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
