//! Host-side bindings of every `wharf:plugin` WIT version the host serves, and the host
//! implementations of the interfaces plugins import.
//!
//! Like Zed's `since_v*` folders, each released version is frozen under `wit/v<version>/`
//! and gets its own generated bindings here ([`v0_1`], [`v0_2`]). The host's own types are
//! those of the current version ([`adapter`] and [`provider`] re-export [`v0_2`]); a
//! component built against an older version is instantiated with that version's bindings,
//! and its answers are mapped into the current types ([`Adapter`], [`Provider`]), so the
//! rest of the host never sees which version a plugin was built for.

use std::time::Instant;

use semver::{Version, VersionReq};
use wasmtime::AsContextMut;

use super::call::CallState;
use crate::sandbox::{ExecRequest, SandboxPath};

/// `wharf:plugin@0.1.0`, frozen in `wit/v0.1.0`.
pub mod v0_1 {
    pub mod adapter {
        wasmtime::component::bindgen!({ path: "../wit/v0.1.0", world: "capability-adapter" });
    }

    pub mod provider {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0",
            world: "llm-provider",
            with: {
                "wharf:plugin/types": super::adapter::wharf::plugin::types,
                "wharf:plugin/log": super::adapter::wharf::plugin::log,
            },
        });
    }
}

/// `wharf:plugin@0.2.0`, in `wit/v0.2.0`: the current contract.
pub mod v0_2 {
    pub mod adapter {
        wasmtime::component::bindgen!({ path: "../wit/v0.2.0", world: "capability-adapter" });
    }

    pub mod provider {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "llm-provider",
            with: {
                "wharf:plugin/types": super::adapter::wharf::plugin::types,
                "wharf:plugin/log": super::adapter::wharf::plugin::log,
            },
        });
    }
}

/// `wharf:plugin@0.3.0`, in `wit/v0.3.0`: 0.2.0 plus the `planner-plugin` and
/// `relay-host-adapter` worlds. Its adapter and provider worlds are 0.2.0's unchanged, so
/// their answers map field by field into the host's (0.2) types.
pub mod v0_3 {
    pub mod adapter {
        wasmtime::component::bindgen!({ path: "../wit/v0.3.0", world: "capability-adapter" });
    }

    pub mod provider {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3.0",
            world: "llm-provider",
            with: {
                "wharf:plugin/types": super::adapter::wharf::plugin::types,
                "wharf:plugin/log": super::adapter::wharf::plugin::log,
            },
        });
    }

    pub mod planner {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3.0",
            world: "planner-plugin",
            with: {
                "wharf:plugin/types": super::adapter::wharf::plugin::types,
                "wharf:plugin/log": super::adapter::wharf::plugin::log,
            },
        });
    }

    pub mod relay_host {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3.0",
            world: "relay-host-adapter",
            with: {
                "wharf:plugin/types": super::adapter::wharf::plugin::types,
                "wharf:plugin/log": super::adapter::wharf::plugin::log,
            },
        });
    }
}

/// The current contract of adapters and providers: its types are the host's.
pub use v0_2::{adapter, provider};
/// Worlds new in 0.3.0: only that version has them.
pub use v0_3::{planner, relay_host};

use adapter::wharf::plugin::types::PluginError;

/// A version of the `wharf:plugin` contract that this host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginApi {
    V0_1,
    V0_2,
    V0_3,
}

impl PluginApi {
    /// Every version served, oldest first.
    pub const ALL: [PluginApi; 3] = [PluginApi::V0_1, PluginApi::V0_2, PluginApi::V0_3];
    /// The version the SDK builds adapters and providers against, whose types the host's
    /// follow (planners and relay-host adapters need 0.3, where their worlds appeared).
    pub const CURRENT: PluginApi = PluginApi::V0_2;

    pub fn version(self) -> Version {
        match self {
            PluginApi::V0_1 => Version::new(0, 1, 0),
            PluginApi::V0_2 => Version::new(0, 2, 0),
            PluginApi::V0_3 => Version::new(0, 3, 0),
        }
    }

