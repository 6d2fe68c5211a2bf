//! The run engine's repository: runs, their steps and transitions, leases, and the
//! append-only run log. Offsets and transition numbers are explicit keys assigned here,
//! so the same SQL works on PostgreSQL.

use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub kind: String,
    pub owner: String,
    pub state: String,
    pub error_code: Option<String>,
    pub reason: Option<String>,
    pub lease_holder: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub log_bytes: i64,
    pub log_lines: i64,
    pub log_truncated: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub seq: i64,
    pub name: String,
    pub state: String,
    pub attempts: i64,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub error_code: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionRow {
    pub seq: i64,
    pub at_ms: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub error_code: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub offset: i64,
    pub ts: f64,
    pub stream: String,
    pub level: String,
    pub line: String,
}

const RUN_COLUMNS: &str = "id, kind, owner, state, error_code, reason, lease_holder, lease_expires_ms, \
     created_ms, updated_ms, log_bytes, log_lines, log_truncated";

fn run_row(row: &sqlx::sqlite::SqliteRow) -> RunRow {
    RunRow {
        id: row.get("id"),
        kind: row.get("kind"),
        owner: row.get("owner"),
        state: row.get("state"),
        error_code: row.get("error_code"),
        reason: row.get("reason"),
        lease_holder: row.get("lease_holder"),
        lease_expires_ms: row.get("lease_expires_ms"),
        created_ms: row.get("created_ms"),
        updated_ms: row.get("updated_ms"),
        log_bytes: row.get("log_bytes"),
        log_lines: row.get("log_lines"),
        log_truncated: row.get::<i64, _>("log_truncated") != 0,
    }
}

/// Creates a run in `state` and records its first transition.
pub async fn insert_run(
    db: &Db,
    id: &str,
    kind: &str,
    owner: &str,
    state: &str,
    reason: &str,
    now_ms: i64,
) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO runs (id, kind, owner, state, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(kind)
    .bind(owner)
    .bind(state)
    .bind(now_ms)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO run_transitions (run_id, seq, at_ms, from_state, to_state, error_code, reason) \
         VALUES (?, 1, ?, NULL, ?, NULL, ?)",
    )
    .bind(id)
    .bind(now_ms)
    .bind(state)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn get_run(db: &Db, id: &str) -> WharfResult<Option<RunRow>> {
    let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(run_row))
}

