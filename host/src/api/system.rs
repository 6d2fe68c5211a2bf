//! Health, metrics and server information.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiResult, ErrorBody, Json};
use super::{AppState, bearer_token};
use crate::error::{ErrorCode, WharfError};
use crate::store::keys as key_store;

pub fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

pub fn authenticated_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(info))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Liveness: answers while the server runs.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Prometheus metrics in the text exposition format. They span every owner, so they need an
/// admin key or the metrics token (`[metrics] token`), unless `[metrics] public = true`.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody),
))]
async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    if !state.config.metrics.public {
        authorize_metrics(&state, &headers).await?;
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    ))
}

async fn authorize_metrics(state: &AppState, headers: &HeaderMap) -> Result<(), WharfError> {
    let Some(secret) = bearer_token(headers) else {
        return Err(WharfError::new(
            ErrorCode::Unauthorized,
            "/metrics needs `Authorization: Bearer <admin key or metrics token>`",
        ));
    };
    if let Some(token) = &state.config.metrics.token
        && same_secret(secret, token)
    {
        return Ok(());
    }
    match key_store::authenticate(&state.db, secret).await? {
        Some(principal) if principal.admin => Ok(()),
        Some(_) => Err(WharfError::new(
            ErrorCode::Forbidden,
            "/metrics spans every owner: it needs an admin key or the metrics token",
        )),
        None => Err(WharfError::new(
            ErrorCode::Unauthorized,
            "unknown or revoked API key or metrics token",
        )),
    }
}

/// Compares digests in constant time, so the answer's timing says nothing of the token.
fn same_secret(presented: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Info {
    version: &'static str,
    /// The current version of the `wharf:plugin` WIT package (what the SDK builds against).
    plugin_api: String,
    /// Every `wharf:plugin` version served side by side; a pack's `requires.wharf` picks one.
    plugin_apis: Vec<String>,
    /// Sandbox drivers available on this host.
    drivers: Vec<&'static str>,
    /// What the process driver confines on this host.
    process_isolation: Option<crate::sandbox::isolation::IsolationStatus>,
    /// Configured profiles whose process sandboxes run WITHOUT isolation
    /// (`isolation = "none"`; admin keys only).
    unisolated_profiles: Vec<String>,
}

/// Server version, plugin API version and available sandbox drivers.
#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = Info)))]
async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        plugin_api: crate::packs::manifest::PLUGIN_API_VERSION.to_string(),
        plugin_apis: crate::packs::manifest::PluginApi::ALL
            .iter()
            .map(|api| api.version().to_string())
            .collect(),
        drivers: state.sandboxes.driver_names(),
        process_isolation: state.sandboxes.process_isolation(),
        unisolated_profiles: state.sandboxes.profiles().unisolated(),
    })
}
