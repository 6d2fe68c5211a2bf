//! API keys: `wharf_` + 40 random base62 characters, stored as a sha256.
//!
//! Keys are high-entropy, so a fast hash is the right tool: it makes the
//! lookup one indexed query and a stolen database useless for logging in.

use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Db, now_rfc3339};
use crate::capabilities::scope::{KeyScope, Role};
use crate::error::{WharfError, WharfResult};

const SECRET_PREFIX: &str = "wharf_";

/// Who is calling: resolved from the bearer key on every request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub owner: String,
    pub admin: bool,
    /// Holds the `approver` role: may decide its owner's approvals.
    pub approver: bool,
    /// What the key may call and use (admin keys are never limited).
    pub scope: KeyScope,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub owner: String,
    pub admin: bool,
    /// `admin` (same as the flag) and `approver`.
    pub roles: Vec<Role>,
    pub scope: KeyScope,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// What a new key may do besides using its owner's data.
#[derive(Debug, Clone, Default)]
pub struct KeyGrant {
    pub admin: bool,
    pub approver: bool,
    pub scope: KeyScope,
}

impl KeyGrant {
    pub fn admin() -> Self {
        Self {
            admin: true,
            ..Self::default()
        }
    }

    fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::new();
        if self.admin {
            roles.push(Role::Admin);
        }
        if self.approver {
            roles.push(Role::Approver);
        }
        roles
    }
}

fn json_list(list: &Option<Vec<String>>) -> Option<String> {
    list.as_ref()
        .map(|l| serde_json::to_string(l).expect("a list of strings serialises"))
}

fn parse_list(text: Option<String>) -> Option<Vec<String>> {
    // A column this server wrote; unreadable text limits the key to nothing rather than all.
    text.map(|text| serde_json::from_str(&text).unwrap_or_default())
}

fn row_scope(row: &sqlx::sqlite::SqliteRow) -> (KeyScope, Vec<Role>) {
    let scope = KeyScope {
        capabilities: parse_list(row.get("scope_capabilities")),
        profiles: parse_list(row.get("scope_profiles")),
    };
    let mut roles: Vec<Role> =
        serde_json::from_str(row.get::<&str, _>("roles")).unwrap_or_default();
    if row.get::<i64, _>("admin") != 0 && !roles.contains(&Role::Admin) {
        roles.insert(0, Role::Admin);
    }
    (scope, roles)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// First 4 characters after the prefix plus a sha256 prefix: safe to show.
pub fn fingerprint(secret: &str) -> String {
    let visible: String = secret
        .trim_start_matches(SECRET_PREFIX)
        .chars()
        .take(4)
        .collect();
    format!("{visible}…{}", &hash_secret(secret)[..8])
}

pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{SECRET_PREFIX}{body}")
}

pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{body}")
}

/// Resolves a presented secret to its principal; revoked and unknown keys give None.
pub async fn authenticate(db: &Db, secret: &str) -> WharfResult<Option<Principal>> {
    let row = sqlx::query(
        "SELECT id, owner, admin, scope_capabilities, scope_profiles, roles FROM api_keys WHERE secret_hash = ? AND revoked_at IS NULL",
    )
    .bind(hash_secret(secret))
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| principal_from_row(&row)))
}

fn principal_from_row(row: &sqlx::sqlite::SqliteRow) -> Principal {
    let (scope, roles) = row_scope(row);
    Principal {
        key_id: row.get("id"),
        owner: row.get("owner"),
        admin: row.get::<i64, _>("admin") != 0,
        approver: roles.contains(&Role::Approver),
        scope,
    }
}

/// The principal of an unrevoked key, by id (a stored approval runs as the key that asked
/// for it, with the scope that key has when it runs).
pub async fn active_principal(db: &Db, key_id: &str) -> WharfResult<Option<Principal>> {
    let row = sqlx::query(
        "SELECT id, owner, admin, scope_capabilities, scope_profiles, roles FROM api_keys WHERE id = ? AND revoked_at IS NULL",
    )
    .bind(key_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| principal_from_row(&row)))
}

/// Whether `key_id` is an admin key that has not been revoked.
pub async fn is_active_admin(db: &Db, key_id: &str) -> WharfResult<bool> {
    let row = sqlx::query("SELECT admin FROM api_keys WHERE id = ? AND revoked_at IS NULL")
        .bind(key_id)
        .fetch_optional(db)
        .await?;
    Ok(row.is_some_and(|row| row.get::<i64, _>("admin") != 0))
}

/// Creates a key and returns it with its secret (the only time the secret exists in clear).
pub async fn create(db: &Db, owner: &str, grant: KeyGrant) -> WharfResult<(ApiKey, String)> {
    let secret = generate_secret();
    let key = insert(db, owner, grant, &secret).await?;
    Ok((key, secret))
}

