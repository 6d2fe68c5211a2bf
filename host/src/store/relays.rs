//! The relays repository: registered relay hosts, imports with one item per provider key, and
//! the resources each import ensured on a host (written ahead of the adapter's call, so a crash
//! leaves an intent to resume, never an unrecorded resource). An import's life (transitions,
//! lease, steps, log) is its run in `store::jobs`; these rows hold the rest.

use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

// ---------------------------------------------------------------------------------------------
// Hosts

#[derive(Debug, Clone)]
pub struct HostRow {
    pub id: String,
    pub owner: String,
    pub created_by_key: String,
    pub kind: String,
    pub base_url: String,
    pub token_sealed: Vec<u8>,
    pub token_fingerprint: String,
    pub version: String,
    pub gateway_base_url: String,
    pub created_ms: i64,
    pub reconcile_status: Option<String>,
    pub reconcile_report: Option<String>,
    pub reconciled_ms: Option<i64>,
    pub next_reconcile_ms: i64,
}

const HOST_COLUMNS: &str = "id, owner, created_by_key, kind, base_url, token_sealed, token_fingerprint, version, \
     gateway_base_url, created_ms, reconcile_status, reconcile_report, reconciled_ms, next_reconcile_ms";

fn host_row(row: &sqlx::sqlite::SqliteRow) -> HostRow {
    HostRow {
        id: row.get("id"),
        owner: row.get("owner"),
        created_by_key: row.get("created_by_key"),
        kind: row.get("kind"),
        base_url: row.get("base_url"),
        token_sealed: row.get("token_sealed"),
        token_fingerprint: row.get("token_fingerprint"),
        version: row.get("version"),
        gateway_base_url: row.get("gateway_base_url"),
        created_ms: row.get("created_ms"),
        reconcile_status: row.get("reconcile_status"),
        reconcile_report: row.get("reconcile_report"),
        reconciled_ms: row.get("reconciled_ms"),
        next_reconcile_ms: row.get("next_reconcile_ms"),
    }
}

pub async fn insert_host(db: &Db, host: &HostRow) -> WharfResult<()> {
    sqlx::query(&format!(
        "INSERT INTO relay_hosts ({HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&host.id)
    .bind(&host.owner)
    .bind(&host.created_by_key)
    .bind(&host.kind)
    .bind(&host.base_url)
    .bind(&host.token_sealed)
    .bind(&host.token_fingerprint)
    .bind(&host.version)
    .bind(&host.gateway_base_url)
    .bind(host.created_ms)
    .bind(&host.reconcile_status)
    .bind(&host.reconcile_report)
    .bind(host.reconciled_ms)
    .bind(host.next_reconcile_ms)
    .execute(db)
    .await?;
    Ok(())
}

/// A host, of `owner` when given.
pub async fn get_host(db: &Db, id: &str, owner: Option<&str>) -> WharfResult<Option<HostRow>> {
    let row = sqlx::query(&format!(
        "SELECT {HOST_COLUMNS} FROM relay_hosts WHERE id = ? AND (? IS NULL OR owner = ?)"
    ))
    .bind(id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(host_row))
}

pub async fn list_hosts(db: &Db, owner: &str) -> WharfResult<Vec<HostRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {HOST_COLUMNS} FROM relay_hosts WHERE owner = ? ORDER BY created_ms, id"
    ))
    .bind(owner)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(host_row).collect())
}

/// What still depends on a host: imports whose run is live, and resources recorded on it that
/// a rollback has not deleted (intents included).
pub async fn host_usage(db: &Db, host_id: &str) -> WharfResult<(i64, i64)> {
    let live_imports: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM relay_imports WHERE host_id = ? AND status = 'running'",
    )
    .bind(host_id)
    .fetch_one(db)
    .await?;
    let resources: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM relay_resources WHERE host_id = ? AND state IN ('intent', 'created', 'reused')",
    )
    .bind(host_id)
    .fetch_one(db)
    .await?;
    Ok((live_imports, resources))
}