    /// The newest served version that `requires.wharf` accepts: `^0.1` gets 0.1.0 and
    /// `^0.2` gets 0.2.0 (a caret on 0.x never crosses a minor version).
    pub fn for_requirement(requirement: &VersionReq) -> Option<PluginApi> {
        Self::ALL
            .into_iter()
            .rev()
            .find(|api| requirement.matches(&api.version()))
    }

    /// `0.1.0, 0.2.0, 0.3.0`, for messages.
    pub fn served() -> String {
        Self::ALL
            .iter()
            .map(|api| api.version().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for PluginApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wharf:plugin@{}", self.version())
    }
}

/// Field-by-field conversion between two generated records of the same shape (the
/// versions' types are distinct Rust types even where the WIT did not change).
macro_rules! convert_record {
    (@field $value:expr) => { $value };
    (@field $value:expr, into) => { $value.into() };
    (@field $value:expr, each) => { $value.into_iter().map(Into::into).collect() };
    ($from:path => $to:path { $($field:ident $(as $how:ident)?),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                Self { $($field: convert_record!(@field value.$field $(, $how)?)),* }
            }
        }
    };
}

/// `From` between two generated enums with the same cases.
macro_rules! convert_enum {
    ($from:path => $to:path { $($case:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                type Source = $from;
                match value { $(Source::$case => Self::$case),* }
            }
        }
    };
}

mod convert {
    //! 0.1 values into the current types (answers) and back (arguments).
    use super::{v0_1, v0_2, v0_3};

    use v0_1::adapter::exports::wharf::plugin::adapter as a1;
    use v0_1::provider::exports::wharf::plugin::provider as p1;
    use v0_2::adapter::exports::wharf::plugin::adapter as a2;
    use v0_2::provider::exports::wharf::plugin::provider as p2;

    convert_record!(v0_1::adapter::wharf::plugin::types::PluginError
        => v0_2::adapter::wharf::plugin::types::PluginError { code, message, retriable });
    convert_record!(v0_2::adapter::wharf::plugin::types::PluginError
        => v0_1::adapter::wharf::plugin::types::PluginError { code, message, retriable });

    convert_record!(a1::AdapterInfo => a2::AdapterInfo {
        capability, version, description, operations as each
    });

    impl From<a1::Operation> for a2::Operation {
        fn from(op: a1::Operation) -> Self {
            Self {
                name: op.name,
                description: op.description,
                input_schema: op.input_schema,
                output_schema: op.output_schema,
                // 0.1 said nothing about side effects: assume the worst, as MCP does for a
                // tool without annotations.
                hints: a2::OperationHints {
                    read_only: false,
                    destructive: true,
                    idempotent: false,
                },
            }
        }
    }

    convert_record!(p1::CapabilityProfile => p2::CapabilityProfile {
        chat_completions, responses, anthropic_messages, stream, tools, stream_only
    });
    convert_record!(p1::Model => p2::Model { id, aliases, reasoning });
    convert_record!(p1::ProviderInfo => p2::ProviderInfo {
        id, display_name, base_url, auth_scheme, smoke_test_model, models as each,
        capabilities as into
    });
    convert_record!(p2::ProbeTarget => p1::ProbeTarget { base_url, model, stream });
    convert_record!(p1::ProbeStep => p2::ProbeStep {
        name, method, path, headers, body, stream, timeout_ms
    });
    convert_record!(p2::ProbeStep => p1::ProbeStep {
        name, method, path, headers, body, stream, timeout_ms
    });
    convert_record!(p2::Observation => p1::Observation {
        status, headers, body, latency_ms, transport_error
    });
    convert_record!(p1::Verdict => p2::Verdict {
        passed, class, retriable, retry_after_ms, detail
    });