/// Moves a run from one of `from` to `to`, recording the transition; false (and nothing
/// written) when the run is not in one of `from`.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    db: &Db,
    id: &str,
    from: &[&str],
    to: &str,
    error_code: Option<&str>,
    reason: &str,
    release_lease: bool,
    now_ms: i64,
) -> WharfResult<bool> {
    let mut tx = db.begin().await?;
    lock_run(&mut tx, id).await?;
    let current: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(current) = current else {
        return Ok(false);
    };
    if !from.contains(&current.as_str()) {
        return Ok(false);
    }
    let lease = if release_lease {
        ", lease_holder = NULL, lease_expires_ms = NULL"
    } else {
        ""
    };
    sqlx::query(&format!(
        "UPDATE runs SET state = ?, error_code = ?, reason = ?, updated_ms = ?{lease} WHERE id = ? AND state = ?"
    ))
    .bind(to)
    .bind(error_code)
    .bind(reason)
    .bind(now_ms)
    .bind(id)
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO run_transitions (run_id, seq, at_ms, from_state, to_state, error_code, reason) \
         SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ? FROM run_transitions WHERE run_id = ?",
    )
    .bind(id)
    .bind(now_ms)
    .bind(&current)
    .bind(to)
    .bind(error_code)
    .bind(reason)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn transitions(db: &Db, run_id: &str) -> WharfResult<Vec<TransitionRow>> {
    Ok(sqlx::query_as::<_, TransitionRow>(
        "SELECT seq, at_ms, from_state, to_state, error_code, reason FROM run_transitions \
         WHERE run_id = ? ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?)
}

/// Takes the lease of a run for `holder` until `expires_ms`.
pub async fn claim_lease(db: &Db, id: &str, holder: &str, expires_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE runs SET lease_holder = ?, lease_expires_ms = ? WHERE id = ?")
        .bind(holder)
        .bind(expires_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Extends every lease `holder` has; returns how many.
pub async fn renew_leases(db: &Db, holder: &str, expires_ms: i64) -> WharfResult<u64> {
    Ok(
        sqlx::query("UPDATE runs SET lease_expires_ms = ? WHERE lease_holder = ?")
            .bind(expires_ms)
            .bind(holder)
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// Runs of `kind` in one of `states` whose lease is not `holder`'s or has expired by `now_ms`.
pub async fn orphaned_runs(
    db: &Db,
    kind: &str,
    states: &[&str],
    holder: &str,
    now_ms: i64,
) -> WharfResult<Vec<RunRow>> {
    let markers = super::in_list(states.len());
    let sql = format!(
        "SELECT id FROM runs WHERE kind = ? AND state IN ({markers}) \
         AND (lease_holder IS NULL OR lease_holder <> ? OR lease_expires_ms < ?) ORDER BY created_ms, id"
    );
    let mut query = sqlx::query_as::<_, (String,)>(&sql).bind(kind);
    for state in states {
        query = query.bind(*state);
    }
    let ids = query.bind(holder).bind(now_ms).fetch_all(db).await?;
    let mut runs = Vec::with_capacity(ids.len());
    for (id,) in ids {
        if let Some(run) = get_run(db, &id).await? {
            runs.push(run);
        }
    }
    Ok(runs)
}

pub async fn delete_run(db: &Db, id: &str) -> WharfResult<()> {
    // Children first: the foreign keys cascade on SQLite and PostgreSQL alike, but a
    // deleted run must not depend on the pragma being on.
    let mut tx = db.begin().await?;
    for table in ["run_log", "run_steps", "run_transitions"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE run_id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM runs WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Opens step `name` of a run; returns its number.
pub async fn begin_step(db: &Db, run_id: &str, name: &str, now_ms: i64) -> WharfResult<i64> {
    let mut tx = db.begin().await?;
    lock_run(&mut tx, run_id).await?;
    let seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM run_steps WHERE run_id = ?")
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO run_steps (run_id, seq, name, state, attempts, started_ms) VALUES (?, ?, ?, 'running', 0, ?)",
    )
    .bind(run_id)
    .bind(seq)
    .bind(name)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(seq)
}

pub async fn step_attempt(db: &Db, run_id: &str, seq: i64) -> WharfResult<()> {
    sqlx::query("UPDATE run_steps SET attempts = attempts + 1 WHERE run_id = ? AND seq = ?")
        .bind(run_id)
        .bind(seq)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn end_step(
    db: &Db,
    run_id: &str,
    seq: i64,
    state: &str,
    error_code: Option<&str>,
    reason: Option<&str>,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "UPDATE run_steps SET state = ?, error_code = ?, reason = ?, ended_ms = ? WHERE run_id = ? AND seq = ?",
    )
    .bind(state)
    .bind(error_code)
    .bind(reason)
    .bind(now_ms)
    .bind(run_id)
    .bind(seq)
    .execute(db)
    .await?;
    Ok(())
}

/// Closes every step of a run still marked running (after a restart interrupted it).
pub async fn end_open_steps(
    db: &Db,
    run_id: &str,
    error_code: &str,
    reason: &str,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "UPDATE run_steps SET state = 'failed', error_code = ?, reason = ?, ended_ms = ? \
         WHERE run_id = ? AND state = 'running'",
    )
    .bind(error_code)
    .bind(reason)
    .bind(now_ms)
    .bind(run_id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn steps(db: &Db, run_id: &str) -> WharfResult<Vec<StepRow>> {
    Ok(sqlx::query_as::<_, StepRow>(
        "SELECT seq, name, state, attempts, started_ms, ended_ms, error_code, reason FROM run_steps \
         WHERE run_id = ? ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?)
}

/// Appends one log line at `offset` and counts its bytes; `truncated` marks the run's log
/// as full (this line is then the truncation marker).
pub async fn append_log(
    db: &Db,
    run_id: &str,
    line: &LogRow,
    bytes: i64,
    truncated: bool,
) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO run_log (run_id, \"offset\", ts, stream, level, line) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(run_id)
    .bind(line.offset)
    .bind(line.ts)
    .bind(&line.stream)
    .bind(&line.level)
    .bind(&line.line)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE runs SET log_bytes = log_bytes + ?, log_lines = ?, log_truncated = ? WHERE id = ?",
    )
    .bind(bytes)
    .bind(line.offset + 1)
    .bind(i64::from(truncated))
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Up to `limit` lines from `offset` on, in order.
pub async fn read_log(db: &Db, run_id: &str, offset: i64, limit: i64) -> WharfResult<Vec<LogRow>> {
    Ok(sqlx::query_as::<_, LogRow>(
        "SELECT \"offset\", ts, stream, level, line FROM run_log WHERE run_id = ? AND \"offset\" >= ? \
         ORDER BY \"offset\" LIMIT ?",
    )
    .bind(run_id)
    .bind(offset)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The timestamp of the last line of `stream` in a run's log, if any.
pub async fn last_ts_of_stream(db: &Db, run_id: &str, stream: &str) -> WharfResult<Option<f64>> {
    Ok(
        sqlx::query_scalar("SELECT MAX(ts) FROM run_log WHERE run_id = ? AND stream = ?")
            .bind(run_id)
            .bind(stream)
            .fetch_one(db)
            .await?,
    )
}

/// Takes the write lock on a run's row before a transaction reads what it then writes.
///
/// Under SQLite a transaction that reads first and writes second fails at once with
/// `SQLITE_BUSY` (no busy wait) when another connection wrote in between; writing first
/// makes it wait its turn (`busy_timeout`) and read a state nobody changes under it.
/// PostgreSQL takes the same row lock.
async fn lock_run(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, id: &str) -> WharfResult<()> {
    sqlx::query("UPDATE runs SET updated_ms = updated_ms WHERE id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
