-- Switchboard schema, PostgreSQL. Released migrations are never edited.
-- Same tables and meaning as the SQLite schema, with native types:
-- TIMESTAMPTZ (microseconds, which is what the audit hashes cover), UUID,
-- JSONB and BIGINT seq numbers.

CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    roles      JSONB NOT NULL,         -- array of role names
    grants     JSONB NOT NULL,         -- array of permissions
    revokes    JSONB NOT NULL,         -- array of permissions
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,       -- SHA-256 of the token; the token itself is never stored
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX tokens_by_user ON tokens (user_id);

CREATE TABLE sessions (
    session_id    UUID PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (user_id),
    device_id     TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL,
    permissions   JSONB NOT NULL,      -- the owner's at creation
    state         TEXT NOT NULL,       -- active | ended
    last_seq      BIGINT NOT NULL DEFAULT 0,
    is_default    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE UNIQUE INDEX one_default_session ON sessions (user_id) WHERE is_default AND state = 'active';

CREATE TABLE tasks (
    task_id         UUID PRIMARY KEY,
    execution_uuid  UUID NOT NULL,
    session_id      UUID NOT NULL REFERENCES sessions (session_id),
    user_id         TEXT NOT NULL,
    agent_type      TEXT NOT NULL,
    prompt          TEXT NOT NULL,
    context         JSONB NOT NULL,
    params          JSONB NOT NULL,
    state           TEXT NOT NULL,
    result          TEXT,
    error           TEXT,
    metadata        JSONB NOT NULL,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    execution_time  DOUBLE PRECISION,
    -- The node running it (NULL: pending, not claimed yet) and until when
    -- its lease holds; a node that stops renewing loses its tasks.
    node_id         TEXT,
    lease_until     TIMESTAMPTZ
);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_user ON tasks (user_id, created_at);
CREATE INDEX tasks_by_session ON tasks (session_id, created_at);
CREATE INDEX tasks_by_time ON tasks (created_at);
CREATE INDEX tasks_unfinished ON tasks (state, agent_type, created_at) WHERE state NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE node_id IS NOT NULL AND state NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE events (
    session_id UUID NOT NULL,
    seq        BIGINT NOT NULL,
    task_id    UUID NOT NULL,
    event_type TEXT NOT NULL,          -- task.state | task.output
    data       JSONB NOT NULL,         -- the event's `data` object
    at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX events_by_task ON events (task_id, session_id, seq);

CREATE TABLE audit (
    seq           BIGINT PRIMARY KEY,
    event_id      UUID NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,
    timestamp     TIMESTAMPTZ NOT NULL,
    user_id       TEXT,
    session_id    UUID,
    resource_type TEXT,
    resource_id   TEXT,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL,
    details       JSONB NOT NULL,
    hash          TEXT NOT NULL,
    prev_hash     TEXT NOT NULL
);
CREATE INDEX audit_by_user ON audit (user_id, seq);
CREATE INDEX audit_by_session ON audit (session_id, seq);
CREATE INDEX audit_by_type ON audit (event_type, seq);

-- The head of the hash chain: one row, locked FOR UPDATE by every
-- transaction that appends audit records, so that writers on every node
-- chain one after another.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The audit log is append-only for the application. (A superuser can drop
-- these; the hash chain is what catches that.)
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- Nodes of a cluster and the agents each can run, kept fresh by heartbeats.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE node_agents (
    node_id    TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    agent_type TEXT NOT NULL,
    info       JSONB NOT NULL,         -- the agent's listing (AgentInfo)
    PRIMARY KEY (node_id, agent_type)
);