    impl From<p1::ModelResolution> for p2::ModelResolution {
        fn from(value: p1::ModelResolution) -> Self {
            match value {
                p1::ModelResolution::Found(id) => Self::Found(id),
                p1::ModelResolution::Unknown(near) => Self::Unknown(near),
            }
        }
    }

    use v0_3::adapter::exports::wharf::plugin::adapter as a3;
    use v0_3::provider::exports::wharf::plugin::provider as p3;

    convert_record!(v0_3::adapter::wharf::plugin::types::PluginError
        => v0_2::adapter::wharf::plugin::types::PluginError { code, message, retriable });
    convert_record!(v0_2::adapter::wharf::plugin::types::PluginError
        => v0_3::adapter::wharf::plugin::types::PluginError { code, message, retriable });
    convert_record!(a3::AdapterInfo => a2::AdapterInfo {
        capability, version, description, operations as each
    });
    convert_record!(a3::Operation => a2::Operation {
        name, description, input_schema, output_schema, hints as into
    });
    convert_record!(a3::OperationHints => a2::OperationHints { read_only, destructive, idempotent });
    convert_record!(p3::CapabilityProfile => p2::CapabilityProfile {
        chat_completions, responses, anthropic_messages, stream, tools, stream_only
    });
    convert_record!(p3::Model => p2::Model { id, aliases, reasoning });
    convert_record!(p3::ProviderInfo => p2::ProviderInfo {
        id, display_name, base_url, auth_scheme, smoke_test_model, models as each,
        capabilities as into
    });
    convert_record!(p2::ProbeTarget => p3::ProbeTarget { base_url, model, stream });
    convert_record!(p3::ProbeStep => p2::ProbeStep {
        name, method, path, headers, body, stream, timeout_ms
    });
    convert_record!(p2::ProbeStep => p3::ProbeStep {
        name, method, path, headers, body, stream, timeout_ms
    });
    convert_record!(p2::Observation => p3::Observation {
        status, headers, body, latency_ms, transport_error
    });
    convert_record!(p3::Verdict => p2::Verdict {
        passed, class, retriable, retry_after_ms, detail
    });

    impl From<p3::ModelResolution> for p2::ModelResolution {
        fn from(value: p3::ModelResolution) -> Self {
            match value {
                p3::ModelResolution::Found(id) => Self::Found(id),
                p3::ModelResolution::Unknown(near) => Self::Unknown(near),
            }
        }
    }

    convert_enum!(v0_3::adapter::wharf::plugin::sandbox::EntryKind
        => crate::sandbox::EntryKind { File, Directory, Symlink, Other });
    convert_enum!(crate::sandbox::EntryKind
        => v0_3::adapter::wharf::plugin::sandbox::EntryKind { File, Directory, Symlink, Other });

    convert_enum!(v0_1::adapter::wharf::plugin::sandbox::EntryKind
        => crate::sandbox::EntryKind { File, Directory, Symlink, Other });
    convert_enum!(v0_2::adapter::wharf::plugin::sandbox::EntryKind
        => crate::sandbox::EntryKind { File, Directory, Symlink, Other });
    convert_enum!(crate::sandbox::EntryKind
        => v0_1::adapter::wharf::plugin::sandbox::EntryKind { File, Directory, Symlink, Other });
    convert_enum!(crate::sandbox::EntryKind
        => v0_2::adapter::wharf::plugin::sandbox::EntryKind { File, Directory, Symlink, Other });
}

/// Maps a `Result<T, PluginError>` of an old version into the current types.
fn current<T, U: From<T>, E: Into<PluginError>>(answer: Result<T, E>) -> Result<U, PluginError> {
    answer.map(Into::into).map_err(Into::into)
}

/// An adapter component pre-instantiated with the bindings of its pack's version.
pub enum AdapterPre {
    V0_1(v0_1::adapter::CapabilityAdapterPre<CallState>),
    V0_2(v0_2::adapter::CapabilityAdapterPre<CallState>),
    V0_3(v0_3::adapter::CapabilityAdapterPre<CallState>),
}

