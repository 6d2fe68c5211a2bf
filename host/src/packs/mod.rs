//! Packs: the directory of built packs, their generations, and hot reload.
//!
//! The serving state is one immutable [`PackSet`] behind an `ArcSwap`: a
//! request loads it once and keeps the generation it found, so a swap never
//! disturbs a call in flight (make-before-break).

pub mod build;
pub mod data;
pub mod loader;
pub mod manifest;
pub mod profiles;
pub mod scaffold;
pub mod watcher;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use serde::Serialize;

use self::data::DataSnapshots;
pub use self::loader::{
    AdapterInfo, InflightGuard, LoadedPack, OperationHints, OperationInfo, PackComponent,
};
use self::profiles::ProfilePolicy;
use crate::config::PacksConfig;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::logs::PluginLogs;
use crate::store::now_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackState {
    /// Serving calls.
    Active,
    /// Failed to load; `error` says why. A previous generation may still be active.
    Quarantined,
    /// Loaded, but another directory holds a higher version of the same id.
    Shadowed,
    /// Replaced or removed; still finishing in-flight calls.
    Draining,
    /// Loaded, but it provides a capability, provider or profile name that another pack
    /// serves (or that `[packs.pins]` gives to another pack); `error` says which. It
    /// serves nothing until that changes.
    Conflict,
}

/// One row of `GET /v1/packs`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PackRow {
    /// The id from the manifest; null when the manifest could not be read.
    pub id: Option<String>,
    pub version: Option<String>,
    pub state: PackState,
    pub generation: Option<u64>,
    /// sha256 over every file of the pack.
    pub sha256: String,
    /// Directory name inside the packs dir.
    pub dir: String,
    pub loaded_at: Option<String>,
    /// Why it is quarantined or in conflict.
    pub error: Option<String>,
    pub inflight: usize,
}

/// Which component serves a capability.
#[derive(Clone)]
pub struct CapabilityRoute {
    pub pack: Arc<LoadedPack>,
    pub component: usize,
}

impl CapabilityRoute {
    pub fn component(&self) -> &PackComponent {
        &self.pack.components[self.component]
    }
}

/// What a pack claims when it serves: names only one pack may hold at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ClaimKind {
    Capability,
    Provider,
    Profile,
    Planner,
    RelayHost,
}

impl ClaimKind {
    fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Capability => "capability",
            ClaimKind::Provider => "provider",
            ClaimKind::Profile => "profile",
            ClaimKind::Planner => "planner",
            ClaimKind::RelayHost => "relay host kind",
        }
    }
}

type Claim = (ClaimKind, String);

/// The serving state: swapped atomically as a whole.
#[derive(Default)]
pub struct PackSet {
    /// Rows as of the scan, each with the pack that serves it (for live counts).
    rows: Vec<(PackRow, Option<Weak<LoadedPack>>)>,
    pub active: BTreeMap<String, Arc<LoadedPack>>,
    /// Highest-version generations that serve nothing because of a conflict, with the reason.
    pub conflicts: BTreeMap<String, (Arc<LoadedPack>, String)>,
    pub capabilities: BTreeMap<String, CapabilityRoute>,
    pub providers: BTreeMap<String, CapabilityRoute>,
    /// Batch planners by component name (a task's `planner`).
    pub planners: BTreeMap<String, CapabilityRoute>,
    /// Relay host adapters by the kind they drive (`sub2api`).
    pub relay_hosts: BTreeMap<String, CapabilityRoute>,
    /// Sandbox profiles contributed by active packs, by name.
    pub profiles: BTreeMap<String, crate::sandbox::profiles::Profile>,
    /// Which pack id holds each claimed name: the next scan keeps them there.
    holders: BTreeMap<Claim, String>,
}

impl PackSet {
    /// The `GET /v1/packs` rows with live in-flight counts; a draining
    /// generation disappears as soon as its last call ends.
    pub fn rows(&self) -> Vec<PackRow> {
        self.rows
            .iter()
            .filter_map(|(row, source)| {
                let mut row = row.clone();
                if let Some(pack) = source {
                    row.inflight = pack.upgrade().map_or(0, |p| p.inflight());
                    if row.state == PackState::Draining && row.inflight == 0 {
                        return None;
                    }
                }
                Some(row)
            })
            .collect()
    }
}

struct Rejected {
    digest: String,
    id: Option<String>,
    version: Option<String>,
    reason: String,
    at: String,
    /// Retried at the next scan even with the same content.
    transient: bool,
}