/// Deletes a host of `owner` unless something still depends on it (checked in the same
/// transaction). `Ok(None)`: no such host; `Ok(Some(usage))` with a nonzero usage: refused.
pub async fn delete_host(db: &Db, id: &str, owner: &str) -> WharfResult<Option<(i64, i64)>> {
    let mut tx = db.begin().await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT id FROM relay_hosts WHERE id = ? AND owner = ?")
            .bind(id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let live_imports: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM relay_imports WHERE host_id = ? AND status = 'running'",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let resources: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM relay_resources WHERE host_id = ? AND state IN ('intent', 'created', 'reused')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if live_imports > 0 || resources > 0 {
        return Ok(Some((live_imports, resources)));
    }
    sqlx::query("DELETE FROM relay_hosts WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((0, 0)))
}

/// Hosts whose scheduled reconcile is due.
pub async fn due_hosts(db: &Db, now_ms: i64, limit: i64) -> WharfResult<Vec<HostRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {HOST_COLUMNS} FROM relay_hosts WHERE next_reconcile_ms <= ? \
         ORDER BY next_reconcile_ms, id LIMIT ?"
    ))
    .bind(now_ms)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(host_row).collect())
}

pub async fn set_reconcile(
    db: &Db,
    id: &str,
    status: &str,
    report: &str,
    at_ms: i64,
    next_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "UPDATE relay_hosts SET reconcile_status = ?, reconcile_report = ?, reconciled_ms = ?, \
         next_reconcile_ms = ? WHERE id = ?",
    )
    .bind(status)
    .bind(report)
    .bind(at_ms)
    .bind(next_ms)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_next_reconcile(db: &Db, id: &str, next_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE relay_hosts SET next_reconcile_ms = ? WHERE id = ?")
        .bind(next_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Imports and their items

#[derive(Debug, Clone)]
pub struct ImportRow {
    pub id: String,
    pub owner: String,
    pub host_id: String,
    pub provider: String,
    pub upstream_base_url: String,
    pub mode: String,
    pub models: String,
    pub family: String,
    pub status: String,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    pub rolled_back_ms: Option<i64>,
    pub rollback_report: Option<String>,
}

const IMPORT_COLUMNS: &str = "id, owner, host_id, provider, upstream_base_url, mode, models, family, \
     status, created_ms, ended_ms, rolled_back_ms, rollback_report";

fn import_row(row: &sqlx::sqlite::SqliteRow) -> ImportRow {
    ImportRow {
        id: row.get("id"),
        owner: row.get("owner"),
        host_id: row.get("host_id"),
        provider: row.get("provider"),
        upstream_base_url: row.get("upstream_base_url"),
        mode: row.get("mode"),
        models: row.get("models"),
        family: row.get("family"),
        status: row.get("status"),
        created_ms: row.get("created_ms"),
        ended_ms: row.get("ended_ms"),
        rolled_back_ms: row.get("rolled_back_ms"),
        rollback_report: row.get("rollback_report"),
    }
}

#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: String,
    pub import_id: String,
    pub owner: String,
    pub position: i64,
    pub name: String,
    pub key_fingerprint: String,
    pub key_sealed: Vec<u8>,
    pub phase: String,
    pub outcome: Option<String>,
    pub access_status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub evidence: String,
    pub repair: Option<String>,
    pub repaired: bool,
    pub attempts: i64,
    pub confirm_started_ms: Option<i64>,
    pub next_retry_ms: Option<i64>,
    pub lease_holder: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub updated_ms: i64,
}

const ITEM_COLUMNS: &str = "id, import_id, owner, position, name, key_fingerprint, key_sealed, phase, \
     outcome, access_status, error_code, error_message, evidence, repair, repaired, attempts, \
     confirm_started_ms, next_retry_ms, lease_holder, lease_expires_ms, updated_ms";

fn item_row(row: &sqlx::sqlite::SqliteRow) -> ItemRow {
    ItemRow {
        id: row.get("id"),
        import_id: row.get("import_id"),
        owner: row.get("owner"),
        position: row.get("position"),
        name: row.get("name"),
        key_fingerprint: row.get("key_fingerprint"),
        key_sealed: row.get("key_sealed"),
        phase: row.get("phase"),
        outcome: row.get("outcome"),
        access_status: row.get("access_status"),
        error_code: row.get("error_code"),
        error_message: row.get("error_message"),
        evidence: row.get("evidence"),
        repair: row.get("repair"),
        repaired: row.get::<i64, _>("repaired") != 0,
        attempts: row.get("attempts"),
        confirm_started_ms: row.get("confirm_started_ms"),
        next_retry_ms: row.get("next_retry_ms"),
        lease_holder: row.get("lease_holder"),
        lease_expires_ms: row.get("lease_expires_ms"),
        updated_ms: row.get("updated_ms"),
    }
}

/// Stores an import (status `running`) and its items (phase `pending`) in one transaction.
pub async fn insert_import(db: &Db, import: &ImportRow, items: &[ItemRow]) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO relay_imports ({IMPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&import.id)
    .bind(&import.owner)
    .bind(&import.host_id)
    .bind(&import.provider)
    .bind(&import.upstream_base_url)
    .bind(&import.mode)
    .bind(&import.models)
    .bind(&import.family)
    .bind(&import.status)
    .bind(import.created_ms)
    .bind(import.ended_ms)
    .bind(import.rolled_back_ms)
    .bind(&import.rollback_report)
    .execute(&mut *tx)
    .await?;
    for item in items {
        sqlx::query(&format!(
            "INSERT INTO relay_import_items ({ITEM_COLUMNS}) VALUES \
             (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&item.id)
        .bind(&item.import_id)
        .bind(&item.owner)
        .bind(item.position)
        .bind(&item.name)
        .bind(&item.key_fingerprint)
        .bind(&item.key_sealed)
        .bind(&item.phase)
        .bind(&item.outcome)
        .bind(&item.access_status)
        .bind(&item.error_code)
        .bind(&item.error_message)
        .bind(&item.evidence)
        .bind(&item.repair)
        .bind(i64::from(item.repaired))
        .bind(item.attempts)
        .bind(item.confirm_started_ms)
        .bind(item.next_retry_ms)
        .bind(&item.lease_holder)
        .bind(item.lease_expires_ms)
        .bind(item.updated_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// An import, of `owner` when given.
pub async fn get_import(db: &Db, id: &str, owner: Option<&str>) -> WharfResult<Option<ImportRow>> {
    let row = sqlx::query(&format!(
        "SELECT {IMPORT_COLUMNS} FROM relay_imports WHERE id = ? AND (? IS NULL OR owner = ?)"
    ))
    .bind(id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(import_row))
}

/// Imports of `owner`, newest first, optionally of one host.
pub async fn list_imports(
    db: &Db,
    owner: &str,
    host_id: Option<&str>,
    limit: i64,
) -> WharfResult<Vec<ImportRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {IMPORT_COLUMNS} FROM relay_imports WHERE owner = ? AND (? IS NULL OR host_id = ?) \
         ORDER BY created_ms DESC, id DESC LIMIT ?"
    ))
    .bind(owner)
    .bind(host_id)
    .bind(host_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(import_row).collect())
}

/// Ends a running import with its status; false when it had already ended.
pub async fn end_import(db: &Db, id: &str, status: &str, now_ms: i64) -> WharfResult<bool> {
    Ok(sqlx::query(
        "UPDATE relay_imports SET status = ?, ended_ms = ? WHERE id = ? AND status = 'running'",
    )
    .bind(status)
    .bind(now_ms)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

pub async fn mark_rolled_back(db: &Db, id: &str, report: &str, now_ms: i64) -> WharfResult<()> {
    sqlx::query(
        "UPDATE relay_imports SET status = 'rolled_back', rolled_back_ms = ?, rollback_report = ? \
         WHERE id = ?",
    )
    .bind(now_ms)
    .bind(report)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Items of an import in request order.
pub async fn items(db: &Db, import_id: &str) -> WharfResult<Vec<ItemRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM relay_import_items WHERE import_id = ? ORDER BY position"
    ))
    .bind(import_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(item_row).collect())
}

pub async fn get_item(db: &Db, id: &str) -> WharfResult<Option<ItemRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM relay_import_items WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(item_row))
}

/// Writes an item's mutable fields.
pub async fn save_item(db: &Db, item: &ItemRow) -> WharfResult<()> {
    sqlx::query(
        "UPDATE relay_import_items SET phase = ?, outcome = ?, access_status = ?, error_code = ?, \
         error_message = ?, evidence = ?, repair = ?, repaired = ?, attempts = ?, \
         confirm_started_ms = ?, next_retry_ms = ?, lease_holder = ?, lease_expires_ms = ?, \
         updated_ms = ? WHERE id = ?",
    )
    .bind(&item.phase)
    .bind(&item.outcome)
    .bind(&item.access_status)
    .bind(&item.error_code)
    .bind(&item.error_message)
    .bind(&item.evidence)
    .bind(&item.repair)
    .bind(i64::from(item.repaired))
    .bind(item.attempts)
    .bind(item.confirm_started_ms)
    .bind(item.next_retry_ms)
    .bind(&item.lease_holder)
    .bind(item.lease_expires_ms)
    .bind(item.updated_ms)
    .bind(&item.id)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes the lease of up to `limit` items waiting for confirmation whose retry time has come
/// and that no live worker holds (`holder`'s own expired leases and every lease of another
/// worker: one server owns a data dir, so another worker is a dead one).
pub async fn claim_due_items(
    db: &Db,
    holder: &str,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> WharfResult<Vec<ItemRow>> {
    let candidates: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM relay_import_items WHERE phase = 'confirming' AND next_retry_ms <= ? \
         AND (lease_holder IS NULL OR lease_holder <> ? OR lease_expires_ms < ?) \
         ORDER BY next_retry_ms, id LIMIT ?",
    )
    .bind(now_ms)
    .bind(holder)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut claimed = Vec::new();
    for id in candidates {
        let taken = sqlx::query(
            "UPDATE relay_import_items SET lease_holder = ?, lease_expires_ms = ? \
             WHERE id = ? AND phase = 'confirming' \
             AND (lease_holder IS NULL OR lease_holder <> ? OR lease_expires_ms < ?)",
        )
        .bind(holder)
        .bind(lease_until_ms)
        .bind(&id)
        .bind(holder)
        .bind(now_ms)
        .execute(db)
        .await?
        .rows_affected()
            == 1;
        if taken && let Some(item) = get_item(db, &id).await? {
            claimed.push(item);
        }
    }
    Ok(claimed)
}

/// Items of a host's imports (not rolled back) whose access is `ready` or `degraded`: the
/// ones a reconcile re-probes.
pub async fn probed_items_of_host(db: &Db, host_id: &str) -> WharfResult<Vec<ItemRow>> {
    let columns = ITEM_COLUMNS
        .split(", ")
        .map(|c| format!("i.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::query(&format!(
        "SELECT {columns} FROM relay_import_items i JOIN relay_imports m ON m.id = i.import_id \
         WHERE m.host_id = ? AND m.status <> 'rolled_back' AND i.access_status IN ('ready', 'degraded') \
         ORDER BY i.import_id, i.position"
    ))
    .bind(host_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(item_row).collect())
}

// ---------------------------------------------------------------------------------------------
// Resources

#[derive(Debug, Clone)]
pub struct ResourceRow {
    pub id: String,
    pub host_id: String,
    pub import_id: String,
    pub item_id: String,
    pub seq: i64,
    pub kind: String,
    pub name: String,
    pub host_resource_id: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    pub shared: bool,
    pub status: Option<String>,
    pub attributes: Option<String>,
    pub secret_sealed: Option<Vec<u8>>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

const RESOURCE_COLUMNS: &str = "id, host_id, import_id, item_id, seq, kind, name, host_resource_id, \
     state, outcome, shared, status, attributes, secret_sealed, created_ms, updated_ms";

fn resource_row(row: &sqlx::sqlite::SqliteRow) -> ResourceRow {
    ResourceRow {
        id: row.get("id"),
        host_id: row.get("host_id"),
        import_id: row.get("import_id"),
        item_id: row.get("item_id"),
        seq: row.get("seq"),
        kind: row.get("kind"),
        name: row.get("name"),
        host_resource_id: row.get("host_resource_id"),
        state: row.get("state"),
        outcome: row.get("outcome"),
        shared: row.get::<i64, _>("shared") != 0,
        status: row.get("status"),
        attributes: row.get("attributes"),
        secret_sealed: row.get("secret_sealed"),
        created_ms: row.get("created_ms"),
        updated_ms: row.get("updated_ms"),
    }
}

/// The record of one resource of an item, if any.
pub async fn find_resource(
    db: &Db,
    import_id: &str,
    item_id: &str,
    kind: &str,
    name: &str,
) -> WharfResult<Option<ResourceRow>> {
    let row = sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM relay_resources \
         WHERE import_id = ? AND item_id = ? AND kind = ? AND name = ?"
    ))
    .bind(import_id)
    .bind(item_id)
    .bind(kind)
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(resource_row))
}

