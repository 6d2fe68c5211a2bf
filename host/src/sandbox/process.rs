//! The process driver: a workspace directory on the host, and each exec
//! confined in namespaces of its own (see [`super::isolation`]): its own user,
//! mount, PID, IPC and UTS namespaces as an unprivileged uid, a root
//! filesystem with only the system directories (read-only), the workspace at
//! the profile's workdir, a private `/tmp`, a minimal `/dev` and its own
//! `/proc`; Landlock and seccomp as a second layer; rlimits for address
//! space, processes, open files and file size. With `network = "none"` the
//! exec also gets a network namespace with only loopback.
//!
//! A profile with `isolation = "none"` (only `wharf.toml` may declare one, and
//! only admin keys may use it) runs execs as the server's user on the host
//! instead, in a process group with the same rlimits.
//!
//! It is the embedded default, for machines without a container engine.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::isolation::{
    CgroupLimits, ExecRlimits, IsolationSettings, IsolationStatus, Isolator, SetupReport,
};
use super::paths::resolve_local;
use super::profiles::Isolation;
use super::{
    DirEntry, DriverHealth, EntryKind, ExecOutput, ExecRequest, FileDownload, FileUpload,
    OutputSink, SandboxDriver, SandboxPath, SandboxSpec, StreamKind, check_upload_size,
    keep_capped, refuse_root, upload_tmp_name,
};
use crate::error::{ErrorCode, WharfError, WharfResult};

/// Resource limits applied to every process the driver starts.
#[derive(Debug, Clone, Copy)]
pub struct ProcessLimits {
    /// RLIMIT_AS, bytes of address space per process.
    pub address_space_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE, largest file a process may write.
    pub file_size_bytes: u64,
    /// Processes of one exec (and of one sandbox, where cgroups are used)
    /// when the profile sets no `pids_limit`.
    pub processes: u64,
    /// Memory of all of a sandbox's processes together (cgroups) when the
    /// profile sets no `memory_mib`: without it, 512 processes of 4 GiB
    /// address space each could take the host's memory.
    pub sandbox_memory_bytes: u64,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            address_space_bytes: 4 << 30,
            open_files: 1024,
            file_size_bytes: 1 << 30,
            processes: 512,
            sandbox_memory_bytes: 2 << 30,
        }
    }
}

pub struct ProcessDriver {
    root: PathBuf,
    limits: ProcessLimits,
    /// Confinement of execs; `None` when it could not even be prepared.
    isolator: Option<Arc<Isolator>>,
    isolation: IsolationStatus,
    /// Whether an unconfined exec (`isolation = "none"`) can be put in a
    /// network namespace of its own.
    network_isolation: Option<NetworkIsolation>,
    /// The process groups of the execs running in each sandbox, killed on
    /// stop and delete.
    running: Arc<Mutex<HashMap<String, HashSet<i32>>>>,
}

/// How an exec leaves the host's network behind.
#[derive(Debug, Clone, Copy)]
enum NetworkIsolation {
    /// A new network namespace (needs CAP_SYS_ADMIN: the server runs as root).
    Namespace,
    /// A new user namespace first, then the network namespace (unprivileged).
    UserAndNamespace,
}

impl NetworkIsolation {
    fn flags(self) -> libc::c_int {
        match self {
            Self::Namespace => libc::CLONE_NEWNET,
            Self::UserAndNamespace => libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
        }
    }

