-- Relay hosts and imports (host/src/relays): provider keys imported into a relay host
-- (sub2api, one-api, new-api) through its host adapter plugin, proven by a probe through the
-- relay's gateway, recorded so they can be rolled back and reconciled.
-- Secrets (the admin token, provider keys, managed keys) are sealed (ChaCha20-Poly1305, see
-- host/src/probes/crypto.rs) with the row id as associated data; only fingerprints are clear.
-- PostgreSQL-compatible: explicit keys, no rowid, times as unix milliseconds.

CREATE TABLE relay_hosts (
    -- `rh_...`
    id                TEXT PRIMARY KEY,
    owner             TEXT NOT NULL,
    -- The key that registered it: background work on the host (confirmations, reconciles)
    -- reaches private addresses only while that key is an active admin key (as probe targets).
    created_by_key    TEXT NOT NULL,
    -- The adapter kind, e.g. `sub2api`.
    kind              TEXT NOT NULL,
    base_url          TEXT NOT NULL,
    token_sealed      BLOB NOT NULL,
    token_fingerprint TEXT NOT NULL,
    -- What the adapter's `detect` learnt at registration.
    version           TEXT NOT NULL,
    gateway_base_url  TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    -- The last reconcile: `in_sync` or `drifted`, its report (JSON) and when; the next is due
    -- at `next_reconcile_ms`.
    reconcile_status  TEXT,
    reconcile_report  TEXT,
    reconciled_ms     BIGINT,
    next_reconcile_ms BIGINT NOT NULL
);

CREATE INDEX relay_hosts_owner ON relay_hosts (owner, created_ms);
CREATE INDEX relay_hosts_due ON relay_hosts (next_reconcile_ms);

CREATE TABLE relay_imports (
    -- `imp_...`: the run id too (run kind `relay_import`).
    id                TEXT PRIMARY KEY,
    owner             TEXT NOT NULL,
    host_id           TEXT NOT NULL REFERENCES relay_hosts (id) ON DELETE CASCADE,
    provider          TEXT NOT NULL,
    upstream_base_url TEXT NOT NULL,
    -- `subscription` or `self_service`.
    mode              TEXT NOT NULL,
    -- Canonical model ids (JSON list) and their family.
    models            TEXT NOT NULL,
    family            TEXT NOT NULL,
    -- `running`, then `succeeded` (every item ready), `partially_succeeded`, `failed`;
    -- `rolled_back` after a rollback.
    status            TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    ended_ms          BIGINT,
    rolled_back_ms    BIGINT,
    -- The last rollback's report (JSON: deleted, kept, failed).
    rollback_report   TEXT
);

CREATE INDEX relay_imports_owner ON relay_imports (owner, created_ms);
CREATE INDEX relay_imports_host ON relay_imports (host_id);

-- One provider key of an import.
CREATE TABLE relay_import_items (
    -- `itm_...`
    id              TEXT PRIMARY KEY,
    import_id       TEXT NOT NULL REFERENCES relay_imports (id) ON DELETE CASCADE,
    owner           TEXT NOT NULL,
    -- Order in the request, from 1.
    position        INTEGER NOT NULL,
    -- Prefix of the names of this item's resources on the host.
    name            TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    key_sealed      BLOB NOT NULL,
    -- `pending` (not imported yet), `confirming` (imported; waiting for a passing probe
    -- within the confirmation bounds), `done`.
    phase           TEXT NOT NULL,
    -- What the import did to the key's resources: created, reused, patch_only, replace,
    -- reactivated.
    outcome         TEXT,
    -- `pending`, `ready` (a probe through the gateway passed), `failed`; `degraded` when a
    -- reconcile's re-probe of a ready item fails.
    access_status   TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    -- The probes and what was done (JSON list of events), never a secret.
    evidence        TEXT NOT NULL DEFAULT '[]',
    -- The repair applied (the adapter's answer), once at most.
    repair          TEXT,
    repaired        INTEGER NOT NULL DEFAULT 0,
    -- Probes run for this item, and when the confirmation worker probes it next.
    attempts        INTEGER NOT NULL DEFAULT 0,
    confirm_started_ms BIGINT,
    next_retry_ms   BIGINT,
    -- The confirmation worker that holds the item, until when.
    lease_holder    TEXT,
    lease_expires_ms BIGINT,
    updated_ms      BIGINT NOT NULL,
    UNIQUE (import_id, position)
);

CREATE INDEX relay_items_import ON relay_import_items (import_id, position);
CREATE INDEX relay_items_due ON relay_import_items (phase, next_retry_ms);

-- Every resource an import ensured on a host. The row is written (state `intent`) BEFORE the
-- adapter's `ensure` runs; after it, `created` (the import made it) or `reused` (it was there:
-- reused, patched, replaced or reactivated); after a rollback `deleted`, or `released` when the
-- rollback left it (another import still records it, or this import never created it). An intent left by a
-- crash is resumed by calling `ensure` again (the adapter finds the resource by its name).
CREATE TABLE relay_resources (
    -- `res_...`
    id               TEXT PRIMARY KEY,
    host_id          TEXT NOT NULL REFERENCES relay_hosts (id) ON DELETE CASCADE,
    import_id        TEXT NOT NULL REFERENCES relay_imports (id) ON DELETE CASCADE,
    item_id          TEXT NOT NULL,
    -- Creation order within the import (rollback deletes newest first).
    seq              BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    name             TEXT NOT NULL,
    -- The host's id; null while an intent.
    host_resource_id TEXT,
    state            TEXT NOT NULL,
    -- What `ensure` answered: created, reused, patch_only, replace, reactivated.
    outcome          TEXT,
    shared           INTEGER NOT NULL,
    -- As the host last said (e.g. `active`), and its facts (JSON, never a secret).
    status           TEXT,
    attributes       TEXT,
    -- The secret the resource carries (a managed API key), sealed with this row's id.
    secret_sealed    BLOB,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    UNIQUE (import_id, item_id, kind, name)
);

CREATE INDEX relay_resources_host ON relay_resources (host_id, state);
CREATE INDEX relay_resources_import ON relay_resources (import_id, seq);
