//! The sandbox repository: idempotency keys, per-owner counts and the
//! retention rules that GC applies. (Older sandbox SQL still sits in
//! `sandbox::service` and `sandbox::gc`; it moves here as it is touched.)

use sqlx::{Row, SqliteConnection};

use super::Db;
use crate::error::WharfResult;

/// What an `Idempotency-Key` decided for a create.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key now names the new sandbox: create it.
    Claimed,
    /// The key already names a sandbox that still exists.
    Taken {
        fingerprint: String,
        sandbox_id: String,
    },
}

/// Within the create's transaction: forgets the owner's keys older than
/// `ttl_ms`, then claims `key` for `sandbox_id`. A key whose sandbox is gone
/// (deleted, or already purged) is forgotten and claimed anew, so a replay
/// after a delete creates a new sandbox.
///
/// The first statement writes, so concurrent creates of one key queue on the
/// database's write lock instead of both reading "free".
pub async fn claim_idempotency_key(
    conn: &mut SqliteConnection,
    owner: &str,
    key: &str,
    fingerprint: &str,
    sandbox_id: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> WharfResult<KeyClaim> {
    sqlx::query("DELETE FROM sandbox_idempotency WHERE owner = ? AND created_ms <= ?")
        .bind(owner)
        .bind(now_ms - ttl_ms)
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO sandbox_idempotency (owner, key, fingerprint, sandbox_id, created_ms) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (owner, key) DO NOTHING",
    )
    .bind(owner)
    .bind(key)
    .bind(fingerprint)
    .bind(sandbox_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(KeyClaim::Claimed);
    }
    let row = sqlx::query(
        "SELECT i.fingerprint, i.sandbox_id, s.status FROM sandbox_idempotency i \
         LEFT JOIN sandboxes s ON s.id = i.sandbox_id WHERE i.owner = ? AND i.key = ?",
    )
    .bind(owner)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let status: Option<String> = row.get("status");
    if status.as_deref().is_some_and(|status| status != "deleted") {
        return Ok(KeyClaim::Taken {
            fingerprint: row.get("fingerprint"),
            sandbox_id: row.get("sandbox_id"),
        });
    }
    sqlx::query(
        "UPDATE sandbox_idempotency SET fingerprint = ?, sandbox_id = ?, created_ms = ? WHERE owner = ? AND key = ?",
    )
    .bind(fingerprint)
    .bind(sandbox_id)
    .bind(now_ms)
    .bind(owner)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(KeyClaim::Claimed)
}

/// Forgets the idempotency keys that name `sandbox_id` (it is gone).
pub async fn forget_idempotency_keys(
    conn: &mut SqliteConnection,
    sandbox_id: &str,
) -> WharfResult<()> {
    sqlx::query("DELETE FROM sandbox_idempotency WHERE sandbox_id = ?")
        .bind(sandbox_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The owner's sandboxes that are not deleted: what the owner quota counts.
pub async fn count_held(conn: &mut SqliteConnection, owner: &str) -> WharfResult<i64> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM sandboxes WHERE owner = ? AND status != 'deleted'")
            .bind(owner)
            .fetch_one(conn)
            .await?
            .get("n"),
    )
}

/// Forgets idempotency keys created at or before `before_ms`, and keys whose
/// sandbox is gone. Returns how many.
pub async fn purge_idempotency_keys(db: &Db, before_ms: i64) -> WharfResult<u64> {
    Ok(sqlx::query(
        "DELETE FROM sandbox_idempotency WHERE created_ms <= ? \
         OR sandbox_id NOT IN (SELECT id FROM sandboxes WHERE status != 'deleted')",
    )
    .bind(before_ms)
    .execute(db)
    .await?
    .rows_affected())
}

/// Removes sandboxes deleted at or before `before_ms`, with their events. (A
/// deleted row's last transition stamped `last_active_ms`: its deletion.)
/// Returns how many sandboxes.
pub async fn purge_deleted_sandboxes(db: &Db, before_ms: i64) -> WharfResult<u64> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "DELETE FROM sandbox_events WHERE sandbox_id IN \
         (SELECT id FROM sandboxes WHERE status = 'deleted' AND last_active_ms <= ?)",
    )
    .bind(before_ms)
    .execute(&mut *tx)
    .await?;
    let purged =
        sqlx::query("DELETE FROM sandboxes WHERE status = 'deleted' AND last_active_ms <= ?")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok(purged)
}