async fn insert(db: &Db, owner: &str, grant: KeyGrant, secret: &str) -> WharfResult<ApiKey> {
    let roles = grant.roles();
    let key = ApiKey {
        id: new_id("key"),
        owner: owner.to_string(),
        admin: grant.admin,
        roles,
        scope: grant.scope,
        created_at: now_rfc3339(),
        revoked_at: None,
    };
    let stored_roles: Vec<Role> = key
        .roles
        .iter()
        .copied()
        .filter(|role| *role != Role::Admin)
        .collect();
    sqlx::query(
        "INSERT INTO api_keys (id, owner, secret_hash, admin, created_at, scope_capabilities, scope_profiles, roles) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.owner)
    .bind(hash_secret(secret))
    .bind(key.admin as i64)
    .bind(&key.created_at)
    .bind(json_list(&key.scope.capabilities))
    .bind(json_list(&key.scope.profiles))
    .bind(serde_json::to_string(&stored_roles).expect("roles serialise"))
    .execute(db)
    .await?;
    Ok(key)
}

/// Makes sure an admin key exists at start-up.
///
/// With a configured key, that key is registered (once). Without one, a key is
/// generated the first time and returned so the caller can print it once.
pub async fn bootstrap_admin(db: &Db, configured: Option<&str>) -> WharfResult<Option<String>> {
    if let Some(secret) = configured {
        if !secret.starts_with(SECRET_PREFIX) || secret.len() < SECRET_PREFIX.len() + 16 {
            return Err(WharfError::validation(format!(
                "WHARF_ADMIN_KEY must start with {SECRET_PREFIX:?} and have at least 16 characters after it"
            )));
        }
        let known = sqlx::query("SELECT 1 FROM api_keys WHERE secret_hash = ?")
            .bind(hash_secret(secret))
            .fetch_optional(db)
            .await?;
        if known.is_none() {
            insert(db, "admin", KeyGrant::admin(), secret).await?;
        }
        return Ok(None);
    }
    let any_admin = sqlx::query("SELECT 1 FROM api_keys WHERE admin = 1 AND revoked_at IS NULL")
        .fetch_optional(db)
        .await?;
    if any_admin.is_some() {
        return Ok(None);
    }
    let (_, secret) = create(db, "admin", KeyGrant::admin()).await?;
    Ok(Some(secret))
}

pub async fn list(db: &Db) -> WharfResult<Vec<ApiKey>> {
    let rows = sqlx::query(
        "SELECT id, owner, admin, scope_capabilities, scope_profiles, roles, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (scope, roles) = row_scope(&row);
            ApiKey {
                id: row.get("id"),
                owner: row.get("owner"),
                admin: row.get::<i64, _>("admin") != 0,
                roles,
                scope,
                created_at: row.get("created_at"),
                revoked_at: row.get("revoked_at"),
            }
        })
        .collect())
}

/// Revokes a key; it is rejected from the next request on.
pub async fn revoke(db: &Db, id: &str) -> WharfResult<()> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now_rfc3339())
            .bind(id)
            .execute(db)
            .await?;
    if done.rows_affected() == 0 {
        return Err(WharfError::not_found(format!("key {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unrevoked_admin_keys_are_active_admins() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        let (admin, _) = create(&db, "ops", KeyGrant::admin()).await.unwrap();
        let (user, _) = create(&db, "alice", KeyGrant::default()).await.unwrap();
        assert!(is_active_admin(&db, &admin.id).await.unwrap());
        assert!(!is_active_admin(&db, &user.id).await.unwrap());
        assert!(!is_active_admin(&db, "key_unknown").await.unwrap());
        revoke(&db, &admin.id).await.unwrap();
        assert!(!is_active_admin(&db, &admin.id).await.unwrap());
    }

    #[tokio::test]
    async fn lifecycle_generate_effective_revoked_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        let (key, secret) = create(&db, "alice", KeyGrant::default()).await.unwrap();
        let who = authenticate(&db, &secret)
            .await
            .unwrap()
            .expect("effective");
        assert_eq!((who.owner.as_str(), who.admin), ("alice", false));
        revoke(&db, &key.id).await.unwrap();
        assert!(
            authenticate(&db, &secret).await.unwrap().is_none(),
            "revoked key still accepted"
        );
        assert_eq!(
            revoke(&db, &key.id).await.unwrap_err().code,
            crate::error::ErrorCode::NotFound
        );
        let raw = std::fs::read(dir.path().join("wharf.db")).unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret stored in clear"
        );
    }

    #[tokio::test]
    async fn admin_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        let first = bootstrap_admin(&db, None).await.unwrap();
        assert!(first.is_some());
        assert!(bootstrap_admin(&db, None).await.unwrap().is_none());
    }
}
