//! Sandboxes: isolated workspaces where agents and people run code.
//!
//! A [`SandboxDriver`] owns the isolation mechanism (a local process group,
//! a Docker container, ...). The [`service::Sandboxes`] service owns records,
//! ownership and state in the store, and hands drivers the work.

pub mod docker;
mod docker_agent;
pub mod gc;
pub mod isolation;
pub mod paths;
pub mod process;
pub mod profiles;
pub mod service;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::error::{ErrorCode, WharfError, WharfResult};
pub use paths::SandboxPath;
pub use profiles::Profile;

/// Which output stream a chunk of exec output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// Receives exec output as it is produced (for streaming); capped output is
/// still collected in [`ExecOutput`]. Bounded: a driver's output reader waits
/// for room, so a slow consumer slows the command (its pipe fills) instead of
/// growing the server's memory.
pub type OutputSink = tokio::sync::mpsc::Sender<(StreamKind, Vec<u8>)>;

/// What a driver needs to create a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub owner: String,
    pub profile: Profile,
}

/// A sandbox's runtime as its driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverHealth {
    Running,
    /// The runtime exists but is not running (crashed, killed, stopped).
    Dead {
        oom_killed: bool,
        exit_code: Option<i64>,
    },
    /// The driver has no runtime for this sandbox.
    Missing,
}

/// The profile's settings that a driver applies per exec (the process
/// driver); the Docker driver has the engine enforce them on the container.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    pub memory_mib: Option<u64>,
    pub pids_limit: Option<i64>,
    pub cpus: Option<f64>,
    /// The profile's network is `none`.
    pub isolate_network: bool,
    pub isolation: profiles::Isolation,
    /// Where the workspace is inside the sandbox (absolute).
    pub workdir: String,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Profile::builtin_local().exec_limits()
    }
}

/// One command to run inside a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<SandboxPath>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each.
    pub output_cap: usize,
    /// Output chunks are also sent here as they arrive.
    pub sink: Option<OutputSink>,
    pub limits: ExecLimits,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecOutput {
    /// None when the process was killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
    /// The kernel's OOM killer ended a process of this exec (memory limit).
    pub oom_killed: bool,
    pub duration: Duration,
}

impl ExecOutput {
    /// Keeps up to `cap` bytes of each stream, flags what was cut, and passes
    /// every chunk on to `sink` (streaming), waiting while it is full.
    pub(crate) async fn keep(
        &mut self,
        kind: StreamKind,
        chunk: &[u8],
        cap: usize,
        sink: Option<&OutputSink>,
    ) {
        let (kept, truncated) = match kind {
            StreamKind::Stdout => (&mut self.stdout, &mut self.stdout_truncated),
            StreamKind::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        };
        keep_capped(kept, truncated, kind, chunk, cap, sink).await;
    }
}

/// Appends what fits of `chunk` under `cap` to `kept`, flags a cut, and
/// passes the whole chunk on to `sink` (streaming), waiting while it is full.
/// A sink whose receiver went away is ignored.
pub(crate) async fn keep_capped(
    kept: &mut Vec<u8>,
    truncated: &mut bool,
    kind: StreamKind,
    chunk: &[u8],
    cap: usize,
    sink: Option<&OutputSink>,
) {
    if let Some(sink) = sink {
        let _ = sink.send((kind, chunk.to_vec())).await;
    }
    let room = cap.saturating_sub(kept.len());
    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    *truncated |= chunk.len() > room;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// File bytes on their way through the server, never held whole. An error
/// item ends the transfer (a client that went away, or an upload past its
/// limit); the driver then leaves nothing half-written.
pub type ByteStream = Pin<Box<dyn Stream<Item = WharfResult<Bytes>> + Send>>;

/// A file being read out of a sandbox.
pub struct FileDownload {
    /// The file's size when it was opened; exactly this many bytes follow.
    pub size: u64,
    pub body: ByteStream,
}

/// New content for a file.
pub struct FileUpload {
    pub body: ByteStream,
    /// The size the sender announced (`Content-Length`). When the body ends
    /// short of it, the upload fails and the old file stays.
    pub declared_size: Option<u64>,
}

/// A stream of bytes already in memory.
pub fn bytes_stream(data: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(Bytes::from(data)) }))
}

impl FileUpload {
    /// An upload of bytes already in memory (plugin calls).
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let declared_size = Some(data.len() as u64);
        Self {
            body: bytes_stream(data),
            declared_size,
        }
    }
}

