//! Probe targets and probe history. Owner-scoped: another owner's target is `not_found`.
//! The API key is only ever stored sealed (see [`crate::probes::crypto`]).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::probes::runner::ProbeResult;
use crate::store::Db;

/// `POST /v1/targets`.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTarget {
    pub provider: String,
    /// The relay or upstream API root, e.g. `http://relay:3000` or `https://api.moonshot.cn/v1`.
    pub base_url: String,
    /// Stored sealed; shown only as a fingerprint.
    pub api_key: String,
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// The upstream itself, to tell a relay's incompatibility from an upstream problem.
    pub direct_base_url: Option<String>,
    /// Seconds between probes; default 60.
    pub interval_secs: Option<u64>,
}

/// A registered target, as shown to its owner.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Target {
    pub id: String,
    pub provider: String,
    pub base_url: String,
    pub direct_base_url: Option<String>,
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// First 4 characters of the key and a sha256 prefix.
    pub key_fingerprint: String,
    pub interval_secs: u64,
    pub created_at: String,
    /// The target's state: the latest verdict, except that a `ready` target turns to a failure
    /// only after `[probes] failure_threshold` non-ready results in a row. Null before the first
    /// probe.
    pub verdict: Option<String>,
    /// When the verdict started to hold.
    pub verdict_since: Option<String>,
    pub last_probed_at: Option<String>,
    /// Non-ready results in a row (0 after a `ready` one).
    pub consecutive_failures: u32,
}

/// A target due for probing, with its sealed key.
pub struct DueTarget {
    pub id: String,
    pub owner: String,
    pub provider: String,
    pub base_url: String,
    pub direct_base_url: Option<String>,
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub key_sealed: Vec<u8>,
    pub interval_secs: u64,
    /// The API key that created the target (null for targets from before this was kept).
    pub created_by_key: Option<String>,
}

const TARGET_COLUMNS: &str = "id, provider, base_url, direct_base_url, model, stream, key_fingerprint, interval_secs, created_at, verdict, verdict_since, last_probed_at, consecutive_failures";

fn target_from_row(row: &sqlx::sqlite::SqliteRow) -> Target {
    Target {
        id: row.get("id"),
        provider: row.get("provider"),
        base_url: row.get("base_url"),
        direct_base_url: row.get("direct_base_url"),
        model: row.get("model"),
        stream: row.get::<Option<i64>, _>("stream").map(|s| s != 0),
        key_fingerprint: row.get("key_fingerprint"),
        interval_secs: row.get::<i64, _>("interval_secs") as u64,
        created_at: row.get("created_at"),
        verdict: row.get("verdict"),
        verdict_since: row.get("verdict_since"),
        last_probed_at: row.get("last_probed_at"),
        consecutive_failures: row.get::<i64, _>("consecutive_failures") as u32,
    }
}

pub struct NewTarget<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub created_by_key: &'a str,
    pub spec: &'a CreateTarget,
    pub key_sealed: &'a [u8],
    pub key_fingerprint: &'a str,
    pub interval_secs: u64,
    pub created_at: &'a str,
    pub first_due_at: f64,
}

/// Stores a new target. With a `quota`, an owner who would then hold more
/// targets gets `quota_exceeded` and nothing is stored: the count is taken
/// after the insert, inside the write transaction, so concurrent creates
/// cannot both take the last slot.
pub async fn insert(db: &Db, new: NewTarget<'_>, quota: Option<u32>) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO probe_targets (id, owner, created_by_key, provider, base_url, direct_base_url, model, stream, key_sealed, key_fingerprint, interval_secs, created_at, next_due_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(new.id)
    .bind(new.owner)
    .bind(new.created_by_key)
    .bind(&new.spec.provider)
    .bind(&new.spec.base_url)
    .bind(&new.spec.direct_base_url)
    .bind(&new.spec.model)
    .bind(new.spec.stream.map(i64::from))
    .bind(new.key_sealed)
    .bind(new.key_fingerprint)
    .bind(new.interval_secs as i64)
    .bind(new.created_at)
    .bind(new.first_due_at)
    .execute(&mut *tx)
    .await?;
    if let Some(quota) = quota {
        let held: i64 = sqlx::query("SELECT COUNT(*) AS n FROM probe_targets WHERE owner = ?")
            .bind(new.owner)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
        if held > i64::from(quota) {
            tx.rollback().await?;
            return Err(WharfError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this owner already has {} probe targets, the most its quota allows; delete one to add another",
                    held - 1
                ),
            ));
        }
    }
    tx.commit().await?;
    Ok(())
}

