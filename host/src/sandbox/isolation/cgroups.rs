//! Per-sandbox cgroups for the process driver: memory, pids and cpu limits
//! over all of a sandbox's processes, where the host lets the server use
//! cgroups (root, cgroup v1 with the memory, pids and cpu controllers).
//!
//! Each sandbox gets `<the server's own cgroup>/wharf/<sandbox id>` in each
//! controller, so the limits nest inside whatever the operator (systemd, a
//! container) placed the server in. An exec joins them before it drops its
//! privileges. On a cgroup v2 host the server would first have to move itself
//! into a leaf cgroup (the "no internal processes" rule); it does not, and
//! the driver then relies on rlimits alone (`GET /v1/info` says which).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::c_path;

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const CPU_PERIOD_US: u64 = 100_000;

/// The per-sandbox limits (from the profile).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

/// The cgroup v1 hierarchies the server may create sandbox groups in.
#[derive(Debug)]
pub struct Cgroups {
    /// `(controller, <mount>/<own cgroup>/wharf)`.
    bases: Vec<(&'static str, PathBuf)>,
    /// Sandboxes whose groups exist with these limits, and their
    /// `cgroup.procs` files: an exec of an unchanged sandbox writes nothing.
    prepared: parking_lot::Mutex<std::collections::HashMap<String, (CgroupLimits, Vec<CString>)>>,
}

impl Cgroups {
    /// The controllers' bases, when the server runs as root on cgroup v1 and
    /// can create its `wharf` groups; `None` otherwise.
    pub fn detect() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut bases = Vec::new();
        for controller in CONTROLLERS {
            // Lines look like `4:memory:/some/path` (v1).
            let path = own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names
                    .split(',')
                    .any(|name| name == controller)
                    .then(|| path.to_string())
            })?;
            let mount = Path::new("/sys/fs/cgroup").join(controller);
            let base = mount.join(path.trim_start_matches('/')).join("wharf");
            std::fs::create_dir_all(&base).ok()?;
            bases.push((controller, base));
        }
        Some(Self {
            bases,
            prepared: Default::default(),
        })
    }

    /// Creates (or updates) the sandbox's groups with `limits`; returns the
    /// `cgroup.procs` files an exec writes itself into.
    pub fn prepare(&self, sandbox_id: &str, limits: CgroupLimits) -> std::io::Result<Vec<CString>> {
        if let Some((prepared, procs)) = self.prepared.lock().get(sandbox_id)
            && *prepared == limits
        {
            return Ok(procs.clone());
        }
        let mut procs = Vec::new();
        for (controller, base) in &self.bases {
            let dir = base.join(sandbox_id);
            std::fs::create_dir_all(&dir)?;
            match *controller {
                "memory" => {
                    if let Some(bytes) = limits.memory_bytes {
                        write(&dir, "memory.limit_in_bytes", bytes)?;
                    }
                }
                "pids" => {
                    if let Some(pids) = limits.pids {
                        write(&dir, "pids.max", pids)?;
                    }
                }
                "cpu" => {
                    if let Some(cpus) = limits.cpus {
                        write(&dir, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                        let quota = (cpus * CPU_PERIOD_US as f64).round().max(1000.0) as u64;
                        write(&dir, "cpu.cfs_quota_us", quota)?;
                    }
                }
                _ => {}
            }
            procs.push(c_path(&dir.join("cgroup.procs"))?);
        }
        self.prepared
            .lock()
            .insert(sandbox_id.to_string(), (limits, procs.clone()));
        Ok(procs)
    }

    /// Kills whatever is left in the sandbox's groups and removes them.
    pub fn remove(&self, sandbox_id: &str) {
        self.prepared.lock().remove(sandbox_id);
        for (_, base) in &self.bases {
            let dir = base.join(sandbox_id);
            if !dir.exists() {
                continue;
            }
            for _ in 0..50 {
                let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if pids.trim().is_empty() {
                    break;
                }
                for pid in pids
                    .lines()
                    .filter_map(|pid| pid.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Err(err) = std::fs::remove_dir(&dir) {
                tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove a sandbox cgroup");
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: u64) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value.to_string()).map_err(|err| {
        std::io::Error::new(err.kind(), format!("{}: {err}", dir.join(file).display()))
    })
}