/// An instantiated adapter, whatever version it was built against.
pub enum Adapter {
    V0_1(v0_1::adapter::CapabilityAdapter),
    V0_2(v0_2::adapter::CapabilityAdapter),
    V0_3(v0_3::adapter::CapabilityAdapter),
}

impl AdapterPre {
    pub fn instantiate(
        &self,
        store: impl AsContextMut<Data = CallState>,
    ) -> wasmtime::Result<Adapter> {
        Ok(match self {
            AdapterPre::V0_1(pre) => Adapter::V0_1(pre.instantiate(store)?),
            AdapterPre::V0_2(pre) => Adapter::V0_2(pre.instantiate(store)?),
            AdapterPre::V0_3(pre) => Adapter::V0_3(pre.instantiate(store)?),
        })
    }
}

impl Adapter {
    /// The exported `adapter` interface, answering in the current types (named like the
    /// generated accessor, so calling code reads the same for every version).
    pub fn wharf_plugin_adapter(&self) -> AdapterExports<'_> {
        AdapterExports(self)
    }
}

pub struct AdapterExports<'a>(&'a Adapter);

impl AdapterExports<'_> {
    pub fn call_describe<S: AsContextMut>(
        &self,
        store: S,
    ) -> wasmtime::Result<adapter::exports::wharf::plugin::adapter::AdapterInfo> {
        Ok(match self.0 {
            Adapter::V0_1(a) => a.wharf_plugin_adapter().call_describe(store)?.into(),
            Adapter::V0_2(a) => a.wharf_plugin_adapter().call_describe(store)?,
            Adapter::V0_3(a) => a.wharf_plugin_adapter().call_describe(store)?.into(),
        })
    }

    pub fn call_invoke<S: AsContextMut>(
        &self,
        store: S,
        operation: &str,
        input: &str,
    ) -> wasmtime::Result<Result<String, PluginError>> {
        Ok(match self.0 {
            Adapter::V0_1(a) => current(
                a.wharf_plugin_adapter()
                    .call_invoke(store, operation, input)?,
            ),
            Adapter::V0_2(a) => a
                .wharf_plugin_adapter()
                .call_invoke(store, operation, input)?,
            Adapter::V0_3(a) => current(
                a.wharf_plugin_adapter()
                    .call_invoke(store, operation, input)?,
            ),
        })
    }
}

/// A provider component pre-instantiated with the bindings of its pack's version.
pub enum ProviderPre {
    V0_1(v0_1::provider::LlmProviderPre<CallState>),
    V0_2(v0_2::provider::LlmProviderPre<CallState>),
    V0_3(v0_3::provider::LlmProviderPre<CallState>),
}

/// An instantiated provider, whatever version it was built against.
pub enum Provider {
    V0_1(v0_1::provider::LlmProvider),
    V0_2(v0_2::provider::LlmProvider),
    V0_3(v0_3::provider::LlmProvider),
}

impl ProviderPre {
    pub fn instantiate(
        &self,
        store: impl AsContextMut<Data = CallState>,
    ) -> wasmtime::Result<Provider> {
        Ok(match self {
            ProviderPre::V0_1(pre) => Provider::V0_1(pre.instantiate(store)?),
            ProviderPre::V0_2(pre) => Provider::V0_2(pre.instantiate(store)?),
            ProviderPre::V0_3(pre) => Provider::V0_3(pre.instantiate(store)?),
        })
    }
}

impl Provider {
    /// The exported `provider` interface, answering in the current types.
    pub fn wharf_plugin_provider(&self) -> ProviderExports<'_> {
        ProviderExports(self)
    }
}

pub struct ProviderExports<'a>(&'a Provider);

use provider::exports::wharf::plugin::provider as wit_provider;