pub async fn list(db: &Db, owner: &str) -> WharfResult<Vec<Target>> {
    let rows = sqlx::query(&format!(
        "SELECT {TARGET_COLUMNS} FROM probe_targets WHERE owner = ? ORDER BY created_at, id"
    ))
    .bind(owner)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(target_from_row).collect())
}

pub async fn get(db: &Db, owner: &str, id: &str) -> WharfResult<Target> {
    let row = sqlx::query(&format!(
        "SELECT {TARGET_COLUMNS} FROM probe_targets WHERE owner = ? AND id = ?"
    ))
    .bind(owner)
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.as_ref()
        .map(target_from_row)
        .ok_or_else(|| WharfError::not_found(format!("target {id}")))
}

pub async fn delete(db: &Db, owner: &str, id: &str) -> WharfResult<()> {
    let done = sqlx::query("DELETE FROM probe_targets WHERE owner = ? AND id = ?")
        .bind(owner)
        .bind(id)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(WharfError::not_found(format!("target {id}")));
    }
    Ok(())
}

/// Targets whose time has come, soonest first.
pub async fn due(db: &Db, now: f64, limit: usize) -> WharfResult<Vec<DueTarget>> {
    let rows = sqlx::query(
        "SELECT id, owner, provider, base_url, direct_base_url, model, stream, key_sealed, interval_secs, created_by_key
         FROM probe_targets WHERE next_due_at <= ? ORDER BY next_due_at LIMIT ?",
    )
    .bind(now)
    .bind(limit as i64)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|row| DueTarget {
            id: row.get("id"),
            owner: row.get("owner"),
            provider: row.get("provider"),
            base_url: row.get("base_url"),
            direct_base_url: row.get("direct_base_url"),
            model: row.get("model"),
            stream: row.get::<Option<i64>, _>("stream").map(|s| s != 0),
            key_sealed: row.get("key_sealed"),
            interval_secs: row.get::<i64, _>("interval_secs") as u64,
            created_by_key: row.get("created_by_key"),
        })
        .collect())
}

