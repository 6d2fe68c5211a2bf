//! Sandboxes: lifecycle, exec (plain and streamed), files, events, and
//! capability calls on them. Every route is scoped to the caller's owner:
//! another owner's sandbox is `not_found`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::{self, error_set};
use super::error::{ApiError, ApiResult, Json, Path, Query};
use crate::capabilities::InvokeOutcome;
use crate::capabilities::scope::{self, SANDBOX_EXEC, SANDBOX_FILES_READ, SANDBOX_FILES_WRITE};
use crate::capabilities::secrets::{RequestSecrets, SECRET_ENV_HEADER, SecretMasker};
use crate::capabilities::service::{
    Approval, AvailableCapability, CallOutcome, unconfined_forbidden,
};
use crate::error::{ErrorCode, WharfError};
use crate::sandbox::service::{
    ExecInput, LOCAL_PROFILE, Sandbox, SandboxEvent, SandboxPage, SandboxStatus,
};
use crate::sandbox::{DirEntry, ExecOutput, FileUpload, SandboxPath, StreamKind};
use crate::store::keys::Principal;

/// Routes axum serves through its own router (a `{*path}` wildcard or a
/// WebSocket upgrade), documented here so `/openapi.json` lists every route.
/// The `{path}` parameter of the file routes may contain `/`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    download,
    upload,
    delete_file,
    list_dir,
    make_dir,
    exec_stream,
    events_stream
))]
struct WildcardAndSocketRoutes;

error_set!(
    /// Reading a sandbox's record or events.
    SandboxLookup: NotFound
);
error_set!(
    /// Creating a sandbox (a replay waits for the sandbox it created).
    CreateErrors: ValidationError, CapabilityNotSupported, Forbidden, QuotaExceeded, IdempotencyConflict, SessionNotReady, DriverUnavailable, IsolationUnavailable
);
error_set!(
    /// Stopping, starting or deleting a sandbox's runtime.
    LifecycleErrors: Forbidden, NotFound, Conflict, SessionNotReady, DriverUnavailable
);
error_set!(
    /// Using a sandbox (exec): it is started first if stopped.
    UseErrors: ValidationError, InvalidPath, CapabilityNotSupported, Forbidden, NotFound, FileNotFound, Conflict, SessionNotReady, DriverUnavailable, IsolationUnavailable
);
error_set!(
    /// Reading or changing the workspace's files.
    FileErrors: ValidationError, InvalidPath, CapabilityNotSupported, Forbidden, NotFound, FileNotFound, Conflict, SessionNotReady, DriverUnavailable
);
error_set!(
    /// Uploading a file.
    UploadErrors: ValidationError, InvalidPath, CapabilityNotSupported, Forbidden, NotFound, FileNotFound, Conflict, PayloadTooLarge, SessionNotReady, DriverUnavailable
);
error_set!(
    /// A capability call: the sandbox is used, then a plugin runs.
    InvokeErrors: ValidationError, InvalidPath, CapabilityNotSupported, Forbidden, QuotaExceeded, NotFound, FileNotFound, Conflict, PluginError, CompileError,
        PluginTrap, PluginUnavailable, SessionNotReady, DriverUnavailable, IsolationUnavailable, PluginTimeout, Timeout
);
error_set!(
    /// A WebSocket route asked without the upgrade headers, or for a sandbox that does not exist.
    SocketErrors: Forbidden, NotFound, UpgradeRequired
);