    /// The first way that works on this host, tried in a throwaway child.
    fn probe() -> Option<Self> {
        [Self::Namespace, Self::UserAndNamespace]
            .into_iter()
            .find(|way| {
                let flags = way.flags();
                let mut command = std::process::Command::new("/bin/sh");
                command
                    .args(["-c", "exit 0"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: one async-signal-safe syscall between fork and exec.
                unsafe {
                    command.pre_exec(move || unshare(flags));
                }
                command.status().is_ok_and(|status| status.success())
            })
    }
}

fn unshare(flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl ProcessDriver {
    /// Sandboxes live in `<root>/<sandbox id>/`. Confinement is set up and
    /// tried once here; when it does not work, the driver still serves
    /// unconfined profiles and refuses isolated ones with the reason.
    pub fn new(
        root: impl Into<PathBuf>,
        limits: ProcessLimits,
        settings: IsolationSettings,
    ) -> WharfResult<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|err| {
            WharfError::internal(format!(
                "cannot create sandbox root {}: {err}",
                root.display()
            ))
        })?;
        let (isolator, isolation) = match Isolator::new(settings, &root) {
            Ok(isolator) => {
                let isolator = Arc::new(isolator);
                let status = isolator.self_test(&root.join(".isolation-test"));
                (Some(isolator), status)
            }
            Err(err) => (
                None,
                IsolationStatus {
                    available: false,
                    problem: Some(format!("preparing the isolation: {err}")),
                    host_uid: settings.uid,
                    host_gid: settings.gid,
                    landlock: false,
                    seccomp: false,
                    cgroups: false,
                },
            ),
        };
        match &isolation.problem {
            None => tracing::info!(
                uid = isolation.host_uid,
                landlock = isolation.landlock,
                "process sandboxes are confined in namespaces"
            ),
            Some(problem) => tracing::error!(
                %problem,
                "process sandboxes cannot be confined on this host: isolated process profiles are refused"
            ),
        }
        Ok(Self {
            root,
            limits,
            isolator,
            isolation,
            network_isolation: NetworkIsolation::probe(),
            running: Default::default(),
        })
    }

    /// What the driver can enforce here (`GET /v1/info`).
    pub fn isolation(&self) -> &IsolationStatus {
        &self.isolation
    }

    fn isolator(&self) -> WharfResult<&Arc<Isolator>> {
        match &self.isolator {
            Some(isolator) if self.isolation.available => Ok(isolator),
            _ => Err(WharfError::new(
                ErrorCode::IsolationUnavailable,
                format!(
                    "process sandboxes cannot be confined on this host: {}",
                    self.isolation
                        .problem
                        .as_deref()
                        .unwrap_or("unknown reason")
                ),
            )),
        }
    }

    /// Gives a path the server created in a workspace to the sandbox's uid,
    /// so sandboxed code can change it.
    fn hand_over(&self, path: &Path) -> WharfResult<()> {
        if let Some(isolator) = self.isolator.as_ref().filter(|iso| iso.chowns()) {
            let (uid, gid) = isolator.host_ids();
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|err| {
                WharfError::internal(format!(
                    "cannot hand {} to the sandbox: {err}",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Kills every exec still running in a sandbox (and, through its PID
    /// namespace, everything they started).
    fn kill_execs(&self, sandbox_id: &str) {
        let groups = self.running.lock().remove(sandbox_id).unwrap_or_default();
        for group in groups {
            kill_group(Some(group));
        }
    }

    fn workspace(&self, sandbox_id: &str) -> WharfResult<PathBuf> {
        let dir = self.root.join(sandbox_id);
        if !dir.is_dir() {
            return Err(WharfError::not_found(format!(
                "workspace of sandbox {sandbox_id}"
            )));
        }
        Ok(dir)
    }

    fn resolve(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<PathBuf> {
        resolve_local(&self.workspace(sandbox_id)?, path)
    }
}

fn io_error(path: &SandboxPath, err: std::io::Error) -> WharfError {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            WharfError::new(ErrorCode::FileNotFound, format!("{path}: no such file"))
        }
        std::io::ErrorKind::IsADirectory => {
            WharfError::validation(format!("{path} is a directory"))
        }
        std::io::ErrorKind::NotADirectory => {
            WharfError::validation(format!("{path} is not a directory"))
        }
        std::io::ErrorKind::DirectoryNotEmpty => WharfError::new(
            ErrorCode::Conflict,
            format!("{path} is a non-empty directory; remove it recursively"),
        ),
        _ => WharfError::internal(format!("{path}: {err}")),
    }
}

#[async_trait]
impl SandboxDriver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn isolation(&self) -> Option<IsolationStatus> {
        Some(self.isolation.clone())
    }

    async fn create(&self, sandbox_id: &str, spec: &SandboxSpec) -> WharfResult<()> {
        if spec.profile.isolation == Isolation::Namespaces {
            self.isolator()?;
        }
        let dir = self.root.join(sandbox_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|err| WharfError::internal(format!("cannot create workspace: {err}")))?;
        self.hand_over(&dir)
    }

    async fn stop(&self, sandbox_id: &str) -> WharfResult<()> {
        // Execs still running (and whatever they left behind) end now.
        self.kill_execs(sandbox_id);
        self.workspace(sandbox_id).map(|_| ())
    }

    async fn start(&self, sandbox_id: &str) -> WharfResult<()> {
        self.workspace(sandbox_id).map(|_| ())
    }

    async fn health(&self, sandbox_id: &str) -> WharfResult<DriverHealth> {
        Ok(if self.root.join(sandbox_id).is_dir() {
            DriverHealth::Running
        } else {
            DriverHealth::Missing
        })
    }

    async fn sandbox_ids(&self) -> WharfResult<Vec<String>> {
        let mut ids = Vec::new();
        let mut reader = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|err| WharfError::internal(format!("cannot list sandbox root: {err}")))?;
        while let Ok(Some(entry)) = reader.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("sbx_") {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    async fn mkdir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<()> {
        let workspace = self.workspace(sandbox_id)?;
        // One component at a time, so each step is resolved (and checked) inside the root.
        let mut prefix = std::path::PathBuf::new();
        for part in path.as_path().components() {
            prefix.push(part);
            let step = SandboxPath::parse(&prefix.to_string_lossy())?;
            let real = resolve_local(&workspace, &step)?;
            match tokio::fs::create_dir(&real).await {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && real.is_dir() => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(WharfError::new(
                        ErrorCode::Conflict,
                        format!("{step} exists and is not a directory"),
                    ));
                }
                Err(err) => return Err(io_error(&step, err)),
            }
            self.hand_over(&real)?;
        }
        Ok(())
    }

    async fn destroy(&self, sandbox_id: &str) -> WharfResult<()> {
        self.kill_execs(sandbox_id);
        if let Some(isolator) = self.isolator.clone() {
            let id = sandbox_id.to_string();
            let _ = tokio::task::spawn_blocking(move || isolator.forget(&id)).await;
        }
        match tokio::fs::remove_dir_all(self.root.join(sandbox_id)).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(WharfError::internal(format!(
                "cannot remove workspace: {err}"
            ))),
        }
    }

    async fn exec(&self, sandbox_id: &str, request: ExecRequest) -> WharfResult<ExecOutput> {
        let workspace = self.workspace(sandbox_id)?;
        // Checked on the host side first: it exists, and no link leads out.
        let host_cwd = match &request.cwd {
            Some(cwd) => resolve_local(&workspace, cwd)?,
            None => workspace.clone(),
        };
        if let Some(cwd) = &request.cwd
            && !host_cwd.is_dir()
        {
            return Err(WharfError::new(
                ErrorCode::FileNotFound,
                format!("working directory {cwd} does not exist in the sandbox"),
            ));
        }
        let (command, report) = match request.limits.isolation {
            Isolation::Namespaces => {
                let isolator = self.isolator()?;
                let workdir = request.limits.workdir.trim_end_matches('/').to_string();
                let cwd = match &request.cwd {
                    Some(cwd) if !cwd.is_root() => format!("{workdir}/{cwd}"),
                    _ => workdir.clone(),
                };
                let rlimits = ExecRlimits {
                    address_space_bytes: request
                        .limits
                        .memory_mib
                        .map_or(self.limits.address_space_bytes, |mib| mib << 20),
                    open_files: self.limits.open_files,
                    file_size_bytes: self.limits.file_size_bytes,
                    processes: request
                        .limits
                        .pids_limit
                        .map_or(self.limits.processes, |pids| pids.max(1) as u64),
                };
                let cgroup = CgroupLimits {
                    memory_bytes: Some(
                        request
                            .limits
                            .memory_mib
                            .map_or(self.limits.sandbox_memory_bytes, |mib| mib << 20),
                    ),
                    pids: Some(rlimits.processes),
                    cpus: request.limits.cpus,
                };
                let (confinement, report) = isolator
                    .confine(
                        &workspace,
                        &workdir,
                        &cwd,
                        request.limits.isolate_network,
                        rlimits,
                        Some((sandbox_id, cgroup)),
                    )
                    .map_err(|err| {
                        WharfError::internal(format!("preparing the exec's confinement: {err}"))
                    })?;
                let mut command = base_command(&request, Path::new(&workdir))?;
                confinement.apply_to(&mut command);
                (command, Some(report))
            }
            Isolation::None => {
                let network = self
                    .network_isolation
                    .filter(|_| request.limits.isolate_network);
                let mut command = base_command(&request, &workspace)?;
                command.current_dir(&host_cwd);
                unconfined(&mut command, &request, self.limits, network);
                (command, None)
            }
        };
        let tracker = ExecTracker {
            running: self.running.clone(),
            sandbox_id: sandbox_id.to_string(),
            group: None,
        };
        run_process(command, report, request, tracker).await
    }

    async fn read_file(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<FileDownload> {
        let real = self.resolve(sandbox_id, path)?;
        let file = tokio::fs::File::open(&real)
            .await
            .map_err(|err| io_error(path, err))?;
        let meta = file.metadata().await.map_err(|err| io_error(path, err))?;
        if meta.is_dir() {
            return Err(WharfError::validation(format!("{path} is a directory")));
        }
        let size = meta.len();
        let shown = path.to_string();
        // Exactly `size` bytes, even if the file grows while it is read.
        let body = ReaderStream::with_capacity(file.take(size), 256 * 1024).map(move |chunk| {
            chunk.map_err(|err| WharfError::internal(format!("reading {shown}: {err}")))
        });
        Ok(FileDownload {
            size,
            body: Box::pin(body),
        })
    }

    async fn write_file(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        mut upload: FileUpload,
    ) -> WharfResult<u64> {
        refuse_root(path, "write to")?;
        let real = self.resolve(sandbox_id, path)?;
        if real.is_dir() {
            return Err(WharfError::validation(format!("{path} is a directory")));
        }
        // Write beside the target, then rename: a reader never sees half a file.
        let tmp = real.with_file_name(upload_tmp_name());
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|err| io_error(path, err))?;
        if let Err(err) = self.hand_over(&tmp) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err);
        }
        let written: WharfResult<u64> = async {
            let mut written = 0u64;
            while let Some(chunk) = upload.body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk)
                    .await
                    .map_err(|err| io_error(path, err))?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(|err| io_error(path, err))?;
            check_upload_size(path, written, upload.declared_size)?;
            Ok(written)
        }
        .await;
        drop(file);
        let renamed = match written {
            Ok(written) => tokio::fs::rename(&tmp, &real)
                .await
                .map(|()| written)
                .map_err(|err| io_error(path, err)),
            Err(err) => Err(err),
        };
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        renamed
    }

    async fn list_dir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<Vec<DirEntry>> {
        let real = self.resolve(sandbox_id, path)?;
        let mut reader = tokio::fs::read_dir(&real)
            .await
            .map_err(|err| io_error(path, err))?;
        let mut entries = Vec::new();
        while let Some(entry) = reader
            .next_entry()
            .await
            .map_err(|err| io_error(path, err))?
        {
            let meta = entry.metadata().await.map_err(|err| io_error(path, err))?;
            let kind = if meta.is_symlink() {
                EntryKind::Symlink
            } else if meta.is_dir() {
                EntryKind::Directory
            } else if meta.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            entries.push(DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                kind,
                size: meta.len(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn remove(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> WharfResult<()> {
        refuse_root(path, "remove")?;
        let real = self.resolve(sandbox_id, path)?;
        let meta = tokio::fs::symlink_metadata(&real)
            .await
            .map_err(|err| io_error(path, err))?;
        let result = if meta.is_dir() {
            if recursive {
                tokio::fs::remove_dir_all(&real).await
            } else {
                tokio::fs::remove_dir(&real).await
            }
        } else {
            tokio::fs::remove_file(&real).await
        };
        result.map_err(|err| io_error(path, err))
    }
}

/// The command of an exec with a clean environment and piped stdio; the
/// caller confines it (or not) and sets where it starts.
fn base_command(request: &ExecRequest, home: &Path) -> WharfResult<std::process::Command> {
    let Some(program) = request.argv.first() else {
        return Err(WharfError::validation("argv must not be empty"));
    };
    let mut command = std::process::Command::new(program);
    command
        .args(&request.argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(command)
}

/// An `isolation = "none"` exec: the server's user on the host, with rlimits
/// and, for `network = "none"`, a network namespace where the host allows it.
fn unconfined(
    command: &mut std::process::Command,
    request: &ExecRequest,
    limits: ProcessLimits,
    network: Option<NetworkIsolation>,
) {
    let address_space = request
        .limits
        .memory_mib
        .map_or(limits.address_space_bytes, |mib| mib << 20);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(network) = network {
                unshare(network.flags())?;
            }
            set_rlimit(libc::RLIMIT_AS, address_space)?;
            set_rlimit(libc::RLIMIT_NOFILE, limits.open_files)?;
            set_rlimit(libc::RLIMIT_FSIZE, limits.file_size_bytes)?;
            set_rlimit(libc::RLIMIT_CORE, 0)?;
            Ok(())
        });
    }
}

/// Keeps the process group of a running exec in its sandbox's list, so stop
/// and delete can kill it; forgets it when the exec ends.
struct ExecTracker {
    running: Arc<Mutex<HashMap<String, HashSet<i32>>>>,
    sandbox_id: String,
    group: Option<i32>,
}

impl ExecTracker {
    fn track(&mut self, group: Option<i32>) {
        if let Some(group) = group {
            self.running
                .lock()
                .entry(self.sandbox_id.clone())
                .or_default()
                .insert(group);
            self.group = Some(group);
        }
    }
}

impl Drop for ExecTracker {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let mut running = self.running.lock();
            if let Some(groups) = running.get_mut(&self.sandbox_id) {
                groups.remove(&group);
                if groups.is_empty() {
                    running.remove(&self.sandbox_id);
                }
            }
        }
    }
}

/// Runs one exec with capped output and a hard timeout that kills its whole
/// process group (and, when confined, its PID namespace).
async fn run_process(
    command: std::process::Command,
    report: Option<SetupReport>,
    request: ExecRequest,
    mut tracker: ExecTracker,
) -> WharfResult<ExecOutput> {
    let program = request.argv[0].clone();
    let confined = report.is_some();
    let started = Instant::now();
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let spawned = command.spawn();
    // The confinement's descriptors (workspace, report pipe) close here.
    drop(command);
    let mut child = spawned.map_err(|err| {
        if let Some(step) = report.as_ref().and_then(SetupReport::failed_step) {
            WharfError::new(
                ErrorCode::IsolationUnavailable,
                format!("the sandbox could not be set up at {step}: {err}"),
            )
        } else if err.kind() == std::io::ErrorKind::NotFound {
            WharfError::validation(format!("program {program:?} not found in the sandbox"))
        } else {
            WharfError::internal(format!("cannot start {program:?}: {err}"))
        }
    })?;
    let pgid = child.id().map(|pid| pid as i32);
    let _group = GroupGuard(pgid);
    tracker.track(pgid);

    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), request.stdin) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let stdout = tokio::spawn(read_capped(
        child.stdout.take().expect("piped"),
        request.output_cap,
        request.sink.clone(),
        StreamKind::Stdout,
    ));
    let stderr = tokio::spawn(read_capped(
        child.stderr.take().expect("piped"),
        request.output_cap,
        request.sink.clone(),
        StreamKind::Stderr,
    ));

