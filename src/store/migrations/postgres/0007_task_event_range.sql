-- A task's events are found through its session's stream instead of an index
-- of their own: `events_by_task` was a second B-tree entry for every event
-- stored, about a tenth of what a batch costs PostgreSQL (issue 14). A task
-- row now says where in its session's stream its events lie: `first_seq`, a
-- lower bound (the seq after the last one its session had when the task was
-- created), and `last_seq`, the seq of its last event once it has ended.
-- Released migrations are never edited.
ALTER TABLE tasks ADD COLUMN first_seq BIGINT, ADD COLUMN last_seq BIGINT;
UPDATE tasks t SET first_seq = e.lo,
    last_seq = CASE WHEN t.state IN ('completed', 'failed', 'cancelled') THEN e.hi END
FROM (SELECT task_id, MIN(seq) AS lo, MAX(seq) AS hi FROM events GROUP BY task_id) e
WHERE e.task_id = t.task_id;
DROP INDEX events_by_task;
