//! Capabilities: every call of an adapter operation goes through
//! [`CapabilityService::call`](service::CapabilityService::call), which applies, in order,
//! routing, the key's scope, the approval gate, the call itself, secret masking, the audit
//! log, and metrics and events. The HTTP invoke route uses it; MCP and batch planners must too.

pub mod approvals;
pub mod scope;
pub mod secrets;
pub mod service;

use std::time::Instant;

use serde::Serialize;

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::packs::{CapabilityRoute, InflightGuard, Packs};
use crate::runtime::bindings::adapter::wharf::plugin::types::PluginError;
use crate::sandbox::service::SandboxBinding;

/// A capability as a caller names it: `shell`, or `shell@<semver requirement>`
/// (`shell@0.1` = `^0.1`, `shell@=0.1.0`, `shell@>=0.2`) to insist on versions of the pack
/// that serves it.
#[derive(Debug, Clone)]
pub struct CapabilityName {
    pub name: String,
    pub version: Option<semver::VersionReq>,
}

impl CapabilityName {
    pub fn parse(text: &str) -> WharfResult<Self> {
        let (name, version) = match text.split_once('@') {
            Some((name, req)) => {
                let req = semver::VersionReq::parse(req).map_err(|err| {
                    WharfError::validation(format!(
                        "capability {text:?}: {req:?} is not a semver requirement ({err}); write e.g. shell@0.1 or shell@=0.1.0"
                    ))
                })?;
                (name, Some(req))
            }
            None => (text, None),
        };
        if name.is_empty() || name.len() > 128 {
            return Err(WharfError::validation(format!(
                "capability name {name:?} must be 1-128 characters"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            version,
        })
    }
}

/// Resolves a capability operation to the component that serves it now: the capability
/// must be provided by an active pack, its version must meet the caller's requirement and
/// the operator's pin (`[packs.pins] shell = "core-adapters@^0.1"`), and the adapter must
/// have the operation.
pub fn route(
    packs: &Packs,
    wanted: &CapabilityName,
    operation: &str,
) -> WharfResult<CapabilityRoute> {
    let snapshot = packs.snapshot();
    let capability = &wanted.name;
    let route = snapshot
        .capabilities
        .get(capability)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<_> = snapshot.capabilities.keys().cloned().collect();
            WharfError::new(
                ErrorCode::CapabilityNotSupported,
                format!(
                    "no active pack provides capability {capability:?}; available: {}",
                    known.join(", ")
                ),
            )
        })?;
    drop(snapshot);
    let version = &route.pack.version;
    if let Some(req) = &wanted.version
        && !req.matches(version)
    {
        return Err(WharfError::new(
            ErrorCode::CapabilityNotSupported,
            format!(
                "capability {capability:?} is served by pack {} {version}, which does not meet the requested version {req}",
                route.pack.id
            ),
        ));
    }
    if let Some(req) = packs.pinned_version(capability)
        && !req.matches(version)
    {
        return Err(WharfError::new(
            ErrorCode::CapabilityNotSupported,
            format!(
                "capability {capability:?} is pinned by the operator to {} {req} ([packs.pins] in wharf.toml); the loaded version is {version}",
                route.pack.id
            ),
        ));
    }
    let adapter = route
        .component()
        .adapter
        .as_ref()
        .expect("capability routes point at adapters");
    if !adapter.operations.iter().any(|op| op.name == operation) {
        let known: Vec<_> = adapter
            .operations
            .iter()
            .map(|op| op.name.as_str())
            .collect();
        return Err(WharfError::new(
            ErrorCode::CapabilityNotSupported,
            format!(
                "capability {capability:?} has no operation {operation:?}; operations: {}",
                known.join(", ")
            ),
        ));
    }
    Ok(route)
}

/// Where an answer came from: lets clients see a hot swap happen.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvokeOutcome {
    pub capability: String,
    pub operation: String,
    pub pack: String,
    pub version: String,
    pub generation: u64,
    /// Wall-clock time of the plugin call, host calls included.
    pub duration_ms: f64,
    /// Of `duration_ms`, the time spent in sandbox primitives the plugin called
    /// (exec, file I/O); the rest is the wasm layer (instantiate, guest code, copies).
    pub sandbox_ms: f64,
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CapabilitySummary {
    pub capability: String,
    pub pack: String,
    pub version: String,
    pub generation: u64,
    pub component: String,
    pub description: String,
    pub operations: Vec<String>,
    /// True while the component's circuit is open after repeated faults.
    pub circuit_open: bool,
}