/// The file routes; `PUT` streams an upload under `sandbox.max_upload_bytes`, not the JSON
/// body limit.
pub const FILES_ROUTE: &str = "/v1/sandboxes/{id}/files/{*path}";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<WildcardAndSocketRoutes as utoipa::OpenApi>::openapi())
        .routes(routes!(create_sandbox, list_sandboxes))
        .routes(routes!(get_sandbox, delete_sandbox))
        .routes(routes!(stop_sandbox))
        .routes(routes!(start_sandbox))
        .routes(routes!(keepalive_sandbox))
        .routes(routes!(exec))
        .routes(routes!(list_events))
        .routes(routes!(invoke_capability))
        .routes(routes!(sandbox_capabilities))
        .routes(routes!(list_root))
        // Documented by `WildcardAndSocketRoutes`.
        .route(FILES_ROUTE, get(download).put(upload).delete(delete_file))
        .route(
            "/v1/sandboxes/{id}/dirs/{*path}",
            get(list_dir).put(make_dir),
        )
        .route("/v1/sandboxes/{id}/exec/stream", get(exec_stream))
        .route("/v1/sandboxes/{id}/events/stream", get(events_stream))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Sandbox profile; default `local`.
    #[serde(default)]
    profile: Option<String>,
}

/// Creates a sandbox owned by the caller's key owner. With an
/// `Idempotency-Key` header, repeating the same body returns the same
/// sandbox (200) while it exists; a different body with the same key is
/// `idempotency_conflict`. A key whose sandbox was deleted, or whose create
/// failed, is forgotten: the next request with it creates anew. Past
/// `[quotas] sandboxes_per_owner` (admin keys exempt) the answer is
/// `quota_exceeded`.
#[utoipa::path(post, path = "/v1/sandboxes", request_body = CreateSandbox,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256,
        pattern = "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$",
        description = "Makes the create safe to retry: printable ASCII, 1 to 256 characters")),
    responses(
        (status = 201, body = Sandbox),
        (status = 200, body = Sandbox, description = "idempotent replay"),
        CreateErrors,
    ))]
async fn create_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Json(body): Json<CreateSandbox>,
) -> ApiResult<(StatusCode, Json<Sandbox>)> {
    let profile = body
        .profile
        .clone()
        .unwrap_or_else(|| LOCAL_PROFILE.to_string());
    let key = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| WharfError::validation("Idempotency-Key must be ASCII"))?
                .trim()
                .to_string();
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
                return Err(WharfError::validation(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
                ))
                .into());
            }
            Some(key)
        }
        None => None,
    };
    let (sandbox, replay) = create_for(&state, &principal, &profile, key.as_deref()).await?;
    Ok((
        if replay {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(sandbox),
    ))
}

/// Creates a sandbox of `profile` for the caller, as `POST /v1/sandboxes` and the MCP tool
/// `sandbox_create` do: a profile without isolation is for admin keys only, the key's
/// profile scope and the owner's quota apply. With an idempotency key, the same profile
/// again is a replay (`true`).
pub(crate) async fn create_for(
    state: &AppState,
    principal: &Principal,
    profile: &str,
    idempotency_key: Option<&str>,
) -> Result<(Sandbox, bool), WharfError> {
    if state.sandboxes.profiles().get(profile)?.unconfined() && !principal.admin {
        return Err(unconfined_forbidden(profile));
    }
    scope::require_profile(principal, profile)?;
    let normalized = serde_json::json!({ "profile": profile });
    let fingerprint = hex::encode(sha2::Sha256::digest(normalized.to_string().as_bytes()));
    let idempotency = idempotency_key.map(|key| (key, fingerprint.as_str()));
    let quota = state.config.quotas.sandboxes_for(principal.admin);
    state
        .sandboxes
        .create(&principal.owner, profile, idempotency, quota)
        .await
}

/// The longest `Idempotency-Key` accepted (the OpenAPI parameter says the same).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// The largest page of `GET /v1/sandboxes` (the OpenAPI parameter says the same).
const MAX_SANDBOX_PAGE: usize = 500;
/// The largest page of `GET /v1/sandboxes/{id}/events` (the OpenAPI parameter says the same).
const MAX_EVENT_PAGE: usize = 1000;

