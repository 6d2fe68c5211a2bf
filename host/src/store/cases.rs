//! The cases repository: case rows and the host-port leases.

use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

#[derive(Debug, Clone)]
pub struct CaseRow {
    pub id: String,
    pub owner: String,
    pub status: String,
    pub spec: String,
    pub secret_env_sealed: Option<Vec<u8>>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub host_port: Option<i64>,
    pub exit_code: Option<i64>,
    pub overlays_applied: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

const COLUMNS: &str = "id, owner, status, spec, secret_env_sealed, error_code, error_message, image_id, \
     container_id, host_port, exit_code, overlays_applied, created_ms, updated_ms";

fn case_row(row: &sqlx::sqlite::SqliteRow) -> CaseRow {
    CaseRow {
        id: row.get("id"),
        owner: row.get("owner"),
        status: row.get("status"),
        spec: row.get("spec"),
        secret_env_sealed: row.get("secret_env_sealed"),
        error_code: row.get("error_code"),
        error_message: row.get("error_message"),
        image_id: row.get("image_id"),
        container_id: row.get("container_id"),
        host_port: row.get("host_port"),
        exit_code: row.get("exit_code"),
        overlays_applied: row.get("overlays_applied"),
        created_ms: row.get("created_ms"),
        updated_ms: row.get("updated_ms"),
    }
}

pub async fn insert(
    db: &Db,
    id: &str,
    owner: &str,
    status: &str,
    spec: &str,
    secret_env_sealed: Option<&[u8]>,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "INSERT INTO cases (id, owner, status, spec, secret_env_sealed, created_ms, updated_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(owner)
    .bind(status)
    .bind(spec)
    .bind(secret_env_sealed)
    .bind(now_ms)
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(())
}

/// The case, if it exists and (with `owner`) belongs to that owner.
pub async fn get(db: &Db, id: &str, owner: Option<&str>) -> WharfResult<Option<CaseRow>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM cases WHERE id = ? AND (? IS NULL OR owner = ?)"
    ))
    .bind(id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(case_row))
}

/// An owner's cases, newest first, after the cursor `(created_ms, id)` if given.
pub async fn list(
    db: &Db,
    owner: &str,
    before: Option<(i64, &str)>,
    limit: i64,
) -> WharfResult<Vec<CaseRow>> {
    let (created, id) = before.unwrap_or((i64::MAX, ""));
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM cases WHERE owner = ? AND (created_ms < ? OR (created_ms = ? AND id < ?) OR ? = '') \
         ORDER BY created_ms DESC, id DESC LIMIT ?"
    ))
    .bind(owner)
    .bind(created)
    .bind(created)
    .bind(id)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(case_row).collect())
}

/// Cases in one of `statuses` (for recovery and the exit watcher).
pub async fn with_status(db: &Db, statuses: &[&str]) -> WharfResult<Vec<CaseRow>> {
    let markers = super::in_list(statuses.len());
    let sql =
        format!("SELECT {COLUMNS} FROM cases WHERE status IN ({markers}) ORDER BY created_ms, id");
    let mut query = sqlx::query(&sql);
    for status in statuses {
        query = query.bind(*status);
    }
    Ok(query.fetch_all(db).await?.iter().map(case_row).collect())
}

pub async fn count_for_owner(db: &Db, owner: &str) -> WharfResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM cases WHERE owner = ?")
            .bind(owner)
            .fetch_one(db)
            .await?,
    )
}

/// Moves a case from one of `from` to `to`; false when it was in none of them.
pub async fn set_status(
    db: &Db,
    id: &str,
    from: &[&str],
    to: &str,
    now_ms: i64,
) -> WharfResult<bool> {
    let markers = super::in_list(from.len());
    let sql = format!(
        "UPDATE cases SET status = ?, updated_ms = ? WHERE id = ? AND status IN ({markers})"
    );
    let mut query = sqlx::query(&sql).bind(to).bind(now_ms).bind(id);
    for status in from {
        query = query.bind(*status);
    }
    Ok(query.execute(db).await?.rows_affected() == 1)
}

