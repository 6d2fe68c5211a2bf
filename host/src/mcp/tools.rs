//! The MCP tools: the sandbox tools (create, exec, files, destroy) and one tool per
//! operation of the active adapters, `<capability>_<operation>`, built from the packs
//! loaded now. Each does what its REST route does, with the same checks: adapter tools go
//! through [`CapabilityService::call`](crate::capabilities::service::CapabilityService::call)
//! (routing, key scope, approvals, masking, audit, metrics), sandbox tools through the
//! same owner and scope checks as `/v1/sandboxes/...`.

use std::sync::Arc;

use base64::Engine;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::sandboxes::{ExecBody, ExecFields, ExecResult, create_for};
use crate::capabilities::operation_tools;
use crate::capabilities::scope::{self, SANDBOX_EXEC, SANDBOX_FILES_READ, SANDBOX_FILES_WRITE};
use crate::capabilities::secrets::RequestSecrets;
use crate::capabilities::service::CallOutcome;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::packs::loader::OperationHints;
use crate::sandbox::service::LOCAL_PROFILE;
use crate::sandbox::{FileUpload, SandboxPath};
use crate::store::keys::Principal;

/// The built-in tools (sandboxes, and waiting for an approval), each with the scope entry its
/// REST route needs (`None`: every key, as for `POST /v1/sandboxes`, `DELETE
/// /v1/sandboxes/{id}` and `GET /v1/approvals/{id}`, which the key's profile scope and owner
/// still limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BuiltinTool {
    Create,
    Exec,
    FileRead,
    FileWrite,
    FileList,
    Destroy,
    ApprovalWait,
}

const BUILTIN_TOOLS: [BuiltinTool; 7] = [
    BuiltinTool::Create,
    BuiltinTool::Exec,
    BuiltinTool::FileRead,
    BuiltinTool::FileWrite,
    BuiltinTool::FileList,
    BuiltinTool::Destroy,
    BuiltinTool::ApprovalWait,
];

/// The longest an `approval_wait` call holds its request.
const MAX_APPROVAL_WAIT_SECS: u64 = 60;

impl BuiltinTool {
    fn name(self) -> &'static str {
        match self {
            BuiltinTool::Create => "sandbox_create",
            BuiltinTool::Exec => "sandbox_exec",
            BuiltinTool::FileRead => "sandbox_file_read",
            BuiltinTool::FileWrite => "sandbox_file_write",
            BuiltinTool::FileList => "sandbox_file_list",
            BuiltinTool::Destroy => "sandbox_destroy",
            BuiltinTool::ApprovalWait => "approval_wait",
        }
    }

    fn scope(self) -> Option<&'static str> {
        match self {
            BuiltinTool::Create | BuiltinTool::Destroy | BuiltinTool::ApprovalWait => None,
            BuiltinTool::Exec => Some(SANDBOX_EXEC),
            BuiltinTool::FileRead | BuiltinTool::FileList => Some(SANDBOX_FILES_READ),
            BuiltinTool::FileWrite => Some(SANDBOX_FILES_WRITE),
        }
    }

    fn hints(self) -> OperationHints {
        let (read_only, destructive, idempotent) = match self {
            BuiltinTool::Create => (false, false, false),
            BuiltinTool::Exec => (false, true, false),
            BuiltinTool::FileRead | BuiltinTool::FileList | BuiltinTool::ApprovalWait => {
                (true, false, true)
            }
            BuiltinTool::FileWrite | BuiltinTool::Destroy => (false, true, true),
        };
        OperationHints {
            read_only,
            destructive,
            idempotent,
        }
    }

    fn tool(self) -> Tool {
        let sandbox_id = json!({"type": "string", "description": "The sandbox's id (`sbx_...`), from sandbox_create."});
        let path = |what: &str| json!({"type": "string", "description": format!("{what}, relative to the workspace (no `..`, not absolute)")});
        let (description, schema) = match self {
            BuiltinTool::Create => (
                "Creates a sandbox (an isolated workspace where code runs) and returns its record; its `id` is the `sandbox_id` of every other tool.",
                json!({"type": "object", "properties": {
                    "profile": {"type": "string", "description": format!("Sandbox profile (default `{LOCAL_PROFILE}`), e.g. `docker`.")}
                }, "additionalProperties": false}),
            ),
            BuiltinTool::Exec => (
                "Runs a command in the sandbox (exactly one of `argv` and `command`, a shell line) and returns its exit code and capped output.",
                exec_schema(sandbox_id),
            ),
            BuiltinTool::FileRead => (
                "Reads a file of the sandbox: UTF-8 text as is, other bytes as base64 (`encoding` says which).",
                json!({"type": "object", "properties": {"sandbox_id": sandbox_id, "path": path("The file")},
                    "required": ["sandbox_id", "path"], "additionalProperties": false}),
            ),
            BuiltinTool::FileWrite => (
                "Writes a file of the sandbox (its directory must exist), replacing what was there.",
                json!({"type": "object", "properties": {
                    "sandbox_id": sandbox_id, "path": path("The file"),
                    "content": {"type": "string", "description": "The new content."},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "How `content` is given (default utf-8)."}
                }, "required": ["sandbox_id", "path", "content"], "additionalProperties": false}),
            ),
            BuiltinTool::FileList => (
                "Lists a directory of the sandbox (the workspace root when `path` is empty or absent).",
                json!({"type": "object", "properties": {"sandbox_id": sandbox_id, "path": path("The directory")},
                    "required": ["sandbox_id"], "additionalProperties": false}),
            ),
            BuiltinTool::Destroy => (
                "Deletes the sandbox, its runtime and its workspace.",
                json!({"type": "object", "properties": {"sandbox_id": sandbox_id},
                    "required": ["sandbox_id"], "additionalProperties": false}),
            ),
            BuiltinTool::ApprovalWait => (
                "Waits until an approval that a tool call answered (`pending_approval`) is decided, or `wait_secs` pass; returns the approval: its status and, once approved and run, the call's outcome.",
                json!({"type": "object", "properties": {
                    "approval_id": {"type": "string", "description": "The approval's id (`apr_...`), from the `pending_approval` answer."},
                    "wait_secs": {"type": "integer", "minimum": 0, "maximum": MAX_APPROVAL_WAIT_SECS, "description": "How long to wait for a decision (default 30)."}
                }, "required": ["approval_id"], "additionalProperties": false}),
            ),
        };
        tool(
            self.name().to_string(),
            description.to_string(),
            schema,
            self.hints(),
        )
    }
}

