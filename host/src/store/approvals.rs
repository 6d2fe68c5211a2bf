//! Approvals: capability calls waiting for, or decided by, an approver.
//!
//! Every change of status is one conditional `UPDATE ... WHERE status = <from>`: of two
//! concurrent deciders (or runners), exactly one sees a row affected.

use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

/// One stored approval.
#[derive(Debug, Clone)]
pub struct ApprovalRow {
    pub id: String,
    pub owner: String,
    pub requested_by: String,
    pub sandbox_id: String,
    pub capability: String,
    pub operation: String,
    pub input: String,
    pub input_sha256: String,
    pub status: String,
    pub created_at: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> ApprovalRow {
    ApprovalRow {
        id: row.get("id"),
        owner: row.get("owner"),
        requested_by: row.get("requested_by"),
        sandbox_id: row.get("sandbox_id"),
        capability: row.get("capability"),
        operation: row.get("operation"),
        input: row.get("input"),
        input_sha256: row.get("input_sha256"),
        status: row.get("status"),
        created_at: row.get("created_at"),
        created_ms: row.get("created_ms"),
        expires_ms: row.get("expires_ms"),
        decided_by: row.get("decided_by"),
        decided_at: row.get("decided_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        result: row.get("result"),
        error_code: row.get("error_code"),
        error_message: row.get("error_message"),
    }
}

/// Inserts a pending approval unless the owner already holds `max_pending` pending ones
/// (then false). One statement: no read-then-write transaction to lose under concurrency.
pub async fn insert_pending(db: &Db, row: &ApprovalRow, max_pending: u32) -> WharfResult<bool> {
    let done = sqlx::query(
        "INSERT INTO approvals (id, owner, requested_by, sandbox_id, capability, operation, input, input_sha256, status, created_at, created_ms, expires_ms) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ? \
         WHERE (SELECT COUNT(*) FROM approvals WHERE owner = ? AND status = 'pending') < ?",
    )
    .bind(&row.id)
    .bind(&row.owner)
    .bind(&row.requested_by)
    .bind(&row.sandbox_id)
    .bind(&row.capability)
    .bind(&row.operation)
    .bind(&row.input)
    .bind(&row.input_sha256)
    .bind(&row.created_at)
    .bind(row.created_ms)
    .bind(row.expires_ms)
    .bind(&row.owner)
    .bind(i64::from(max_pending))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: &Db, id: &str) -> WharfResult<Option<ApprovalRow>> {
    let row = sqlx::query("SELECT * FROM approvals WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Who is listing: every owner (admin), one owner (approver), or one key's requests.
pub enum ListScope<'a> {
    All,
    Owner(&'a str),
    Requester { owner: &'a str, key_id: &'a str },
}

/// Newest first; `before` is the `(created_ms, id)` of the last row of the previous page.
pub async fn list(
    db: &Db,
    scope: ListScope<'_>,
    status: Option<&str>,
    before: Option<(i64, &str)>,
    limit: usize,
) -> WharfResult<Vec<ApprovalRow>> {
    let (owner, key_id) = match scope {
        ListScope::All => (None, None),
        ListScope::Owner(owner) => (Some(owner), None),
        ListScope::Requester { owner, key_id } => (Some(owner), Some(key_id)),
    };
    let (before_ms, before_id) = match before {
        Some((ms, id)) => (Some(ms), Some(id)),
        None => (None, None),
    };
    let rows = sqlx::query(
        "SELECT * FROM approvals WHERE (? IS NULL OR owner = ?) AND (? IS NULL OR requested_by = ?) \
         AND (? IS NULL OR status = ?) \
         AND (? IS NULL OR created_ms < ? OR (created_ms = ? AND id < ?)) \
         ORDER BY created_ms DESC, id DESC LIMIT ?",
    )
    .bind(owner)
    .bind(owner)
    .bind(key_id)
    .bind(key_id)
    .bind(status)
    .bind(status)
    .bind(before_ms)
    .bind(before_ms)
    .bind(before_ms)
    .bind(before_id)
    .bind(limit as i64)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// `pending` -> `approved` | `declined`, if still pending and not expired at `now_ms`.
pub async fn decide(
    db: &Db,
    id: &str,
    to: &str,
    by: &str,
    at: &str,
    now_ms: i64,
) -> WharfResult<bool> {
    let finished_ms = (to == "declined").then_some(now_ms);
    let finished_at = (to == "declined").then_some(at);
    let done = sqlx::query(
        "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, finished_at = ?, finished_ms = ? \
         WHERE id = ? AND status = 'pending' AND expires_ms > ?",
    )
    .bind(to)
    .bind(by)
    .bind(at)
    .bind(finished_at)
    .bind(finished_ms)
    .bind(id)
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `approved` -> `running`: true for the one caller that may run it.
pub async fn claim_run(db: &Db, id: &str, at: &str) -> WharfResult<bool> {
    let done = sqlx::query(
        "UPDATE approvals SET status = 'running', started_at = ? WHERE id = ? AND status = 'approved'",
    )
    .bind(at)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a run ended.
pub struct Finished<'a> {
    pub status: &'a str,
    pub at: &'a str,
    pub ms: i64,
    pub result: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

/// `running` -> `succeeded` | `failed`.
pub async fn finish(db: &Db, id: &str, end: Finished<'_>) -> WharfResult<()> {
    sqlx::query(
        "UPDATE approvals SET status = ?, finished_at = ?, finished_ms = ?, result = ?, error_code = ?, error_message = ? \
         WHERE id = ? AND status = 'running'",
    )
    .bind(end.status)
    .bind(end.at)
    .bind(end.ms)
    .bind(end.result)
    .bind(end.error_code)
    .bind(end.error_message)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Pending approvals past their deadline become `expired`; returns how many.
pub async fn expire_due(db: &Db, at: &str, now_ms: i64) -> WharfResult<u64> {
    let done = sqlx::query(
        "UPDATE approvals SET status = 'expired', finished_at = ?, finished_ms = ?, error_code = 'approval_expired' \
         WHERE status = 'pending' AND expires_ms <= ?",
    )
    .bind(at)
    .bind(now_ms)
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// At start-up: runs cut off by a stop are `failed`, never run again (the call may have
/// had effects already); returns how many.
pub async fn fail_interrupted(db: &Db, at: &str, now_ms: i64, message: &str) -> WharfResult<u64> {
    let done = sqlx::query(
        "UPDATE approvals SET status = 'failed', finished_at = ?, finished_ms = ?, error_code = 'internal_error', error_message = ? \
         WHERE status = 'running'",
    )
    .bind(at)
    .bind(now_ms)
    .bind(message)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Approved calls not yet started (the server stopped between the decision and the run).
pub async fn approved_ids(db: &Db) -> WharfResult<Vec<String>> {
    let rows =
        sqlx::query("SELECT id FROM approvals WHERE status = 'approved' ORDER BY created_ms")
            .fetch_all(db)
            .await?;
    Ok(rows.iter().map(|row| row.get("id")).collect())
}

/// Deletes finished approvals (declined, expired, succeeded, failed) older than `cutoff_ms`.
pub async fn purge_finished(db: &Db, cutoff_ms: i64) -> WharfResult<u64> {
    let done = sqlx::query(
        "DELETE FROM approvals WHERE finished_ms IS NOT NULL AND finished_ms < ? \
         AND status IN ('declined', 'expired', 'succeeded', 'failed')",
    )
    .bind(cutoff_ms)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, owner: &str, created_ms: i64, expires_ms: i64) -> ApprovalRow {
        ApprovalRow {
            id: id.into(),
            owner: owner.into(),
            requested_by: "key_a".into(),
            sandbox_id: "sbx_1".into(),
            capability: "shell".into(),
            operation: "run".into(),
            input: "{}".into(),
            input_sha256: String::new(),
            status: "pending".into(),
            created_at: String::new(),
            created_ms,
            expires_ms,
            decided_by: None,
            decided_at: None,
            started_at: None,
            finished_at: None,
            result: None,
            error_code: None,
            error_message: None,
        }
    }

    #[tokio::test]
    async fn one_decision_one_run_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        assert!(
            insert_pending(&db, &pending("a1", "alice", 1, 10_000), 2)
                .await
                .unwrap()
        );
        assert!(
            insert_pending(&db, &pending("a2", "alice", 2, 10_000), 2)
                .await
                .unwrap()
        );
        assert!(
            !insert_pending(&db, &pending("a3", "alice", 3, 10_000), 2)
                .await
                .unwrap(),
            "past the pending cap"
        );
        // Two deciders race: exactly one wins.
        let (first, second) = tokio::join!(
            decide(&db, "a1", "approved", "key_x", "t", 5),
            decide(&db, "a1", "declined", "key_y", "t", 5)
        );
        assert!(first.unwrap() ^ second.unwrap());
        // Two runners race: exactly one claims it (when it was approved).
        if get(&db, "a1").await.unwrap().unwrap().status == "approved" {
            let (r1, r2) = tokio::join!(claim_run(&db, "a1", "t"), claim_run(&db, "a1", "t"));
            assert!(r1.unwrap() ^ r2.unwrap());
            assert_eq!(fail_interrupted(&db, "t", 6, "stopped").await.unwrap(), 1);
            assert!(!claim_run(&db, "a1", "t").await.unwrap(), "never run again");
        }
        // Past its deadline a pending approval cannot be decided, and expires.
        assert!(
            !decide(&db, "a2", "approved", "key_x", "t", 10_000)
                .await
                .unwrap()
        );
        assert_eq!(expire_due(&db, "t", 10_000).await.unwrap(), 1);
        assert_eq!(get(&db, "a2").await.unwrap().unwrap().status, "expired");
        let mine = list(&db, ListScope::Owner("alice"), None, None, 10)
            .await
            .unwrap();
        assert_eq!(mine.len(), 2);
        assert!(
            list(&db, ListScope::Owner("bob"), None, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(purge_finished(&db, 20_000).await.unwrap(), 2);
    }
}