/// Trims the event log of every sandbox that got events after `after_seq` to
/// its newest `keep` events, and drops the events of ids the store does not
/// know (e.g. an orphan runtime's removal). Only sandboxes with new events are
/// looked at, so a pass costs what was written since the last one. Returns
/// the events removed and the newest `seq` seen (the next pass's `after_seq`).
pub async fn trim_events(db: &Db, after_seq: i64, keep: u32) -> WharfResult<(u64, i64)> {
    let newest: Option<i64> = sqlx::query("SELECT MAX(seq) AS newest FROM sandbox_events")
        .fetch_one(db)
        .await?
        .get("newest");
    let Some(newest) = newest.filter(|newest| *newest > after_seq) else {
        return Ok((0, after_seq));
    };
    let ids: Vec<String> =
        sqlx::query("SELECT DISTINCT sandbox_id FROM sandbox_events WHERE seq > ? AND seq <= ?")
            .bind(after_seq)
            .bind(newest)
            .fetch_all(db)
            .await?
            .iter()
            .map(|row| row.get("sandbox_id"))
            .collect();
    let mut removed = 0;
    for id in ids {
        removed += sqlx::query(
            "DELETE FROM sandbox_events WHERE sandbox_id = ? AND (\
                NOT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?) \
                OR seq <= (SELECT seq FROM sandbox_events WHERE sandbox_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)\
             )",
        )
        .bind(&id)
        .bind(&id)
        .bind(&id)
        .bind(i64::from(keep.max(1)))
        .execute(db)
        .await?
        .rows_affected();
    }
    Ok((removed, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sandbox_row(db: &Db, id: &str, owner: &str, status: &str, last_active_ms: i64) {
        sqlx::query(
            "INSERT INTO sandboxes (id, owner, profile, driver, status, created_at, updated_at, created_ms, last_active_ms) \
             VALUES (?, ?, 'local', 'process', ?, '', '', 0, ?)",
        )
        .bind(id)
        .bind(owner)
        .bind(status)
        .bind(last_active_ms)
        .execute(db)
        .await
        .unwrap();
    }

    async fn events(db: &Db, id: &str, n: usize) {
        for _ in 0..n {
            sqlx::query("INSERT INTO sandbox_events (sandbox_id, ts, kind) VALUES (?, '', 'exec')")
                .bind(id)
                .execute(db)
                .await
                .unwrap();
        }
    }

    async fn count(db: &Db, sql: &str) -> i64 {
        sqlx::query(sql).fetch_one(db).await.unwrap().get(0)
    }

    async fn claim(db: &Db, key: &str, fingerprint: &str, id: &str, now: i64) -> KeyClaim {
        let mut conn = db.acquire().await.unwrap();
        claim_idempotency_key(&mut conn, "alice", key, fingerprint, id, now, 1_000)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_key_names_its_sandbox_until_the_sandbox_is_gone_or_the_key_expires() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        sandbox_row(&db, "sbx_a", "alice", "running", 0).await;
        assert_eq!(claim(&db, "k", "f1", "sbx_a", 10).await, KeyClaim::Claimed);
        assert_eq!(
            claim(&db, "k", "f2", "sbx_b", 20).await,
            KeyClaim::Taken {
                fingerprint: "f1".into(),
                sandbox_id: "sbx_a".into()
            }
        );
        // Deleted: the key is taken over by the next create.
        sqlx::query("UPDATE sandboxes SET status = 'deleted' WHERE id = 'sbx_a'")
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(claim(&db, "k", "f2", "sbx_b", 30).await, KeyClaim::Claimed);
        // Purged altogether (no row): the same.
        assert_eq!(claim(&db, "k", "f3", "sbx_c", 40).await, KeyClaim::Claimed);
        // Expired: forgotten.
        sandbox_row(&db, "sbx_c", "alice", "running", 0).await;
        assert_eq!(
            claim(&db, "k", "f4", "sbx_d", 40 + 1_000).await,
            KeyClaim::Claimed
        );
    }

    #[tokio::test]
    async fn retention_removes_expired_keys_deleted_rows_and_old_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        sandbox_row(&db, "sbx_live", "alice", "running", 0).await;
        sandbox_row(&db, "sbx_old", "alice", "deleted", 100).await;
        sandbox_row(&db, "sbx_recent", "alice", "deleted", 5_000).await;
        events(&db, "sbx_live", 5).await;
        events(&db, "sbx_old", 2).await;
        events(&db, "sbx_recent", 4).await;
        events(&db, "sbx_unknown", 2).await;
        for (key, id, created_ms) in [("fresh", "sbx_live", 9_000), ("stale", "sbx_live", 10)] {
            let mut conn = db.acquire().await.unwrap();
            claim_idempotency_key(&mut conn, "alice", key, "f", id, created_ms, 1_000_000)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO sandbox_idempotency (owner, key, fingerprint, sandbox_id, created_ms) VALUES ('alice', 'gone', 'f', 'sbx_recent', 9000)")
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM sandboxes WHERE owner = 'alice'").await,
            3
        );
        let mut conn = db.acquire().await.unwrap();
        assert_eq!(count_held(&mut conn, "alice").await.unwrap(), 1);
        drop(conn);

        // Keys: the stale one and the one of a deleted sandbox.
        assert_eq!(purge_idempotency_keys(&db, 1_000).await.unwrap(), 2);
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM sandbox_idempotency WHERE key = 'fresh'"
            )
            .await,
            1
        );
        // Deleted rows: only the one deleted before the cut, with its events.
        assert_eq!(purge_deleted_sandboxes(&db, 1_000).await.unwrap(), 1);
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM sandbox_events WHERE sandbox_id = 'sbx_old'"
            )
            .await,
            0
        );
        // Events: the newest 3 of each sandbox, none of unknown ids.
        let (removed, newest) = trim_events(&db, 0, 3).await.unwrap();
        assert_eq!(removed, 2 + 1 + 2);
        let kept: Vec<(String, i64)> =
            sqlx::query("SELECT sandbox_id, seq FROM sandbox_events ORDER BY seq")
                .fetch_all(&db)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
        let of = |id: &str| kept.iter().filter(|(s, _)| s == id).count();
        assert_eq!(
            (of("sbx_live"), of("sbx_recent"), of("sbx_unknown")),
            (3, 3, 0)
        );
        assert_eq!(
            kept.last().unwrap().1,
            newest - 2,
            "the unknown id's events were last"
        );
        // A pass with nothing new looks at nothing.
        assert_eq!(trim_events(&db, newest, 3).await.unwrap(), (0, newest));
        events(&db, "sbx_live", 1).await;
        let (removed, _) = trim_events(&db, newest, 3).await.unwrap();
        assert_eq!(removed, 1, "the oldest of sbx_live's four");
    }
}