impl ProviderExports<'_> {
    pub fn call_catalog<S: AsContextMut>(
        &self,
        store: S,
    ) -> wasmtime::Result<Result<Vec<wit_provider::ProviderInfo>, PluginError>> {
        Ok(match self.0 {
            Provider::V0_1(p) => p
                .wharf_plugin_provider()
                .call_catalog(store)?
                .map(|list| list.into_iter().map(Into::into).collect())
                .map_err(Into::into),
            Provider::V0_2(p) => p.wharf_plugin_provider().call_catalog(store)?,
            Provider::V0_3(p) => p
                .wharf_plugin_provider()
                .call_catalog(store)?
                .map(|list| list.into_iter().map(Into::into).collect())
                .map_err(Into::into),
        })
    }

    pub fn call_resolve_model<S: AsContextMut>(
        &self,
        store: S,
        provider: &str,
        name: &str,
    ) -> wasmtime::Result<Result<wit_provider::ModelResolution, PluginError>> {
        Ok(match self.0 {
            Provider::V0_1(p) => current(
                p.wharf_plugin_provider()
                    .call_resolve_model(store, provider, name)?,
            ),
            Provider::V0_2(p) => p
                .wharf_plugin_provider()
                .call_resolve_model(store, provider, name)?,
            Provider::V0_3(p) => current(
                p.wharf_plugin_provider()
                    .call_resolve_model(store, provider, name)?,
            ),
        })
    }

    pub fn call_probe_plan<S: AsContextMut>(
        &self,
        store: S,
        provider: &str,
        target: &wit_provider::ProbeTarget,
    ) -> wasmtime::Result<Result<Vec<wit_provider::ProbeStep>, PluginError>> {
        Ok(match self.0 {
            Provider::V0_1(p) => p
                .wharf_plugin_provider()
                .call_probe_plan(store, provider, &target.clone().into())?
                .map(|steps| steps.into_iter().map(Into::into).collect())
                .map_err(Into::into),
            Provider::V0_2(p) => p
                .wharf_plugin_provider()
                .call_probe_plan(store, provider, target)?,
            Provider::V0_3(p) => p
                .wharf_plugin_provider()
                .call_probe_plan(store, provider, &target.clone().into())?
                .map(|steps| steps.into_iter().map(Into::into).collect())
                .map_err(Into::into),
        })
    }

    pub fn call_judge<S: AsContextMut>(
        &self,
        store: S,
        provider: &str,
        step: &wit_provider::ProbeStep,
        observation: &wit_provider::Observation,
    ) -> wasmtime::Result<wit_provider::Verdict> {
        Ok(match self.0 {
            Provider::V0_1(p) => p
                .wharf_plugin_provider()
                .call_judge(
                    store,
                    provider,
                    &step.clone().into(),
                    &observation.clone().into(),
                )?
                .into(),
            Provider::V0_2(p) => {
                p.wharf_plugin_provider()
                    .call_judge(store, provider, step, observation)?
            }
            Provider::V0_3(p) => p
                .wharf_plugin_provider()
                .call_judge(
                    store,
                    provider,
                    &step.clone().into(),
                    &observation.clone().into(),
                )?
                .into(),
        })
    }
}

