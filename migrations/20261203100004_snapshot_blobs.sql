-- Snapshot blobs in the fleet's database (docs/ARCHITECTURE.md, "Fleet"): on a fleet node a
-- snapshot's .tar.gz is kept here rather than on the disk of the node that took it, so any
-- runner reads it, retention removes it wherever it was taken, and a learner's erasure through
-- any runner deletes it. A single host keeps its blobs as files (data_dir/snapshots). Keyed by
-- the sha256 of the tar, shared by every snapshot of the same files; deleted with the last
-- snapshot that names it.
CREATE TABLE snapshot_blobs (
    blob       TEXT PRIMARY KEY,
    bytes      BIGINT NOT NULL,
    content    BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
