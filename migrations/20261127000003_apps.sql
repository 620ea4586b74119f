-- Managed apps (the course web app itself) and their deploys.

CREATE TABLE apps (
    name             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    -- Secret values (env secrets, registry password, webhook secrets) live only here and are
    -- never serialised into a response or a log line.
    secrets          TEXT NOT NULL,
    current_version  TEXT,
    current_image    TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE deploys (
    id                TEXT PRIMARY KEY,
    app               TEXT NOT NULL REFERENCES apps (name),
    kind              TEXT NOT NULL,
    version           TEXT NOT NULL,
    image             TEXT,
    state             TEXT NOT NULL,
    failure_reason    TEXT,
    previous_version  TEXT,
    created_at        BIGINT NOT NULL,
    finished_at       BIGINT
);
-- One deploy per app at a time: a second one loses this race and is a 409.
CREATE UNIQUE INDEX deploys_one_running ON deploys (app) WHERE state = 'running';
CREATE INDEX deploys_app ON deploys (app, created_at);