/// The linkers of one version: every import of its worlds, implemented by [`CallState`].
pub fn add_adapter_imports(
    api: PluginApi,
    linker: &mut wasmtime::component::Linker<CallState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    match api {
        PluginApi::V0_1 => {
            v0_1::adapter::CapabilityAdapter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        PluginApi::V0_2 => {
            v0_2::adapter::CapabilityAdapter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        PluginApi::V0_3 => {
            v0_3::adapter::CapabilityAdapter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
    }
}

pub fn add_provider_imports(
    api: PluginApi,
    linker: &mut wasmtime::component::Linker<CallState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    match api {
        PluginApi::V0_1 => {
            v0_1::provider::LlmProvider::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        PluginApi::V0_2 => {
            v0_2::provider::LlmProvider::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        PluginApi::V0_3 => {
            v0_3::provider::LlmProvider::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
    }
}

/// Pre-instantiates `component` for `api`, with a reason naming the version on failure
/// (typically: the component was built against another version than its pack requires).
pub fn adapter_pre(
    api: PluginApi,
    linker: &wasmtime::component::Linker<CallState>,
    component: &wasmtime::component::Component,
) -> anyhow::Result<AdapterPre> {
    let pre = linker.instantiate_pre(component)?;
    let typed = match api {
        PluginApi::V0_1 => v0_1::adapter::CapabilityAdapterPre::new(pre).map(AdapterPre::V0_1),
        PluginApi::V0_2 => v0_2::adapter::CapabilityAdapterPre::new(pre).map(AdapterPre::V0_2),
        PluginApi::V0_3 => v0_3::adapter::CapabilityAdapterPre::new(pre).map(AdapterPre::V0_3),
    };
    typed.map_err(|err| not_built_for(api, "capability-adapter", err))
}

pub fn provider_pre(
    api: PluginApi,
    linker: &wasmtime::component::Linker<CallState>,
    component: &wasmtime::component::Component,
) -> anyhow::Result<ProviderPre> {
    let pre = linker.instantiate_pre(component)?;
    let typed = match api {
        PluginApi::V0_1 => v0_1::provider::LlmProviderPre::new(pre).map(ProviderPre::V0_1),
        PluginApi::V0_2 => v0_2::provider::LlmProviderPre::new(pre).map(ProviderPre::V0_2),
        PluginApi::V0_3 => v0_3::provider::LlmProviderPre::new(pre).map(ProviderPre::V0_3),
    };
    typed.map_err(|err| not_built_for(api, "llm-provider", err))
}

/// The usual cause: the pack's `requires.wharf` names another version than the WIT the
/// component was built from.
fn not_built_for(api: PluginApi, world: &str, err: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the component does not export world `{world}` of {api}, the version its pack's \
         requires.wharf selects (was it built against another version?): {err:#}"
    )
}

fn to_plugin_error(err: crate::error::WharfError) -> PluginError {
    let retriable = err.retriable();
    PluginError {
        code: err.code.as_str().to_string(),
        message: err.message,
        retriable,
    }
}

impl CallState {
    /// Runs one sandbox primitive on the bound sandbox, blocking this wasm
    /// thread, and keeps the time out of the plugin's own deadline. The call's
    /// wall-clock bound still applies: once it is spent, host calls are refused and
    /// the call ends as `plugin_timeout`.
    fn on_sandbox<T, F>(
        &mut self,
        op: impl FnOnce(crate::sandbox::service::SandboxBinding) -> F,
    ) -> Result<T, PluginError>
    where
        F: std::future::Future<Output = crate::error::WharfResult<T>>,
    {
        let Some(binding) = self.sandbox.clone() else {
            return Err(PluginError {
                code: "no_sandbox".into(),
                message:
                    "this call is not bound to a sandbox (describe and self-test calls never are)"
                        .into(),
                retriable: false,
            });
        };
        if self.wall_remaining().is_zero() {
            self.wall_exceeded = true;
            return Err(wall_spent());
        }
        let started = Instant::now();
        let result = self
            .tokio
            .block_on(tokio::time::timeout(self.host_call_budget(), op(binding)));
        self.host_time += started.elapsed();
        if self.wall_remaining().is_zero() {
            self.wall_exceeded = true;
        }
        match result {
            Ok(result) => result.map_err(to_plugin_error),
            Err(_elapsed) => {
                self.wall_exceeded = true;
                Err(wall_spent())
            }
        }
    }

    fn host_exec(
        &mut self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        stdin: Option<Vec<u8>>,
        timeout_ms: Option<u32>,
    ) -> Result<crate::sandbox::ExecOutput, PluginError> {
        let cwd = cwd.as_deref().map(parse_path).transpose()?;
        // An exec never outlives the call that asked for it.
        let wall_left = self.wall_remaining();
        self.on_sandbox(|binding| async move {
            let exec = ExecRequest {
                argv,
                env,
                cwd,
                stdin,
                timeout: binding
                    .exec_timeout(timeout_ms.map(u64::from))
                    .min(wall_left),
                output_cap: binding.output_cap(),
                sink: None,
                // Set from the sandbox's profile by `binding.exec`.
                limits: Default::default(),
            };
            binding.exec(exec).await
        })
    }

    fn host_read_file(&mut self, path: String) -> Result<Vec<u8>, PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.read_file(&path).await })
    }

    fn host_write_file(&mut self, path: String, data: Vec<u8>) -> Result<(), PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.write_file(&path, data).await })
    }

    fn host_list_dir(
        &mut self,
        path: String,
    ) -> Result<Vec<crate::sandbox::DirEntry>, PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.list_dir(&path).await })
    }

    fn host_remove(&mut self, path: String, recursive: bool) -> Result<(), PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.remove(&path, recursive).await })
    }

    fn host_log(&mut self, level: &str, message: &str) {
        CallState::log(self, level, message);
    }
}

