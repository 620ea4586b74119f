-- A fleet of sandbox hosts sharing this database (docs/ARCHITECTURE.md, "Fleet"). A node is one
-- Docker engine and the disk beside it; the runner (or the replicas) driving it heartbeat its row.
-- A single host is the one node `local`, so every existing row belongs to it.
CREATE TABLE nodes (
    name               TEXT PRIMARY KEY,
    -- Where other runners reach this node's runner (empty on a single host).
    url                TEXT NOT NULL,
    -- What an operator (or the Swarm node's own availability) says: active, pause or drain.
    availability       TEXT NOT NULL,
    -- What the node's Swarm membership says, when it has one (else empty).
    swarm_availability TEXT NOT NULL,
    started_at         BIGINT NOT NULL,
    heartbeat_at       BIGINT NOT NULL,
    -- Capacity as the node's runner reported it with its last heartbeat.
    max_sessions       BIGINT NOT NULL,
    memory_mb          BIGINT NOT NULL,
    disk_free_mb       BIGINT NOT NULL,
    version            TEXT NOT NULL,
    -- Set once when the fleet declared the node lost (its sessions ended with `node_lost`);
    -- cleared by its next heartbeat.
    lost_at            BIGINT
);

ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
-- The memory the sandbox's limits commit on its node (placement sums it without parsing `spec`).
ALTER TABLE sessions ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sessions_node ON sessions (node, state);
ALTER TABLE workspaces ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
ALTER TABLE pool_sandboxes ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