/// Writes the intent to ensure a resource (before the adapter is called); its `seq` follows
/// the import's last one.
#[allow(clippy::too_many_arguments)]
pub async fn insert_intent(
    db: &Db,
    id: &str,
    host_id: &str,
    import_id: &str,
    item_id: &str,
    kind: &str,
    name: &str,
    shared: bool,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "INSERT INTO relay_resources (id, host_id, import_id, item_id, seq, kind, name, state, shared, created_ms, updated_ms) \
         SELECT ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ?, 'intent', ?, ?, ? \
         FROM relay_resources WHERE import_id = ?",
    )
    .bind(id)
    .bind(host_id)
    .bind(import_id)
    .bind(item_id)
    .bind(kind)
    .bind(name)
    .bind(i64::from(shared))
    .bind(now_ms)
    .bind(now_ms)
    .bind(import_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records what `ensure` did to an intent: `created` or `reused`, with the host's id.
#[allow(clippy::too_many_arguments)]
pub async fn record_ensured(
    db: &Db,
    id: &str,
    host_resource_id: &str,
    state: &str,
    outcome: &str,
    status: &str,
    attributes: &str,
    secret_sealed: Option<&[u8]>,
    now_ms: i64,
) -> WharfResult<()> {
    sqlx::query(
        "UPDATE relay_resources SET host_resource_id = ?, state = ?, outcome = ?, status = ?, \
         attributes = ?, secret_sealed = ?, updated_ms = ? WHERE id = ?",
    )
    .bind(host_resource_id)
    .bind(state)
    .bind(outcome)
    .bind(status)
    .bind(attributes)
    .bind(secret_sealed)
    .bind(now_ms)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Resources of one item, in creation order.
pub async fn resources_of_item(db: &Db, item_id: &str) -> WharfResult<Vec<ResourceRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM relay_resources WHERE item_id = ? ORDER BY seq, id"
    ))
    .bind(item_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(resource_row).collect())
}