fn wall_spent() -> PluginError {
    PluginError {
        code: "plugin_timeout".into(),
        message: "the call's wall-clock bound is spent; no more host calls".into(),
        retriable: true,
    }
}

fn parse_path(path: &str) -> Result<SandboxPath, PluginError> {
    SandboxPath::parse(path).map_err(to_plugin_error)
}

/// The imports every version has (`types`, `log`, and `sandbox`'s 0.1 functions),
/// implemented once per version's generated traits on top of the `host_*` methods above;
/// `$extra` holds the functions a version added to `sandbox`.
macro_rules! host_imports {
    ($wit:ident { $($extra:item)* }) => {
        impl $wit::adapter::wharf::plugin::types::Host for CallState {}

        impl $wit::adapter::wharf::plugin::log::Host for CallState {
            fn log(&mut self, level: $wit::adapter::wharf::plugin::log::Level, message: String) {
                use $wit::adapter::wharf::plugin::log::Level;
                let level = match level {
                    Level::Trace => "trace",
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                };
                self.host_log(level, &message);
            }
        }

        impl $wit::adapter::wharf::plugin::sandbox::Host for CallState {
            fn exec(
                &mut self,
                request: $wit::adapter::wharf::plugin::sandbox::ExecRequest,
            ) -> Result<
                $wit::adapter::wharf::plugin::sandbox::ExecOutput,
                $wit::adapter::wharf::plugin::types::PluginError,
            > {
                let output = self.host_exec(
                    request.argv,
                    request.env,
                    request.cwd,
                    request.stdin,
                    request.timeout_ms,
                )?;
                Ok($wit::adapter::wharf::plugin::sandbox::ExecOutput {
                    exit_code: output.exit_code,
                    stdout: output.stdout,
                    stderr: output.stderr,
                    stdout_truncated: output.stdout_truncated,
                    stderr_truncated: output.stderr_truncated,
                    timed_out: output.timed_out,
                    duration_ms: output.duration.as_millis() as u64,
                })
            }

            fn read_file(
                &mut self,
                path: String,
            ) -> Result<Vec<u8>, $wit::adapter::wharf::plugin::types::PluginError> {
                self.host_read_file(path).map_err(Into::into)
            }

            fn write_file(
                &mut self,
                path: String,
                data: Vec<u8>,
            ) -> Result<(), $wit::adapter::wharf::plugin::types::PluginError> {
                self.host_write_file(path, data).map_err(Into::into)
            }

            fn list_dir(
                &mut self,
                path: String,
            ) -> Result<
                Vec<$wit::adapter::wharf::plugin::sandbox::DirEntry>,
                $wit::adapter::wharf::plugin::types::PluginError,
            > {
                Ok(self
                    .host_list_dir(path)
                    .map_err(Into::<$wit::adapter::wharf::plugin::types::PluginError>::into)?
                    .into_iter()
                    .map(|entry| $wit::adapter::wharf::plugin::sandbox::DirEntry {
                        name: entry.name,
                        kind: entry.kind.into(),
                        size: entry.size,
                    })
                    .collect())
            }

            fn remove(
                &mut self,
                path: String,
                recursive: bool,
            ) -> Result<(), $wit::adapter::wharf::plugin::types::PluginError> {
                self.host_remove(path, recursive).map_err(Into::into)
            }

            $($extra)*
        }
    };
}

