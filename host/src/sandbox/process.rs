//! The process driver: a workspace directory on the host and a process group
//! per exec, with rlimits and a group kill on timeout.
//!
//! Its isolation is weaker than a container's: processes run as the server's
//! user and see the host filesystem. A profile's `memory_mib` caps each
//! process's address space (RLIMIT_AS); `cpus` and `pids_limit` are not
//! enforced (RLIMIT_NPROC counts every process of the server's user, and
//! root is exempt from it). With
//! `network = "none"`, each exec gets an empty network namespace where the
//! host allows it (root, or unprivileged user namespaces); elsewhere it keeps
//! the host's network, and the server says so at start-up. It is the embedded
//! default for development and for machines without a container engine; use
//! the Docker driver for untrusted code.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::paths::resolve_local;
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
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            address_space_bytes: 4 << 30,
            open_files: 1024,
            file_size_bytes: 1 << 30,
        }
    }
}

pub struct ProcessDriver {
    root: PathBuf,
    limits: ProcessLimits,
    /// Whether an exec can be put in a network namespace of its own.
    network_isolation: Option<NetworkIsolation>,
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
    /// Sandboxes live in `<root>/<sandbox id>/`.
    pub fn new(root: impl Into<PathBuf>, limits: ProcessLimits) -> WharfResult<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|err| {
            WharfError::internal(format!(
                "cannot create sandbox root {}: {err}",
                root.display()
            ))
        })?;
        let network_isolation = NetworkIsolation::probe();
        if network_isolation.is_none() {
            tracing::warn!(
                "the process sandbox driver cannot make network namespaces here: execs of profiles with network = \"none\" keep the host's network"
            );
        }
        Ok(Self {
            root,
            limits,
            network_isolation,
        })
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

    async fn create(&self, sandbox_id: &str, _spec: &SandboxSpec) -> WharfResult<()> {
        let dir = self.root.join(sandbox_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|err| WharfError::internal(format!("cannot create workspace: {err}")))
    }

    async fn stop(&self, sandbox_id: &str) -> WharfResult<()> {
        // Nothing runs between execs: each exec's process group dies with it.
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
        }
        Ok(())
    }

    async fn destroy(&self, sandbox_id: &str) -> WharfResult<()> {
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
        let cwd = match &request.cwd {
            Some(cwd) => resolve_local(&workspace, cwd)?,
            None => workspace.clone(),
        };
        let network = self
            .network_isolation
            .filter(|_| request.limits.isolate_network);
        run_process(&workspace, &cwd, request, self.limits, network).await
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

/// Runs one process group in `cwd` with a clean environment, capped output and
/// a hard timeout that kills the whole group.
async fn run_process(
    workspace: &Path,
    cwd: &Path,
    request: ExecRequest,
    limits: ProcessLimits,
    network: Option<NetworkIsolation>,
) -> WharfResult<ExecOutput> {
    let Some(program) = request.argv.first() else {
        return Err(WharfError::validation("argv must not be empty"));
    };
    let mut command = std::process::Command::new(program);
    command
        .args(&request.argv[1..])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", workspace)
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
    let profile = request.limits;
    let address_space = profile
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
    let started = Instant::now();
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                WharfError::validation(format!("program {program:?} not found in the sandbox"))
            } else {
                WharfError::internal(format!("cannot start {program:?}: {err}"))
            }
        })?;
    let pgid = child.id().map(|pid| pid as i32);
    let _group = GroupGuard(pgid);

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
    // A background child may still hold the pipes open: give them a moment, then stop reading.
    let collect = |handle: tokio::task::JoinHandle<(Vec<u8>, bool)>| async move {
        match tokio::time::timeout(Duration::from_millis(200), handle).await {
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
        let driver = ProcessDriver::new(root.path(), ProcessLimits::default()).unwrap();
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
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .ends_with("sbx_a")
        );
        assert_eq!(out.stderr.len(), 1024);
        assert!(out.stderr_truncated && !out.stdout_truncated);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let root = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(root.path(), ProcessLimits::default()).unwrap();
        driver.create("sbx_t", &spec()).await.unwrap();
        let marker = root.path().join("sbx_t/child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let out = driver
            .exec(
                "sbx_t",
                exec(&["sh", "-c", &script], Duration::from_millis(300)),
            )
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A killed child may linger as a zombie until reaped: count it as gone.
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        assert!(!alive, "background child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn profile_memory_caps_the_address_space() {
        let root = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(root.path(), ProcessLimits::default()).unwrap();
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
        let driver = ProcessDriver::new(root.path(), ProcessLimits::default()).unwrap();
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
        let driver = ProcessDriver::new(root.path(), ProcessLimits::default()).unwrap();
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
