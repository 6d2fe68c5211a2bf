-- Batches (host/src/batches): JSONL task lists run in sandboxes, each task leaving a
-- trajectory. Each task is a run of the run engine (kind `batch_task`, same id), which holds
-- its state transitions, lease, retries and log; these tables hold what the run engine does
-- not: the task's spec, queue order, outcome and trajectory steps.
-- PostgreSQL-compatible: explicit keys, no rowid, times as unix milliseconds.

CREATE TABLE batches (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    -- The key that submitted it: tasks call capabilities as this key, with its scope then.
    key_id        TEXT NOT NULL,
    -- Submission options (JSON: keep_on_failure, strict).
    options       TEXT NOT NULL,
    -- Lines refused at submission (JSON list of {line, task_id, message}).
    invalid_lines TEXT NOT NULL DEFAULT '[]',
    created_ms    BIGINT NOT NULL,
    cancelled_ms  BIGINT
);

CREATE INDEX batches_owner ON batches (owner, created_ms);

CREATE TABLE batch_tasks (
    -- `tsk_...`: the run id too.
    id            TEXT PRIMARY KEY,
    batch_id      TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    owner         TEXT NOT NULL,
    -- The client's id, unique within its batch.
    task_id       TEXT NOT NULL,
    task_type     TEXT NOT NULL,
    -- Line (JSONL) or element (JSON array) number, from 1.
    line          INTEGER NOT NULL,
    priority      BIGINT NOT NULL,
    -- The task as accepted (JSON).
    spec          TEXT NOT NULL,
    -- queued, running, succeeded, failed, cancelled.
    status        TEXT NOT NULL,
    -- `task` or `infrastructure` once failed.
    side          TEXT,
    error_class   TEXT,
    error_message TEXT,
    -- Attempts started (infrastructure failures and restarts retry).
    attempts      INTEGER NOT NULL DEFAULT 0,
    sandbox_id    TEXT,
    -- Provenance and outcome of the last attempt (JSON): planner, pack versions, profile,
    -- image digest, model, final result, tools offered.
    outcome       TEXT,
    -- sha256 of the owner, the task's normalised spec and the versions of the packs serving
    -- its operations; a task of a batch with the cache on reuses a succeeded task's
    -- trajectory under the same key.
    cache_key     TEXT,
    -- `hit` or `miss` in a batch with the cache on; the task a hit copied.
    cache         TEXT,
    cache_source  TEXT,
    queued_ms     BIGINT NOT NULL,
    started_ms    BIGINT,
    ended_ms      BIGINT,
    UNIQUE (batch_id, task_id)
);

-- The queue: the next task of a type is the highest priority, then the oldest line.
CREATE INDEX batch_tasks_queue ON batch_tasks (status, task_type, priority, queued_ms, line);
CREATE INDEX batch_tasks_batch ON batch_tasks (batch_id, line);
CREATE INDEX batch_tasks_cache ON batch_tasks (owner, cache_key, status);

-- The steps of a task's last attempt, in order.
CREATE TABLE task_steps (
    task_id       TEXT NOT NULL REFERENCES batch_tasks (id) ON DELETE CASCADE,
    step_id       INTEGER NOT NULL,
    action_type   TEXT NOT NULL,
    -- `capability.operation` of a capability call.
    tool          TEXT,
    params        TEXT NOT NULL,
    observation   TEXT NOT NULL,
    observation_truncated INTEGER NOT NULL DEFAULT 0,
    success       INTEGER NOT NULL,
    error_class   TEXT,
    error_message TEXT,
    ts_ms         BIGINT NOT NULL,
    duration_ms   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (task_id, step_id)
);