/// The exec tool's input: the REST exec body's fields (from its OpenAPI schema) and
/// `sandbox_id`.
fn exec_schema(sandbox_id: Value) -> Value {
    let mut schema = serde_json::to_value(<ExecFields as utoipa::PartialSchema>::schema())
        .expect("a schema serializes");
    schema["properties"]["sandbox_id"] = sandbox_id;
    schema["required"] = json!(["sandbox_id"]);
    schema["additionalProperties"] = json!(false);
    schema
}

fn tool(name: String, description: String, schema: Value, hints: OperationHints) -> Tool {
    let Value::Object(schema) = schema else {
        unreachable!("tool schemas are built as objects")
    };
    let mut tool = Tool::new(name, description, Arc::new(schema));
    tool.annotations = Some(
        ToolAnnotations::new()
            .read_only(hints.read_only)
            .destructive(hints.destructive)
            .idempotent(hints.idempotent)
            // Tools act on the caller's sandbox only, whatever the adapter.
            .open_world(false),
    );
    tool
}

/// An adapter operation as a tool, as loaded now.
struct AdapterTool {
    name: String,
    capability: String,
    operation: String,
    tool: Tool,
}

/// One tool per operation of every active adapter ([`operation_tools`]), beside the
/// sandbox tools.
fn adapter_tools(state: &AppState) -> Vec<AdapterTool> {
    let reserved: Vec<&str> = BUILTIN_TOOLS.iter().map(|t| t.name()).collect();
    operation_tools(&state.packs, &reserved)
        .into_iter()
        .map(|found| {
            let op = &found.operation;
            let description = format!(
                "{} ({}.{} of pack {} {}, run in the sandbox `sandbox_id` with `input`.)",
                op.description.trim_end_matches('.'),
                found.capability,
                op.name,
                found.route.pack.id,
                found.route.pack.version
            );
            let schema = json!({
                "type": "object",
                "properties": {
                    "sandbox_id": {"type": "string", "description": "The sandbox's id (`sbx_...`), from sandbox_create."},
                    "input": op.input_schema,
                },
                "required": ["sandbox_id", "input"],
                "additionalProperties": false,
            });
            AdapterTool {
                tool: tool(found.name.clone(), description, schema, op.hints),
                name: found.name,
                capability: found.capability,
                operation: op.name.clone(),
            }
        })
        .collect()
}

/// What changes the adapter tool list: which pack generation serves each capability.
pub fn adapter_fingerprint(state: &AppState) -> Vec<(String, String, u64)> {
    state
        .packs
        .snapshot()
        .capabilities
        .iter()
        .map(|(name, route)| (name.clone(), route.pack.id.clone(), route.pack.generation))
        .collect()
}