/// What the operator decides for packs.
pub struct PackSettings {
    /// Where generations' data snapshots are kept (`<data_dir>/pack-data`).
    pub data_root: PathBuf,
    /// Which pack profiles are accepted.
    pub profile_policy: ProfilePolicy,
    /// Contested names pinned to a pack id (`[packs.pins]`).
    pub pins: BTreeMap<String, String>,
    /// Capabilities pinned to versions of their pack (`shell = "core-adapters@^0.1"`).
    pub pin_versions: BTreeMap<String, semver::VersionReq>,
}

/// A `[packs.pins]` value: `<pack id>` or `<pack id>@<semver requirement>`.
pub fn parse_pin(value: &str) -> Result<(&str, Option<semver::VersionReq>), String> {
    match value.split_once('@') {
        Some((id, req)) => semver::VersionReq::parse(req)
            .map(|req| (id, Some(req)))
            .map_err(|err| {
                format!("[packs.pins] {value:?}: {req:?} is not a semver requirement ({err})")
            }),
        None => Ok((value, None)),
    }
}

impl PackSettings {
    /// The settings of `wharf.toml`; `reserved_profiles` are the operator's profile names.
    pub fn new<'a>(
        config: &PacksConfig,
        data_root: PathBuf,
        reserved_profiles: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            data_root,
            profile_policy: ProfilePolicy::new(config, reserved_profiles),
            pins: config
                .pins
                .iter()
                .map(|(name, value)| {
                    let id = parse_pin(value).map(|(id, _)| id).unwrap_or(value);
                    (name.clone(), id.to_string())
                })
                .collect(),
            pin_versions: config
                .pins
                .iter()
                .filter_map(|(name, value)| {
                    let (_, req) = parse_pin(value).ok()?;
                    Some((name.clone(), req?))
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct DirState {
    serving: Option<Arc<LoadedPack>>,
    rejected: Option<Rejected>,
}

#[derive(Default)]
struct LoaderState {
    dirs: BTreeMap<PathBuf, DirState>,
    generations: HashMap<String, u64>,
    retired: Vec<Weak<LoadedPack>>,
}

pub struct Packs {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    logs: Arc<PluginLogs>,
    snapshots: Arc<DataSnapshots>,
    policy: Arc<ProfilePolicy>,
    pins: BTreeMap<String, String>,
    pin_versions: BTreeMap<String, semver::VersionReq>,
    metrics: Arc<Metrics>,
    current: ArcSwap<PackSet>,
    state: tokio::sync::Mutex<LoaderState>,
    scans: tokio::sync::watch::Sender<u64>,
}

impl Packs {
    pub fn new(
        dir: PathBuf,
        runtime: Arc<Runtime>,
        logs: Arc<PluginLogs>,
        settings: PackSettings,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let metrics = runtime.metrics().clone();
        Ok(Self {
            dir,
            runtime,
            logs,
            snapshots: Arc::new(DataSnapshots::new(settings.data_root)?),
            policy: Arc::new(settings.profile_policy),
            pins: settings.pins,
            pin_versions: settings.pin_versions,
            metrics,
            current: ArcSwap::from_pointee(PackSet::default()),
            state: tokio::sync::Mutex::new(LoaderState::default()),
            scans: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs(&self) -> &Arc<PluginLogs> {
        &self.logs
    }

    /// The versions of its pack that the operator pinned `capability` to, if any.
    pub fn pinned_version(&self, capability: &str) -> Option<&semver::VersionReq> {
        self.pin_versions.get(capability)
    }

    /// The serving state now. Hold the `Arc` for the whole call.
    pub fn snapshot(&self) -> Arc<PackSet> {
        self.current.load_full()
    }

    /// Resolves after the next completed scan.
    pub fn scans(&self) -> tokio::sync::watch::Receiver<u64> {
        self.scans.subscribe()
    }

    /// Rescans the packs dir and swaps in whatever changed. Serialised: one scan at a time.
    pub async fn rescan(&self) {
        let mut state = self.state.lock().await;
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let staging =
                    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".partial");
                if !staging && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    seen.push(entry.path());
                }
            }
        }
        seen.sort();

        let by_digest: HashMap<String, Arc<LoadedPack>> = state
            .dirs
            .values()
            .filter_map(|d| d.serving.clone())
            .map(|pack| (pack.digest.clone(), pack))
            .collect();
        let mut next: BTreeMap<PathBuf, DirState> = BTreeMap::new();
        for dir in seen {
            let mut dir_state = state.dirs.remove(&dir).unwrap_or_default();
            let digest = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || loader::content_digest(&dir))
                    .await
                    .expect("digest task")
            };
            let digest = match digest {
                Ok(digest) => digest,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Vanished or half-moved during the scan: keep what we had; the next event rescans.
                    next.insert(dir, dir_state);
                    continue;
                }
                Err(err) => format!("unreadable: {err}"),
            };
            let unchanged = dir_state
                .serving
                .as_ref()
                .is_some_and(|p| p.digest == digest)
                || dir_state
                    .rejected
                    .as_ref()
                    .is_some_and(|r| r.digest == digest && !r.transient);
            if unchanged {
                if dir_state
                    .serving
                    .as_ref()
                    .is_some_and(|p| p.digest == digest)
                {
                    dir_state.rejected = None;
                }
            } else if let Some(pack) = by_digest.get(&digest) {
                // Same content under another name (a rename): same generation, no reload.
                Self::retire(
                    &mut state.retired,
                    dir_state.serving.replace(pack.clone()),
                    pack,
                );
                dir_state.rejected = None;
            } else {
                match self.load_generation(&mut state, &dir, digest.clone()).await {
                    Ok(pack) => {
                        tracing::info!(pack = %pack.id, version = %pack.version, generation = pack.generation, dir = %dir.display(), "pack loaded");
                        self.metrics.pack_loads.with_label_values(&["loaded"]).inc();
                        Self::retire(
                            &mut state.retired,
                            dir_state.serving.replace(pack.clone()),
                            &pack,
                        );
                        dir_state.rejected = None;
                    }
                    Err(rejected) => {
                        tracing::warn!(dir = %dir.display(), reason = %rejected.reason, "pack quarantined");
                        self.metrics
                            .pack_loads
                            .with_label_values(&["quarantined"])
                            .inc();
                        dir_state.rejected = Some(rejected);
                    }
                }
            }
            next.insert(dir, dir_state);
        }
        // Directories that disappeared: their generations drain and unload.
        for (dir, old) in std::mem::take(&mut state.dirs) {
            if let Some(pack) = old.serving {
                tracing::info!(pack = %pack.id, dir = %dir.display(), "pack removed; draining");
                state.retired.push(Arc::downgrade(&pack));
            }
        }
        state.dirs = next;
        state.retired.retain(|weak| weak.strong_count() > 0);
        let set = self.build_set(&state, &self.current.load());
        let live: HashSet<String> = state
            .dirs
            .values()
            .filter_map(|d| d.serving.as_ref())
            .flat_map(|p| p.components.iter().map(|c| c.runtime.sha256.clone()))
            .collect();
        // Draining generations still read their data: keep every live generation's snapshot.
        let live_data: HashSet<PathBuf> = state
            .dirs
            .values()
            .filter_map(|d| d.serving.clone())
            .chain(state.retired.iter().filter_map(Weak::upgrade))
            .filter_map(|p| p.data_root.clone())
            .collect();
        // Publishing and pruning stay under the scan lock: an overlapping
        // scan must neither publish an older set over this one nor prune a
        // snapshot it has just made or reused.
        self.publish_metrics(&set);
        self.current.store(Arc::new(set));
        self.runtime.retain_compiled(&live);
        let snapshots = self.snapshots.clone();
        let _ = tokio::task::spawn_blocking(move || snapshots.retain(&live_data)).await;
        drop(state);
        self.scans.send_modify(|n| *n += 1);
    }

    fn retire(
        retired: &mut Vec<Weak<LoadedPack>>,
        old: Option<Arc<LoadedPack>>,
        new: &Arc<LoadedPack>,
    ) {
        if let Some(old) = old.filter(|old| !Arc::ptr_eq(old, new)) {
            retired.push(Arc::downgrade(&old));
        }
    }

    async fn load_generation(
        &self,
        state: &mut LoaderState,
        dir: &Path,
        digest: String,
    ) -> Result<Arc<LoadedPack>, Rejected> {
        let peek = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || loader::peek_id(&dir))
                .await
                .expect("peek task")
        };
        let generation = peek
            .as_ref()
            .map(|(id, _)| state.generations.get(id).copied().unwrap_or(0) + 1)
            .unwrap_or(0);
        let result = {
            let dir = dir.to_path_buf();
            let runtime = self.runtime.clone();
            let logs = self.logs.clone();
            let (snapshots, policy) = (self.snapshots.clone(), self.policy.clone());
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || {
                loader::load_pack(
                    &dir, digest, generation, &runtime, &logs, &snapshots, &policy,
                )
            })
            .await
            .unwrap_or_else(|panic| Err(format!("loader panicked: {panic}").into()))
        };
        match result {
            Ok(pack) => {
                state.generations.insert(pack.id.clone(), generation);
                Ok(Arc::new(pack))
            }
            Err(err) => Err(Rejected {
                digest,
                id: peek.as_ref().map(|(id, _)| id.clone()),
                version: peek.map(|(_, version)| version),
                reason: err.reason,
                at: now_rfc3339(),
                transient: err.transient,
            }),
        }
    }

    fn build_set(&self, state: &LoaderState, previous: &PackSet) -> PackSet {
        // The highest version of each id is the candidate; ties go to the newest generation.
        let mut winners: BTreeMap<String, Arc<LoadedPack>> = BTreeMap::new();
        for pack in state.dirs.values().filter_map(|d| d.serving.as_ref()) {
            let better = match winners.get(&pack.id) {
                Some(current) => {
                    (&pack.version, pack.generation) > (&current.version, current.generation)
                }
                None => true,
            };
            if better {
                winners.insert(pack.id.clone(), pack.clone());
            }
        }
        let conflicts = conflicts(&winners, &previous.holders, &self.pins);
        for (id, reason) in &conflicts {
            if !previous.conflicts.contains_key(id) {
                tracing::warn!(pack = %id, %reason, "pack in conflict: it serves nothing");
            }
        }
        let conflicts: BTreeMap<String, (Arc<LoadedPack>, String)> = conflicts
            .into_iter()
            .filter_map(|(id, reason)| winners.remove(&id).map(|pack| (id, (pack, reason))))
            .collect();
        let dir_name = |dir: &Path| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut rows = Vec::new();
        for (dir, dir_state) in &state.dirs {
            if let Some(pack) = &dir_state.serving {
                let active = winners.get(&pack.id).is_some_and(|w| Arc::ptr_eq(w, pack));
                let conflict = conflicts
                    .get(&pack.id)
                    .filter(|(c, _)| Arc::ptr_eq(c, pack))
                    .map(|(_, reason)| reason.clone());
                let row = PackRow {
                    id: Some(pack.id.clone()),
                    version: Some(pack.version.to_string()),
                    state: if active {
                        PackState::Active
                    } else if conflict.is_some() {
                        PackState::Conflict
                    } else {
                        PackState::Shadowed
                    },
                    generation: Some(pack.generation),
                    sha256: pack.digest.clone(),
                    dir: dir_name(dir),
                    loaded_at: Some(pack.loaded_at.clone()),
                    error: conflict,
                    inflight: pack.inflight(),
                };
                rows.push((row, Some(Arc::downgrade(pack))));
            }
            if let Some(rejected) = &dir_state.rejected {
                let row = PackRow {
                    id: rejected.id.clone(),
                    version: rejected.version.clone(),
                    state: PackState::Quarantined,
                    generation: None,
                    sha256: rejected.digest.clone(),
                    dir: dir_name(dir),
                    loaded_at: Some(rejected.at.clone()),
                    error: Some(rejected.reason.clone()),
                    inflight: 0,
                };
                rows.push((row, None));
            }
        }
        for pack in state.retired.iter().filter_map(Weak::upgrade) {
            if !winners.values().any(|w| Arc::ptr_eq(w, &pack)) && pack.inflight() > 0 {
                let row = PackRow {
                    id: Some(pack.id.clone()),
                    version: Some(pack.version.to_string()),
                    state: PackState::Draining,
                    generation: Some(pack.generation),
                    sha256: pack.digest.clone(),
                    dir: dir_name(&pack.dir),
                    loaded_at: Some(pack.loaded_at.clone()),
                    error: None,
                    inflight: pack.inflight(),
                };
                rows.push((row, Some(Arc::downgrade(&pack))));
            }
        }

        let mut capabilities = BTreeMap::new();
        let mut providers = BTreeMap::new();
        let mut planners = BTreeMap::new();
        let mut relay_hosts = BTreeMap::new();
        let mut profiles = BTreeMap::new();
        let mut holders = BTreeMap::new();
        for pack in winners.values() {
            for (index, component) in pack.components.iter().enumerate() {
                let route = CapabilityRoute {
                    pack: pack.clone(),
                    component: index,
                };
                if let Some(adapter) = &component.adapter {
                    // Two components of one pack with one capability: the first serves.
                    capabilities
                        .entry(adapter.capability.clone())
                        .or_insert_with(|| route.clone());
                }
                for provider in &component.provider_ids {
                    providers
                        .entry(provider.clone())
                        .or_insert_with(|| route.clone());
                }
                if let Some(name) = component.planner_name() {
                    planners
                        .entry(name.to_string())
                        .or_insert_with(|| route.clone());
                }
                if let Some(relay) = &component.relay_host {
                    relay_hosts
                        .entry(relay.kind.clone())
                        .or_insert_with(|| route.clone());
                }
            }
            for profile in &pack.profiles {
                profiles.insert(profile.name.clone(), profile.clone());
            }
            for claim in claims_of(pack) {
                holders.insert(claim, pack.id.clone());
            }
        }
        PackSet {
            rows,
            active: winners,
            conflicts,
            capabilities,
            providers,
            planners,
            relay_hosts,
            profiles,
            holders,
        }
    }

    fn publish_metrics(&self, set: &PackSet) {
        self.metrics.pack_generation.reset();
        for pack in set.active.values() {
            self.metrics
                .pack_generation
                .with_label_values(&[&pack.id])
                .set(pack.generation as i64);
        }
    }
}

