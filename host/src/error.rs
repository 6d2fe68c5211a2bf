//! The one table of stable error codes, and the error type that carries them
//! from any layer of the host to the API.

use axum::http::StatusCode;
use serde::Serialize;

macro_rules! error_codes {
    ($($variant:ident => ($name:literal, $status:expr, $retriable:expr, $doc:literal)),+ $(,)?) => {
        /// Stable error codes. Each has one snake_case name and one HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode { $(#[doc = $doc] $variant),+ }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name),+ }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => $status),+ }
            }

            /// Whether the same request may succeed if retried later.
            pub fn retriable(self) -> bool {
                match self { $(ErrorCode::$variant => $retriable),+ }
            }

            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc),+ }
            }
        }
    };
}

error_codes! {
    ValidationError => ("validation_error", StatusCode::BAD_REQUEST, false, "The request body, query or path is malformed or fails validation."),
    InvalidPath => ("invalid_path", StatusCode::BAD_REQUEST, false, "A sandbox path is absolute, contains `..` or NUL, or escapes the sandbox root."),
    CapabilityNotSupported => ("capability_not_supported", StatusCode::BAD_REQUEST, false, "No active adapter provides the capability or operation, or the profile does not allow it."),
    Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED, false, "Missing, unknown or revoked API key."),
    Forbidden => ("forbidden", StatusCode::FORBIDDEN, false, "The API key is valid but may not do this: admin only, outside the key's scope (capabilities, profiles), or without the `approver` role."),
    QuotaExceeded => ("quota_exceeded", StatusCode::FORBIDDEN, false, "The owner already holds as many sandboxes or probe targets as its quota (`[quotas]`) allows; delete one first."),
    TargetNotAllowed => ("target_not_allowed", StatusCode::FORBIDDEN, false, "The target is, or resolves to, a loopback, private, link-local or other non-public address; only admin keys may reach those unless `[probes] allow_private_targets` is on."),
    NotFound => ("not_found", StatusCode::NOT_FOUND, false, "The resource does not exist or belongs to another owner."),
    FileNotFound => ("file_not_found", StatusCode::NOT_FOUND, false, "The file does not exist in the sandbox."),
    MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED, false, "The route exists but not with this HTTP method."),
    Conflict => ("conflict", StatusCode::CONFLICT, false, "The resource is in a state that does not allow this operation."),
    IdempotencyConflict => ("idempotency_conflict", StatusCode::CONFLICT, false, "The Idempotency-Key was already used with a different request body."),
    ApprovalExpired => ("approval_expired", StatusCode::GONE, false, "The approval was not decided before it expired (`[approvals] ttl_secs`); the call never ran. Ask again."),
    ApprovalDeclined => ("approval_declined", StatusCode::FORBIDDEN, false, "An approver declined the call; it never ran."),
    OverlayConflict => ("overlay_conflict", StatusCode::CONFLICT, false, "An overlay does not apply to the tree: a hunk finds no place (the message names the overlay, patch, file and hunk), a file it adds or creates is already there with other content, or the tree holds a link where it writes. Nothing was written."),
    PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE, false, "The request body exceeds the configured limit: `max_body_bytes` (1 MiB) on every route, `[sandbox] max_upload_bytes` for a file upload."),
    PluginError => ("plugin_error", StatusCode::UNPROCESSABLE_ENTITY, false, "The plugin ran and returned an error; `message` carries the plugin's code and text."),
    CompileError => ("compile_error", StatusCode::UNPROCESSABLE_ENTITY, false, "The code given to an adapter does not compile (e.g. a Python `SyntaxError`); nothing ran, and the message names the line."),
    UpgradeRequired => ("upgrade_required", StatusCode::UPGRADE_REQUIRED, false, "The route is a WebSocket: send the GET with the WebSocket upgrade headers."),
    InvalidProbeStep => ("invalid_probe_step", StatusCode::UNPROCESSABLE_ENTITY, false, "The provider plugin's probe plan has a step path that breaks the outbound URL rules (the message names the step and the rule); no request was sent."),
    PluginTrap => ("plugin_trap", StatusCode::BAD_GATEWAY, true, "The plugin trapped (panic, out of memory, invalid state). The host kept serving."),
    PluginTimeout => ("plugin_timeout", StatusCode::GATEWAY_TIMEOUT, true, "The plugin exceeded its per-call deadline, or the call its wall-clock bound (host calls included), and was stopped."),
    PluginUnavailable => ("plugin_unavailable", StatusCode::SERVICE_UNAVAILABLE, true, "Every pooled instance is in use, or the component's circuit is open after repeated faults; retry shortly."),
    SessionNotReady => ("session_not_ready", StatusCode::SERVICE_UNAVAILABLE, true, "The sandbox is not running yet; retry after `retry_after_ms`."),
    DriverUnavailable => ("driver_unavailable", StatusCode::SERVICE_UNAVAILABLE, true, "The sandbox driver (e.g. the Docker engine) is unavailable or failed the operation."),
    IsolationUnavailable => ("isolation_unavailable", StatusCode::SERVICE_UNAVAILABLE, false, "The process driver cannot confine execs on this host (the message names what is missing); an isolated profile cannot be used here."),
    McpSessionLimit => ("mcp_session_limit", StatusCode::SERVICE_UNAVAILABLE, true, "The server (`[mcp] max_sessions`) or this API key (`max_sessions_per_key`) holds as many MCP sessions as allowed; close one (`DELETE /mcp`) or wait for one to idle out (`session_idle_secs`)."),
    Timeout => ("timeout", StatusCode::GATEWAY_TIMEOUT, true, "The operation did not finish within its time limit."),
    GitCloneFailed => ("git_clone_failed", StatusCode::BAD_GATEWAY, true, "A case's repository could not be cloned (unreachable, not a repository, or past `[cases] clone_timeout_ms`); the message has git's reason."),
    RefNotFound => ("ref_not_found", StatusCode::UNPROCESSABLE_ENTITY, false, "The case's `ref` (branch, tag or commit) is not in the repository."),
    DockerfileNotFound => ("dockerfile_not_found", StatusCode::UNPROCESSABLE_ENTITY, false, "The case's Dockerfile (default `Dockerfile` in `context_dir`) is not a file inside the repository."),
    DockerBuildFailed => ("docker_build_failed", StatusCode::UNPROCESSABLE_ENTITY, false, "The image build failed: the message names the failing step and its error, or the limit it passed (`[cases] build_timeout_ms`, `build_memory_mib`, `max_context_mib`)."),
    PortPoolExhausted => ("port_pool_exhausted", StatusCode::SERVICE_UNAVAILABLE, true, "Every host port of `[cases] port_pool_start..=port_pool_end` is leased to a live case; stop one first."),
    ContainerStartFailed => ("container_start_failed", StatusCode::BAD_GATEWAY, false, "The engine could not create or start the case's container, or it exited with code 0 before it answered."),
    ContainerExitNonzero => ("container_exit_nonzero", StatusCode::UNPROCESSABLE_ENTITY, false, "The case's container exited with a nonzero code; the message has the code and its last log lines."),
    ReadinessTimeout => ("readiness_timeout", StatusCode::GATEWAY_TIMEOUT, true, "The case's container ran but its access URL gave no 2xx answer within `[cases] readiness_timeout_ms`."),
    DockerApiError => ("docker_api_error", StatusCode::BAD_GATEWAY, true, "The Docker engine failed a request for a case (or none answers)."),
    BatchInvalid => ("batch_invalid", StatusCode::UNPROCESSABLE_ENTITY, false, "No line of the batch is a valid task, or `strict=true` and some line is not; the message lists the lines by number and why. Nothing was queued."),
    HostInUse => ("host_in_use", StatusCode::CONFLICT, false, "The relay host still has running imports or resources that imports recorded on it; roll those imports back (`POST /v1/imports/{id}/rollback`) before deleting it."),
    RelayHostUnreachable => ("relay_host_unreachable", StatusCode::BAD_GATEWAY, true, "The relay host adapter could not detect the host at `base_url` with the admin token (no answer, a refused token, or not that kind of host); the message has the adapter's code and the host's answer. Nothing was registered."),
    RelayHostError => ("relay_host_error", StatusCode::BAD_GATEWAY, true, "The relay host adapter failed an operation on the host (plan, ensure, list, delete, repair); the message names the operation, the adapter's code and the host's answer."),
    UnknownModel => ("unknown_model", StatusCode::UNPROCESSABLE_ENTITY, false, "A model name is not known to the provider's active pack (after aliases); the message lists the three nearest model ids."),
    RunInterrupted => ("run_interrupted", StatusCode::SERVICE_UNAVAILABLE, true, "The server stopped while this work was in progress (e.g. mid-build) and it could not be resumed; start it again."),
    InternalError => ("internal_error", StatusCode::INTERNAL_SERVER_ERROR, true, "An unexpected failure inside the host; see the server log with the request id."),
}

