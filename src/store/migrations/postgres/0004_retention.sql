-- Data retention (CONTRACT section 10). Released migrations are never edited.
--
-- The pruner removes a session stream's events from the front only, so what
-- is kept of a stream is always one unbroken run of seqs; `stream_floor`
-- remembers, per stream, the last seq removed, so that a resume from
-- before it is told `earliest_seq` instead of getting a silent gap.
CREATE TABLE stream_floor (
    session_id     UUID PRIMARY KEY,
    pruned_through BIGINT NOT NULL      -- every seq up to this one was removed
);

-- The audit log stays append-only, except that records before the newest
-- signed checkpoint may be removed: the checkpoint vouches for the hash of
-- the record it names, so the chain kept from that record on stays provable.
CREATE FUNCTION audit_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq < (SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: only records before a signed checkpoint can be pruned';
END;
$$;
DROP TRIGGER audit_no_delete ON audit;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_prune_only();
