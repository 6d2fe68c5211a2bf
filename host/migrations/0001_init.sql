-- API keys: only a sha256 of each secret is stored.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    admin       INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    profile     TEXT NOT NULL,
    driver      TEXT NOT NULL,
    status      TEXT NOT NULL,
    error_code  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE INDEX sandboxes_owner ON sandboxes (owner, created_at);
