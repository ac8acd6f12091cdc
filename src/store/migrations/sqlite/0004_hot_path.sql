-- The hot path's layout. Released migrations are never edited.
--
-- Rows that are appended (sessions, tasks, events) get an increasing
-- integer key, so that a commit of thousands of events writes at the right
-- edge of each B-tree instead of one page per session; a session's and a
-- task's events are found through slim integer indexes; the columns that
-- change during a task's life live in a narrow row of their own, so that a
-- state change does not rewrite the prompt. The one writer keeps per-session
-- sequence numbers in memory (loaded from `MAX(seq)`), so sessions carry no
-- `last_seq` any more, and nothing but the Phase 1 tables uses foreign keys.

CREATE TABLE sessions_v4 (
    sid           INTEGER PRIMARY KEY,
    session_id    TEXT NOT NULL UNIQUE,
    user_id       TEXT NOT NULL,
    device_id     TEXT,
    created_at    TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    permissions   TEXT NOT NULL,       -- JSON array, the owner's at creation
    state         TEXT NOT NULL,       -- active | ended
    is_default    INTEGER NOT NULL DEFAULT 0
);
INSERT INTO sessions_v4 (session_id, user_id, device_id, created_at, last_activity,
                         permissions, state, is_default)
    SELECT session_id, user_id, device_id, created_at, last_activity, permissions, state, is_default
    FROM sessions ORDER BY created_at, session_id;

-- What a task is: written once.
CREATE TABLE tasks_v4 (
    tid             INTEGER PRIMARY KEY,
    task_id         TEXT NOT NULL UNIQUE,
    sid             INTEGER NOT NULL,  -- sessions.sid
    user_id         TEXT NOT NULL,
    agent_type      TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL,
    execution_uuid  TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    context         TEXT NOT NULL,
    params          TEXT NOT NULL,
    prompt          TEXT NOT NULL
);
INSERT INTO tasks_v4 (task_id, sid, user_id, agent_type, idempotency_key, created_at,
                      execution_uuid, metadata, context, params, prompt)
    SELECT t.task_id, s.sid, t.user_id, t.agent_type, t.idempotency_key, t.created_at,
           t.execution_uuid, t.metadata, t.context, t.params, t.prompt
    FROM tasks t JOIN sessions_v4 s ON s.session_id = t.session_id
    ORDER BY t.created_at, t.task_id;

-- Where a task is: changes with every transition.
CREATE TABLE task_state (
    tid            INTEGER PRIMARY KEY,  -- tasks.tid
    state          TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    execution_time REAL,
    error          TEXT,
    result         TEXT
);
INSERT INTO task_state (tid, state, updated_at, execution_time, error, result)
    SELECT n.tid, t.state, t.updated_at, t.execution_time, t.error, t.result
    FROM tasks t JOIN tasks_v4 n ON n.task_id = t.task_id;

CREATE TABLE events_v4 (
    id   INTEGER PRIMARY KEY,
    sid  INTEGER NOT NULL,             -- sessions.sid: the stream
    seq  INTEGER NOT NULL,             -- 1, 2, 3, ... per stream
    tid  INTEGER NOT NULL,             -- tasks.tid
    at   INTEGER NOT NULL,             -- microseconds since the Unix epoch
    kind INTEGER NOT NULL,             -- 0 = task.state, 1 = task.output
    data TEXT NOT NULL                 -- the event's `data` object
);
INSERT INTO events_v4 (sid, seq, tid, at, kind, data)
    SELECT s.sid, e.seq, n.tid,
           unixepoch(substr(e.at, 1, 19) || 'Z') * 1000000 + CAST(substr(e.at, 21, 6) AS INTEGER),
           CASE e.event_type WHEN 'task.state' THEN 0 ELSE 1 END, e.data
    FROM events e
    JOIN sessions_v4 s ON s.session_id = e.session_id
    JOIN tasks_v4 n ON n.task_id = e.task_id
    ORDER BY e.at, s.sid, e.seq;

DROP TABLE events;
DROP TABLE tasks;
DROP TABLE sessions;
ALTER TABLE sessions_v4 RENAME TO sessions;
ALTER TABLE tasks_v4 RENAME TO tasks;
ALTER TABLE events_v4 RENAME TO events;

CREATE INDEX sessions_by_user ON sessions (user_id, sid);
CREATE UNIQUE INDEX one_default_session ON sessions (user_id) WHERE is_default = 1 AND state = 'active';
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_user ON tasks (user_id, tid);
CREATE INDEX tasks_by_session ON tasks (sid, tid);
CREATE UNIQUE INDEX events_by_stream ON events (sid, seq);
CREATE INDEX events_by_task ON events (tid);
