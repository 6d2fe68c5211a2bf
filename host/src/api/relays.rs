//! Relay hosts and imports: register a host, import provider keys into it (or plan the import),
//! follow an import, roll it back, reconcile a host. Scoped to the caller's owner: another
//! owner's host or import is `not_found`.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::error_set;
use super::error::{ApiResult, Json, Path, Query};
use crate::relays::{
    CreateHost, CreateImport, Host, Import, ImportPlan, ReconcileReport, RollbackReport, Submitted,
};
use crate::store::keys::Principal;

/// Most imports one list answers.
const MAX_LIST: i64 = 200;

error_set!(
    /// Registering a host: the adapter of the kind must detect it.
    CreateHostErrors: ValidationError, TargetNotAllowed, RelayHostUnreachable, RelayHostError,
        PluginTrap, PluginUnavailable, PluginTimeout
);
error_set!(
    /// Reading a host or an import.
    Lookup: NotFound
);
error_set!(
    /// Deleting a host.
    DeleteHostErrors: NotFound, HostInUse
);
error_set!(
    /// Submitting an import (or its plan).
    SubmitErrors: ValidationError, NotFound, UnknownModel, PluginError, RelayHostError, PluginTrap,
        PluginUnavailable, PluginTimeout
);
error_set!(
    /// Rolling an import back.
    RollbackErrors: NotFound, Conflict, RelayHostError, PluginTrap, PluginUnavailable, PluginTimeout
);
error_set!(
    /// Reconciling a host.
    ReconcileErrors: NotFound, Conflict, ValidationError, RelayHostError, PluginTrap,
        PluginUnavailable, PluginTimeout
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_host, list_hosts))
        .routes(routes!(get_host, delete_host))
        .routes(routes!(reconcile))
        .routes(routes!(submit, list_imports))
        .routes(routes!(get_import))
        .routes(routes!(rollback))
}

/// Registers a relay host. The adapter of `kind` (from an active pack) must detect the host
/// with the admin token, which gives its version and gateway; the token is then stored sealed
/// and shown only as a fingerprint. Adapters reach only this host's origin and never see the
/// token (the server adds it to their requests there).
#[utoipa::path(post, path = "/v1/hosts", request_body = CreateHost,
    extensions(("x-wharf-outbound" = json!(true))),
    responses((status = 201, body = Host), CreateHostErrors))]
async fn create_host(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CreateHost>,
) -> ApiResult<(StatusCode, Json<Host>)> {
    let host = state.relays.create_host(&principal, body).await?;
    Ok((StatusCode::CREATED, Json(host)))
}

/// The caller's relay hosts, oldest first, each with its last reconcile.
#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, body = Vec<Host>)))]
async fn list_hosts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(state.relays.hosts(&principal.owner).await?))
}

/// A relay host with its last reconcile.
#[utoipa::path(get, path = "/v1/hosts/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Host), Lookup))]
async fn get_host(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(state.relays.host(&principal.owner, &id).await?))
}

/// Forgets a relay host (nothing on the host changes). Refused with `host_in_use` while an
/// import runs on it or resources recorded by its imports remain: roll those back first.
#[utoipa::path(delete, path = "/v1/hosts/{id}", params(("id" = String, Path)),
    responses((status = 204), DeleteHostErrors))]
async fn delete_host(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.relays.delete_host(&principal.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Compares what the imports recorded on the host with what its adapter lists (`wharf-`
/// names): `in_sync`, or `drifted` with what is missing, changed (e.g. disabled by hand) or
/// unmanaged; and re-probes every ready item through the gateway. It never changes the host:
/// what an operator disabled stays disabled. Also runs every `[relays] reconcile_interval_secs`.
#[utoipa::path(post, path = "/v1/hosts/{id}/reconcile", params(("id" = String, Path)),
    extensions(("x-wharf-outbound" = json!(true))),
    responses((status = 200, body = ReconcileReport), ReconcileErrors))]
async fn reconcile(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReconcileReport>> {
    Ok(Json(state.relays.reconcile(&principal.owner, &id).await?))
}

/// Imports provider keys into a relay host: one item per key, each ending `ready` only when a
/// probe through the relay's gateway with the managed key passes (`201`, the import; follow it
/// with `GET /v1/imports/{id}`). With `dry_run: true`, answers the plan (`200`): per key, what
/// would be created, reused, changed or reactivated; nothing is touched.
#[utoipa::path(post, path = "/v1/imports", request_body = CreateImport,
    extensions(("x-wharf-outbound" = json!(true))),
    responses(
        (status = 201, description = "The import, queued", body = Import),
        (status = 200, description = "The plan of a dry run", body = ImportPlan),
        SubmitErrors,
    ))]
async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CreateImport>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    match state.relays.submit(&principal, body).await? {
        Submitted::Plan(plan) => Ok((
            StatusCode::OK,
            Json(serde_json::to_value(plan).expect("serialisable")),
        )),
        Submitted::Queued(id) => {
            state.relays.spawn(id.clone());
            let import = state.relays.import(&principal.owner, &id).await?;
            Ok((
                StatusCode::CREATED,
                Json(serde_json::to_value(import).expect("serialisable")),
            ))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only the imports into this host.
    host_id: Option<String>,
    /// At most this many (default and cap 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// The caller's imports, newest first, with their counts (no items).
#[utoipa::path(get, path = "/v1/imports", params(ListQuery),
    responses((status = 200, body = Vec<Import>)))]
async fn list_imports(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Import>>> {
    let limit = query.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    Ok(Json(
        state
            .relays
            .imports(&principal.owner, query.host_id.as_deref(), limit)
            .await?,
    ))
}

/// An import: its run (transitions and steps), its items with their outcome, access status and
/// probe evidence, and every resource it recorded on the host. Never a secret.
#[utoipa::path(get, path = "/v1/imports/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Import), Lookup))]
async fn get_import(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Import>> {
    Ok(Json(state.relays.import(&principal.owner, &id).await?))
}

/// Deletes exactly the resources this import created on the host, newest first. A resource
/// another import still records stays (`kept`); nothing without a record is deleted. A delete
/// the host refuses is listed in `failed` and the import stays as it was, so it can be rolled
/// back again.
#[utoipa::path(post, path = "/v1/imports/{id}/rollback", params(("id" = String, Path)),
    extensions(("x-wharf-outbound" = json!(true))),
    responses((status = 200, body = RollbackReport), RollbackErrors))]
async fn rollback(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<RollbackReport>> {
    Ok(Json(state.relays.rollback(&principal.owner, &id).await?))
}
