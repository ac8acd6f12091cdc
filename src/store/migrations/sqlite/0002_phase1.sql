-- Phase 1: projects, their tasks, and agent executions of those tasks.
-- Released migrations are never edited.

CREATE TABLE projects (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    key              TEXT NOT NULL UNIQUE,
    description      TEXT,
    status           TEXT NOT NULL,     -- active | completed | archived | on_hold
    github_repo_url  TEXT,
    telegram_chat_id TEXT,
    task_count       INTEGER NOT NULL DEFAULT 0,  -- the last task number handed out
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

CREATE TABLE project_tasks (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id             INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    number                 INTEGER NOT NULL,
    title                  TEXT NOT NULL,
    description            TEXT,
    status                 TEXT NOT NULL,   -- todo | in_progress | in_review | done | blocked
    priority               TEXT NOT NULL,   -- low | medium | high | critical
    assigned_agent_type    TEXT,
    agent_execution_status TEXT,            -- the engine state of the latest execution
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    UNIQUE (project_id, number)
);

CREATE TABLE project_task_executions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id        INTEGER NOT NULL REFERENCES project_tasks (id) ON DELETE CASCADE,
    engine_task_id TEXT NOT NULL UNIQUE,     -- tasks.task_id; engine tasks outlive this row
    execution_uuid TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    agent_type     TEXT NOT NULL,
    prompt         TEXT NOT NULL,
    started_at     TEXT NOT NULL
);
CREATE INDEX project_task_executions_by_task ON project_task_executions (task_id);
