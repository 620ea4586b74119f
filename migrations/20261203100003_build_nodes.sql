-- The fleet node that runs a build (docs/ARCHITECTURE.md, "Fleet"): an uploaded archive waits
-- on the disk of the node that received it, so that node builds it; a git build is claimed by
-- whichever node's worker is free first. Its log, its cancellation and its recovery after a
-- restart are that node's. NULL: not claimed yet (git), or made before fleets existed.
ALTER TABLE builds ADD COLUMN node TEXT;
