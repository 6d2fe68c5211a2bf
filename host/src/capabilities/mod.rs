//! Capability routing: a capability name resolves to the adapter of the
//! active pack that provides it; the call runs bound to one sandbox.

use std::time::Instant;

use serde::Serialize;

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::packs::{InflightGuard, Packs};
use crate::runtime::bindings::adapter::wharf::plugin::types::PluginError;
use crate::sandbox::service::SandboxBinding;

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

/// Runs `capability.operation` with `input` against the bound sandbox.
pub async fn invoke(
    packs: &Packs,
    sandbox: SandboxBinding,
    capability: &str,
    operation: &str,
    input: serde_json::Value,
) -> WharfResult<InvokeOutcome> {
    let snapshot = packs.snapshot();
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
