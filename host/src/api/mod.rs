//! The HTTP API (axum). Routes are declared with utoipa so `/openapi.json`
//! is generated from the same code that serves them.

pub mod approvals;
pub mod audit;
pub mod batches;
pub mod cases;
pub mod contract;
pub mod error;
pub mod keys;
pub mod overlays;
pub mod packs;
pub mod probes;
pub mod relays;
pub mod sandboxes;
pub mod system;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use self::error::{ApiError, REQUEST_ID};
use crate::config::Config;
use crate::error::{ErrorCode, WharfError};
use crate::metrics::Metrics;
use crate::packs::Packs;
use crate::sandbox::service::Sandboxes;
use crate::store::Db;
use crate::store::keys::{self as key_store, Principal};

/// Everything a handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub packs: Arc<Packs>,
    pub sandboxes: Arc<Sandboxes>,
    pub metrics: Arc<Metrics>,
    pub probes: Arc<crate::probes::ProbeService>,
    pub runs: Arc<crate::jobs::RunEngine>,
    pub cases: Arc<crate::cases::Cases>,
    pub batches: Arc<crate::batches::Batches>,
    pub relays: Arc<crate::relays::Relays>,
    /// Every capability call goes through it (routing, scopes, approvals, masking, audit).
    pub capabilities: Arc<crate::capabilities::service::CapabilityService>,
    /// Cancelled when the server stops serving: long-lived streams (MCP sessions) end, so
    /// a graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Wharf", description = "Plugin packs as sandboxed WebAssembly components, sandboxes, probes."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorBody, crate::error::ErrorCode))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every documented route: the public ones, and the others wrapped by
/// `behind_key` (the API-key check; the document is the same either way).
fn documented_routes(
    behind_key: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let authenticated = OpenApiRouter::new()
        .merge(packs::routes())
        .merge(keys::routes())
        .merge(sandboxes::routes())
        .merge(probes::routes())
        .merge(overlays::routes())
        .merge(cases::routes())
        .merge(batches::routes())
        .merge(relays::routes())
        .merge(approvals::routes())
        .merge(audit::routes())
        .merge(system::authenticated_routes());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::public_routes())
        .merge(behind_key(authenticated))
}

/// The document served at `/openapi.json`, with the responses every route
/// shares (see [`contract`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, openapi) = documented_routes(|routes| routes).split_for_parts();
    contract::complete(openapi)
}

/// The router and the OpenAPI document it was built with.
pub fn router(state: AppState) -> Router {
    let key_check = middleware::from_fn_with_state(state.clone(), require_key);
    let (router, openapi) =
        documented_routes(|routes| routes.route_layer(key_check)).split_for_parts();
    let openapi = Arc::new(contract::complete(openapi));
    // MCP authenticates on its own (the same keys), and keeps sessions to their key.
    let router = match crate::mcp::routes(&state) {
        Some(mcp) => router.merge(mcp),
        None => router,
    };
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(openapi.as_ref().clone()) }),
        )
        .fallback(|| async { ApiError(WharfError::new(ErrorCode::NotFound, "no such route")) })
        .method_not_allowed_fallback(|| async {
            ApiError(WharfError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method",
            ))
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), bounded_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Gives each request an id (echoed in `x-request-id` and error bodies), a
/// span, and metrics.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = crate::store::keys::new_id("req");
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let started = Instant::now();
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span.clone()),
        )
        .await;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[method.as_str(), &route, status.as_str()])
        .inc();
    state
        .metrics
        .http_request_seconds
        .with_label_values(&[method.as_str(), &route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "served"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A refused body up to this size is read and dropped before the answer, so that a client
/// still sending it reads the 413 instead of a connection reset (a lingering close, as web
/// servers do). Larger ones are not read: the connection closes on them.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
/// The longest a refused body is read for.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A declared body past `max_body_bytes` is `413 payload_too_large` on every route, also those
/// that read no body, before the key check. (Bodies without a length are cut at the limit by
/// `DefaultBodyLimit` where a handler reads them.) File uploads stream under their own limit,
/// `sandbox.max_upload_bytes`.
async fn bounded_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let streamed_upload = request.method() == axum::http::Method::PUT
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str() == sandboxes::FILES_ROUTE);
    match declared {
        Some(length) if !streamed_upload && length > state.config.max_body_bytes as u64 => {
            if length <= LINGER_BYTES {
                let mut body = request.into_body().into_data_stream();
                let _ = tokio::time::timeout(LINGER_TIME, async {
                    while let Some(Ok(_)) = futures::StreamExt::next(&mut body).await {}
                })
                .await;
            }
            ApiError(error::payload_too_large()).into_response()
        }
        _ => next.run(request).await,
    }
}

/// `Authorization: Bearer <key>`; a revoked key fails from the next request on.
async fn require_key(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(secret) = bearer_token(request.headers()) else {
        return ApiError(WharfError::new(
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <api key>`",
        ))
        .into_response();
    };
    match key_store::authenticate(&state.db, secret).await {
        Ok(Some(principal)) => {
            let owner: Arc<str> = Arc::from(principal.owner.as_str());
            request.extensions_mut().insert(principal);
            // Plugin calls made for this request run, and log, on behalf of the key's owner.
            crate::runtime::call::CALL_OWNER
                .scope(owner, next.run(request))
                .await
        }
        Ok(None) => ApiError(WharfError::new(
            ErrorCode::Unauthorized,
            "unknown or revoked API key",
        ))
        .into_response(),
        Err(err) => ApiError(err).into_response(),
    }
}

/// The secret of `Authorization: Bearer <secret>`, if any.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Fails unless the caller holds an admin key.
pub fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.admin {
        Ok(())
    } else {
        Err(WharfError::new(ErrorCode::Forbidden, "this needs an admin key").into())
    }
}
