-- Switchboard schema, SQLite. Released migrations are never edited.
-- Timestamps are RFC 3339 UTC text with microseconds, so they sort as text.

CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    roles      TEXT NOT NULL,          -- JSON array of role names
    grants     TEXT NOT NULL,          -- JSON array of permissions
    revokes    TEXT NOT NULL,          -- JSON array of permissions
    created_at TEXT NOT NULL
);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,       -- SHA-256 of the token; the token itself is never stored
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX tokens_by_user ON tokens (user_id);

CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (user_id),
    device_id     TEXT,
    created_at    TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    permissions   TEXT NOT NULL,       -- JSON array, the owner's at creation
    state         TEXT NOT NULL,       -- active | ended
    last_seq      INTEGER NOT NULL DEFAULT 0,
    is_default    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE UNIQUE INDEX one_default_session ON sessions (user_id) WHERE is_default = 1 AND state = 'active';

CREATE TABLE tasks (
    -- Small, hot columns first: SQLite reads a row's columns in order, so a
    -- column stored after a large prompt costs a walk over its overflow pages.
    task_id         TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    execution_uuid  TEXT NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (session_id),
    user_id         TEXT NOT NULL,
    agent_type      TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    execution_time  REAL,
    error           TEXT,
    metadata        TEXT NOT NULL,
    context         TEXT NOT NULL,
    params          TEXT NOT NULL,
    result          TEXT,
    prompt          TEXT NOT NULL
);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_user ON tasks (user_id, created_at);
CREATE INDEX tasks_by_session ON tasks (session_id, created_at);
CREATE INDEX tasks_by_time ON tasks (created_at);
CREATE INDEX tasks_unfinished ON tasks (user_id, state) WHERE state NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE events (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    task_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,          -- task.state | task.output
    data       TEXT NOT NULL,          -- the event's `data` object
    at         TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE INDEX events_by_task ON events (task_id, session_id, seq);

CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
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
CREATE INDEX audit_by_user ON audit (user_id, seq);
CREATE INDEX audit_by_session ON audit (session_id, seq);
CREATE INDEX audit_by_type ON audit (event_type, seq);

-- The audit log is append-only for the application. (Someone with write
-- access to the file can drop these; the hash chain is what catches that.)
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