/// `Some(limit)` within `1..=max`, else the `validation_error` naming the range.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, WharfError> {
    match limit.unwrap_or(default) {
        limit if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(WharfError::validation(format!(
            "`limit` must be within 1..={max}"
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<SandboxStatus>,
    profile: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's sandboxes, oldest first, paginated.
#[utoipa::path(get, path = "/v1/sandboxes", params(ListQuery), responses((status = 200, body = SandboxPage)))]
async fn list_sandboxes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<SandboxPage>> {
    let limit = page_limit(query.limit, 100, MAX_SANDBOX_PAGE)?;
    let page = state
        .sandboxes
        .list(
            &principal.owner,
            query.status,
            query.profile.as_deref(),
            limit,
            query.cursor.as_deref(),
        )
        .await?;
    Ok(Json(page))
}

/// One sandbox; another owner's sandbox is `not_found`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = Sandbox),
    SandboxLookup,
))]
async fn get_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.get(&principal.owner, &id).await?))
}

/// Deletes a sandbox, its runtime and its workspace.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path)), responses(
    (status = 204),
    LifecycleErrors,
))]
async fn delete_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .capabilities
        .authorize_lifecycle(&principal, &id)
        .await?;
    state.sandboxes.delete(&principal.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops the sandbox's runtime; its files stay. Any later use starts it again.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", params(("id" = String, Path)), responses(
    (status = 200, body = Sandbox), LifecycleErrors,
))]
async fn stop_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    state
        .capabilities
        .authorize_lifecycle(&principal, &id)
        .await?;
    Ok(Json(state.sandboxes.stop(&principal.owner, &id).await?))
}

/// Starts a stopped sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", params(("id" = String, Path)), responses(
    (status = 200, body = Sandbox), LifecycleErrors,
))]
async fn start_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    state
        .capabilities
        .authorize_lifecycle(&principal, &id)
        .await?;
    Ok(Json(state.sandboxes.start(&principal.owner, &id).await?))
}

/// Pushes back the idle deadline (the profile's `idle_timeout_secs`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/keepalive", params(("id" = String, Path)), responses(
    (status = 200, body = Sandbox), SandboxLookup,
))]
async fn keepalive_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    state
        .capabilities
        .authorize_lifecycle(&principal, &id)
        .await?;
    Ok(Json(
        state.sandboxes.keepalive(&principal.owner, &id).await?,
    ))
}

/// A string without NUL (programs take C strings). Used by [`ExecFields`]' schema.
const NO_NUL: &str = "^[^\\x00]*$";
/// An environment variable name: not empty, no `=`, no NUL.
const ENV_NAME: &str = "^[^=\\x00]+$";

fn string_without_nul() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
}

fn argv_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(string_without_nul())
        .min_items(Some(1))
        .description(Some("The program and its arguments."))
}

fn command_schema() -> ObjectBuilder {
    string_without_nul().description(Some(
        "A shell command line, run with `sh -c` (instead of `argv`).",
    ))
}

fn env_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ENV_NAME)),
        ))
        .additional_properties(Some(string_without_nul()))
        .description(Some("Environment variables added to the profile's."))
}

fn secret_env_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ENV_NAME)),
        ))
        .additional_properties(Some(
            string_without_nul().min_length(Some(4)).max_length(Some(4096)),
        ))
        .max_properties(Some(32))
        .description(Some(
            "Secret environment variables: set like `env`, their values masked as `***` in everything the server returns or logs.",
        ))
}

/// A command to run: exactly one of `argv` and `command`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecFields {
    #[schema(schema_with = argv_schema)]
    argv: Option<Vec<String>>,
    #[schema(schema_with = command_schema)]
    command: Option<String>,
    #[serde(default)]
    #[schema(schema_with = env_schema)]
    env: BTreeMap<String, String>,
    /// Environment variables whose values are masked (`***`) in the output, events and
    /// errors: 4 to 4096 bytes each, at most 32.
    #[serde(default)]
    #[schema(schema_with = secret_env_schema)]
    secret_env: BTreeMap<String, String>,
    /// Working directory relative to the workspace.
    cwd: Option<String>,
    /// Text written to the process's standard input.
    stdin: Option<String>,
    /// Kill the command after this long (capped by `sandbox.exec_max_timeout_ms`).
    timeout_ms: Option<u64>,
}

/// An exec request: [`ExecFields`] with exactly one of `argv` and `command`.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ExecBody(pub(crate) ExecFields);