host_imports!(v0_1 {});

/// The imports of 0.2.0 and later: 0.1's plus `sandbox.read-file-range` and `sandbox.stat`.
macro_rules! host_imports_since_0_2 {
    ($wit:ident) => {
        host_imports!($wit {
            fn read_file_range(
                &mut self,
                path: String,
                offset: u64,
                length: u64,
            ) -> Result<Vec<u8>, $wit::adapter::wharf::plugin::types::PluginError> {
                let path = parse_path(&path)?;
                self.on_sandbox(|b| async move { b.read_file_range(&path, offset, length).await })
                    .map_err(Into::into)
            }

            fn stat(
                &mut self,
                path: String,
            ) -> Result<
                $wit::adapter::wharf::plugin::sandbox::FileStat,
                $wit::adapter::wharf::plugin::types::PluginError,
            > {
                let path = parse_path(&path)?;
                let stat = self.on_sandbox(|b| async move { b.stat(&path).await })?;
                Ok($wit::adapter::wharf::plugin::sandbox::FileStat {
                    kind: stat.kind.into(),
                    size: stat.size,
                })
            }
        });
    };
}

host_imports_since_0_2!(v0_2);
host_imports_since_0_2!(v0_3);

/// A planner component; the world appeared in 0.3.0.
pub type PlannerPre = v0_3::planner::PlannerPluginPre<CallState>;
pub type Planner = v0_3::planner::PlannerPlugin;
/// A relay-host adapter component; the world appeared in 0.3.0.
pub type RelayHostPre = v0_3::relay_host::RelayHostAdapterPre<CallState>;
pub type RelayHost = v0_3::relay_host::RelayHostAdapter;

/// The `log` import of the 0.3 planner and relay-host worlds (they share `types` and `log`
/// with 0.3's adapter world, whose implementation serves them).
pub fn add_planner_imports(
    linker: &mut wasmtime::component::Linker<CallState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    v0_3::planner::PlannerPlugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

pub fn add_relay_host_imports(
    linker: &mut wasmtime::component::Linker<CallState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    v0_3::relay_host::RelayHostAdapter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

/// Refuses a world for a pack whose `requires.wharf` picks a version before the world existed.
fn since_0_3(api: PluginApi, world: &str) -> anyhow::Result<()> {
    if api < PluginApi::V0_3 {
        anyhow::bail!(
            "world `{world}` appeared in wharf:plugin@0.3.0, but the pack's requires.wharf \
             selects {api}: declare requires.wharf = \"^0.3\""
        );
    }
    Ok(())
}

pub fn planner_pre(
    api: PluginApi,
    linker: &wasmtime::component::Linker<CallState>,
    component: &wasmtime::component::Component,
) -> anyhow::Result<PlannerPre> {
    since_0_3(api, "planner-plugin")?;
    let pre = linker.instantiate_pre(component)?;
    PlannerPre::new(pre).map_err(|err| not_built_for(api, "planner-plugin", err))
}

pub fn relay_host_pre(
    api: PluginApi,
    linker: &wasmtime::component::Linker<CallState>,
    component: &wasmtime::component::Component,
) -> anyhow::Result<RelayHostPre> {
    since_0_3(api, "relay-host-adapter")?;
    let pre = linker.instantiate_pre(component)?;
    RelayHostPre::new(pre).map_err(|err| not_built_for(api, "relay-host-adapter", err))
}
