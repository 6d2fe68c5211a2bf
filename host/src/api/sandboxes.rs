//! Sandboxes and capability calls on them.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiResult, ErrorBody, Json, Path};
use crate::capabilities::{self, InvokeOutcome};
use crate::sandbox::service::{LOCAL_PROFILE, Sandbox};
use crate::store::keys::Principal;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sandbox, list_sandboxes))
        .routes(routes!(get_sandbox, delete_sandbox))
        .routes(routes!(invoke_capability))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Sandbox profile; default `local`.
    #[serde(default)]
    profile: Option<String>,
}

/// Creates a sandbox owned by the caller's key owner.
#[utoipa::path(post, path = "/v1/sandboxes", request_body = CreateSandbox, responses(
    (status = 201, body = Sandbox),
    (status = 400, body = ErrorBody),
))]
async fn create_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CreateSandbox>,
) -> ApiResult<(StatusCode, Json<Sandbox>)> {
    let profile = body.profile.as_deref().unwrap_or(LOCAL_PROFILE);
    let sandbox = state.sandboxes.create(&principal.owner, profile).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}

/// The caller's sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes", responses((status = 200, body = Vec<Sandbox>)))]
async fn list_sandboxes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<Sandbox>>> {
    Ok(Json(state.sandboxes.list(&principal.owner).await?))
}

/// One sandbox; another owner's sandbox is `not_found`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = Sandbox),
    (status = 404, body = ErrorBody),
))]
async fn get_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.get(&principal.owner, &id).await?))
}

/// Deletes a sandbox and its workspace.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path)), responses(
    (status = 204),
    (status = 404, body = ErrorBody),
))]
async fn delete_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.sandboxes.delete(&principal.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs `operation` of the adapter providing `capability`, bound to this sandbox.
/// The body is the operation's JSON input (see its schema in `GET /v1/packs/{id}`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/capabilities/{capability}/{operation}",
    params(("id" = String, Path), ("capability" = String, Path), ("operation" = String, Path)),
    request_body(content = Object, description = "The operation's input document"),
    responses(
        (status = 200, body = InvokeOutcome),
        (status = 400, body = ErrorBody, description = "validation_error or capability_not_supported"),
        (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "plugin_trap"),
        (status = 504, body = ErrorBody, description = "plugin_timeout"),
    ))]
async fn invoke_capability(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, capability, operation)): Path<(String, String, String)>,
    Json(input): Json<serde_json::Value>,
) -> ApiResult<Json<InvokeOutcome>> {
    let sandbox = state.sandboxes.get(&principal.owner, &id).await?;
    let binding = state.sandboxes.bind(&sandbox)?;
    Ok(Json(
        capabilities::invoke(&state.packs, binding, &capability, &operation, input).await?,
    ))
}
