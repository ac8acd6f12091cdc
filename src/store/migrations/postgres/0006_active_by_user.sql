-- A submit counts its user's unfinished tasks (the `max_active_tasks_per_user`
-- limit). Through `tasks_by_user` that count visited every task the user ever
-- had, so a submit got slower with the user's history; this index holds only
-- unfinished tasks. Released migrations are never edited.
CREATE INDEX tasks_active_by_user ON tasks (user_id) WHERE state NOT IN ('completed', 'failed', 'cancelled');
