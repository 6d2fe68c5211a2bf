//! Sandbox profiles: which driver runs a sandbox, with which image, limits,
//! network, environment, capabilities and lifetimes.
//!
//! Two are built in (`local`, `docker`); `[profiles.<name>]` in `wharf.toml`
//! adds or overrides profiles.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::capabilities::scope::entry_covers;
use crate::capabilities::secrets::{SecretValue, validate_secret_env};
use crate::error::{ErrorCode, WharfError, WharfResult};

/// The tag `scripts/build-base-image` builds.
pub const BASE_IMAGE: &str = "wharf/sandbox-base:1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Bridge,
}

/// How the process driver confines an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Own user, mount, PID, IPC and UTS namespaces as an unprivileged uid, with
    /// Landlock and seccomp as a second layer (the default).
    #[default]
    Namespaces,
    /// No isolation: execs run as the server's user on the host. Only `wharf.toml`
    /// may declare it, and only admin keys may use such a profile.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Filled from the table key.
    #[serde(default)]
    pub name: String,
    /// `process` or `docker`.
    pub driver: String,
    /// Container image (docker driver).
    #[serde(default = "default_image")]
    pub image: String,
    /// CPU cores (fractions allowed).
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default = "default_network")]
    pub network: Network,
    /// Capabilities a caller may use on this profile: `exec`, `files`, and
    /// plugin capability names (e.g. `shell`). `*` allows all.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    /// Environment of every exec. Values are never logged or returned.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment of every exec whose values are also masked (`***`) in every output,
    /// event, log line and error that leaves the server.
    #[serde(default, skip_serializing)]
    #[schema(value_type = Object)]
    pub secret_env: BTreeMap<String, SecretValue>,
    /// Per-operation policy, keyed like scope entries (`shell.run`, or `shell` for every
    /// operation): `{ approval = "required" }` makes a call wait for an approver.
    #[serde(default)]
    pub operations: BTreeMap<String, OperationPolicy>,
    /// Working directory inside the container (docker driver).
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// A running sandbox unused this long is stopped (0: never).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// A sandbox older than this is deleted (0: never).
    #[serde(default = "default_ttl")]
    pub max_ttl_secs: u64,
    /// A dead runtime is restarted once before the sandbox is marked failed.
    #[serde(default = "default_true")]
    pub restart_once: bool,
    /// Process driver: how execs are confined.
    #[serde(default)]
    pub isolation: Isolation,
    /// Docker driver: the `uid:gid` every process of the container runs as,
    /// whatever the image's `USER` says.
    #[serde(default = "default_user")]
    pub user: String,
    /// Docker driver: the container's root filesystem is read-only (a tmpfs
    /// `/tmp` and the workspace volume stay writable).
    #[serde(default = "default_true")]
    pub read_only_root: bool,
}

/// Whether an operation needs a human decision before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalPolicy {
    #[default]
    None,
    Required,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationPolicy {
    #[serde(default)]
    pub approval: ApprovalPolicy,
}

fn default_image() -> String {
    BASE_IMAGE.to_string()
}
fn default_network() -> Network {
    Network::None
}
fn default_capabilities() -> Vec<String> {
    vec!["*".to_string()]
}
fn default_workdir() -> String {
    "/workspace".to_string()
}
fn default_idle() -> u64 {
    30 * 60
}
fn default_ttl() -> u64 {
    24 * 3600
}
fn default_true() -> bool {
    true
}
fn default_user() -> String {
    "1000:1000".to_string()
}

impl Profile {
    pub fn builtin_local() -> Self {
        Self::with_driver("local", "process")
    }

    pub fn builtin_docker() -> Self {
        let mut profile = Self::with_driver("docker", "docker");
        profile.cpus = Some(1.0);
        profile.memory_mib = Some(512);
        profile.pids_limit = Some(256);
        profile
    }