    let (exit_code, timed_out) = match tokio::time::timeout(request.timeout, child.wait()).await {
        Ok(status) => {
            let status = status
                .map_err(|err| WharfError::internal(format!("waiting for process: {err}")))?;
            (status.code(), false)
        }
        Err(_) => {
            kill_group(pgid);
            let _ = child.wait().await;
            (None, true)
        }
    };
    let duration = started.elapsed();
    // Unconfined, a background child may still hold the pipes open: give it
    // a moment, then stop reading. Confined, every holder died with the PID
    // namespace, so the readers end as soon as a slow stream consumer has
    // taken what is left (bounded by the exec's timeout).
    let drain = if confined {
        request.timeout
    } else {
        Duration::from_millis(200)
    };
    let collect = |handle: tokio::task::JoinHandle<(Vec<u8>, bool)>| async move {
        match tokio::time::timeout(drain, handle).await {
            Ok(Ok(out)) => out,
            _ => (Vec::new(), true),
        }
    };
    let (stdout, stdout_truncated) = collect(stdout).await;
    let (stderr, stderr_truncated) = collect(stderr).await;
    // Killed by SIGKILL without a timeout: the address-space rlimit makes
    // allocations fail instead, so an OOM kill here comes from the host kernel.
    Ok(ExecOutput {
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        oom_killed: false,
        duration,
    })
}

