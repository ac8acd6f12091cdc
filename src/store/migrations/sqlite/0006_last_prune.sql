-- The last run of the pruner, kept so that `GET /api/admin/storage` still
-- reports it after a restart. Released migrations are never edited.
CREATE TABLE prune_runs (
    id  INTEGER PRIMARY KEY CHECK (id = 1),  -- one row
    run TEXT NOT NULL                        -- the run, as the JSON of `last_prune`
);