pub async fn set_next_due(db: &Db, id: &str, at: f64) -> WharfResult<()> {
    sqlx::query("UPDATE probe_targets SET next_due_at = ? WHERE id = ?")
        .bind(at)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a result and trims the history to `keep` rows (per target, or per owner for
/// one-off probes). For a target, also moves its state by `next_state` (current state,
/// result, failures in a row, `failure_threshold`); `verdict_since` only changes when the
/// state does. Answers the
/// target's state afterwards (`None` for a one-off probe, or a target deleted meanwhile).
pub async fn record(
    db: &Db,
    owner: &str,
    result: &ProbeResult,
    keep: u32,
    failure_threshold: u32,
    next_state: impl Fn(Option<&str>, &str, u32, u32) -> String,
) -> WharfResult<Option<String>> {
    let json = serde_json::to_string(result)
        .map_err(|err| WharfError::internal(format!("encoding a probe result: {err}")))?;
    let mut tx = db.begin().await?;
    let inserted = sqlx::query("INSERT INTO probe_results (id, owner, target_id, started_at, verdict, result) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&result.id)
        .bind(owner)
        .bind(&result.target_id)
        .bind(&result.started_at)
        .bind(&result.verdict)
        .bind(&json)
        .execute(&mut *tx)
        .await;
    if let Err(err) = inserted {
        // The target was deleted while its probe ran: nothing to keep.
        if result.target_id.is_some()
            && matches!(&err, sqlx::Error::Database(e) if e.is_foreign_key_violation())
        {
            return Ok(None);
        }
        return Err(err.into());
    }
    let mut state = None;
    match &result.target_id {
        Some(target) => {
            sqlx::query(
                "DELETE FROM probe_results WHERE target_id = ?1 AND id NOT IN
                 (SELECT id FROM probe_results WHERE target_id = ?1
                  ORDER BY started_at DESC, id DESC LIMIT ?2)",
            )
            .bind(target)
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?;
            // The insert above holds the write lock, so this read cannot go stale.
            let row =
                sqlx::query("SELECT verdict, consecutive_failures FROM probe_targets WHERE id = ?")
                    .bind(target)
                    .fetch_one(&mut *tx)
                    .await?;
            let current: Option<String> = row.get("verdict");
            let failures = if result.ready() {
                0
            } else {
                row.get::<i64, _>("consecutive_failures") as u32 + 1
            };
            let next = next_state(
                current.as_deref(),
                &result.verdict,
                failures,
                failure_threshold.max(1),
            );
            let now = crate::store::now_rfc3339();
            sqlx::query(
                "UPDATE probe_targets SET
                   verdict_since = CASE WHEN verdict IS ?1 THEN verdict_since ELSE ?2 END,
                   verdict = ?1, last_probed_at = ?2, consecutive_failures = ?3
                 WHERE id = ?4",
            )
            .bind(&next)
            .bind(&now)
            .bind(i64::from(failures))
            .bind(target)
            .execute(&mut *tx)
            .await?;
            state = Some(next);
        }
        None => {
            sqlx::query(
                "DELETE FROM probe_results WHERE owner = ?1 AND target_id IS NULL AND id NOT IN
                 (SELECT id FROM probe_results WHERE owner = ?1 AND target_id IS NULL
                  ORDER BY started_at DESC, id DESC LIMIT ?2)",
            )
            .bind(owner)
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(state)
}

/// The last `limit` results of a target, newest first.
pub async fn recent(db: &Db, target: &str, limit: u32) -> WharfResult<Vec<ProbeResult>> {
    let rows = sqlx::query(
        "SELECT result FROM probe_results WHERE target_id = ? ORDER BY started_at DESC, id DESC LIMIT ?",
    )
    .bind(target)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await?;
    rows.iter().map(|row| decode(row.get("result"))).collect()
}

/// One stored result of the owner's (one-off or scheduled).
pub async fn result(db: &Db, owner: &str, id: &str) -> WharfResult<ProbeResult> {
    let row = sqlx::query("SELECT result FROM probe_results WHERE owner = ? AND id = ?")
        .bind(owner)
        .bind(id)
        .fetch_optional(db)
        .await?;
    decode(
        row.ok_or_else(|| WharfError::not_found(format!("probe {id}")))?
            .get("result"),
    )
}

fn decode(text: String) -> WharfResult<ProbeResult> {
    serde_json::from_str(&text)
        .map_err(|err| WharfError::internal(format!("a stored probe result is unreadable: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn add(db: &Db, owner: &str, id: &str, quota: Option<u32>) -> WharfResult<()> {
        let spec = CreateTarget {
            provider: "kimi".into(),
            base_url: "http://relay.invalid/v1".into(),
            api_key: "sk-test".into(),
            model: None,
            stream: None,
            direct_base_url: None,
            interval_secs: None,
        };
        let new = NewTarget {
            id,
            owner,
            created_by_key: "key_test",
            spec: &spec,
            key_sealed: b"sealed",
            key_fingerprint: "sk-t",
            interval_secs: 60,
            created_at: "2026-01-01T00:00:00Z",
            first_due_at: 0.0,
        };
        insert(db, new, quota).await
    }

    #[tokio::test]
    async fn an_owner_past_its_target_quota_gets_quota_exceeded_until_one_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        add(&db, "alice", "tgt_1", Some(2)).await.unwrap();
        add(&db, "alice", "tgt_2", Some(2)).await.unwrap();
        let refused = add(&db, "alice", "tgt_3", Some(2)).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::QuotaExceeded, "{refused:?}");
        assert_eq!(list(&db, "alice").await.unwrap().len(), 2, "nothing stored");
        // Another owner, and an uncapped caller (an admin key), are not held.
        add(&db, "bob", "tgt_4", Some(2)).await.unwrap();
        add(&db, "alice", "tgt_5", None).await.unwrap();
        delete(&db, "alice", "tgt_5").await.unwrap();
        delete(&db, "alice", "tgt_1").await.unwrap();
        add(&db, "alice", "tgt_6", Some(2)).await.unwrap();
    }
}
