-- A managed app's service that kept crashing past its restart policy stays failed across runner
-- restarts (until the next deploy): the supervisor does not restart it again, nor report it
-- twice. Keyed by the deploy it failed in, so a new deploy starts clean.
CREATE TABLE app_service_failures (
    app        TEXT NOT NULL,
    service    TEXT NOT NULL,
    deploy_id  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    failed_at  BIGINT NOT NULL,
    PRIMARY KEY (app, service)
);
