-- Several runner replicas share one database (and one Docker host): the replica starting a
-- session's sandbox holds a lease on it until the start ends, so no other replica's reconciler
-- starts, restarts or recreates the same sandbox meanwhile. An expired lease (its replica died
-- mid-start) may be taken over.
ALTER TABLE sessions ADD COLUMN start_lease_until BIGINT;