pub fn list(packs: &Packs) -> Vec<CapabilitySummary> {
    packs
        .snapshot()
        .capabilities
        .iter()
        .map(|(name, route)| {
            let component = route.component();
            let adapter = component
                .adapter
                .as_ref()
                .expect("capability routes point at adapters");
            CapabilitySummary {
                capability: name.clone(),
                pack: route.pack.id.clone(),
                version: route.pack.version.to_string(),
                generation: route.pack.generation,
                component: component.runtime.name.to_string(),
                description: adapter.description.clone(),
                operations: adapter
                    .operations
                    .iter()
                    .map(|op| op.name.clone())
                    .collect(),
                circuit_open: component.runtime.circuit_open(),
            }
        })
        .collect()
}

/// An adapter operation as a tool that an agent calls by one name.
pub struct OperationTool {
    /// `<capability>_<operation>` (OpenAI and MCP tool-name rules allow `_`, not `.`).
    pub name: String,
    pub capability: String,
    pub route: CapabilityRoute,
    pub operation: crate::packs::loader::OperationInfo,
}

impl OperationTool {
    /// `capability.operation`: the scope entry that covers it.
    pub fn scope_entry(&self) -> String {
        format!("{}.{}", self.capability, self.operation.name)
    }
}

/// One tool per operation of every active adapter, in routing order, named
/// `<capability>_<operation>`: the MCP tools and the tools offered to batch planners. A name
/// that two (capability, operation) pairs would share (`a_b` + `c` and `a` + `b_c`), or one in
/// `reserved`, goes to the first / to no one; the operation stays callable over REST.
pub fn operation_tools(packs: &Packs, reserved: &[&str]) -> Vec<OperationTool> {
    let snapshot = packs.snapshot();
    let mut tools: Vec<OperationTool> = Vec::new();
    for (capability, route) in &snapshot.capabilities {
        let Some(adapter) = route.component().adapter.as_ref() else {
            continue;
        };
        for op in &adapter.operations {
            let name = format!("{capability}_{}", op.name);
            if tools.iter().any(|t| t.name == name) || reserved.contains(&name.as_str()) {
                continue;
            }
            tools.push(OperationTool {
                name,
                capability: capability.clone(),
                route: route.clone(),
                operation: op.clone(),
            });
        }
    }
    tools
}

/// Routing and the call, without policy (scope, approvals, masking, audit): for assembly
/// tests and benches of the plugin host. Servers call
/// [`CapabilityService::call`](service::CapabilityService::call) instead.
pub async fn invoke(
    packs: &Packs,
    sandbox: SandboxBinding,
    capability: &str,
    operation: &str,
    input: serde_json::Value,
) -> WharfResult<InvokeOutcome> {
    let wanted = CapabilityName::parse(capability)?;
    let route = route(packs, &wanted, operation)?;
    invoke_route(route, sandbox, &wanted.name, operation, input).await
}

/// Runs the operation of a routed adapter against the bound sandbox. Only
/// [`service::CapabilityService`] calls this: it is the call step of its pipeline.
pub(crate) async fn invoke_route(
    route: CapabilityRoute,
    sandbox: SandboxBinding,
    capability: &str,
    operation: &str,
    input: serde_json::Value,
) -> WharfResult<InvokeOutcome> {
    let guard = InflightGuard::new(route.pack.clone());
    let component = route.component().runtime.clone();
    let op = operation.to_string();
    let input_text = input.to_string();
    let started = Instant::now();
    let (result, sandbox_time) = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        component.adapter_call_timed(Some(sandbox), |store, adapter| {
            adapter
                .wharf_plugin_adapter()
                .call_invoke(store, &op, &input_text)
        })
    })
    .await
    .map_err(|err| WharfError::internal(format!("plugin call task failed: {err}")))??;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let text = result.map_err(|err| plugin_error(capability, err))?;
    let output = serde_json::from_str(&text).map_err(|err| {
        WharfError::new(
            ErrorCode::PluginError,
            format!("{capability}.{operation} returned invalid JSON: {err}"),
        )
    })?;
    Ok(InvokeOutcome {
        capability: capability.to_string(),
        operation: operation.to_string(),
        pack: route.pack.id.clone(),
        version: route.pack.version.to_string(),
        generation: route.pack.generation,
        duration_ms,
        sandbox_ms: sandbox_time.as_secs_f64() * 1000.0,
        output,
    })
}

/// Maps an error a plugin returned to the host's table, keeping its words.
fn plugin_error(capability: &str, err: PluginError) -> WharfError {
    let code = match err.code.as_str() {
        "invalid_input" | "validation_error" => ErrorCode::ValidationError,
        "unknown_operation" => ErrorCode::CapabilityNotSupported,
        "invalid_path" => ErrorCode::InvalidPath,
        "file_not_found" => ErrorCode::FileNotFound,
        "timeout" => ErrorCode::Timeout,
        "compile_error" => ErrorCode::CompileError,
        "conflict" => ErrorCode::Conflict,
        "payload_too_large" => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::PluginError,
    };
    WharfError::new(
        code,
        format!("{capability}: {} ({})", err.message, err.code),
    )
    .with_retriable(err.retriable)
}
