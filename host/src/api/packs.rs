//! Packs and capabilities as the loader sees them.

use axum::Extension;
use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiResult, ErrorBody, Json, Path};
use crate::capabilities::{self, CapabilitySummary};
use crate::error::WharfError;
use crate::packs::manifest::{ComponentKind, Permissions};
use crate::packs::profiles::RefusedProfile;
use crate::packs::{AdapterInfo, PackRow, PackState};
use crate::runtime::EffectiveLimits;
use crate::runtime::logs::{LogLine, LogViewer};
use crate::store::keys::Principal;

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
    /// `active`, or `conflict` when it provides a name another pack serves.
    state: PackState,
    /// Why it serves nothing, when in conflict.
    conflict: Option<String>,
    description: String,
    authors: Vec<String>,
    generation: u64,
    sha256: String,
    loaded_at: String,
    requires_wharf: String,
    /// The `wharf:plugin` version `requires_wharf` picked: the bindings its components run
    /// with (`0.1.0` packs keep working beside `0.2.0` ones).
    plugin_api: String,
    permissions: Permissions,
    /// Declared data folders: a snapshot of them is all its plugins see at `/pack`.
    data: Vec<String>,
    components: Vec<ComponentDetail>,
    /// Sandbox profiles it contributes (`profiles/*.toml`) that the operator's policy accepted.
    profiles: Vec<String>,
    /// Those the policy refused, with the reason.
    refused_profiles: Vec<RefusedProfile>,
    /// Overlays it carries (`overlays/<id>`); `GET /v1/overlays` has their details.
    overlays: Vec<String>,
    /// Other rows for this id (shadowed, quarantined or draining generations).
    others: Vec<PackRow>,
    /// Recent plugin log lines of the caller's own calls (an admin sees every owner's and
    /// the host's own), all generations, oldest first.
    logs: Vec<LogLine>,
}

/// The serving (or conflicting) generation of a pack: components, operations, permissions,
/// profiles and the caller's recent plugin logs.
#[utoipa::path(get, path = "/v1/packs/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = PackDetail),
    (status = 404, body = ErrorBody),
))]
async fn get_pack(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<PackDetail>> {
    let snapshot = state.packs.snapshot();
    let (pack, conflict) = match snapshot.active.get(&id) {
        Some(pack) => (pack, None),
        None => snapshot
            .conflicts
            .get(&id)
            .map(|(pack, reason)| (pack, Some(reason.clone())))
            .ok_or_else(|| WharfError::not_found(format!("active pack {id:?}")))?,
    };
    let manifest = &pack.manifest;
    Ok(Json(PackDetail {
        id: pack.id.clone(),
        version: pack.version.to_string(),
        state: if conflict.is_some() {
            PackState::Conflict
        } else {
            PackState::Active
        },
        conflict,
        description: manifest.description.clone(),
        authors: manifest.authors.clone(),
        generation: pack.generation,
        sha256: pack.digest.clone(),
        loaded_at: pack.loaded_at.clone(),
        requires_wharf: manifest.requires.to_string(),
        plugin_api: manifest.plugin_api.version().to_string(),
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
        profiles: pack.profiles.iter().map(|p| p.name.clone()).collect(),
        refused_profiles: pack.refused_profiles.clone(),
        overlays: pack.overlays.iter().map(|o| o.id.clone()).collect(),
        others: snapshot
            .rows()
            .into_iter()
            .filter(|row| row.id.as_deref() == Some(&id) && row.generation != Some(pack.generation))
            .collect(),
        logs: state
            .packs
            .logs()
            .for_pack(&id)
            .recent(LogViewer::new(&principal.owner, principal.admin)),
    }))
}

/// Capabilities served by active adapters, and the pack generation serving each.
#[utoipa::path(get, path = "/v1/capabilities", responses((status = 200, body = Vec<CapabilitySummary>)))]
async fn list_capabilities(State(state): State<AppState>) -> Json<Vec<CapabilitySummary>> {
    Json(capabilities::list(&state.packs))
}
