//! Sandbox profiles a pack contributes (`profiles/<name>.toml` in a declared data folder),
//! held to the operator's policy: a pack may add profiles, never widen what `wharf.toml`
//! allows. A refused profile is listed with its reason in `GET /v1/packs/{id}`.
//!
//! The rule for limits: a limit the profile leaves out gets the driver's host default; a
//! limit set to "unbounded" (`memory_mib = 0`, `pids_limit <= 0`, lifetimes of 0) or above
//! the operator's maximum refuses the profile.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::config::PacksConfig;
use crate::sandbox::profiles::{Isolation, Network, Profile};

/// Where, inside a generation's data snapshot, profiles are read from.
pub const PROFILES_DIR: &str = "profiles";

/// A pack profile that is not offered, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefusedProfile {
    pub name: String,
    pub reason: String,
}

/// What a pack profile may ask for.
#[derive(Debug, Clone)]
pub struct ProfilePolicy {
    allow_network: bool,
    max_memory_mib: u64,
    max_pids: i64,
    max_cpus: f64,
    /// Built-in and `wharf.toml` profile names: a pack may not override them.
    reserved: BTreeSet<String>,
}

impl ProfilePolicy {
    pub fn new<'a>(config: &PacksConfig, reserved: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            allow_network: config.allow_profile_network,
            max_memory_mib: config.max_profile_memory_mib,
            max_pids: config.max_profile_pids,
            max_cpus: config.max_profile_cpus,
            reserved: reserved.into_iter().map(str::to_string).collect(),
        }
    }

    /// Reads `<data_root>/profiles/*.toml` (the file stem is the name), sorted by name.
    /// Blocking.
    pub fn load(&self, data_root: Option<&Path>) -> (Vec<Profile>, Vec<RefusedProfile>) {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let Some(entries) =
            data_root.and_then(|root| std::fs::read_dir(root.join(PROFILES_DIR)).ok())
        else {
            return (accepted, refused);
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        for path in files {
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            let parsed = std::fs::read_to_string(&path)
                .map_err(|err| format!("cannot read: {err}"))
                .and_then(|text| {
                    toml::from_str::<Profile>(&text).map_err(|err| {
                        format!(
                            "invalid profile: {}",
                            err.to_string().trim().replace('\n', " ")
                        )
                    })
                })
                .and_then(|mut profile| {
                    profile.name = name.clone();
                    profile.validate()?;
                    self.check(&profile)?;
                    Ok(profile)
                });
            match parsed {
                Ok(profile) => accepted.push(profile),
                Err(reason) => {
                    tracing::warn!(profile = %name, %reason, "pack profile refused");
                    refused.push(RefusedProfile { name, reason });
                }
            }
        }
        (accepted, refused)
    }

    /// `Err(reason)` when the profile asks for more than the operator allows packs.
    pub fn check(&self, profile: &Profile) -> Result<(), String> {
        if self.reserved.contains(&profile.name) {
            return Err(format!(
                "a pack may not override the built-in or wharf.toml profile {:?}",
                profile.name
            ));
        }
        if profile.isolation == Isolation::None {
            return Err(
                "isolation = \"none\" is never allowed in a pack profile; only wharf.toml may declare such a profile"
                    .into(),
            );
        }
        if profile.network == Network::Bridge && !self.allow_network {
            return Err(
                "network = \"bridge\" is not allowed in pack profiles unless wharf.toml sets [packs] allow_profile_network = true"
                    .into(),
            );
        }
        match profile.memory_mib {
            Some(0) => {
                return Err("memory_mib = 0 would leave its sandboxes without a memory limit; leave it out for the host default".into());
            }
            Some(mib) if mib > self.max_memory_mib => {
                return Err(format!(
                    "memory_mib = {mib} is above the operator's maximum of {} ([packs] max_profile_memory_mib)",
                    self.max_memory_mib
                ));
            }
            _ => {}
        }
        match profile.pids_limit {
            Some(pids) if pids <= 0 => {
                return Err(format!(
                    "pids_limit = {pids} would leave its sandboxes without a process limit; leave it out for the host default"
                ));
            }
            Some(pids) if pids > self.max_pids => {
                return Err(format!(
                    "pids_limit = {pids} is above the operator's maximum of {} ([packs] max_profile_pids)",
                    self.max_pids
                ));
            }
            _ => {}
        }
        if let Some(cpus) = profile.cpus
            && cpus > self.max_cpus
        {
            return Err(format!(
                "cpus = {cpus} is above the operator's maximum of {} ([packs] max_profile_cpus)",
                self.max_cpus
            ));
        }
        if profile.idle_timeout_secs == 0 || profile.max_ttl_secs == 0 {
            return Err("idle_timeout_secs and max_ttl_secs must not be 0 (never stopped, never deleted) in a pack profile".into());
        }
        if runs_as_root(&profile.user) {
            return Err(format!(
                "user = {:?} runs as root; a pack profile must use an unprivileged uid:gid",
                profile.user
            ));
        }
        if !profile.read_only_root {
            return Err("read_only_root = false (a writable root filesystem) is not allowed in a pack profile".into());
        }
        Ok(())
    }
}