/// Forgets an intent whose resource the host does not have (its `ensure` failed before
/// creating it).
pub async fn delete_intent(db: &Db, id: &str) -> WharfResult<()> {
    sqlx::query("DELETE FROM relay_resources WHERE id = ? AND state = 'intent'")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Resources of an import, in creation order.
pub async fn resources_of_import(db: &Db, import_id: &str) -> WharfResult<Vec<ResourceRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM relay_resources WHERE import_id = ? ORDER BY seq, id"
    ))
    .bind(import_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(resource_row).collect())
}

/// Resources recorded on a host that exist as far as Wharf knows (`created` or `reused`), and
/// the intents of imports under way (their resources may already be there).
pub async fn live_resources_of_host(db: &Db, host_id: &str) -> WharfResult<Vec<ResourceRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM relay_resources \
         WHERE host_id = ? AND state IN ('intent', 'created', 'reused') ORDER BY import_id, seq"
    ))
    .bind(host_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(resource_row).collect())
}

/// Records of other imports (not rolled back) that still hold the same host resource, by the
/// host's id or, for a resource known by name only, by kind and name.
pub async fn other_holders(
    db: &Db,
    host_id: &str,
    except_import: &str,
    kind: &str,
    host_resource_id: Option<&str>,
    name: &str,
) -> WharfResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM relay_resources r JOIN relay_imports m ON m.id = r.import_id \
         WHERE r.host_id = ? AND r.import_id <> ? AND r.kind = ? AND r.state IN ('created', 'reused') \
         AND m.status <> 'rolled_back' \
         AND ((? IS NOT NULL AND r.host_resource_id = ?) OR r.name = ?)",
    )
    .bind(host_id)
    .bind(except_import)
    .bind(kind)
    .bind(host_resource_id)
    .bind(host_resource_id)
    .bind(name)
    .fetch_one(db)
    .await?)
}