/// A sandbox as the GC sweep looks at it: lifetimes as recorded at create (for a profile
/// that has since gone) and what it needs to decide.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SweepRow {
    pub id: String,
    pub profile: String,
    pub driver: String,
    pub status: String,
    pub created_ms: i64,
    pub last_active_ms: i64,
    pub restarts: i64,
    pub idle_timeout_secs: Option<i64>,
    pub max_ttl_secs: Option<i64>,
    pub restart_once: Option<bool>,
}

const SWEEP_COLUMNS: &str = "id, profile, driver, status, created_ms, last_active_ms, restarts, \
                             idle_timeout_secs, max_ttl_secs, restart_once";

/// Ids and drivers of rows whose create never finished (the server died mid-create).
pub async fn interrupted_creates(db: &Db) -> WharfResult<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT id, driver FROM sandboxes WHERE status = 'creating'")
            .fetch_all(db)
            .await?,
    )
}

/// Ids of every sandbox not deleted.
pub async fn live_ids(db: &Db) -> WharfResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE status <> 'deleted'")
            .fetch_all(db)
            .await?,
    )
}

/// The status of one sandbox, if it has a row.
pub async fn status_of(db: &Db, id: &str) -> WharfResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT status FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Ids of the running and stopped sandboxes: what a sweep looks at.
pub async fn sweep_candidates(db: &Db) -> WharfResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE status IN ('running', 'stopped')")
            .fetch_all(db)
            .await?,
    )
}

/// One sweep candidate, re-read (under its lock): none once it is no longer running or
/// stopped.
pub async fn sweep_row(db: &Db, id: &str) -> WharfResult<Option<SweepRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {SWEEP_COLUMNS} FROM sandboxes WHERE id = ? AND status IN ('running', 'stopped')"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

pub async fn count_restart(db: &Db, id: &str) -> WharfResult<()> {
    sqlx::query("UPDATE sandboxes SET restarts = restarts + 1 WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Sandboxes per status (statuses without any are absent).
pub async fn count_by_status(db: &Db) -> WharfResult<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT status, COUNT(*) AS n FROM sandboxes GROUP BY status")
            .fetch_all(db)
            .await?,
    )
}