/// `root`, `0`, `x:0` and `x:root` all give root's privileges.
fn runs_as_root(user: &str) -> bool {
    user.split(':')
        .any(|part| matches!(part.trim(), "0" | "root" | ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_network: bool) -> ProfilePolicy {
        let config = PacksConfig {
            allow_profile_network: allow_network,
            ..PacksConfig::default()
        };
        ProfilePolicy::new(&config, ["local", "docker"])
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }

    #[test]
    fn wider_profiles_are_refused_with_their_reason() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(PROFILES_DIR);
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "fine", "driver = \"docker\"\nmemory_mib = 256");
        write(&dir, "defaults", "driver = \"docker\"");
        write(&dir, "bridged", "driver = \"docker\"\nnetwork = \"bridge\"");
        write(&dir, "host", "driver = \"process\"\nisolation = \"none\"");
        write(&dir, "nomem", "driver = \"docker\"\nmemory_mib = 0");
        write(&dir, "nopids", "driver = \"docker\"\npids_limit = -1");
        write(&dir, "huge", "driver = \"docker\"\nmemory_mib = 1000000");
        write(&dir, "forever", "driver = \"process\"\nmax_ttl_secs = 0");
        write(&dir, "rooted", "driver = \"docker\"\nuser = \"0:0\"");
        write(
            &dir,
            "writable",
            "driver = \"docker\"\nread_only_root = false",
        );
        write(&dir, "local", "driver = \"process\"");
        write(&dir, "broken", "driver = 3");

        let (accepted, refused) = policy(false).load(Some(root.path()));
        let names: Vec<_> = accepted.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["defaults", "fine"]);
        let reason = |name: &str| {
            refused
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("{name} not refused: {refused:?}"))
                .reason
                .clone()
        };
        assert!(reason("bridged").contains("allow_profile_network"));
        assert!(reason("host").contains("isolation = \"none\""));
        assert!(reason("nomem").contains("without a memory limit"));
        assert!(reason("nopids").contains("without a process limit"));
        assert!(reason("huge").contains("max_profile_memory_mib"));
        assert!(reason("forever").contains("max_ttl_secs"));
        assert!(reason("rooted").contains("root"));
        assert!(reason("writable").contains("read_only_root"));
        assert!(reason("local").contains("may not override"));
        assert!(reason("broken").contains("invalid profile"));
        assert_eq!(refused.len(), 10, "{refused:?}");

        // The operator's allowance opens the network, never isolation = "none".
        let (accepted, refused) = policy(true).load(Some(root.path()));
        assert!(accepted.iter().any(|p| p.name == "bridged"));
        assert!(refused.iter().any(|r| r.name == "host"));
        assert_eq!(policy(true).load(None).0.len(), 0);
    }

    #[test]
    fn root_users_are_recognised() {
        for user in ["0", "0:0", "root", "1000:0", "root:1000", ":1000"] {
            assert!(runs_as_root(user), "{user}");
        }
        for user in ["1000:1000", "65534:65534", "1000"] {
            assert!(!runs_as_root(user), "{user}");
        }
    }
}
