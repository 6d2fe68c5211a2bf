//! MCP at `/mcp`: streamable HTTP (rmcp), sessions bound to the API key that opened them.
//!
//! ```text
//! request -> guard: Bearer key (401 as REST) -> session id bound to another key? 403
//!                   -> no session id: reserve a session slot (mcp_session_limit)
//!         -> rmcp StreamableHttpService (LocalSessionManager, one SessionHandler a session)
//!         -> tools/list, tools/call for the request's key (tools.rs)
//! ```
//!
//! The tools are built from the packs at each call, so the list follows hot reload; each
//! session's handler sends `notifications/tools/list_changed` when a scan changes it.

mod handler;
mod sessions;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use self::handler::SessionHandler;
use self::sessions::SessionKeys;
use crate::api::error::ApiError;
use crate::api::{AppState, bearer_token};
use crate::error::{ErrorCode, WharfError};
use crate::store::keys as key_store;

/// The header that carries a session's id (streamable HTTP).
const SESSION_HEADER: &str = "mcp-session-id";

/// The `/mcp` routes, or none when `[mcp] enabled = false`.
pub fn routes(state: &AppState) -> Option<Router<AppState>> {
    let config = &state.config.mcp;
    if !config.enabled {
        return None;
    }
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(Duration::from_secs(config.session_idle_secs.max(1)));
    let manager = Arc::new(manager);
    let mut http = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(state.config.max_body_bytes)
        .with_cancellation_token(state.shutdown.child_token());
    http = if config.allowed_hosts.is_empty() {
        http.disable_allowed_hosts()
    } else {
        http.with_allowed_hosts(config.allowed_hosts.iter().cloned())
    };
    let factory_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(SessionHandler::new(factory_state.clone())),
        manager.clone(),
        http,
    );
    let guard_state = Arc::new(Guard {
        state: state.clone(),
        sessions: SessionKeys::new(manager, config),
    });
    Some(
        Router::new()
            .route_service("/mcp", service)
            .layer(middleware::from_fn_with_state(guard_state, guard)),
    )
}

struct Guard {
    state: AppState,
    sessions: SessionKeys,
}

/// Authenticates every `/mcp` request like the REST API (`Authorization: Bearer <key>`),
/// keeps sessions to the key that opened them, and counts new sessions against the limits.
async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let Some(secret) = bearer_token(request.headers()) else {
        return refuse(WharfError::new(
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <api key>`",
        ));
    };
    let principal = match key_store::authenticate(&guard.state.db, secret).await {
        Ok(Some(principal)) => principal,
        Ok(None) => {
            return refuse(WharfError::new(
                ErrorCode::Unauthorized,
                "unknown or revoked API key",
            ));
        }
        Err(err) => return refuse(err),
    };
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let reservation = match &session {
        Some(id) => {
            if let Some(key_id) = guard.sessions.key_of(id)
                && key_id != principal.key_id
            {
                return refuse(WharfError::new(
                    ErrorCode::Forbidden,
                    "this MCP session was opened with another API key; open a session of your own (initialize without Mcp-Session-Id)",
                ));
            }
            None
        }
        // A POST without a session id opens one (initialize).
        None if request.method() == axum::http::Method::POST => {
            match guard.sessions.reserve(&principal.key_id).await {
                Ok(reservation) => Some(reservation),
                Err(err) => return refuse(err),
            }
        }
        None => None,
    };
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    if let Some(reservation) = reservation
        && let Some(id) = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|value| value.to_str().ok())
    {
        reservation.bind(id);
    }
    response
}

fn refuse(err: WharfError) -> Response {
    ApiError(err).into_response()
}
