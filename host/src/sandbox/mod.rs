//! Sandboxes: isolated workspaces where agents and people run code.
//!
//! A [`SandboxDriver`] owns the isolation mechanism (a local process group,
//! a Docker container, ...). The [`service::Sandboxes`] service owns records,
//! ownership and state in the store, and hands drivers the work.

pub mod docker;
pub mod gc;
pub mod paths;
pub mod process;
pub mod profiles;
pub mod service;

use std::time::Duration;

use async_trait::async_trait;
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
/// still collected in [`ExecOutput`].
pub type OutputSink = tokio::sync::mpsc::UnboundedSender<(StreamKind, Vec<u8>)>;

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
    /// Every sandbox id this driver holds resources for (orphan detection).
    async fn sandbox_ids(&self) -> WharfResult<Vec<String>>;
    /// Creates a directory and its missing parents.
    async fn mkdir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<()>;
    async fn exec(&self, sandbox_id: &str, request: ExecRequest) -> WharfResult<ExecOutput>;
    async fn read_file(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<Vec<u8>>;
    async fn write_file(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        data: Vec<u8>,
    ) -> WharfResult<()>;
    async fn list_dir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<Vec<DirEntry>>;
    async fn remove(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> WharfResult<()>;
}
