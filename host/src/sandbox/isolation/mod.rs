//! Confinement of the process driver's execs: each exec runs in its own user,
//! mount, PID, IPC and UTS namespaces (and network namespace when the profile
//! says `network = "none"`), as an unprivileged uid/gid also when the server
//! runs as root, in a root filesystem that holds only the system directories
//! (read-only), a few `/etc` files, its workspace, a private `/tmp`, a minimal
//! `/dev` and its own `/proc`. Landlock (where the kernel has it) and a seccomp
//! filter are a second layer; rlimits bound memory, processes, files.
//!
//! The crates: `nix` for the namespace, mount and credential calls, `landlock`
//! for the Landlock ruleset, `seccompiler` (rust-vmm, Firecracker's) to compile
//! the seccomp filter. They are thin, safe wrappers over the kernel interfaces
//! and add no C dependency; hakoniwa (which does the same on top of them) needs
//! libseccomp and forks from a multi-threaded server with allocations in the
//! child, which is why it was not used.
//!
//! Process shape of one exec (see [`child`]):
//! ```text
//! server ── supervisor (host PID ns; never execs)
//!             └── init = the command (PID 1 of its own PID namespace)
//!                    └── everything the command starts
//! ```
//! When the init process dies, the kernel kills every process of its PID
//! namespace, so nothing escapes by `setsid`, double fork or `nohup`. The init
//! process has the supervisor as its parent-death signal source; the supervisor
//! watches a "lifeline" pipe whose write end only the server holds, so when the
//! server dies (even by `kill -9`) every sandboxed process dies with it.

mod cgroups;
mod child;
mod seccomp;

pub use cgroups::CgroupLimits;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;
use serde::Serialize;

/// The uid and gid that sandboxed processes have inside their namespace.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;

/// `/etc` entries a sandbox sees (read-only, from the host); everything else of
/// the host's `/etc` (shadow, the server's own configuration, ...) is absent.
const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "python3",
    "python3.11",
    "resolv.conf",
    "services",
    "ssl",
];

/// System directories mounted read-only at the same place (or recreated as the
/// same symlink, as on merged-/usr systems).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What the driver can enforce on this host, shown in `GET /v1/info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IsolationStatus {
    /// Whether execs can be confined here; when false, `problem` says why and
    /// creating a sandbox of an isolated process profile fails.
    pub available: bool,
    pub problem: Option<String>,
    /// The host uid/gid sandboxed processes run as.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Landlock is enforced (the kernel has it).
    pub landlock: bool,
    /// The seccomp filter is applied.
    pub seccomp: bool,
    /// Per-sandbox memory, pids and cpu limits are enforced by cgroups (v1,
    /// server running as root); otherwise only the rlimits apply.
    pub cgroups: bool,
}

/// One step of building a sandbox's root filesystem, prepared once at start-up.
/// Paths are relative to the new root.
#[derive(Debug)]
enum FsStep {
    Mkdir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// A read-only bind mount of a host directory; `locked` are the
    /// source's mount flags that a remount must keep.
    BindRo {
        source: CString,
        target: CString,
        locked: nix::mount::MsFlags,
    },
}

/// Sets up confinement for the process driver; one per server.
pub struct Isolator {
    host_uid: u32,
    host_gid: u32,
    /// The server runs as root: drop to `host_uid`/`host_gid` first.
    drop_privileges: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    filesystem: Vec<FsStep>,
    seccomp: seccomp::Filters,
    /// Read end, inherited by supervisors; the write end never leaves the
    /// server, so the read end reports a hang-up exactly when the server dies.
    lifeline_read: OwnedFd,
    _lifeline_write: OwnedFd,
    /// Where an unprivileged server mounts each sandbox's root (a directory
    /// of its own; a root server stages on a private tmpfs instead).
    newroot: CString,
    /// The sandboxes' `/etc` (see [`write_etc_view`]) and its mount flags.
    etc_view: CString,
    etc_locked: nix::mount::MsFlags,
    tmp_size_mib: u64,
    cgroups: Option<cgroups::Cgroups>,
}