/// The tools the key may call: a tool outside its scope is not listed (and is refused
/// with `forbidden` when called anyway).
pub fn list(state: &AppState, principal: &Principal) -> Vec<Tool> {
    let sandbox = BUILTIN_TOOLS
        .iter()
        .filter(|t| {
            t.scope()
                .is_none_or(|name| scope::require(principal, name).is_ok())
        })
        .map(|t| t.tool());
    let adapters = adapter_tools(state)
        .into_iter()
        .filter(|t| scope::require(principal, &format!("{}.{}", t.capability, t.operation)).is_ok())
        .map(|t| t.tool);
    sandbox.chain(adapters).collect()
}

/// A tool call that found its tool: the tool's result (an error result carries
/// `{"error": {code, message, retriable}}`). `None` when no tool has that name.
pub async fn call(
    state: &AppState,
    principal: &Principal,
    secrets: RequestSecrets,
    name: &str,
    arguments: JsonObject,
) -> Option<CallToolResult> {
    let outcome = if let Some(tool) = BUILTIN_TOOLS.iter().find(|t| t.name() == name) {
        call_builtin_tool(state, principal, *tool, arguments).await
    } else {
        let adapter = adapter_tools(state).into_iter().find(|t| t.name == name)?;
        call_adapter(state, principal, secrets, &adapter, arguments).await
    };
    Some(outcome.unwrap_or_else(|err| error_result(&err)))
}

pub fn error_result(err: &WharfError) -> CallToolResult {
    CallToolResult::structured_error(json!({"error": {
        "code": err.code,
        "message": err.message,
        "retriable": err.retriable(),
    }}))
}

async fn call_adapter(
    state: &AppState,
    principal: &Principal,
    secrets: RequestSecrets,
    tool: &AdapterTool,
    mut arguments: JsonObject,
) -> WharfResult<CallToolResult> {
    let sandbox_id = take_string(&mut arguments, "sandbox_id")?;
    let input = arguments.remove("input").ok_or_else(|| {
        WharfError::validation(format!(
            "`input` is required: the input document of {}.{}",
            tool.capability, tool.operation
        ))
    })?;
    no_other_arguments(&arguments)?;
    let outcome = state
        .capabilities
        .call(
            principal,
            &sandbox_id,
            &tool.capability,
            &tool.operation,
            input,
            secrets,
        )
        .await?;
    Ok(match outcome {
        CallOutcome::Done(outcome) => CallToolResult::structured(to_json(&outcome)),
        CallOutcome::PendingApproval(approval) => {
            let poll = format!("/v1/approvals/{}?wait=30", approval.id);
            let text = format!(
                "{}.{} waits for an approver: approval {} ({}). It runs once approved; call approval_wait with this approval_id (or poll GET {poll} with the same API key) for its result. Nothing ran yet.",
                tool.capability,
                tool.operation,
                approval.id,
                approval.status.as_str()
            );
            // A waiting call is an answer, not a failure: the client sees the approval
            // and how to follow it.
            let mut result = CallToolResult::structured(json!({
                "status": "pending_approval",
                "approval": to_json(&approval),
                "poll": {"method": "GET", "path": poll},
            }));
            result.content = vec![ContentBlock::text(text)];
            result
        }
    })
}

