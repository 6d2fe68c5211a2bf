-- Probe targets: the API key is sealed (ChaCha20-Poly1305, see host/src/probes/crypto.rs);
-- only a fingerprint is kept in clear.
CREATE TABLE probe_targets (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    provider        TEXT NOT NULL,
    base_url        TEXT NOT NULL,
    direct_base_url TEXT,
    model           TEXT,
    stream          INTEGER,
    key_sealed      BLOB NOT NULL,
    key_fingerprint TEXT NOT NULL,
    interval_secs   INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    -- unix seconds; the scheduler picks rows whose time has come
    next_due_at     REAL NOT NULL,
    verdict         TEXT,
    verdict_since   TEXT,
    last_probed_at  TEXT
);

CREATE INDEX probe_targets_owner ON probe_targets (owner, created_at);
CREATE INDEX probe_targets_due ON probe_targets (next_due_at);

-- Results of scheduled (target_id set) and one-off probes; `result` is the JSON answer, which
-- holds no key (previews and details are redacted before they are stored). Rows are ordered
-- by rowid, which only grows.
CREATE TABLE probe_results (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    target_id   TEXT REFERENCES probe_targets (id) ON DELETE CASCADE,
    started_at  TEXT NOT NULL,
    verdict     TEXT NOT NULL,
    result      TEXT NOT NULL
);

CREATE INDEX probe_results_target ON probe_results (target_id);
CREATE INDEX probe_results_owner ON probe_results (owner, target_id);