/// Host settings of the isolation.
#[derive(Debug, Clone, Copy)]
pub struct IsolationSettings {
    /// Host uid/gid sandboxed processes run as when the server is root
    /// (otherwise the server's own).
    pub uid: u32,
    pub gid: u32,
    /// Size of each exec's private `/tmp` (tmpfs; counts against memory).
    pub tmp_size_mib: u64,
}

/// Everything one exec needs inside the child, prepared in the server so
/// the child does little but system calls.
pub struct Confinement {
    isolator: Arc<Isolator>,
    /// The workspace's host path (bound into the sandbox).
    workspace: CString,
    /// Absolute path of the workspace inside the sandbox and its parents to create.
    workdir_parents: Vec<CString>,
    workdir: CString,
    cwd: CString,
    isolate_network: bool,
    rlimits: Vec<(nix::sys::resource::Resource, u64)>,
    /// `cgroup.procs` files of the sandbox's cgroups, joined while still root.
    cgroup_procs: Vec<CString>,
    /// Where the child writes the name of the step that failed.
    report: OwnedFd,
}

/// Per-exec limits applied as rlimits inside the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct ExecRlimits {
    pub address_space_bytes: u64,
    pub open_files: u64,
    pub file_size_bytes: u64,
    /// Processes of this exec (RLIMIT_NPROC counts per user namespace, and
    /// each exec has its own).
    pub processes: u64,
}

impl Isolator {
    /// `scratch` is a directory of the server's (the sandboxes' root).
    pub fn new(settings: IsolationSettings, scratch: &Path) -> std::io::Result<Self> {
        let root = nix::unistd::geteuid().is_root();
        let newroot = scratch.join(".newroot");
        std::fs::create_dir_all(&newroot)?;
        let etc_view = scratch.join(".etc");
        write_etc_view(&etc_view)?;
        let (host_uid, host_gid) = if root {
            (settings.uid, settings.gid)
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        };
        let (lifeline_read, lifeline_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        Ok(Self {
            host_uid,
            host_gid,
            drop_privileges: root,
            uid_map: format!("{SANDBOX_UID} {host_uid} 1\n").into_bytes(),
            gid_map: format!("{SANDBOX_GID} {host_gid} 1\n").into_bytes(),
            filesystem: root_filesystem()?,
            seccomp: seccomp::Filters::build()?,
            lifeline_read,
            _lifeline_write: lifeline_write,
            newroot: c_path(&newroot)?,
            etc_locked: locked_flags(&etc_view)?,
            etc_view: c_path(&etc_view)?,
            tmp_size_mib: settings.tmp_size_mib,
            cgroups: cgroups::Cgroups::detect(),
        })
    }

    pub fn host_ids(&self) -> (u32, u32) {
        (self.host_uid, self.host_gid)
    }

    /// Whether the server must hand files it writes into a workspace to the
    /// sandbox's host uid.
    pub fn chowns(&self) -> bool {
        self.drop_privileges
    }

    /// Runs one confined command in `scratch` and says what works here.
    pub fn self_test(self: &Arc<Self>, scratch: &Path) -> IsolationStatus {
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(scratch)?;
            if self.drop_privileges {
                nix::unistd::chown(
                    scratch,
                    Some(nix::unistd::Uid::from_raw(self.host_uid)),
                    Some(nix::unistd::Gid::from_raw(self.host_gid)),
                )?;
            }
            let limits = ExecRlimits {
                address_space_bytes: 1 << 30,
                open_files: 64,
                file_size_bytes: 1 << 20,
                processes: 16,
            };
            let mut command = std::process::Command::new("/bin/sh");
            command
                .args(["-c", "test -w /tmp && test -d /proc/self"])
                .env_clear()
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let (confinement, report) =
                self.confine(scratch, "/workspace", "/workspace", true, limits, None)?;
            confinement.apply_to(&mut command);
            let status = command.status().map_err(|err| report.explain(err))?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "a confined test command failed ({status})"
                )));
            }
            Ok(())
        })();
        IsolationStatus {
            available: result.is_ok(),
            problem: result.err().map(|err| err.to_string()),
            host_uid: self.host_uid,
            host_gid: self.host_gid,
            landlock: landlock_supported(),
            seccomp: true,
            cgroups: self.cgroups.is_some(),
        }
    }

    /// Removes a deleted sandbox's cgroups (killing anything left in them).
    pub fn forget(&self, sandbox_id: &str) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(sandbox_id);
        }
    }

    /// Prepares one exec: `workspace` is the host directory mounted read-write
    /// at `workdir`; the command starts in `cwd` (inside the sandbox). With
    /// `cgroup`, the exec joins its sandbox's cgroups (created with those
    /// limits) where the host allows cgroups.
    pub fn confine(
        self: &Arc<Self>,
        workspace: &Path,
        workdir: &str,
        cwd: &str,
        isolate_network: bool,
        limits: ExecRlimits,
        cgroup: Option<(&str, CgroupLimits)>,
    ) -> std::io::Result<(Confinement, SetupReport)> {
        let cgroup_procs = match (&self.cgroups, cgroup) {
            (Some(cgroups), Some((sandbox_id, limits))) => cgroups.prepare(sandbox_id, limits)?,
            _ => Vec::new(),
        };
        let workspace = c_path(workspace)?;
        let relative = workdir.trim_start_matches('/');
        let mut workdir_parents = Vec::new();
        let mut prefix = PathBuf::new();
        for part in Path::new(relative).components() {
            prefix.push(part);
            workdir_parents.push(c_path(&prefix)?);
        }
        use nix::sys::resource::Resource;
        let rlimits = vec![
            (Resource::RLIMIT_AS, limits.address_space_bytes),
            (Resource::RLIMIT_NOFILE, limits.open_files),
            (Resource::RLIMIT_FSIZE, limits.file_size_bytes),
            (Resource::RLIMIT_NPROC, limits.processes),
            (Resource::RLIMIT_CORE, 0),
        ];
        let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok((
            Confinement {
                isolator: self.clone(),
                workspace,
                workdir_parents,
                workdir: c_path(Path::new(relative))?,
                cwd: c_path(Path::new(cwd))?,
                isolate_network,
                rlimits,
                cgroup_procs,
                report: report_write,
            },
            SetupReport(report_read),
        ))
    }
}