async fn call_builtin_tool(
    state: &AppState,
    principal: &Principal,
    tool: BuiltinTool,
    mut arguments: JsonObject,
) -> WharfResult<CallToolResult> {
    let owner = &principal.owner;
    let value = match tool {
        BuiltinTool::Create => {
            let profile = match arguments.remove("profile") {
                None | Some(Value::Null) => LOCAL_PROFILE.to_string(),
                Some(Value::String(profile)) => profile,
                Some(_) => return Err(WharfError::validation("`profile` must be a string")),
            };
            no_other_arguments(&arguments)?;
            let (sandbox, _) = create_for(state, principal, &profile, None).await?;
            to_json(&sandbox)
        }
        BuiltinTool::Exec => {
            let id = take_string(&mut arguments, "sandbox_id")?;
            state
                .capabilities
                .authorize_direct(principal, &id, SANDBOX_EXEC)
                .await?;
            let body: ExecBody = serde_json::from_value(Value::Object(arguments))
                .map_err(|err| WharfError::validation(format!("invalid exec arguments: {err}")))?;
            let input = body.into_input()?;
            let started = std::time::Instant::now();
            let result = state.sandboxes.exec(owner, &id, input).await;
            state
                .capabilities
                .record_direct_exec(
                    principal,
                    &id,
                    result.as_ref().map(|_| ()),
                    started.elapsed(),
                )
                .await;
            to_json(&ExecResult::from(result?))
        }
        BuiltinTool::FileRead => {
            let id = take_string(&mut arguments, "sandbox_id")?;
            let path = SandboxPath::parse(&take_string(&mut arguments, "path")?)?;
            no_other_arguments(&arguments)?;
            state
                .capabilities
                .authorize_direct(principal, &id, SANDBOX_FILES_READ)
                .await?;
            let download = state.sandboxes.read_file(owner, &id, &path).await?;
            let size = download.size;
            let data = download
                .collect(state.config.mcp.max_file_read_bytes)
                .await
                .map_err(|err| match err.code {
                    ErrorCode::PayloadTooLarge => WharfError::new(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "{path} has {size} bytes, more than sandbox_file_read returns ([mcp] max_file_read_bytes = {}); download it with GET /v1/sandboxes/{id}/files/{path}",
                            state.config.mcp.max_file_read_bytes
                        ),
                    ),
                    _ => err,
                })?;
            let (encoding, content) = match String::from_utf8(data) {
                Ok(text) => ("utf-8", text),
                Err(err) => (
                    "base64",
                    base64::engine::general_purpose::STANDARD.encode(err.into_bytes()),
                ),
            };
            json!({"path": path.to_string(), "size": size, "encoding": encoding, "content": content})
        }
        BuiltinTool::FileWrite => {
            let id = take_string(&mut arguments, "sandbox_id")?;
            let path = SandboxPath::parse(&take_string(&mut arguments, "path")?)?;
            let content = take_string(&mut arguments, "content")?;
            let encoding = match arguments.remove("encoding") {
                None | Some(Value::Null) => "utf-8".to_string(),
                Some(Value::String(encoding)) => encoding,
                Some(_) => return Err(WharfError::validation("`encoding` must be a string")),
            };
            no_other_arguments(&arguments)?;
            let data = match encoding.as_str() {
                "utf-8" => content.into_bytes(),
                "base64" => base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|err| {
                        WharfError::validation(format!("`content` is not base64: {err}"))
                    })?,
                other => {
                    return Err(WharfError::validation(format!(
                        "`encoding` {other:?}: expected utf-8 or base64"
                    )));
                }
            };
            state
                .capabilities
                .authorize_direct(principal, &id, SANDBOX_FILES_WRITE)
                .await?;
            let size = state
                .sandboxes
                .write_file(owner, &id, &path, FileUpload::from_bytes(data))
                .await?;
            json!({"path": path.to_string(), "size": size})
        }
        BuiltinTool::FileList => {
            let id = take_string(&mut arguments, "sandbox_id")?;
            let path = match arguments.remove("path") {
                None | Some(Value::Null) => SandboxPath::root(),
                Some(Value::String(path)) if path.is_empty() => SandboxPath::root(),
                Some(Value::String(path)) => SandboxPath::parse(&path)?,
                Some(_) => return Err(WharfError::validation("`path` must be a string")),
            };
            no_other_arguments(&arguments)?;
            state
                .capabilities
                .authorize_direct(principal, &id, SANDBOX_FILES_READ)
                .await?;
            let entries = state.sandboxes.list_dir(owner, &id, &path).await?;
            json!({"path": path.to_string(), "entries": to_json(&entries)})
        }
        BuiltinTool::ApprovalWait => {
            let id = take_string(&mut arguments, "approval_id")?;
            let wait = match arguments.remove("wait_secs") {
                None | Some(Value::Null) => 30,
                Some(value) => value
                    .as_u64()
                    .filter(|secs| *secs <= MAX_APPROVAL_WAIT_SECS)
                    .ok_or_else(|| {
                        WharfError::validation(format!(
                            "`wait_secs` must be a whole number from 0 to {MAX_APPROVAL_WAIT_SECS}"
                        ))
                    })?,
            };
            no_other_arguments(&arguments)?;
            let approval = state
                .capabilities
                .approval(principal, &id, std::time::Duration::from_secs(wait))
                .await?;
            to_json(&approval)
        }
        BuiltinTool::Destroy => {
            let id = take_string(&mut arguments, "sandbox_id")?;
            no_other_arguments(&arguments)?;
            state
                .capabilities
                .authorize_lifecycle(principal, &id)
                .await?;
            state.sandboxes.delete(owner, &id).await?;
            json!({"deleted": id})
        }
    };
    Ok(CallToolResult::structured(value))
}

fn take_string(arguments: &mut JsonObject, name: &str) -> WharfResult<String> {
    match arguments.remove(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(WharfError::validation(format!("`{name}` must be a string"))),
        None => Err(WharfError::validation(format!("`{name}` is required"))),
    }
}

fn no_other_arguments(arguments: &JsonObject) -> WharfResult<()> {
    match arguments.keys().next() {
        Some(name) => Err(WharfError::validation(format!("unknown argument `{name}`"))),
        None => Ok(()),
    }
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("answers serialize")
}
