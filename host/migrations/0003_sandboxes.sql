-- Sandboxes: lifetimes, restarts, idempotent creates and the event log.
ALTER TABLE sandboxes ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN last_active_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;

CREATE INDEX sandboxes_status ON sandboxes (status);

CREATE TABLE sandbox_idempotency (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sandbox_id  TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE sandbox_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    ts         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX sandbox_events_by_sandbox ON sandbox_events (sandbox_id, seq);
