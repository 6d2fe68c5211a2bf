-- The durable run engine (host/src/jobs) and cases (host/src/cases).
-- PostgreSQL-compatible: explicit keys for every cursor (log offsets, transition numbers),
-- no rowid, no AUTOINCREMENT; times as unix milliseconds (integers) or seconds (REAL in
-- log lines, as the API shows them).

-- One run of long-running work. `kind` names the subsystem (`case`, later `batch`,
-- `relay_import`); the subsystem keeps its own row under the same id.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    state            TEXT NOT NULL,
    error_code       TEXT,
    reason           TEXT,
    -- The worker (one server process) holding the run, and until when (unix ms).
    lease_holder     TEXT,
    lease_expires_ms BIGINT,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    -- Bytes and lines of the log so far; `log_truncated` once the cap was hit.
    log_bytes        BIGINT NOT NULL DEFAULT 0,
    log_lines        BIGINT NOT NULL DEFAULT 0,
    log_truncated    INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX runs_kind_state ON runs (kind, state);

-- Steps of a run, in order; `attempts` counts retries of the step.
CREATE TABLE run_steps (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_ms  BIGINT NOT NULL,
    ended_ms    BIGINT,
    error_code  TEXT,
    reason      TEXT,
    PRIMARY KEY (run_id, seq)
);

-- Every state change of a run, with why.
CREATE TABLE run_transitions (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    at_ms       BIGINT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    error_code  TEXT,
    reason      TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The append-only log of a run: offsets count lines from 0, with no gap.
CREATE TABLE run_log (
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    "offset" BIGINT NOT NULL,
    ts       DOUBLE PRECISION NOT NULL,
    stream   TEXT NOT NULL,
    level    TEXT NOT NULL,
    line     TEXT NOT NULL,
    PRIMARY KEY (run_id, "offset")
);

-- A case: a repository cloned, built and run. Its run has the same id.
CREATE TABLE cases (
    id                TEXT PRIMARY KEY,
    owner             TEXT NOT NULL,
    status            TEXT NOT NULL,
    -- The request as given, secret values left out (JSON).
    spec              TEXT NOT NULL,
    -- secret_env sealed (ChaCha20-Poly1305, the probes key), bound to the case id.
    secret_env_sealed BLOB,
    error_code        TEXT,
    error_message     TEXT,
    image_id          TEXT,
    container_id      TEXT,
    host_port         INTEGER,
    exit_code         BIGINT,
    -- Overlays applied in the patch phase (JSON list of ids).
    overlays_applied  TEXT NOT NULL DEFAULT '[]',
    created_ms        BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL
);

CREATE INDEX cases_owner ON cases (owner, created_ms);
CREATE INDEX cases_status ON cases (status);

-- Host ports leased to cases: the primary key is what keeps two live cases off one port.
CREATE TABLE case_ports (
    port       INTEGER PRIMARY KEY,
    case_id    TEXT NOT NULL,
    leased_ms  BIGINT NOT NULL
);
