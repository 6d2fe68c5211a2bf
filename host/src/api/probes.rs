//! Access probes, probe targets and their status.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::error_set;
use super::error::{ApiResult, ErrorBody, Json, Path, Query};
use crate::error::WharfError;
use crate::probes::TargetStatus;
use crate::probes::runner::{ModelResolution, ProbeRequest, ProbeResult};
use crate::store::keys::Principal;
use crate::store::probe_targets::{CreateTarget, Target};

/// Results a status answer may carry at most.
const MAX_STATUS_RESULTS: u32 = 100;

error_set!(
    /// A call into the provider plugin of the active pack (plan, judge, resolve a model).
    ProviderCallErrors: ValidationError, CapabilityNotSupported, NotFound, PluginError, PluginTrap,
        PluginUnavailable, PluginTimeout
);
error_set!(
    /// Running a probe: the provider plugin's calls, then the outbound rules.
    ProbeErrors: ValidationError, CapabilityNotSupported, Forbidden, NotFound, PluginError, PluginTrap,
        PluginUnavailable, PluginTimeout, TargetNotAllowed, InvalidProbeStep
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run_probe))
        .routes(routes!(get_probe))
        .routes(routes!(create_target, list_targets))
        .routes(routes!(get_target, delete_target))
        .routes(routes!(target_status))
        .routes(routes!(list_providers))
        .routes(routes!(resolve_model))
}

/// Runs the provider's probe plan against `base_url` now. The answer's `verdict` is `ready`
/// only when every step passed; a step may pass with a warning (no models list, or a list
/// without the model: the chat decides), listed in `warnings`. An upstream failure is a verdict
/// (HTTP 200), not an error.
/// Loopback, private and link-local targets need an admin key unless the operator allows them.
#[utoipa::path(post, path = "/v1/probes", request_body = ProbeRequest,
    extensions(("x-wharf-outbound" = json!(true))),
    responses(
    (status = 200, body = ProbeResult),
    ProbeErrors,
))]
async fn run_probe(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<ProbeRequest>,
) -> ApiResult<Json<ProbeResult>> {
    crate::capabilities::scope::require(&principal, crate::capabilities::scope::PROBES)?;
    Ok(Json(state.probes.probe(&principal, &body).await?))
}

/// A stored probe result of the caller's (one-off or scheduled).
#[utoipa::path(get, path = "/v1/probes/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = ProbeResult),
    (status = 404, body = ErrorBody),
))]
async fn get_probe(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProbeResult>> {
    Ok(Json(state.probes.result(&principal.owner, &id).await?))
}

/// Registers a target that the scheduler probes every `interval_secs` (with jitter), or just
/// after the reset time of a failure's retry hint (a rate limit). Its `verdict` turns from
/// `ready` to a failure only after `[probes] failure_threshold` failures in a row. The key is
/// stored sealed and shown only as a fingerprint.
#[utoipa::path(post, path = "/v1/targets", request_body = CreateTarget,
    extensions(("x-wharf-outbound" = json!(true))),
    responses(
    (status = 201, body = Target),
    (status = 400, body = ErrorBody),
    (status = 403, body = ErrorBody, description = "quota_exceeded: `[quotas] probe_targets_per_owner` (admin keys exempt); target_not_allowed: the target is, or resolves to, a non-public address; or forbidden: the key's scope does not name `probes`"),
    (status = 404, body = ErrorBody, description = "not_found: unknown provider"),
))]
async fn create_target(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CreateTarget>,
) -> ApiResult<(StatusCode, Json<Target>)> {
    crate::capabilities::scope::require(&principal, crate::capabilities::scope::PROBES)?;
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .probes
                .create_target(
                    &principal,
                    body,
                    state.config.quotas.probe_targets_for(principal.admin),
                )
                .await?,
        ),
    ))
}

/// The caller's targets.
#[utoipa::path(get, path = "/v1/targets", responses((status = 200, body = Vec<Target>)))]
async fn list_targets(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<Target>>> {
    Ok(Json(state.probes.list_targets(&principal.owner).await?))
}

/// One target; another owner's is `not_found`.
#[utoipa::path(get, path = "/v1/targets/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = Target),
    (status = 404, body = ErrorBody),
))]
async fn get_target(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Target>> {
    Ok(Json(state.probes.target(&principal.owner, &id).await?))
}

/// Deletes a target and its history.
#[utoipa::path(delete, path = "/v1/targets/{id}", params(("id" = String, Path)), responses(
    (status = 204),
    (status = 404, body = ErrorBody),
))]
async fn delete_target(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.probes.delete_target(&principal.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// How many latest results to include (default 10, at most 100).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// The current verdict, since when it has held, and the latest results (newest first).
#[utoipa::path(get, path = "/v1/targets/{id}/status", params(("id" = String, Path), StatusQuery), responses(
    (status = 200, body = TargetStatus),
    (status = 404, body = ErrorBody),
))]
async fn target_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<StatusQuery>,
) -> ApiResult<Json<TargetStatus>> {
    let limit = query.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_STATUS_RESULTS {
        return Err(WharfError::validation(format!(
            "`limit` must be within 1..={MAX_STATUS_RESULTS}"
        ))
        .into());
    }
    Ok(Json(
        state.probes.status(&principal.owner, &id, limit).await?,
    ))
}

/// Provider ids served by the active provider packs.
#[utoipa::path(get, path = "/v1/providers", responses((status = 200, body = Vec<String>)))]
async fn list_providers(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(state.probes.runner().providers())
}

/// What the provider's active pack makes of a model name: the canonical id, or the three
/// nearest ids.
#[utoipa::path(get, path = "/v1/providers/{provider}/models/{name}", params(("provider" = String, Path), ("name" = String, Path)), responses(
    (status = 200, body = ModelResolution),
    ProviderCallErrors,
))]
async fn resolve_model(
    State(state): State<AppState>,
    Path((provider, name)): Path<(String, String)>,
) -> ApiResult<Json<ModelResolution>> {
    Ok(Json(
        state
            .probes
            .runner()
            .resolve_model(&provider, &name)
            .await?,
    ))
}
