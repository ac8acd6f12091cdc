-- Security layer: signed audit checkpoints and the device registry.
-- (0002 is reserved for the Phase 1 tables.)

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    head      TEXT NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    name       TEXT NOT NULL,
    public_key TEXT,
    state      TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    decided_by TEXT
);
CREATE INDEX devices_by_user ON devices (user_id);

CREATE TABLE device_nonces (
    nonce      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used       BOOLEAN NOT NULL DEFAULT FALSE
);