impl utoipa::PartialSchema for ExecBody {
    fn schema() -> RefOr<Schema> {
        contract::exactly_one_of(ExecFields::schema(), &["argv", "command"])
    }
}

impl utoipa::ToSchema for ExecBody {}

impl ExecBody {
    pub(crate) fn into_input(self) -> Result<ExecInput, WharfError> {
        let ExecBody(fields) = self;
        let argv = match (fields.argv, fields.command) {
            (Some(argv), None) => argv,
            (None, Some(command)) => vec!["sh".to_string(), "-c".to_string(), command],
            _ => {
                return Err(WharfError::validation(
                    "give exactly one of `argv` and `command`",
                ));
            }
        };
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(WharfError::validation(
                "`argv` and `command` may not contain NUL",
            ));
        }
        for (name, value) in &fields.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(WharfError::validation(format!(
                    "invalid environment variable name {name:?}"
                )));
            }
            if value.contains('\0') {
                return Err(WharfError::validation(format!(
                    "environment variable {name:?} contains NUL"
                )));
            }
        }
        let ExecFields {
            env,
            secret_env,
            cwd,
            stdin,
            timeout_ms,
            ..
        } = fields;
        Ok(ExecInput {
            argv,
            env: env.into_iter().collect(),
            secrets: RequestSecrets::new(secret_env)?,
            cwd: cwd.as_deref().map(SandboxPath::parse).transpose()?,
            stdin: stdin.map(String::into_bytes),
            timeout_ms,
            sink: None,
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    /// None when killed by a signal or the timeout.
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    duration_ms: u64,
    timed_out: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
    /// A process was killed for passing the profile's memory limit.
    oom_killed: bool,
}

impl From<ExecOutput> for ExecResult {
    fn from(out: ExecOutput) -> Self {
        Self {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            duration_ms: out.duration.as_millis() as u64,
            timed_out: out.timed_out,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
            oom_killed: out.oom_killed,
        }
    }
}

/// Runs a command in the sandbox and returns its capped output.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", params(("id" = String, Path)), request_body = ExecBody, responses(
    (status = 200, body = ExecResult),
    UseErrors,
))]
async fn exec(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<ExecBody>,
) -> ApiResult<Json<ExecResult>> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_EXEC)
        .await?;
    let input = body.into_input()?;
    let started = std::time::Instant::now();
    let result = state.sandboxes.exec(&principal.owner, &id, input).await;
    state
        .capabilities
        .record_direct_exec(
            &principal,
            &id,
            result.as_ref().map(|_| ()),
            started.elapsed(),
        )
        .await;
    Ok(Json(result?.into()))
}

/// WebSocket: the first client message is an exec body (JSON); the server
/// answers with one JSON record per output line, `{type:"line", ts, stream,
/// level, line, partial}`, then `{type:"exit", ...}` (or `{type:"error", code,
/// message}`). A line longer than 64 KiB comes in pieces, `partial: true` on
/// all but the last. Output flows at the client's pace: a slow reader slows
/// the command. Closing the socket (or taking no message for the exec's
/// timeout) kills the command.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/exec/stream", params(("id" = String, Path)), responses(
    (status = 101, description = "WebSocket upgrade; then line records and a final exit record"),
    SocketErrors,
))]
async fn exec_stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let masker = state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_EXEC)
        .await?;
    state.sandboxes.get(&principal.owner, &id).await?;
    // The exec message is a request body like any other: the same limit.
    let ws = upgrade(ws)?.max_message_size(state.config.max_body_bytes);
    Ok(ws.on_upgrade(move |socket| run_exec_stream(state, principal, id, masker, socket)))
}

/// The upgrade, or `upgrade_required` (JSON, like every error) when the
/// request is not a WebSocket handshake. Asked after the sandbox is found,
/// so a plain GET learns first whether the sandbox exists.
fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, WharfError> {
    ws.map_err(|rejection| {
        WharfError::new(
            ErrorCode::UpgradeRequired,
            format!(
                "this route is a WebSocket: {} (send `Connection: upgrade`, `Upgrade: websocket`, \
                 `Sec-WebSocket-Version: 13` and `Sec-WebSocket-Key`)",
                rejection.body_text()
            ),
        )
    })
}

