//! The MCP server of one session: tools/list and tools/call for the key of each request,
//! and `notifications/tools/list_changed` whenever a pack scan changes the adapters.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::request::Parts;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;

use super::tools;
use crate::api::AppState;
use crate::capabilities::secrets::{RequestSecrets, SECRET_ENV_HEADER};
use crate::error::ErrorCode;
use crate::store::keys::Principal;

/// One per session (rmcp builds it when a client initializes, and drops it when the
/// session ends).
pub struct SessionHandler {
    state: AppState,
    /// Dropped with the session: ends its list-change watcher.
    ended: tokio::sync::watch::Sender<()>,
}

impl SessionHandler {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            ended: tokio::sync::watch::channel(()).0,
        }
    }
}

/// The key of the HTTP request that carried this message: the `/mcp` guard authenticated
/// it and put it in the request's extensions.
fn principal(extensions: &rmcp::model::Extensions) -> Result<(Principal, &Parts), ErrorData> {
    let parts = extensions.get::<Parts>();
    parts
        .and_then(|parts| Some((parts.extensions.get::<Principal>()?.clone(), parts)))
        .ok_or_else(|| {
            // Unreachable behind the guard; refuse rather than serve without a key.
            ErrorData::invalid_request(
                "no authenticated API key on this request",
                Some(json!({"code": ErrorCode::Unauthorized})),
            )
        })
}

impl ServerHandler for SessionHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("wharf", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Create a sandbox with sandbox_create, then pass its id as `sandbox_id` to the other tools. \
             Adapter tools are named <capability>_<operation> and take {sandbox_id, input}. \
             A call that waits for an approver answers status `pending_approval` with the approval to poll.",
        )
    }

    /// Sessions (and so list-change notifications and the key binding) belong to the
    /// handshake revisions; the 2026-07-28 revision has neither.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (principal, _) = principal(&context.extensions)?;
        Ok(ListToolsResult::with_all_items(tools::list(
            &self.state,
            &principal,
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (principal, parts) = principal(&context.extensions)?;
        let secrets = match RequestSecrets::from_header(parts.headers.get(SECRET_ENV_HEADER)) {
            Ok(secrets) => secrets,
            Err(err) => return Ok(tools::error_result(&err).into()),
        };
        let owner: Arc<str> = Arc::from(principal.owner.as_str());
        let name = request.name.to_string();
        // Plugin calls run, and log, on behalf of the key's owner (as REST calls do).
        let result = crate::runtime::call::CALL_OWNER
            .scope(
                owner,
                tools::call(
                    &self.state,
                    &principal,
                    secrets,
                    &name,
                    request.arguments.unwrap_or_default(),
                ),
            )
            .await;
        match result {
            Some(result) => Ok(result.into()),
            None => Err(ErrorData::invalid_params(
                format!("no tool {name:?}: tools/list names the tools of this key"),
                Some(json!({"code": ErrorCode::CapabilityNotSupported})),
            )),
        }
    }

    /// Watches pack scans for the session's life and tells the client when the adapter
    /// tools changed (a pack dropped, replaced or removed).
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let state = self.state.clone();
        let peer = context.peer;
        let mut ended = self.ended.subscribe();
        let mut scans = state.packs.scans();
        let mut seen = tools::adapter_fingerprint(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    scanned = scans.changed() => {
                        if scanned.is_err() {
                            return;
                        }
                        let now = tools::adapter_fingerprint(&state);
                        if now != seen {
                            seen = now;
                            if peer.notify_tool_list_changed().await.is_err() {
                                return;
                            }
                        }
                    }
                    // Err once the handler (the session) is gone.
                    _ = ended.changed() => return,
                }
            }
        });
    }
}