/// An error with a stable code, raised anywhere in the host.
///
/// The message is shown to clients: never put secrets in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WharfError {
    pub code: ErrorCode,
    pub message: String,
    /// Overrides the code's default when the cause knows better (e.g. a plugin
    /// error that the plugin marked retriable).
    pub retriable: Option<bool>,
    /// For retriable states with a known wait (e.g. `session_not_ready`).
    pub retry_after_ms: Option<u64>,
}

impl WharfError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retriable: None,
            retry_after_ms: None,
        }
    }

    pub fn with_retriable(mut self, retriable: bool) -> Self {
        self.retriable = Some(retriable);
        self
    }

    pub fn with_retry_after(mut self, retry_after: std::time::Duration) -> Self {
        self.retry_after_ms = Some(retry_after.as_millis() as u64);
        self
    }

    pub fn retriable(&self) -> bool {
        self.retriable.unwrap_or_else(|| self.code.retriable())
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }
}

impl From<sqlx::Error> for WharfError {
    fn from(err: sqlx::Error) -> Self {
        tracing::error!(error = %err, "store error");
        Self::internal("storage failure")
    }
}

pub type WharfResult<T> = Result<T, WharfError>;

/// Renders the error-code table as Markdown (used to keep the README in sync).
pub fn markdown_table() -> String {
    let mut out = String::from("| code | HTTP | retriable | meaning |\n|---|---|---|---|\n");
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            code.as_str(),
            code.status().as_u16(),
            if code.retriable() { "yes" } else { "no" },
            code.description()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_table_name() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(
                json,
                code.as_str(),
                "serde and as_str disagree for {code:?}"
            );
        }
    }

    #[test]
    fn readme_lists_every_error_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the repo root");
        for line in markdown_table().lines().skip(2) {
            assert!(
                readme.contains(line),
                "README error table is missing or differs on:\n{line}"
            );
        }
    }
}
