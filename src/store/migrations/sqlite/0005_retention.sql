-- Data retention (CONTRACT section 10). Released migrations are never edited.
--
-- The pruner removes a session stream's events from the front only, so what
-- is kept of a stream is always one unbroken run of seqs. `stream_floor`
-- remembers, per stream, the last seq removed: a resume from before it is
-- told `earliest_seq` instead of getting a silent gap, and a stream whose
-- every event was removed still goes on from its last seq (the writer
-- reads a session's last seq from its events, else from here).
CREATE TABLE stream_floor (
    sid            INTEGER PRIMARY KEY,  -- sessions.sid
    pruned_through INTEGER NOT NULL      -- every seq up to this one was removed
);

-- The audit log stays append-only, except that records before the newest
-- signed checkpoint may be removed: the checkpoint vouches for the hash of
-- the record it names, so the chain kept from that record on stays provable.
DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN OLD.seq >= COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: only records before a signed checkpoint can be pruned'); END;
