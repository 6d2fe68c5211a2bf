//! Sandboxes: isolated workspaces where agents and people run code.
//!
//! A [`SandboxDriver`] owns the isolation mechanism (a local process group,
//! a Docker container, ...). The [`service::Sandboxes`] service owns records,
//! ownership and state in the store, and hands drivers the work.

pub mod paths;
pub mod process;
pub mod service;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::WharfResult;
pub use paths::SandboxPath;

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

/// The isolation mechanism behind a sandbox. Every operation names the
/// sandbox by id; paths have passed layer-one checks ([`SandboxPath`]) and the
/// driver applies layer two (resolution inside its root, no symlink escape).
#[async_trait]
pub trait SandboxDriver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Prepares the sandbox's workspace and runtime.
    async fn create(&self, sandbox_id: &str) -> WharfResult<()>;
    /// Stops everything the sandbox runs and removes its workspace.
    async fn destroy(&self, sandbox_id: &str) -> WharfResult<()>;
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
