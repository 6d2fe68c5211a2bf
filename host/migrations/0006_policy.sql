-- Capability policy: key scopes and roles, human approvals, and the audit log.

-- A key's scope: JSON lists of capability/operation names and of profiles it may use
-- (NULL: no limit), and its roles (JSON list; `approver`). `admin` stays its own column.
ALTER TABLE api_keys ADD COLUMN scope_capabilities TEXT;
ALTER TABLE api_keys ADD COLUMN scope_profiles TEXT;
ALTER TABLE api_keys ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';

-- Capability calls that wait for a human decision. `status`: pending -> approved ->
-- running -> succeeded | failed, or pending -> declined | expired. Moving a row from one
-- status to the next is one conditional UPDATE, so two deciders (or two runners) never both win.
CREATE TABLE approvals (
    id             TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    sandbox_id     TEXT NOT NULL,
    capability     TEXT NOT NULL,
    operation      TEXT NOT NULL,
    input          TEXT NOT NULL,
    input_sha256   TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    expires_ms     BIGINT NOT NULL,
    decided_by     TEXT,
    decided_at     TEXT,
    started_at     TEXT,
    finished_at    TEXT,
    finished_ms    BIGINT,
    result         TEXT,
    error_code     TEXT,
    error_message  TEXT
);

CREATE INDEX approvals_by_owner ON approvals (owner, status, created_ms);
CREATE INDEX approvals_by_status ON approvals (status, expires_ms);

-- One row per capability call (and per direct exec), whatever its outcome.
CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            TEXT NOT NULL,
    ts_ms         BIGINT NOT NULL,
    owner         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    sandbox_id    TEXT NOT NULL,
    capability    TEXT NOT NULL,
    operation     TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    duration_ms   DOUBLE PRECISION NOT NULL,
    pack          TEXT,
    pack_version  TEXT,
    approval_id   TEXT
);

CREATE INDEX audit_by_owner ON audit_log (owner, seq);
CREATE INDEX audit_by_time ON audit_log (ts_ms);