/// Reads a stream to its end, keeping at most `cap` bytes.
async fn read_capped(
    mut stream: impl AsyncRead + Unpin,
    cap: usize,
    sink: Option<OutputSink>,
    kind: StreamKind,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep_capped(
                    &mut kept,
                    &mut truncated,
                    kind,
                    &buf[..n],
                    cap,
                    sink.as_ref(),
                )
                .await
            }
        }
    }
    (kept, truncated)
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid {
        // SAFETY: plain syscall; a negative pid addresses the process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Kills the process group when an exec ends by timeout or is cancelled.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            owner: "o".into(),
            profile: crate::sandbox::profiles::Profile::builtin_local(),
        }
    }

    fn driver(root: &Path) -> ProcessDriver {
        let driver = ProcessDriver::new(
            root,
            ProcessLimits::default(),
            IsolationSettings {
                uid: 100_000,
                gid: 100_000,
                tmp_size_mib: 16,
            },
        )
        .unwrap();
        assert!(
            driver.isolation.available,
            "isolation must work on this host: {:?}",
            driver.isolation.problem
        );
        driver
    }

    /// Host processes whose command line contains `marker` (not zombies).
    fn host_processes_with(marker: &str) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|stat| {
                        stat.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true);
                !zombie
                    && String::from_utf8_lossy(&cmdline)
                        .replace('\0', " ")
                        .contains(marker)
            })
            .collect()
    }

    fn exec(argv: &[&str], timeout: Duration) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
            output_cap: 1024,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn runs_in_workspace_and_caps_output() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        driver.create("sbx_a", &spec()).await.unwrap();
        let out = driver
            .exec(
                "sbx_a",
                exec(
                    &["sh", "-c", "pwd; yes | head -c 5000 >&2"],
                    Duration::from_secs(5),
                ),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/workspace\n");
        assert_eq!(out.stderr.len(), 1024);
        assert!(out.stderr_truncated && !out.stdout_truncated);
    }

    #[tokio::test]
    async fn timeout_kills_everything_the_exec_started() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        driver.create("sbx_t", &spec()).await.unwrap();
        // A plain child, one in a new session and a double-forked nohup one.
        let script =
            "sleep 30.101 & setsid sleep 30.102 & (nohup sleep 30.103 >/dev/null 2>&1 &); wait";
        let out = driver
            .exec(
                "sbx_t",
                exec(&["sh", "-c", script], Duration::from_millis(500)),
            )
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for marker in ["sleep 30.101", "sleep 30.102", "sleep 30.103"] {
            assert_eq!(
                host_processes_with(marker),
                Vec::<i32>::new(),
                "{marker} survived"
            );
        }
    }

    #[tokio::test]
    async fn delete_kills_a_running_exec_and_its_escaped_children() {
        let root = tempfile::tempdir().unwrap();
        let driver = Arc::new(driver(root.path()));
        driver.create("sbx_d", &spec()).await.unwrap();
        let running = tokio::spawn({
            let driver = driver.clone();
            async move {
                driver
                    .exec(
                        "sbx_d",
                        exec(
                            &["sh", "-c", "setsid sleep 30.201 & sleep 30.202"],
                            Duration::from_secs(60),
                        ),
                    )
                    .await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while host_processes_with("sleep 30.201").is_empty() {
            assert!(Instant::now() < deadline, "the sleeper never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver.destroy("sbx_d").await.unwrap();
        let out = running.await.unwrap().unwrap();
        assert_ne!(out.exit_code, Some(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(host_processes_with("sleep 30.201").is_empty());
        assert!(host_processes_with("sleep 30.202").is_empty());
    }

    /// What a confined exec can see and do: the sandbox's own files only.
    #[tokio::test]
    async fn a_confined_exec_sees_only_its_workspace_and_the_system() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        driver.create("sbx_a", &spec()).await.unwrap();
        driver.create("sbx_b", &spec()).await.unwrap();
        std::fs::write(root.path().join("wharf.db"), "server data").unwrap();
        std::fs::write(root.path().join("sbx_b/secret"), "b's data").unwrap();
        let run = |script: String| {
            let driver = &driver;
            async move {
                driver
                    .exec(
                        "sbx_a",
                        exec(&["sh", "-c", &script], Duration::from_secs(10)),
                    )
                    .await
                    .unwrap()
            }
        };
        let host_root = root.path().display().to_string();
        let out = run("id -u; id -g; ls /; ls /proc | grep -c '^[0-9]'; hostname".into()).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(&lines[..2], ["1000", "1000"], "{stdout}");
        assert!(
            !stdout.contains("root\n") && !stdout.contains("home"),
            "{stdout}"
        );
        assert!(
            lines.contains(&"workspace") && lines.contains(&"usr"),
            "{stdout}"
        );
        // Only this exec's own processes: sh, ls|grep pipeline.
        let process_count: usize = lines[lines.len() - 2].parse().unwrap();
        assert!(process_count <= 4, "{stdout}");
        assert_eq!(lines.last(), Some(&"sandbox"));
        for attempt in [
            format!("cat {host_root}/wharf.db"),
            format!("cat {host_root}/sbx_b/secret"),
            "cat /etc/shadow".into(),
            "ls /var/run/docker.sock /run/docker.sock".into(),
            "echo x > /usr/x".into(),
            "echo x > /x".into(),
            "echo x > /etc/passwd".into(),
            "mount -t tmpfs none /workspace".into(),
            "unshare -r true".into(),
        ] {
            let out = run(attempt.clone()).await;
            assert_ne!(out.exit_code, Some(0), "{attempt} succeeded: {out:?}");
        }
        assert!(!root.path().join("x").exists());
        let out = run("echo ok > here && cat here && echo t > /tmp/t && cat /tmp/t".into()).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\nt\n");
        assert!(root.path().join("sbx_a/here").exists());
    }

    /// `<mount>/<this process's cgroup>/wharf/<sandbox>` of a v1 controller.
    fn sandbox_cgroup(controller: &str, sandbox_id: &str) -> PathBuf {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let base = own
            .lines()
            .find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names
                    .split(',')
                    .any(|n| n == controller)
                    .then(|| path.to_string())
            })
            .unwrap();
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(base.trim_start_matches('/'))
            .join("wharf")
            .join(sandbox_id)
    }

    /// A profile that sets no limits still cannot take the host's memory or
    /// process table: its sandbox gets the host defaults.
    #[tokio::test]
    async fn a_profile_without_limits_gets_the_host_default_cgroup_limits() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        if !driver.isolation.cgroups {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"));
            eprintln!("skipping: the server cannot use cgroups here");
            return;
        }
        driver.create("sbx_h", &spec()).await.unwrap();
        let out = driver
            .exec("sbx_h", exec(&["true"], Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0));
        let limit = |controller, file| {
            std::fs::read_to_string(sandbox_cgroup(controller, "sbx_h").join(file))
                .unwrap()
                .trim()
                .to_string()
        };
        let defaults = ProcessLimits::default();
        assert_eq!(
            limit("memory", "memory.limit_in_bytes"),
            defaults.sandbox_memory_bytes.to_string()
        );
        assert_eq!(limit("pids", "pids.max"), defaults.processes.to_string());
        driver.destroy("sbx_h").await.unwrap();
    }

    #[tokio::test]
    async fn profile_limits_apply_to_the_sandbox_cgroups() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        if !driver.isolation.cgroups {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI runs as root on cgroup v1: cgroups must be used"
            );
            eprintln!("skipping: the server cannot use cgroups here");
            return;
        }
        driver.create("sbx_c", &spec()).await.unwrap();
        let mut request = exec(
            &[
                "sh",
                "-c",
                "cat /proc/self/cgroup; for i in $(seq 40); do sleep 2 & done; wait",
            ],
            Duration::from_secs(10),
        );
        request.limits.pids_limit = Some(20);
        request.limits.memory_mib = Some(128);
        request.limits.cpus = Some(0.5);
        let out = driver.exec("sbx_c", request).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        for controller in ["memory", "pids", "cpu"] {
            let line = stdout
                .lines()
                .find(|line| {
                    line.split(':')
                        .nth(1)
                        .is_some_and(|names| names.split(',').any(|n| n == controller))
                })
                .unwrap_or_else(|| panic!("no {controller} line in {stdout}"));
            assert!(line.ends_with("/wharf/sbx_c"), "{line}");
        }
        // The 40 sleepers could not all start under a pids limit of 20.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("fork")
                || String::from_utf8_lossy(&out.stderr).contains("Resource"),
            "{out:?}"
        );
        let group = sandbox_cgroup("pids", "sbx_c");
        assert_eq!(
            std::fs::read_to_string(group.join("pids.max"))
                .unwrap()
                .trim(),
            "20"
        );
        driver.destroy("sbx_c").await.unwrap();
        assert!(!group.exists(), "the sandbox's cgroup is removed with it");
    }

    #[tokio::test]
    async fn profile_memory_caps_the_address_space() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        driver.create("sbx_m", &spec()).await.unwrap();
        let mut request = exec(
            &[
                "python3",
                "-c",
                "b = bytearray(256 << 20); print('allocated')",
            ],
            Duration::from_secs(10),
        );
        request.limits.memory_mib = Some(64);
        let out = driver.exec("sbx_m", request).await.unwrap();
        assert_ne!(out.exit_code, Some(0));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("MemoryError"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn network_none_leaves_only_loopback() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        if driver.network_isolation.is_none() && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!("skipping: this host cannot make network namespaces");
            return;
        }
        driver.create("sbx_n", &spec()).await.unwrap();
        let interfaces = |isolate_network: bool| {
            let mut request = exec(&["cat", "/proc/net/dev"], Duration::from_secs(5));
            request.limits.isolate_network = isolate_network;
            let driver = &driver;
            async move {
                let out = driver.exec("sbx_n", request).await.unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(2)
                    .filter_map(|line| line.split(':').next())
                    .map(|name| name.trim().to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(interfaces(true).await, ["lo"]);
        assert!(
            interfaces(false).await.len() > 1,
            "the host has more than lo"
        );
    }

    #[tokio::test]
    async fn an_upload_cut_short_leaves_the_old_file_and_no_partial() {
        let root = tempfile::tempdir().unwrap();
        let driver = driver(root.path());
        driver.create("sbx_u", &spec()).await.unwrap();
        let path = SandboxPath::parse("data.bin").unwrap();
        driver
            .write_file("sbx_u", &path, FileUpload::from_bytes(b"old".to_vec()))
            .await
            .unwrap();
        // Past the limit mid-stream: payload_too_large, the old file stays.
        let chunks = (0..4).map(|_| Ok(Bytes::from(vec![7u8; 1024])));
        let upload = FileUpload {
            body: crate::sandbox::limit_stream(Box::pin(futures::stream::iter(chunks)), 2048),
            declared_size: None,
        };
        let err = driver.write_file("sbx_u", &path, upload).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        // Shorter than announced: refused, the old file stays.
        let upload = FileUpload {
            body: crate::sandbox::bytes_stream(vec![1u8; 10]),
            declared_size: Some(20),
        };
        let err = driver.write_file("sbx_u", &path, upload).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        let names: Vec<String> = std::fs::read_dir(root.path().join("sbx_u"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["data.bin"]);
        let download = driver.read_file("sbx_u", &path).await.unwrap();
        assert_eq!(download.size, 3);
        assert_eq!(download.collect(1024).await.unwrap(), b"old");
    }
}
