-- The audit log's lookups (by session, user, type) move out of the commit
-- path. Released migrations are never edited.
--
-- Three secondary indexes and the unique index on `event_id` were four
-- more B-trees for every commit that wrote an audit record, each a page
-- written and synced. Now the writer files a record's lookup keys in
-- `audit_keys` a few dozen records at a time (or a second after the last
-- time), riding an ordinary commit, and `audit_indexed` says how
-- far they go. A query reads the keys up to that mark and scans the short
-- tail of records after it. `event_id` is a UUIDv7 made by the writer and
-- is not looked up, so its unique index goes (the table is rebuilt for it).

CREATE TABLE audit_v7 (
    seq           INTEGER PRIMARY KEY,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    user_id       TEXT,
    session_id    TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL,
    details       TEXT NOT NULL,
    hash          TEXT NOT NULL,
    prev_hash     TEXT NOT NULL
);
INSERT INTO audit_v7 SELECT seq, event_id, event_type, timestamp, user_id, session_id,
    resource_type, resource_id, action, status, details, hash, prev_hash FROM audit ORDER BY seq;
DROP TABLE audit;
ALTER TABLE audit_v7 RENAME TO audit;

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN OLD.seq >= COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: only records before a signed checkpoint can be pruned'); END;

-- One B-tree for every lookup: 's:' || session_id, 'u:' || user_id,
-- 't:' || event_type, clustered by `bucket` (seq >> 10, 1,024 records) so
-- that keys filed together land near the tree's right edge, in order,
-- instead of landing on a page per session and user.
CREATE TABLE audit_keys (
    bucket INTEGER NOT NULL,
    key    TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (bucket, key, seq)
) WITHOUT ROWID;
INSERT INTO audit_keys (bucket, key, seq) SELECT * FROM (
    SELECT seq >> 10, 's:' || session_id, seq FROM audit WHERE session_id IS NOT NULL
    UNION ALL SELECT seq >> 10, 'u:' || user_id, seq FROM audit WHERE user_id IS NOT NULL
    UNION ALL SELECT seq >> 10, 't:' || event_type, seq FROM audit
) ORDER BY 1, 2, 3;

CREATE TABLE audit_indexed (
    id      INTEGER PRIMARY KEY CHECK (id = 1),  -- one row
    through INTEGER NOT NULL                     -- every record up to this seq is in audit_keys
);
INSERT INTO audit_indexed (id, through) SELECT 1, COALESCE(MAX(seq), 0) FROM audit;