pub async fn mark_deleted(db: &Db, id: &str, now_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE relay_resources SET state = 'deleted', updated_ms = ? WHERE id = ?")
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// After a rollback: the import's records of resources it did not delete (kept for another
/// import, or never its own) become `released`: no longer this import's to hold or undo.
pub async fn release(db: &Db, id: &str, now_ms: i64) -> WharfResult<()> {
    sqlx::query("UPDATE relay_resources SET state = 'released', updated_ms = ? WHERE id = ?")
        .bind(now_ms)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, owner: &str) -> HostRow {
        HostRow {
            id: id.into(),
            owner: owner.into(),
            created_by_key: "key_1".into(),
            kind: "sub2api".into(),
            base_url: "http://127.0.0.1:1".into(),
            token_sealed: vec![1, 2, 3],
            token_fingerprint: "admi…".into(),
            version: "0.1.129".into(),
            gateway_base_url: "http://127.0.0.1:1/v1".into(),
            created_ms: 1,
            reconcile_status: None,
            reconcile_report: None,
            reconciled_ms: None,
            next_reconcile_ms: 10,
        }
    }

    fn import(id: &str, host_id: &str) -> ImportRow {
        ImportRow {
            id: id.into(),
            owner: "o".into(),
            host_id: host_id.into(),
            provider: "kimi".into(),
            upstream_base_url: "https://api.moonshot.cn/v1".into(),
            mode: "subscription".into(),
            models: "[\"kimi-k2.6\"]".into(),
            family: "kimi".into(),
            status: "running".into(),
            created_ms: 1,
            ended_ms: None,
            rolled_back_ms: None,
            rollback_report: None,
        }
    }

    fn item(id: &str, import_id: &str, position: i64) -> ItemRow {
        ItemRow {
            id: id.into(),
            import_id: import_id.into(),
            owner: "o".into(),
            position,
            name: format!("wharf-kimi-kimi-{position}"),
            key_fingerprint: "sk-1…".into(),
            key_sealed: vec![9],
            phase: "pending".into(),
            outcome: None,
            access_status: "pending".into(),
            error_code: None,
            error_message: None,
            evidence: "[]".into(),
            repair: None,
            repaired: false,
            attempts: 0,
            confirm_started_ms: None,
            next_retry_ms: None,
            lease_holder: None,
            lease_expires_ms: None,
            updated_ms: 1,
        }
    }

    #[tokio::test]
    async fn records_hosts_imports_intents_and_what_other_imports_hold() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        insert_host(&db, &host("rh_a", "o")).await.unwrap();
        assert!(
            get_host(&db, "rh_a", Some("other"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(list_hosts(&db, "o").await.unwrap().len(), 1);
        insert_import(
            &db,
            &import("imp_1", "rh_a"),
            &[item("itm_1", "imp_1", 1), item("itm_2", "imp_1", 2)],
        )
        .await
        .unwrap();
        insert_import(&db, &import("imp_2", "rh_a"), &[item("itm_3", "imp_2", 1)])
            .await
            .unwrap();
        // Write-ahead: intents get increasing seqs within their import.
        insert_intent(
            &db, "res_1", "rh_a", "imp_1", "itm_1", "group", "wharf-g", true, 5,
        )
        .await
        .unwrap();
        insert_intent(
            &db, "res_2", "rh_a", "imp_1", "itm_1", "account", "wharf-a1", false, 6,
        )
        .await
        .unwrap();
        insert_intent(
            &db, "res_3", "rh_a", "imp_2", "itm_3", "group", "wharf-g", true, 7,
        )
        .await
        .unwrap();
        let found = find_resource(&db, "imp_1", "itm_1", "account", "wharf-a1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.state.as_str(), found.seq), ("intent", 2));
        record_ensured(
            &db, "res_1", "7", "created", "created", "active", "{}", None, 8,
        )
        .await
        .unwrap();
        record_ensured(
            &db,
            "res_3",
            "7",
            "reused",
            "reused",
            "active",
            "{}",
            Some(&[1u8][..]),
            8,
        )
        .await
        .unwrap();
        // The group is held by the other import; the account by nobody else.
        assert_eq!(
            other_holders(&db, "rh_a", "imp_1", "group", Some("7"), "wharf-g")
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            other_holders(&db, "rh_a", "imp_2", "account", None, "wharf-a1")
                .await
                .unwrap(),
            0
        );
        // A host with state cannot go.
        assert_eq!(delete_host(&db, "rh_a", "o").await.unwrap(), Some((2, 3)));
        assert_eq!(delete_host(&db, "rh_a", "other").await.unwrap(), None);
        delete_intent(&db, "res_2").await.unwrap();
        assert_eq!(resources_of_import(&db, "imp_1").await.unwrap().len(), 1);
        assert_eq!(live_resources_of_host(&db, "rh_a").await.unwrap().len(), 2);
        insert_intent(
            &db, "res_4", "rh_a", "imp_1", "itm_2", "account", "wharf-a2", false, 9,
        )
        .await
        .unwrap();
        assert_eq!(live_resources_of_host(&db, "rh_a").await.unwrap().len(), 3);
        delete_intent(&db, "res_4").await.unwrap();

        // Confirmation leases: only due items, one holder at a time, another worker's lease dead.
        let mut waiting = get_item(&db, "itm_2").await.unwrap().unwrap();
        waiting.phase = "confirming".into();
        waiting.next_retry_ms = Some(100);
        save_item(&db, &waiting).await.unwrap();
        assert!(
            claim_due_items(&db, "wkr_a", 50, 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = claim_due_items(&db, "wkr_a", 150, 1000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(
            claim_due_items(&db, "wkr_a", 160, 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            claim_due_items(&db, "wkr_b", 160, 1000, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        // Ends once; rolled back imports no longer hold anything.
        assert!(end_import(&db, "imp_2", "succeeded", 9).await.unwrap());
        assert!(!end_import(&db, "imp_2", "failed", 9).await.unwrap());
        mark_rolled_back(&db, "imp_2", "{}", 10).await.unwrap();
        release(&db, "res_3", 10).await.unwrap();
        assert_eq!(
            other_holders(&db, "rh_a", "imp_1", "group", Some("7"), "wharf-g")
                .await
                .unwrap(),
            0
        );
        mark_deleted(&db, "res_1", 11).await.unwrap();
        end_import(&db, "imp_1", "failed", 11).await.unwrap();
        assert_eq!(host_usage(&db, "rh_a").await.unwrap(), (0, 0));
        assert_eq!(delete_host(&db, "rh_a", "o").await.unwrap(), Some((0, 0)));
        assert!(get_host(&db, "rh_a", None).await.unwrap().is_none());
    }
}