async fn send_json(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

fn error_record(err: &WharfError) -> serde_json::Value {
    serde_json::json!({"type": "error", "code": err.code.as_str(), "message": err.message})
}

fn masked_error_record(err: &WharfError, masker: &SecretMasker) -> serde_json::Value {
    error_record(&masker.mask_error(err.clone()))
}

/// Output chunks in flight between a streamed exec and its WebSocket. When
/// they are all waiting, the driver's reader waits too, so a slow client
/// slows the command (its pipe fills) instead of growing the server's memory.
const STREAM_CHUNKS_BUFFERED: usize = 16;

/// The longest `line` record: a longer line goes out in pieces of at most
/// this many bytes, each marked `partial` but the last, so the server never
/// holds more than this of an unfinished line.
pub const LINE_RECORD_MAX_BYTES: usize = 64 * 1024;

async fn run_exec_stream(
    state: AppState,
    principal: Principal,
    id: String,
    profile_masker: SecretMasker,
    mut socket: WebSocket,
) {
    let owner = principal.owner.clone();
    let first = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => break text.to_string(),
            Some(Ok(Message::Binary(bytes))) => break String::from_utf8_lossy(&bytes).into_owned(),
            Some(Ok(_)) => continue,
            _ => return,
        }
    };
    let input = serde_json::from_str::<ExecBody>(&first)
        .map_err(|err| WharfError::validation(format!("invalid exec message: {err}")))
        .and_then(ExecBody::into_input);
    let mut input = match input {
        Ok(input) => input,
        Err(err) => {
            send_json(&mut socket, error_record(&err)).await;
            return;
        }
    };
    // Each line record is masked: the profile's secrets and this request's.
    let masker = match state.sandboxes.profile_of(&owner, &id).await {
        Ok(profile) => crate::sandbox::service::Sandboxes::masker(&profile, &input.secrets),
        Err(_) => profile_masker,
    };
    let started = std::time::Instant::now();
    // A client that takes no message for as long as the exec may run is
    // stalled: it is dropped and the command killed.
    let stall_limit = state.config.sandbox.exec_timeout(input.timeout_ms);
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS_BUFFERED);
    input.sink = Some(tx);
    let sandboxes = state.sandboxes.clone();
    let (task_owner, task_id) = (owner.clone(), id.clone());
    let task = tokio::spawn(async move { sandboxes.exec(&task_owner, &task_id, input).await });
    let mut lines = [LineSplitter::default(), LineSplitter::default()];
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                let Some((kind, chunk)) = chunk else { break };
                let records = lines[stream_index(kind)].push(&chunk);
                for (line, partial) in records {
                    let record = line_record(kind, &line, partial, &masker);
                    if !send_within(&mut socket, record, stall_limit).await {
                        // The client went away or stalled: stop the command.
                        task.abort();
                        return;
                    }
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // Closing the stream ends the command, as hanging up a terminal does.
                    task.abort();
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let mut open = true;
    for kind in [StreamKind::Stdout, StreamKind::Stderr] {
        if let Some(rest) = lines[stream_index(kind)].finish()
            && open
        {
            open = send_within(
                &mut socket,
                line_record(kind, &rest, false, &masker),
                stall_limit,
            )
            .await;
        }
    }
    let finished = task.await;
    let audited = match &finished {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.clone()),
        Err(_) => Err(WharfError::internal("exec task failed")),
    };
    state
        .capabilities
        .record_direct_exec(
            &principal,
            &id,
            audited.as_ref().map(|_| ()),
            started.elapsed(),
        )
        .await;
    let record = match finished {
        Ok(Ok(out)) => {
            let mut record = serde_json::to_value(ExecResult::from(out)).unwrap_or_default();
            if let Some(map) = record.as_object_mut() {
                map.remove("stdout");
                map.remove("stderr");
                map.insert("type".into(), "exit".into());
            }
            record
        }
        Ok(Err(err)) => masked_error_record(&err, &masker),
        Err(_) => error_record(&WharfError::internal("exec task failed")),
    };
    if open && send_within(&mut socket, record, stall_limit).await {
        let _ = socket.send(Message::Close(None)).await;
    }
}

