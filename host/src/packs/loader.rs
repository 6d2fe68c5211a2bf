//! Turning one pack directory into a loaded, self-tested generation.
//!
//! Everything here happens before the swap: parse, digest-verify, compile,
//! pre-instantiate and self-test. Any failure becomes a quarantine reason and
//! the previous generation keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::data::DataSnapshots;
use super::manifest::{ComponentKind, ComponentSource, Form, Manifest, describe_problems};
use super::profiles::{ProfilePolicy, RefusedProfile};
use crate::error::ErrorCode;
use crate::runtime::logs::PluginLogs;
use crate::runtime::{ComponentLoad, LoadedComponent, Runtime};
use crate::sandbox::profiles::Profile;
use crate::store::now_rfc3339;

/// Largest pack the loader will read, all files together.
pub const MAX_PACK_BYTES: u64 = 256 << 20;

/// An operation of an adapter, as its `describe()` reported it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperationInfo {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    #[schema(value_type = Object)]
    pub output_schema: serde_json::Value,
    pub hints: OperationHints,
}

/// What an operation does to the sandbox, as its adapter declares it (`wharf:plugin@0.2.0`;
/// a 0.1 adapter declares nothing and counts as not read-only, destructive, not idempotent).
/// The names follow MCP's tool annotations (`readOnlyHint`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OperationHints {
    /// Changes nothing in the sandbox (it may still run commands that only read).
    pub read_only: bool,
    /// May delete or overwrite existing data (meaningless when read-only).
    pub destructive: bool,
    /// Running it again with the same input has no further effect.
    pub idempotent: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdapterInfo {
    pub capability: String,
    pub version: String,
    pub description: String,
    pub operations: Vec<OperationInfo>,
}

/// One component of a loaded pack, with what its self-test learned.
pub struct PackComponent {
    pub runtime: Arc<LoadedComponent>,
    /// Adapters: `describe()`.
    pub adapter: Option<AdapterInfo>,
    /// Providers: the provider ids from `catalog()`.
    pub provider_ids: Vec<String>,
    /// Providers: each provider's `auth-scheme` from `catalog()` (the host adds credentials).
    pub provider_auth: std::collections::BTreeMap<String, String>,
    /// Relay host adapters: `describe()`.
    pub relay_host: Option<RelayHostInfo>,
}

impl PackComponent {
    /// Planners are known by their component name (a task's `planner`).
    pub fn planner_name(&self) -> Option<&str> {
        (self.runtime.kind == ComponentKind::Planner).then_some(&*self.runtime.name)
    }
}

/// What a relay host adapter said of itself.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RelayHostInfo {
    /// The relay kind it drives, e.g. `sub2api`.
    pub kind: String,
    pub version: String,
    pub description: String,
    /// `bearer` or `x-api-key`: how the host sends a registered host's admin token.
    pub admin_auth: String,
    /// The admin API sources the adapter follows.
    pub reference: String,
}

/// One generation of a pack: immutable once loaded. Calls hold an `Arc` to
/// it, so a replaced generation lives until its in-flight calls finish.
pub struct LoadedPack {
    pub id: String,
    pub version: semver::Version,
    /// sha256 over every file of the pack: the identity of a generation.
    pub digest: String,
    pub generation: u64,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub loaded_at: String,
    pub components: Vec<PackComponent>,
    /// The snapshot of the declared data folders this generation reads (`/pack` for its
    /// plugins); none when the pack declares no data.
    pub data_root: Option<PathBuf>,
    /// Sandbox profiles the pack brings that the operator's policy accepted.
    pub profiles: Vec<Profile>,
    /// Those it refused, with the reason.
    pub refused_profiles: Vec<RefusedProfile>,
    /// Overlays it carries (`overlays/<id>/overlay.toml`), read from its data snapshot.
    pub overlays: Vec<Arc<crate::overlays::Overlay>>,
    pub(super) inflight: AtomicUsize,
}