    fn with_driver(name: &str, driver: &str) -> Self {
        Self {
            name: name.to_string(),
            driver: driver.to_string(),
            image: default_image(),
            cpus: None,
            memory_mib: None,
            pids_limit: None,
            network: Network::None,
            capabilities: default_capabilities(),
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            operations: BTreeMap::new(),
            workdir: default_workdir(),
            idle_timeout_secs: default_idle(),
            max_ttl_secs: default_ttl(),
            restart_once: true,
            isolation: Isolation::Namespaces,
            user: default_user(),
            read_only_root: true,
        }
    }

    pub fn exec_limits(&self) -> super::ExecLimits {
        super::ExecLimits {
            memory_mib: self.memory_mib,
            pids_limit: self.pids_limit,
            cpus: self.cpus,
            isolate_network: self.network == Network::None,
            isolation: self.isolation,
            workdir: self.workdir.clone(),
        }
    }

    /// A process profile whose execs run on the host without confinement.
    pub fn unconfined(&self) -> bool {
        self.driver == "process" && self.isolation == Isolation::None
    }

    /// Whether the profile allows `capability` (a name like `exec`, `files`, `shell`, or an
    /// operation `shell.run`): an entry equal to it, `*`, or a dotted prefix of it.
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|entry| entry_covers(entry, capability))
    }

    /// Whether `capability.operation` waits for an approver in this profile.
    pub fn needs_approval(&self, operation: &str) -> bool {
        self.operations.iter().any(|(entry, policy)| {
            policy.approval == ApprovalPolicy::Required && entry_covers(entry, operation)
        })
    }

    /// Whether any operation of this profile waits for an approver: then the direct routes
    /// that could do the same unapproved (exec, file writes) are refused.
    pub fn has_approval_rules(&self) -> bool {
        self.operations
            .values()
            .any(|policy| policy.approval == ApprovalPolicy::Required)
    }

    /// Every secret value of the profile, for the masker.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secret_env.values().map(SecretValue::expose)
    }

    /// The profile's environment, secret variables included.
    pub fn full_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                self.secret_env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string())),
            )
            .collect()
    }

    /// `capability_not_supported` unless the profile allows `capability`.
    pub fn require(&self, capability: &str) -> WharfResult<()> {
        if self.allows(capability) {
            Ok(())
        } else {
            Err(WharfError::new(
                ErrorCode::CapabilityNotSupported,
                format!(
                    "profile {:?} does not allow the {capability:?} capability",
                    self.name
                ),
            ))
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !matches!(self.driver.as_str(), "process" | "docker") {
            return Err(format!(
                "profile {:?}: unknown driver {:?} (process | docker)",
                self.name, self.driver
            ));
        }
        if !self.workdir.starts_with('/') {
            return Err(format!("profile {:?}: workdir must be absolute", self.name));
        }
        // The process driver builds the sandbox's root around the workdir:
        // it cannot be the root, a system directory, /tmp, /dev or /proc.
        let reserved = [
            "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "tmp", "dev", "proc",
        ];
        let first = std::path::Path::new(&self.workdir)
            .components()
            .find_map(|part| match part {
                std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            });
        let escapes = self
            .workdir
            .split('/')
            .any(|part| part == ".." || part == ".");
        match first {
            _ if escapes => {
                return Err(format!(
                    "profile {:?}: workdir must not contain . or ..",
                    self.name
                ));
            }
            None => return Err(format!("profile {:?}: workdir must not be /", self.name)),
            Some(first) if reserved.contains(&first.as_str()) => {
                return Err(format!(
                    "profile {:?}: workdir must not be under /{first} (a system directory of the sandbox)",
                    self.name
                ));
            }
            Some(_) => {}
        }
        if let Some(cpus) = self.cpus
            && !(cpus > 0.0 && cpus <= 256.0)
        {
            return Err(format!("profile {:?}: cpus must be in (0, 256]", self.name));
        }
        validate_secret_env(
            self.secret_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose())),
        )
        .map_err(|why| format!("profile {:?}: {why}", self.name))?;
        Ok(())
    }
}

/// All profiles known to the server, by name: built-ins, then `wharf.toml`
/// (which may override them), then the profiles of active packs that the operator's
/// policy accepted (`packs::profiles`; they may add profiles, never override these).
#[derive(Debug)]
pub struct Profiles {
    by_name: HashMap<String, Profile>,
    from_packs: arc_swap::ArcSwap<HashMap<String, Profile>>,
}