/// Fails a case that is in one of `from`, with its code and (masked) message.
#[allow(clippy::too_many_arguments)]
pub async fn set_failed(
    db: &Db,
    id: &str,
    from: &[&str],
    to: &str,
    error_code: Option<&str>,
    error_message: Option<&str>,
    exit_code: Option<i64>,
    now_ms: i64,
) -> WharfResult<bool> {
    let markers = super::in_list(from.len());
    let sql = format!(
        "UPDATE cases SET status = ?, error_code = ?, error_message = ?, exit_code = COALESCE(?, exit_code), \
         updated_ms = ? WHERE id = ? AND status IN ({markers})"
    );
    let mut query = sqlx::query(&sql)
        .bind(to)
        .bind(error_code)
        .bind(error_message)
        .bind(exit_code)
        .bind(now_ms)
        .bind(id);
    for status in from {
        query = query.bind(*status);
    }
    Ok(query.execute(db).await?.rows_affected() == 1)
}

/// Records the overlays the patch phase applied (a JSON list of ids).
pub async fn set_overlays_applied(
    db: &Db,
    id: &str,
    overlays: &str,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query("UPDATE cases SET overlays_applied = ?, updated_ms = ? WHERE id = ?")
        .bind(overlays)
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_exit_code(db: &Db, id: &str, exit_code: i64, now_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE cases SET exit_code = ?, updated_ms = ? WHERE id = ?")
        .bind(exit_code)
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_image(db: &Db, id: &str, image_id: &str, now_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE cases SET image_id = ?, updated_ms = ? WHERE id = ?")
        .bind(image_id)
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_container(
    db: &Db,
    id: &str,
    container_id: &str,
    host_port: i64,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query("UPDATE cases SET container_id = ?, host_port = ?, updated_ms = ? WHERE id = ?")
        .bind(container_id)
        .bind(host_port)
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete(db: &Db, id: &str) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM case_ports WHERE case_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cases WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Leases the lowest free port of `first..=last` not in `skip` to `case_id`; `None` when
/// every such port is leased. The port's primary key makes a concurrent lease of the same port fail, and the
/// loser tries the next one.
pub async fn lease_port(
    db: &Db,
    case_id: &str,
    first: u16,
    last: u16,
    skip: &[u16],
    now_ms: i64,
) -> WharfResult<Option<u16>> {
    loop {
        let leased: Vec<i64> = sqlx::query_scalar(
            "SELECT port FROM case_ports WHERE port >= ? AND port <= ? ORDER BY port",
        )
        .bind(i64::from(first))
        .bind(i64::from(last))
        .fetch_all(db)
        .await?;
        let Some(free) = (first..=last)
            .find(|port| !skip.contains(port) && leased.binary_search(&i64::from(*port)).is_err())
        else {
            return Ok(None);
        };
        let inserted = sqlx::query(
            "INSERT INTO case_ports (port, case_id, leased_ms) VALUES (?, ?, ?) ON CONFLICT (port) DO NOTHING",
        )
        .bind(i64::from(free))
        .bind(case_id)
        .bind(now_ms)
        .execute(db)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Some(free));
        }
    }
}

/// Releases whatever port `case_id` holds.
pub async fn release_port(db: &Db, case_id: &str) -> WharfResult<()> {
    sqlx::query("DELETE FROM case_ports WHERE case_id = ?")
        .bind(case_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The port leased to `case_id`, if any.
pub async fn port_of(db: &Db, case_id: &str) -> WharfResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT port FROM case_ports WHERE case_id = ?")
            .bind(case_id)
            .fetch_optional(db)
            .await?,
    )
}

/// Every lease, as (port, case id).
pub async fn leases(db: &Db) -> WharfResult<Vec<(i64, String)>> {
    Ok(
        sqlx::query_as("SELECT port, case_id FROM case_ports ORDER BY port")
            .fetch_all(db)
            .await?,
    )
}