impl Confinement {
    /// Makes `command` enter the sandbox between fork and exec. The command
    /// must not set a working directory of its own (it would be resolved on
    /// the host): the confinement changes into `cwd` inside.
    pub fn apply_to(self, command: &mut std::process::Command) {
        let mut confinement = self;
        // SAFETY: the closure runs in the forked child. It only makes system
        // calls on data prepared here, except Landlock's ruleset (a few small
        // allocations: glibc's fork leaves malloc usable in the child).
        unsafe {
            command.pre_exec(move || child::enter(&mut confinement));
        }
    }
}

/// The parent's end of the child's setup report.
pub struct SetupReport(OwnedFd);

impl SetupReport {
    /// Turns a failed spawn into an error that names the setup step that
    /// failed, if a step did (otherwise the spawn error is the exec's own).
    pub fn explain(&self, err: std::io::Error) -> std::io::Error {
        match self.failed_step() {
            Some(step) => std::io::Error::new(
                err.kind(),
                format!("sandbox isolation failed at {step}: {err}"),
            ),
            None => err,
        }
    }

    pub fn failed_step(&self) -> Option<String> {
        let mut buf = [0u8; 256];
        match nix::unistd::read(&self.0, &mut buf) {
            Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => None,
        }
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

fn c_string(text: &str) -> std::io::Result<CString> {
    c_path(Path::new(text))
}

/// The steps that build every sandbox's root: system directories, the
/// allowed `/etc` entries and generated identity files.
fn root_filesystem() -> std::io::Result<Vec<FsStep>> {
    let mut steps = Vec::new();
    for dir in SYSTEM_DIRS {
        add_host_entry(&mut steps, Path::new("/"), dir)?;
    }
    steps.push(FsStep::Mkdir(c_string("etc")?));
    Ok(steps)
}

/// Writes the sandboxes' `/etc` into `view` (made anew): copies of the
/// allowed host entries (links followed at the top, kept inside
/// directories) and generated identity files. Mounted read-only as one bind,
/// it costs an exec one mount instead of one per entry.
fn write_etc_view(view: &Path) -> std::io::Result<()> {
    if view.exists() {
        std::fs::remove_dir_all(view)?;
    }
    std::fs::create_dir_all(view)?;
    for entry in ETC_ENTRIES {
        let Ok(real) = std::fs::canonicalize(Path::new("/etc").join(entry)) else {
            continue;
        };
        copy_tree(&real, &view.join(entry))?;
    }
    let identity = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"),
        ),
        ("hostname", "sandbox\n".to_string()),
        (
            "hosts",
            "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n".to_string(),
        ),
    ];
    for (name, contents) in identity {
        std::fs::write(view.join(name), contents)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(view, std::fs::Permissions::from_mode(0o755))
}

/// Copies a file or a directory tree, keeping symlinks as links. Special
/// files, and whatever other users may not read on the host (such as
/// `/etc/ssl/private`), are left out.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(from)?;
    let world_readable = meta.permissions().mode() & 0o004 != 0;
    if !meta.file_type().is_symlink() && !world_readable {
        return Ok(());
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        std::fs::copy(from, to).map(drop)
    } else {
        Ok(())
    }
}

