//! Packs and capabilities as the loader sees them.

use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiResult, ErrorBody, Json, Path};
use crate::capabilities::{self, CapabilitySummary};
use crate::error::WharfError;
use crate::packs::manifest::{ComponentKind, Permissions};
use crate::packs::{AdapterInfo, PackRow};
use crate::runtime::EffectiveLimits;
use crate::runtime::logs::LogLine;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_packs))
        .routes(routes!(get_pack))
        .routes(routes!(list_capabilities))
}

/// Every pack directory: active, shadowed, quarantined (with its reason) or draining.
#[utoipa::path(get, path = "/v1/packs", responses((status = 200, body = Vec<PackRow>)))]
async fn list_packs(State(state): State<AppState>) -> Json<Vec<PackRow>> {
    Json(state.packs.snapshot().rows())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ComponentDetail {
    name: String,
    kind: ComponentKind,
    sha256: String,
    limits: EffectiveLimits,
    circuit_open: bool,
    /// Adapters: what `describe()` reported, operations with JSON schemas.
    adapter: Option<AdapterInfo>,
    /// Providers: the provider ids of `catalog()`.
    providers: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PackDetail {
    id: String,
    version: String,
    description: String,
    authors: Vec<String>,
    generation: u64,
    sha256: String,
    loaded_at: String,
    requires_wharf: String,
    permissions: Permissions,
    data: Vec<String>,
    components: Vec<ComponentDetail>,
    /// Other rows for this id (shadowed, quarantined or draining generations).
    others: Vec<PackRow>,
    /// Recent plugin log lines, all generations, oldest first.
    logs: Vec<LogLine>,
}

/// The active generation of a pack: components, operations, permissions and recent logs.
#[utoipa::path(get, path = "/v1/packs/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = PackDetail),
    (status = 404, body = ErrorBody),
))]
async fn get_pack(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PackDetail>> {
    let snapshot = state.packs.snapshot();
    let pack = snapshot
        .active
        .get(&id)
        .ok_or_else(|| WharfError::not_found(format!("active pack {id:?}")))?;
    let manifest = &pack.manifest;
    Ok(Json(PackDetail {
        id: pack.id.clone(),
        version: pack.version.to_string(),
        description: manifest.description.clone(),
        authors: manifest.authors.clone(),
        generation: pack.generation,
        sha256: pack.digest.clone(),
        loaded_at: pack.loaded_at.clone(),
        requires_wharf: manifest.requires.to_string(),
        permissions: manifest.permissions.clone(),
        data: manifest.data.clone(),
        components: pack
            .components
            .iter()
            .map(|c| ComponentDetail {
                name: c.runtime.name.to_string(),
                kind: c.runtime.kind,
                sha256: c.runtime.sha256.clone(),
                limits: c.runtime.limits,
                circuit_open: c.runtime.circuit_open(),
                adapter: c.adapter.clone(),
                providers: c.provider_ids.clone(),
            })
            .collect(),
        others: snapshot
            .rows()
            .into_iter()
            .filter(|row| row.id.as_deref() == Some(&id) && row.generation != Some(pack.generation))
            .collect(),
        logs: state.packs.logs().for_pack(&id).recent(),
    }))
}

/// Capabilities served by active adapters, and the pack generation serving each.
#[utoipa::path(get, path = "/v1/capabilities", responses((status = 200, body = Vec<CapabilitySummary>)))]
async fn list_capabilities(State(state): State<AppState>) -> Json<Vec<CapabilitySummary>> {
    Json(capabilities::list(&state.packs))
}
