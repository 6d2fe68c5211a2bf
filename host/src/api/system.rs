//! Health, metrics and server information.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::Json;

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

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Info {
    version: &'static str,
    /// Version of the `wharf:plugin` WIT package served to plugins.
    plugin_api: String,
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
        drivers: state.sandboxes.driver_names(),
        process_isolation: state.sandboxes.process_isolation(),
        unisolated_profiles: state.sandboxes.profiles().unisolated(),
    })
}
