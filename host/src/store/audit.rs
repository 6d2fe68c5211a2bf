//! The audit log: one row per capability call (and per direct exec), with bounded retention.

use serde::Serialize;
use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

/// One audited call.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Increasing; pages go from newest to oldest (`cursor` = the last `seq` seen).
    pub seq: i64,
    pub ts: String,
    pub owner: String,
    /// The API key that made the call (for an approved call, the key that asked).
    pub key_id: String,
    pub sandbox_id: String,
    /// The capability as called, version spec included (`shell`, `shell@0.1`), or
    /// `sandbox.exec` for a direct exec.
    pub capability: String,
    pub operation: String,
    /// `ok`, `pending_approval`, or the error code the call ended with.
    pub outcome: String,
    pub duration_ms: f64,
    /// The pack that served the call, when routing found one.
    pub pack: Option<String>,
    pub pack_version: Option<String>,
    /// The approval this call waits for or ran under.
    pub approval_id: Option<String>,
}

/// A record before it is stored (its `seq` comes from the store).
pub struct NewAuditRecord<'a> {
    pub ts: &'a str,
    pub ts_ms: i64,
    pub owner: &'a str,
    pub key_id: &'a str,
    pub sandbox_id: &'a str,
    pub capability: &'a str,
    pub operation: &'a str,
    pub outcome: &'a str,
    pub duration_ms: f64,
    pub pack: Option<&'a str>,
    pub pack_version: Option<&'a str>,
    pub approval_id: Option<&'a str>,
}

pub async fn insert(db: &Db, record: NewAuditRecord<'_>) -> WharfResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (ts, ts_ms, owner, key_id, sandbox_id, capability, operation, outcome, duration_ms, pack, pack_version, approval_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(record.ts)
    .bind(record.ts_ms)
    .bind(record.owner)
    .bind(record.key_id)
    .bind(record.sandbox_id)
    .bind(record.capability)
    .bind(record.operation)
    .bind(record.outcome)
    .bind(record.duration_ms)
    .bind(record.pack)
    .bind(record.pack_version)
    .bind(record.approval_id)
    .execute(db)
    .await?;
    Ok(())
}

/// What to read. `owner: None` reads every owner (admin keys only).
#[derive(Default)]
pub struct AuditFilter<'a> {
    pub owner: Option<&'a str>,
    pub capability: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub sandbox_id: Option<&'a str>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only rows with a smaller `seq`.
    pub before_seq: Option<i64>,
    pub limit: usize,
}

pub async fn query(db: &Db, filter: AuditFilter<'_>) -> WharfResult<Vec<AuditRecord>> {
    let rows = sqlx::query(
        "SELECT * FROM audit_log WHERE (? IS NULL OR owner = ?) AND (? IS NULL OR capability = ?) \
         AND (? IS NULL OR operation = ?) AND (? IS NULL OR outcome = ?) AND (? IS NULL OR sandbox_id = ?) \
         AND (? IS NULL OR ts_ms >= ?) AND (? IS NULL OR ts_ms < ?) AND (? IS NULL OR seq < ?) \
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(filter.owner)
    .bind(filter.owner)
    .bind(filter.capability)
    .bind(filter.capability)
    .bind(filter.operation)
    .bind(filter.operation)
    .bind(filter.outcome)
    .bind(filter.outcome)
    .bind(filter.sandbox_id)
    .bind(filter.sandbox_id)
    .bind(filter.since_ms)
    .bind(filter.since_ms)
    .bind(filter.until_ms)
    .bind(filter.until_ms)
    .bind(filter.before_seq)
    .bind(filter.before_seq)
    .bind(filter.limit as i64)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|row| AuditRecord {
            seq: row.get("seq"),
            ts: row.get("ts"),
            owner: row.get("owner"),
            key_id: row.get("key_id"),
            sandbox_id: row.get("sandbox_id"),
            capability: row.get("capability"),
            operation: row.get("operation"),
            outcome: row.get("outcome"),
            duration_ms: row.get("duration_ms"),
            pack: row.get("pack"),
            pack_version: row.get("pack_version"),
            approval_id: row.get("approval_id"),
        })
        .collect())
}

/// Deletes rows older than `cutoff_ms`, then all but the newest `max_rows`; returns how many.
pub async fn purge(db: &Db, cutoff_ms: i64, max_rows: u64) -> WharfResult<u64> {
    let old = sqlx::query("DELETE FROM audit_log WHERE ts_ms < ?")
        .bind(cutoff_ms)
        .execute(db)
        .await?
        .rows_affected();
    let excess = sqlx::query(
        "DELETE FROM audit_log WHERE seq <= (SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1 OFFSET ?)",
    )
    .bind(max_rows.min(i64::MAX as u64) as i64)
    .execute(db)
    .await?
    .rows_affected();
    Ok(old + excess)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(owner: &str, ts_ms: i64) -> NewAuditRecord<'_> {
        NewAuditRecord {
            ts: "t",
            ts_ms,
            owner,
            key_id: "key_a",
            sandbox_id: "sbx_1",
            capability: "shell",
            operation: "run",
            outcome: "ok",
            duration_ms: 1.0,
            pack: Some("core-adapters"),
            pack_version: Some("0.1.0"),
            approval_id: None,
        }
    }

    #[tokio::test]
    async fn owner_filter_cursor_and_bounded_retention() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        for ts in 0..5 {
            insert(&db, row("alice", ts)).await.unwrap();
        }
        insert(&db, row("bob", 10)).await.unwrap();
        let alice = |before_seq, limit| AuditFilter {
            owner: Some("alice"),
            before_seq,
            limit,
            ..AuditFilter::default()
        };
        let page = query(&db, alice(None, 3)).await.unwrap();
        assert_eq!(page.len(), 3);
        assert!(page.iter().all(|r| r.owner == "alice"));
        let rest = query(&db, alice(Some(page[2].seq), 10)).await.unwrap();
        assert_eq!(rest.len(), 2);
        // Older than ts 2 go, then all but the newest 2 rows.
        assert_eq!(purge(&db, 2, 2).await.unwrap(), 4);
        let all = query(
            &db,
            AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
        // Newest first: bob's row (ts 10), then alice's newest (ts 4).
        let owners: Vec<&str> = all.iter().map(|r| r.owner.as_str()).collect();
        assert_eq!(owners, ["bob", "alice"]);
        assert_eq!(all[0].seq - all[1].seq, 1);
    }
}
