-- A revision per exercise and app definition, bumped by every write. A request that read a
-- definition, merged its changes and writes it back does so only if the revision is still the one
-- it read (compare-and-set); otherwise it reads again. Concurrent writers neither fail nor lose
-- each other's changes (docs/ARCHITECTURE.md, "Storage").
ALTER TABLE exercises ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
ALTER TABLE apps ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