impl LoadedPack {
    pub fn inflight(&self) -> usize {
        self.inflight.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Counts a call against its generation for as long as it lives.
pub struct InflightGuard(Arc<LoadedPack>);

impl InflightGuard {
    pub fn new(pack: Arc<LoadedPack>) -> Self {
        pack.inflight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(pack)
    }

    pub fn pack(&self) -> &Arc<LoadedPack> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// sha256 over the sorted relative paths and contents of every file in `dir`.
pub fn content_digest(dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut total = 0u64;
    let mut hasher = Sha256::new();
    for rel in files {
        let bytes = std::fs::read(dir.join(&rel))?;
        total += bytes.len() as u64;
        if total > MAX_PACK_BYTES {
            return Err(std::io::Error::other(format!(
                "pack is larger than {} MiB",
                MAX_PACK_BYTES >> 20
            )));
        }
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &entry.path(), out)?;
        } else if kind.is_file() {
            out.push(
                entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}

/// Reads the id of a pack, for generation numbering, without full validation.
pub fn peek_id(dir: &Path) -> Option<(String, String)> {
    let manifest = Manifest::load(dir, Form::Built).ok()?;
    Some((manifest.id, manifest.version.to_string()))
}

/// Why a generation could not load.
#[derive(Debug)]
pub struct LoadError {
    pub reason: String,
    /// The host was busy (no free instance for the self-test), nothing is wrong with the
    /// pack: the next scan tries again even though its content did not change.
    pub transient: bool,
}

impl From<String> for LoadError {
    fn from(reason: String) -> Self {
        Self {
            reason,
            transient: false,
        }
    }
}

/// Loads `dir` as generation `generation`. Blocking: run it off the async
/// threads, inside the tokio runtime.
pub fn load_pack(
    dir: &Path,
    digest: String,
    generation: u64,
    runtime: &Runtime,
    logs: &PluginLogs,
    snapshots: &DataSnapshots,
    policy: &ProfilePolicy,
) -> Result<LoadedPack, LoadError> {
    let manifest =
        Manifest::load(dir, Form::Built).map_err(|problems| describe_problems(&problems))?;
    let limits = runtime.effective_limits(manifest.limits);
    let log = logs.for_pack(&manifest.id);
    let root = dir
        .canonicalize()
        .map_err(|err| format!("{}: {err}", dir.display()))?;
    let data_root = snapshots.snapshot(&root, &manifest.data)?;
    // Overlays are read before any component compiles: a bad one fails the load cheaply.
    let overlays =
        crate::overlays::load::load_overlays(&root, &manifest.data, data_root.as_deref())?;
    let mut components = Vec::new();
    for (i, spec) in manifest.components.iter().enumerate() {
        let at = format!("components[{i}] ({})", spec.name);
        let ComponentSource::Wasm { path, sha256 } = &spec.source else {
            return Err(format!("{at}: not a built component").into());
        };
        let file = root.join(path);
        let real = file
            .canonicalize()
            .map_err(|err| format!("{at}.wasm: {}: {err}", path.display()))?;
        if !real.starts_with(&root) {
            return Err(format!("{at}.wasm: {} leads outside the pack", path.display()).into());
        }
        let wasm =
            std::fs::read(&real).map_err(|err| format!("{at}.wasm: {}: {err}", path.display()))?;
        let actual = hex::encode(Sha256::digest(&wasm));
        if &actual != sha256 {
            return Err(format!(
                "{at}.sha256: digest mismatch: manifest pins {sha256}, file has {actual}"
            )
            .into());
        }
        let loaded = runtime
            .load(ComponentLoad {
                pack_id: &manifest.id,
                name: &spec.name,
                kind: spec.kind,
                api: manifest.plugin_api,
                wasm: &wasm,
                sha256,
                generation,
                limits,
                log: log.clone(),
                data_dir: data_root.as_deref(),
            })
            .map_err(|err| format!("{at}: cannot load component: {err:#}"))?;
        components.push(self_test(&at, Arc::new(loaded))?);
    }
    let (profiles, refused_profiles) = policy.load(data_root.as_deref());
    Ok(LoadedPack {
        id: manifest.id.clone(),
        version: manifest.version.clone(),
        digest,
        generation,
        dir: dir.to_path_buf(),
        manifest,
        loaded_at: now_rfc3339(),
        components,
        data_root,
        profiles,
        refused_profiles,
        overlays,
        inflight: AtomicUsize::new(0),
    })
}

/// `describe()` or `catalog()` must answer before a generation may serve.
fn self_test(at: &str, component: Arc<LoadedComponent>) -> Result<PackComponent, LoadError> {
    let failed = |call: &str, err: crate::error::WharfError| LoadError {
        reason: format!("{at}: self-test {call} failed: {}", err.message),
        transient: err.code == ErrorCode::PluginUnavailable,
    };
    match component.kind {
        ComponentKind::Adapter => {
            let info = component
                .adapter_call(None, |store, adapter| {
                    adapter.wharf_plugin_adapter().call_describe(store)
                })
                .map_err(|err| failed("describe()", err))?;
            let adapter = adapter_info(info).map_err(|why| format!("{at}: describe(): {why}"))?;
            Ok(PackComponent {
                runtime: component,
                adapter: Some(adapter),
                provider_ids: Vec::new(),
                provider_auth: Default::default(),
                relay_host: None,
            })
        }
        ComponentKind::Provider => {
            let catalog = component
                .provider_call(None, |store, provider| {
                    provider.wharf_plugin_provider().call_catalog(store)
                })
                .map_err(|err| failed("catalog()", err))?
                .map_err(|err| {
                    format!(
                        "{at}: self-test catalog() returned {}: {}",
                        err.code, err.message
                    )
                })?;
            if catalog.is_empty() {
                return Err(format!("{at}: catalog() lists no provider").into());
            }
            let provider_auth = catalog
                .iter()
                .map(|p| (p.id.clone(), p.auth_scheme.clone()))
                .collect();
            let provider_ids = catalog.into_iter().map(|p| p.id).collect();
            Ok(PackComponent {
                runtime: component,
                adapter: None,
                provider_ids,
                provider_auth,
                relay_host: None,
            })
        }
        ComponentKind::Planner => {
            // The world has no self-describing call: instantiating it (exports checked,
            // start functions run) is the self-test.
            component
                .planner_call(None, None, |_, _| Ok(()))
                .map_err(|err| failed("instantiate", err))?;
            Ok(PackComponent {
                runtime: component,
                adapter: None,
                provider_ids: Vec::new(),
                provider_auth: Default::default(),
                relay_host: None,
            })
        }
        ComponentKind::RelayHost => {
            let kind = component
                .relay_host_call(None, None, |store, relay| {
                    relay.wharf_plugin_relay_host().call_describe(store)
                })
                .map_err(|err| failed("describe()", err))?;
            if !valid_kind(&kind.kind) {
                return Err(format!(
                    "{at}: describe(): relay kind {:?} must be 2-64 chars of a-z, 0-9 and '-'",
                    kind.kind
                )
                .into());
            }
            if !matches!(kind.admin_auth.as_str(), "bearer" | "x-api-key") {
                return Err(format!(
                    "{at}: describe(): admin-auth {:?} is not one of bearer, x-api-key",
                    kind.admin_auth
                )
                .into());
            }
            Ok(PackComponent {
                runtime: component,
                adapter: None,
                provider_ids: Vec::new(),
                provider_auth: Default::default(),
                relay_host: Some(RelayHostInfo {
                    kind: kind.kind,
                    version: kind.version,
                    description: kind.description,
                    admin_auth: kind.admin_auth,
                    reference: kind.reference,
                }),
            })
        }
    }
}

fn valid_kind(kind: &str) -> bool {
    (2..=64).contains(&kind.len())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn adapter_info(
    info: crate::runtime::bindings::adapter::exports::wharf::plugin::adapter::AdapterInfo,
) -> Result<AdapterInfo, String> {
    if info.capability.is_empty()
        || !info
            .capability
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "capability {:?} must be non-empty lowercase [a-z0-9_-]",
            info.capability
        ));
    }
    if info.operations.is_empty() {
        return Err("lists no operation".into());
    }
    let parse = |op: &str, which: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|err| format!("operation {op:?}: {which} schema is not JSON: {err}"))
    };
    let mut operations = Vec::new();
    for op in info.operations {
        operations.push(OperationInfo {
            input_schema: parse(&op.name, "input", &op.input_schema)?,
            output_schema: parse(&op.name, "output", &op.output_schema)?,
            hints: OperationHints {
                read_only: op.hints.read_only,
                destructive: op.hints.destructive && !op.hints.read_only,
                idempotent: op.hints.idempotent,
            },
            name: op.name,
            description: op.description,
        });
    }
    Ok(AdapterInfo {
        capability: info.capability,
        version: info.version,
        description: info.description,
        operations,
    })
}
