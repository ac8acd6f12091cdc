-- Security layer: signed audit checkpoints and the device registry.
-- (0002 is reserved for the Phase 1 tables.)

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    head      TEXT NOT NULL,
    at        TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    name       TEXT NOT NULL,
    public_key TEXT,                   -- hex Ed25519 public key, if the device has one
    state      TEXT NOT NULL,          -- pending | trusted | revoked
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    decided_by TEXT
);
CREATE INDEX devices_by_user ON devices (user_id);

CREATE TABLE device_nonces (
    nonce      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0
);