fn stream_index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

/// Sends one JSON record; false when the client is gone or took none within `limit`.
async fn send_within(socket: &mut WebSocket, value: serde_json::Value, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, send_json(socket, value)).await,
        Ok(true)
    )
}

/// Cuts one output stream into lines, holding at most
/// [`LINE_RECORD_MAX_BYTES`] of an unfinished one.
#[derive(Default)]
struct LineSplitter {
    unfinished: Vec<u8>,
}

impl LineSplitter {
    /// The records that `chunk` completes: (bytes without the newline, partial).
    fn push(&mut self, mut chunk: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let mut records = Vec::new();
        while !chunk.is_empty() {
            let room = LINE_RECORD_MAX_BYTES - self.unfinished.len();
            let take = &chunk[..chunk.len().min(room)];
            match take.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    self.unfinished.extend_from_slice(&take[..pos]);
                    records.push((std::mem::take(&mut self.unfinished), false));
                    chunk = &chunk[pos + 1..];
                }
                None => {
                    self.unfinished.extend_from_slice(take);
                    chunk = &chunk[take.len()..];
                    if self.unfinished.len() == LINE_RECORD_MAX_BYTES {
                        let cut = utf8_cut(&self.unfinished);
                        let rest = self.unfinished.split_off(cut);
                        records.push((std::mem::replace(&mut self.unfinished, rest), true));
                    }
                }
            }
        }
        records
    }

    /// What is left after the stream ended (a last line without a newline).
    fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.unfinished.is_empty()).then(|| std::mem::take(&mut self.unfinished))
    }
}

/// Where to cut `bytes` so no UTF-8 character is split: before a character
/// that is incomplete at the end (the whole length when none is).
fn utf8_cut(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Err(err) if err.error_len().is_none() && err.valid_up_to() > 0 => err.valid_up_to(),
        _ => bytes.len(),
    }
}

fn line_record(
    kind: StreamKind,
    line: &[u8],
    partial: bool,
    masker: &SecretMasker,
) -> serde_json::Value {
    serde_json::json!({
        "type": "line",
        "ts": crate::store::now_rfc3339(),
        "stream": kind,
        "level": if kind == StreamKind::Stdout { "info" } else { "warn" },
        "line": masker.mask(&String::from_utf8_lossy(line)),
        "partial": partial,
    })
}

fn parse_path(raw: &str) -> Result<SandboxPath, ApiError> {
    Ok(SandboxPath::parse(raw)?)
}

/// Downloads a file's bytes, streamed, with its `Content-Length`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "Relative to the workspace; may contain `/`; at most 3072 bytes, each name at most 255")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        FileErrors,
    ))]
async fn download(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_READ)
        .await?;
    let path = parse_path(&path)?;
    let download = state
        .sandboxes
        .read_file(&principal.owner, &id, &path)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, download.size.to_string()),
        ],
        Body::from_stream(download.body),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Written {
    path: String,
    size: u64,
}

/// Streams the request body into the file (its parent must exist). Past
/// `sandbox.max_upload_bytes` the answer is 413 and the old file stays.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "Relative to the workspace; may contain `/`; at most 3072 bytes, each name at most 255")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Written),
        UploadErrors,
    ))]
async fn upload(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Written>)> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_WRITE)
        .await?;
    let path = parse_path(&path)?;
    let declared_size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = body.into_data_stream().map(|chunk| {
        chunk.map_err(|err| WharfError::validation(format!("the upload body broke off: {err}")))
    });
    let upload = FileUpload {
        body: Box::pin(body),
        declared_size,
    };
    let size = state
        .sandboxes
        .write_file(&principal.owner, &id, &path, upload)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Written {
            path: path.to_string(),
            size,
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct RemoveQuery {
    /// Remove a non-empty directory and everything in it.
    #[serde(default)]
    recursive: bool,
}

/// Removes a file (or a directory: empty, or any with `?recursive=true`).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "Relative to the workspace; may contain `/`; at most 3072 bytes, each name at most 255"), RemoveQuery),
    responses(
        (status = 204),
        FileErrors,
    ))]