/// The name of an upload's partial file, created beside its target so the
/// final rename stays on one filesystem (atomic).
pub(crate) fn upload_tmp_name() -> String {
    format!(".wharf-upload-{:016x}", rand::random::<u64>())
}

/// Fails an upload whose body ended short of (or past) its announced size.
pub(crate) fn check_upload_size(
    path: &SandboxPath,
    written: u64,
    declared: Option<u64>,
) -> WharfResult<()> {
    match declared {
        Some(declared) if declared != written => Err(WharfError::validation(format!(
            "upload of {path} ended after {written} of {declared} announced bytes; the file is unchanged"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn upload_too_large(limit: u64) -> WharfError {
    WharfError::new(
        ErrorCode::PayloadTooLarge,
        format!("uploads are limited to {limit} bytes"),
    )
}

/// Passes `body` through until more than `limit` bytes have gone by; then
/// ends it with `payload_too_large`.
pub fn limit_stream(body: ByteStream, limit: u64) -> ByteStream {
    let mut seen = 0u64;
    Box::pin(body.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(upload_too_large(limit));
        }
        Ok(chunk)
    }))
}

impl FileDownload {
    /// Reads the whole file into memory, refusing files over `limit` bytes.
    pub async fn collect(mut self, limit: u64) -> WharfResult<Vec<u8>> {
        if self.size > limit {
            return Err(WharfError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the file has {} bytes; at most {limit} are read whole",
                    self.size
                ),
            ));
        }
        let mut data = Vec::with_capacity(self.size as usize);
        while let Some(chunk) = self.body.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(data)
    }
}

/// Refuses an operation (`what`: "write to", "remove") that would replace or
/// remove the workspace root itself.
pub(crate) fn refuse_root(path: &SandboxPath, what: &str) -> WharfResult<()> {
    if path.is_root() {
        return Err(WharfError::new(
            ErrorCode::InvalidPath,
            format!("cannot {what} the workspace root"),
        ));
    }
    Ok(())
}

/// The isolation mechanism behind a sandbox. Every operation names the
/// sandbox by id; paths have passed layer-one checks ([`SandboxPath`]) and the
/// driver applies layer two (resolution inside its root, no symlink escape).
#[async_trait]
pub trait SandboxDriver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// What the driver confines here, for drivers that confine processes
    /// themselves (the process driver).
    fn isolation(&self) -> Option<isolation::IsolationStatus> {
        None
    }
    /// Prepares the sandbox's workspace and runtime, and starts it. On error
    /// nothing is left behind.
    async fn create(&self, sandbox_id: &str, spec: &SandboxSpec) -> WharfResult<()>;
    /// Stops everything the sandbox runs and removes its workspace. Idempotent.
    async fn destroy(&self, sandbox_id: &str) -> WharfResult<()>;
    /// Stops the runtime, keeping the workspace.
    async fn stop(&self, sandbox_id: &str) -> WharfResult<()>;
    /// Starts a stopped (or dead) runtime again.
    async fn start(&self, sandbox_id: &str) -> WharfResult<()>;
    async fn health(&self, sandbox_id: &str) -> WharfResult<DriverHealth>;
    /// The id (content digest) of the image the sandbox runs, for drivers that run images;
    /// recorded as provenance (e.g. in a batch task's trajectory).
    async fn image_digest(&self, _sandbox_id: &str) -> Option<String> {
        None
    }
    /// The id (content digest) of `image` as the driver has it now, for drivers that run
    /// images (a result-cache key part: a retagged image is another image).
    async fn image_id(&self, _image: &str) -> Option<String> {
        None
    }
    /// Every sandbox id this driver holds resources for (orphan detection).
    async fn sandbox_ids(&self) -> WharfResult<Vec<String>>;
    /// Creates a directory and its missing parents.
    async fn mkdir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<()>;
    async fn exec(&self, sandbox_id: &str, request: ExecRequest) -> WharfResult<ExecOutput>;
    /// Opens a file for streaming out; errors (not found, a directory, an
    /// escape) come before any byte.
    async fn read_file(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<FileDownload>;
    /// Streams `upload` into a file beside the target and renames it into
    /// place when the body ended well; on any error the old file stays and the
    /// partial one is removed. Returns the bytes written.
    async fn write_file(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        upload: FileUpload,
    ) -> WharfResult<u64>;
    async fn list_dir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<Vec<DirEntry>>;
    async fn remove(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> WharfResult<()>;
}