/// Adds `<parent>/<name>` as it is on the host: a directory mounted
/// read-only, or a symlink recreated as the same link.
fn add_host_entry(steps: &mut Vec<FsStep>, parent: &Path, name: &str) -> std::io::Result<()> {
    let host = parent.join(name);
    let relative = host.strip_prefix("/").unwrap_or(&host).to_path_buf();
    let Ok(meta) = std::fs::symlink_metadata(&host) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        steps.push(FsStep::Symlink {
            target: c_path(&std::fs::read_link(&host)?)?,
            link: c_path(&relative)?,
        });
    } else if meta.is_dir() {
        steps.push(FsStep::Mkdir(c_path(&relative)?));
        steps.push(FsStep::BindRo {
            locked: locked_flags(&host)?,
            source: c_path(&host)?,
            target: c_path(&relative)?,
        });
    }
    Ok(())
}

/// The mount flags of `path`'s mount that a bind remount must repeat: inside
/// a user namespace they are locked and clearing one fails.
fn locked_flags(path: &Path) -> std::io::Result<nix::mount::MsFlags> {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let flags = nix::sys::statvfs::statvfs(path)?.flags();
    let mut locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (statvfs_flag, mount_flag) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(statvfs_flag) {
            locked |= mount_flag;
        }
    }
    Ok(locked)
}

fn landlock_supported() -> bool {
    use landlock::{ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(|ruleset| ruleset.create())
        .is_ok()
}

impl Isolator {
    /// The lifeline's read end, which every supervisor keeps.
    fn lifeline_fd(&self) -> RawFd {
        self.lifeline_read.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_etc_view_holds_only_what_anyone_may_read() {
        let dir = tempfile::tempdir().unwrap();
        let view = dir.path().join(".etc");
        write_etc_view(&view).unwrap();
        let passwd = std::fs::read_to_string(view.join("passwd")).unwrap();
        assert!(passwd.contains("sandbox:x:1000:1000"), "{passwd}");
        assert!(!view.join("shadow").exists());
        // Every copied file and directory is world-readable: nothing that
        // only root may read on the host (/etc/ssl/private) is copied.
        let mut stack = vec![view.clone()];
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            assert_ne!(meta.permissions().mode() & 0o004, 0, "{}", path.display());
            if meta.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        if std::fs::metadata("/etc/ssl/private")
            .is_ok_and(|meta| meta.permissions().mode() & 0o004 == 0)
        {
            assert!(!view.join("ssl/private").exists());
        }
    }
}
