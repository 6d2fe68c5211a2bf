//! API key management (admin only).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::contract::error_set;
use super::error::{ApiResult, Json, Path};
use super::{AppState, require_admin};
use crate::capabilities::scope::{KeyScope, Role};
use crate::error::WharfError;
use crate::store::keys::{self as key_store, ApiKey, KeyGrant, Principal};

error_set!(
    /// Creating a key: admin only, and the owner must be valid.
    CreateKeyErrors: ValidationError, Forbidden
);
error_set!(
    /// Listing keys: admin only.
    AdminOnly: Forbidden
);
error_set!(
    /// Revoking a key: admin only, and the key must exist.
    RevokeKeyErrors: Forbidden, NotFound
);

/// The longest owner name, in characters (the OpenAPI schema says the same).
const MAX_OWNER_CHARS: usize = 128;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Sandboxes created with the key belong to this owner: 1 to 128 characters, no control
    /// characters, not only whitespace (which is trimmed).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    owner: String,
    /// An admin key: every owner, every route, no scope. Same as `roles: ["admin"]`.
    #[serde(default)]
    admin: bool,
    /// `admin` and/or `approver` (may decide its owner's approvals).
    #[serde(default)]
    #[schema(max_items = 2)]
    roles: Vec<Role>,
    /// Capability, operation and route names the key may call: `filesystem` (every
    /// operation), `filesystem.read`, `sandbox.exec`, `sandbox.files.read`,
    /// `sandbox.files.write`, `probes`, `*`. Absent: all. Not with `admin`.
    #[serde(default)]
    #[schema(max_items = 64)]
    capabilities: Option<Vec<String>>,
    /// Sandbox profiles the key may create and use. Absent: all. Not with `admin`.
    #[serde(default)]
    #[schema(max_items = 64)]
    profiles: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    meta: ApiKey,
    /// The secret. Shown this once; only its hash is stored.
    key: String,
}

/// Creates an API key for an owner. The secret is returned once, in `key`. A key may be
/// limited to capabilities or operations (`capabilities`) and to profiles (`profiles`), and
/// hold the `approver` role; a call outside its scope is `forbidden`.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey, responses(
    (status = 201, body = CreatedKey),
    CreateKeyErrors,
))]
async fn create_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    require_admin(&principal)?;
    let owner = body.owner.trim();
    if owner.is_empty()
        || body.owner.chars().count() > MAX_OWNER_CHARS
        || body.owner.chars().any(char::is_control)
    {
        return Err(WharfError::validation(format!(
            "owner must be 1-{MAX_OWNER_CHARS} printable characters, not only whitespace"
        ))
        .into());
    }
    let admin = body.admin || body.roles.contains(&Role::Admin);
    let scope = KeyScope {
        capabilities: body.capabilities,
        profiles: body.profiles,
    };
    scope.validate()?;
    if admin && !scope.is_unlimited() {
        return Err(WharfError::validation(
            "an admin key cannot be scoped: give `capabilities`/`profiles` only to non-admin keys",
        )
        .into());
    }
    let grant = KeyGrant {
        admin,
        approver: body.roles.contains(&Role::Approver),
        scope,
    };
    let (meta, key) = key_store::create(&state.db, owner, grant).await?;
    tracing::info!(key_id = %meta.id, owner = %meta.owner, fingerprint = %key_store::fingerprint(&key), "API key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { meta, key })))
}

/// Lists API keys (never their secrets).
#[utoipa::path(get, path = "/v1/keys", responses((status = 200, body = Vec<ApiKey>), AdminOnly))]
async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<ApiKey>>> {
    require_admin(&principal)?;
    Ok(Json(key_store::list(&state.db).await?))
}

/// Revokes a key: it is rejected from the next request on.
#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path)), responses(
    (status = 204),
    RevokeKeyErrors,
))]
async fn revoke_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&principal)?;
    key_store::revoke(&state.db, &id).await?;
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
