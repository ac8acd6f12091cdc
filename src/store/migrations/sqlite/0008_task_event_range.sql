-- A task's events are found through its session's stream (`events_by_stream`)
-- instead of an index of their own: `events_by_task` was a B-tree entry for
-- every event stored, and about 1.4 WAL frames of every commit (issue 11, as
-- PostgreSQL's migration 0007 does for issue 14). A task row now says where in
-- its session's stream its events lie: `tasks.first_seq`, the seq of its first
-- event, and `task_state.last_seq`, the seq of its last once it has ended.
-- Released migrations are never edited.
ALTER TABLE tasks ADD COLUMN first_seq INTEGER;
ALTER TABLE task_state ADD COLUMN last_seq INTEGER;
UPDATE tasks SET first_seq = (SELECT MIN(e.seq) FROM events e WHERE e.tid = tasks.tid);
UPDATE task_state SET last_seq = (SELECT MAX(e.seq) FROM events e WHERE e.tid = task_state.tid)
    WHERE state IN ('completed', 'failed', 'cancelled');
DROP INDEX events_by_task;