async fn delete_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
    Query(query): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_WRITE)
        .await?;
    let path = parse_path(&path)?;
    state
        .sandboxes
        .remove(&principal.owner, &id, &path, query.recursive)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Listing {
    path: String,
    entries: Vec<DirEntry>,
}

/// Lists the workspace root. `GET /v1/sandboxes/{id}/dirs/{path}` lists a directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/dirs", params(("id" = String, Path)), responses(
    (status = 200, body = Listing), FileErrors,
))]
async fn list_root(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Listing>> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_READ)
        .await?;
    let entries = state
        .sandboxes
        .list_dir(&principal.owner, &id, &SandboxPath::root())
        .await?;
    Ok(Json(Listing {
        path: String::new(),
        entries,
    }))
}

/// Lists a directory of the workspace.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/dirs/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "Relative to the workspace; may contain `/`; at most 3072 bytes, each name at most 255")),
    responses(
        (status = 200, body = Listing),
        FileErrors,
    ))]
async fn list_dir(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Json<Listing>> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_READ)
        .await?;
    let path = parse_path(&path)?;
    let entries = state
        .sandboxes
        .list_dir(&principal.owner, &id, &path)
        .await?;
    Ok(Json(Listing {
        path: path.to_string(),
        entries,
    }))
}

/// Creates a directory and its missing parents.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/dirs/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "Relative to the workspace; may contain `/`; at most 3072 bytes, each name at most 255")),
    responses(
        (status = 201),
        FileErrors,
    ))]
async fn make_dir(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .capabilities
        .authorize_direct(&principal, &id, SANDBOX_FILES_WRITE)
        .await?;
    let path = parse_path(&path)?;
    state.sandboxes.mkdir(&principal.owner, &id, &path).await?;
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only events with a larger `seq`.
    #[serde(default)]
    after: i64,
    /// Page size, 1 to 1000 (default 500; the stream sends pages of 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventPage {
    items: Vec<SandboxEvent>,
    /// Pass as `after` to continue.
    next_after: i64,
}

/// The sandbox's event log after `after`. `GET .../events/stream?after=N`
/// (WebSocket) streams the same records live.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/events", params(("id" = String, Path), EventsQuery), responses(
    (status = 200, body = EventPage), SandboxLookup,
))]
async fn list_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    let limit = page_limit(query.limit, 500, MAX_EVENT_PAGE)?;
    let items = state
        .sandboxes
        .events(&principal.owner, &id, query.after, limit)
        .await?;
    let next_after = items.last().map(|e| e.seq).unwrap_or(query.after);
    Ok(Json(EventPage { items, next_after }))
}

/// WebSocket: the sandbox's events after `after`, then new ones live, one
/// JSON record each (`{type:"event", seq, ...}`). Reconnect with the last
/// `seq` seen as `after` to miss nothing.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/events/stream", params(("id" = String, Path), EventsQuery), responses(
    (status = 101, description = "WebSocket upgrade; then event records"),
    SocketErrors,
))]
async fn events_stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    page_limit(query.limit, MAX_EVENT_PAGE, MAX_EVENT_PAGE)?;
    state.sandboxes.events(&principal.owner, &id, 0, 1).await?;
    let ws = upgrade(ws)?;
    Ok(ws.on_upgrade(move |socket| {
        run_events_stream(state, principal.owner, id, query.after, socket)
    }))
}