/// The names `pack` would hold while serving.
fn claims_of(pack: &LoadedPack) -> BTreeSet<Claim> {
    let mut claims = BTreeSet::new();
    for component in &pack.components {
        if let Some(adapter) = &component.adapter {
            claims.insert((ClaimKind::Capability, adapter.capability.clone()));
        }
        for provider in &component.provider_ids {
            claims.insert((ClaimKind::Provider, provider.clone()));
        }
        if let Some(name) = component.planner_name() {
            claims.insert((ClaimKind::Planner, name.to_string()));
        }
        if let Some(relay) = &component.relay_host {
            claims.insert((ClaimKind::RelayHost, relay.kind.clone()));
        }
    }
    for profile in &pack.profiles {
        claims.insert((ClaimKind::Profile, profile.name.clone()));
    }
    claims
}

/// Which candidates may not serve, with the reason. A claimed name goes to the pack that
/// `pins` names for it, else to the pack that held it in the previous serving state, else
/// to its only claimant; when several new packs claim it at once, none gets it until the
/// operator pins one. A pack that would not get every name it claims serves nothing: there
/// is no silent takeover, whatever the order of names or scans.
fn conflicts(
    candidates: &BTreeMap<String, Arc<LoadedPack>>,
    previous: &BTreeMap<Claim, String>,
    pins: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut claimants: BTreeMap<Claim, Vec<&str>> = BTreeMap::new();
    let claims: BTreeMap<&str, BTreeSet<Claim>> = candidates
        .iter()
        .map(|(id, pack)| (id.as_str(), claims_of(pack)))
        .collect();
    for (id, claimed) in &claims {
        for claim in claimed {
            claimants.entry(claim.clone()).or_default().push(id);
        }
    }
    let mut refused = BTreeMap::new();
    for (id, claimed) in &claims {
        for claim in claimed {
            let others = &claimants[claim];
            if others.len() == 1 {
                continue;
            }
            let (kind, name) = (claim.0.as_str(), &claim.1);
            let pinned = pins.get(name).filter(|p| others.contains(&p.as_str()));
            let serving = previous.get(claim).filter(|p| others.contains(&p.as_str()));
            let reason = match (pinned, serving) {
                (Some(holder), _) if holder == id => continue,
                (Some(holder), _) => format!(
                    "{kind} {name:?} is pinned to pack {holder:?} by [packs.pins] in wharf.toml"
                ),
                (None, Some(holder)) if holder == id => continue,
                (None, Some(holder)) => format!(
                    "{kind} {name:?} is already served by pack {holder:?}; to move it, pin it in wharf.toml: [packs.pins] {name} = \"{id}\""
                ),
                (None, None) => {
                    let rest: Vec<String> = others
                        .iter()
                        .filter(|other| *other != id)
                        .map(|other| format!("{other:?}"))
                        .collect();
                    format!(
                        "{kind} {name:?} is also provided by pack {}; none serves it until wharf.toml pins one: [packs.pins] {name} = \"<pack id>\"",
                        rest.join(", ")
                    )
                }
            };
            refused.insert(id.to_string(), reason);
            break;
        }
    }
    refused
}