impl Profiles {
    pub fn new(configured: &BTreeMap<String, Profile>) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        for profile in [Profile::builtin_local(), Profile::builtin_docker()] {
            by_name.insert(profile.name.clone(), profile);
        }
        for (name, profile) in configured {
            let mut profile = profile.clone();
            profile.name = name.clone();
            profile.validate().map_err(anyhow::Error::msg)?;
            by_name.insert(name.clone(), profile);
        }
        Ok(Self {
            by_name,
            from_packs: Default::default(),
        })
    }

    /// Whether `wharf.toml` declares any profile that runs execs unconfined.
    pub fn has_unisolated(&self) -> bool {
        self.by_name.values().any(Profile::unconfined)
    }

    /// Configured process profiles that run execs unconfined, by name.
    pub fn unisolated(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .values()
            .filter(|profile| profile.unconfined())
            .map(|profile| profile.name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn get(&self, name: &str) -> WharfResult<Profile> {
        if let Some(profile) = self.by_name.get(name) {
            return Ok(profile.clone());
        }
        if let Some(profile) = self.from_packs.load().get(name) {
            return Ok(profile.clone());
        }
        let mut known: Vec<_> = self
            .by_name
            .keys()
            .cloned()
            .chain(self.from_packs.load().keys().cloned())
            .collect();
        known.sort();
        Err(WharfError::validation(format!(
            "unknown sandbox profile {name:?}; known: {}",
            known.join(", ")
        )))
    }

    /// The built-in and `wharf.toml` profile names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Replaces the pack-contributed profiles (already held to the operator's policy
    /// when their pack loaded). A name of the operator's is never overridden.
    pub fn set_pack_profiles(&self, profiles: impl IntoIterator<Item = Profile>) {
        let found = profiles
            .into_iter()
            .filter(|profile| !self.by_name.contains_key(&profile.name))
            .map(|profile| (profile.name.clone(), profile))
            .collect();
        self.from_packs.store(std::sync::Arc::new(found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_profiles_parse_and_override() {
        let configured: BTreeMap<String, Profile> = toml::from_str(
            "[nofiles]\ndriver = \"process\"\ncapabilities = [\"exec\"]\n\n[docker]\ndriver = \"docker\"\nmemory_mib = 64\nnetwork = \"bridge\"",
        )
        .unwrap();
        let profiles = Profiles::new(&configured).unwrap();
        let nofiles = profiles.get("nofiles").unwrap();
        assert!(nofiles.allows("exec") && !nofiles.allows("files"));
        assert_eq!(
            nofiles.require("files").unwrap_err().code,
            ErrorCode::CapabilityNotSupported
        );
        assert_eq!(profiles.get("docker").unwrap().memory_mib, Some(64));
        assert_eq!(profiles.get("docker").unwrap().network, Network::Bridge);
        assert!(profiles.get("local").unwrap().allows("files"));
        assert_eq!(
            profiles.get("nope").unwrap_err().code,
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn packs_contribute_profiles_without_overriding() {
        let profiles = Profiles::new(&BTreeMap::new()).unwrap();
        let mut gpu = Profile::builtin_docker();
        gpu.name = "gpu-ish".into();
        gpu.cpus = Some(2.0);
        let mut local = Profile::builtin_docker();
        local.name = "local".into();
        profiles.set_pack_profiles([gpu, local]);
        assert_eq!(profiles.get("gpu-ish").unwrap().cpus, Some(2.0));
        assert_eq!(profiles.get("local").unwrap().driver, "process");
        profiles.set_pack_profiles([]);
        assert!(profiles.get("gpu-ish").is_err());
    }

    #[test]
    fn bad_driver_is_rejected() {
        let configured: BTreeMap<String, Profile> = toml::from_str("[x]\ndriver = \"vm\"").unwrap();
        assert!(
            Profiles::new(&configured)
                .unwrap_err()
                .to_string()
                .contains("unknown driver")
        );
    }
}