async fn run_events_stream(
    state: AppState,
    owner: String,
    id: String,
    mut after: i64,
    mut socket: WebSocket,
) {
    let mut changes = state.sandboxes.subscribe_events();
    loop {
        changes.mark_unchanged();
        let events = match state.sandboxes.events(&owner, &id, after, 500).await {
            Ok(events) => events,
            Err(err) => {
                send_json(&mut socket, error_record(&err)).await;
                return;
            }
        };
        for event in &events {
            let mut record = serde_json::to_value(event).unwrap_or_default();
            if let Some(map) = record.as_object_mut() {
                map.insert("type".into(), "event".into());
            }
            if !send_json(&mut socket, record).await {
                return;
            }
            after = event.seq;
        }
        if events.len() == 500 {
            continue;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// What the caller may call on this sandbox: the active adapters' operations that the
/// sandbox's profile allows and the key's scope names, each saying whether it waits for an
/// approver.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/capabilities", params(("id" = String, Path)), responses(
    (status = 200, body = Vec<AvailableCapability>),
    LifecycleErrors,
))]
async fn sandbox_capabilities(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AvailableCapability>>> {
    Ok(Json(state.capabilities.available(&principal, &id).await?))
}

/// Runs `operation` of the adapter providing `capability`, bound to this sandbox, through
/// the one capability call path (routing, key scope, approval gate, masking, audit).
/// `capability` may pin versions of its pack: `shell@0.1` (a semver requirement). The body
/// is the operation's JSON input (see its schema in `GET /v1/packs/{id}`). When the
/// sandbox's profile makes the operation wait for an approver, the answer is 202 with the
/// approval: poll `GET /v1/approvals/{id}?wait=30` for the result. The optional
/// `Wharf-Secret-Env` header (a JSON object of names to values) adds secret variables to
/// every exec the adapter makes; their values are masked in the answer.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/capabilities/{capability}/{operation}",
    params(("id" = String, Path), ("capability" = String, Path), ("operation" = String, Path),
        ("Wharf-Secret-Env" = Option<String>, Header,
            description = "Secret variables for this call: a JSON object of names to values (4-4096 bytes each, at most 32)")),
    request_body(content = Object, description = "The operation's input document"),
    responses(
        (status = 200, body = InvokeOutcome),
        (status = 202, body = Approval, description = "waiting for an approver"),
        InvokeErrors,
    ))]
async fn invoke_capability(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, capability, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(input): Json<serde_json::Value>,
) -> ApiResult<Response> {
    let secrets = RequestSecrets::from_header(headers.get(SECRET_ENV_HEADER))?;
    let outcome = state
        .capabilities
        .call(&principal, &id, &capability, &operation, input, secrets)
        .await?;
    Ok(match outcome {
        CallOutcome::Done(outcome) => Json(outcome).into_response(),
        CallOutcome::PendingApproval(approval) => {
            (StatusCode::ACCEPTED, Json(*approval)).into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_lines_come_in_bounded_pieces() {
        let mut lines = LineSplitter::default();
        assert_eq!(
            lines.push(b"one\ntw"),
            vec![(b"one".to_vec(), false)],
            "an unfinished line waits"
        );
        assert_eq!(lines.push(b"o\n"), vec![(b"two".to_vec(), false)]);
        let long = vec![b'x'; 2 * LINE_RECORD_MAX_BYTES + 10];
        let records = lines.push(&long);
        assert_eq!(records.len(), 2);
        assert!(
            records
                .iter()
                .all(|(line, partial)| line.len() == LINE_RECORD_MAX_BYTES && *partial)
        );
        assert_eq!(lines.push(b"\n"), vec![(vec![b'x'; 10], false)]);
        assert_eq!(lines.finish(), None);
        lines.push(b"tail");
        assert_eq!(lines.finish(), Some(b"tail".to_vec()));
    }

    #[test]
    fn a_piece_never_splits_a_utf8_character() {
        let mut lines = LineSplitter::default();
        let mut text = vec![b'a'; LINE_RECORD_MAX_BYTES - 1];
        text.extend_from_slice("\u{e9}\n".as_bytes());
        let records = lines.push(&text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], (vec![b'a'; LINE_RECORD_MAX_BYTES - 1], true));
        assert_eq!(records[1], ("\u{e9}".as_bytes().to_vec(), false));
    }
}