/// A sandbox row as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SandboxRow {
    pub id: String,
    pub owner: String,
    pub profile: String,
    pub driver: String,
    pub status: String,
    pub error_code: Option<String>,
    pub restarts: i64,
    pub created_at: String,
    pub updated_at: String,
    pub created_ms: i64,
}

const SANDBOX_COLUMNS: &str =
    "id, owner, profile, driver, status, error_code, restarts, created_at, updated_at, created_ms";

/// A sandbox being created, with the lifetimes of its profile at create.
pub struct NewSandbox<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub profile: &'a str,
    pub driver: &'a str,
    pub stamp: &'a str,
    pub now_ms: i64,
    pub idle_timeout_secs: i64,
    pub max_ttl_secs: i64,
    pub restart_once: bool,
}

pub async fn insert_creating(conn: &mut SqliteConnection, new: NewSandbox<'_>) -> WharfResult<()> {
    sqlx::query(
        "INSERT INTO sandboxes (id, owner, profile, driver, status, created_at, updated_at, \
         created_ms, last_active_ms, idle_timeout_secs, max_ttl_secs, restart_once) \
         VALUES (?, ?, ?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(new.id)
    .bind(new.owner)
    .bind(new.profile)
    .bind(new.driver)
    .bind(new.stamp)
    .bind(new.stamp)
    .bind(new.now_ms)
    .bind(new.now_ms)
    .bind(new.idle_timeout_secs)
    .bind(new.max_ttl_secs)
    .bind(new.restart_once)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_status(
    conn: &mut SqliteConnection,
    id: &str,
    status: &str,
    error_code: Option<&str>,
    stamp: &str,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "UPDATE sandboxes SET status = ?, error_code = ?, updated_at = ?, last_active_ms = ? \
         WHERE id = ?",
    )
    .bind(status)
    .bind(error_code)
    .bind(stamp)
    .bind(now_ms)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends to a sandbox's event log; answers the event's sequence number.
pub async fn append_event(
    conn: &mut SqliteConnection,
    sandbox_id: &str,
    ts: &str,
    kind: &str,
    detail: &str,
) -> WharfResult<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO sandbox_events (sandbox_id, ts, kind, detail) VALUES (?, ?, ?, ?) \
         RETURNING seq",
    )
    .bind(sandbox_id)
    .bind(ts)
    .bind(kind)
    .bind(detail)
    .fetch_one(conn)
    .await?)
}

pub async fn touch(db: &Db, id: &str, now_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE sandboxes SET last_active_ms = ? WHERE id = ?")
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The owner's sandbox, unless deleted.
pub async fn get_live(db: &Db, owner: &str, id: &str) -> WharfResult<Option<SandboxRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ? AND owner = ? AND status <> 'deleted'"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await?)
}

/// One page of the owner's live sandboxes, oldest first, after the `(created_ms, id)` of the
/// last row of the previous page; `limit` rows at most.
pub async fn list_page(
    db: &Db,
    owner: &str,
    after: Option<(i64, &str)>,
    status: Option<&str>,
    profile: Option<&str>,
    limit: i64,
) -> WharfResult<Vec<SandboxRow>> {
    let (after_ms, after_id) = after.unwrap_or((i64::MIN, ""));
    Ok(sqlx::query_as(&format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE owner = ? AND status <> 'deleted' \
         AND (created_ms > ? OR (created_ms = ? AND id > ?)) \
         AND (? IS NULL OR status = ?) AND (? IS NULL OR profile = ?) \
         ORDER BY created_ms, id LIMIT ?"
    ))
    .bind(owner)
    .bind(after_ms)
    .bind(after_ms)
    .bind(after_id)
    .bind(status)
    .bind(status)
    .bind(profile)
    .bind(profile)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Whether the sandbox is the owner's (deleted ones included).
pub async fn is_owned(db: &Db, owner: &str, id: &str) -> WharfResult<bool> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT 1 FROM sandboxes WHERE id = ? AND owner = ?")
            .bind(id)
            .bind(owner)
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub sandbox_id: String,
    pub ts: String,
    pub kind: String,
    pub detail: String,
}

pub async fn events_after(db: &Db, id: &str, after: i64, limit: i64) -> WharfResult<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, sandbox_id, ts, kind, detail FROM sandbox_events \
         WHERE sandbox_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
