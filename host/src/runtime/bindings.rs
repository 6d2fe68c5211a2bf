//! Host-side bindings of the `wharf:plugin` WIT worlds, and the host
//! implementations of the interfaces plugins import.

use std::time::Instant;

use super::call::CallState;
use crate::sandbox::{ExecRequest, SandboxPath};

pub mod adapter {
    wasmtime::component::bindgen!({ path: "../wit", world: "capability-adapter" });
}

pub mod provider {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "llm-provider",
        with: {
            "wharf:plugin/types": super::adapter::wharf::plugin::types,
            "wharf:plugin/log": super::adapter::wharf::plugin::log,
        },
    });
}

use adapter::wharf::plugin::log::Level;
use adapter::wharf::plugin::sandbox as wit_sandbox;
use adapter::wharf::plugin::types::PluginError;

impl adapter::wharf::plugin::types::Host for CallState {}

impl adapter::wharf::plugin::log::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        CallState::log(self, level, &message);
    }
}

fn to_plugin_error(err: crate::error::WharfError) -> PluginError {
    let retriable = err.retriable();
    PluginError {
        code: err.code.as_str().to_string(),
        message: err.message,
        retriable,
    }
}

impl CallState {
    /// Runs one sandbox primitive on the bound sandbox, blocking this wasm
    /// thread, and keeps the time out of the plugin's own deadline. The call's
    /// wall-clock bound still applies: once it is spent, host calls are refused and
    /// the call ends as `plugin_timeout`.
    fn on_sandbox<T, F>(
        &mut self,
        op: impl FnOnce(crate::sandbox::service::SandboxBinding) -> F,
    ) -> Result<T, PluginError>
    where
        F: std::future::Future<Output = crate::error::WharfResult<T>>,
    {
        let Some(binding) = self.sandbox.clone() else {
            return Err(PluginError {
                code: "no_sandbox".into(),
                message:
                    "this call is not bound to a sandbox (describe and self-test calls never are)"
                        .into(),
                retriable: false,
            });
        };
        if self.wall_remaining().is_zero() {
            self.wall_exceeded = true;
            return Err(wall_spent());
        }
        let started = Instant::now();
        let result = self
            .tokio
            .block_on(tokio::time::timeout(self.host_call_budget(), op(binding)));
        self.host_time += started.elapsed();
        if self.wall_remaining().is_zero() {
            self.wall_exceeded = true;
        }
        match result {
            Ok(result) => result.map_err(to_plugin_error),
            Err(_elapsed) => {
                self.wall_exceeded = true;
                Err(wall_spent())
            }
        }
    }
}

fn wall_spent() -> PluginError {
    PluginError {
        code: "plugin_timeout".into(),
        message: "the call's wall-clock bound is spent; no more host calls".into(),
        retriable: true,
    }
}

fn parse_path(path: &str) -> Result<SandboxPath, PluginError> {
    SandboxPath::parse(path).map_err(to_plugin_error)
}

impl wit_sandbox::Host for CallState {
    fn exec(
        &mut self,
        request: wit_sandbox::ExecRequest,
    ) -> Result<wit_sandbox::ExecOutput, PluginError> {
        let cwd = request.cwd.as_deref().map(parse_path).transpose()?;
        // An exec never outlives the call that asked for it.
        let wall_left = self.wall_remaining();
        let output = self.on_sandbox(|binding| async move {
            let exec = ExecRequest {
                argv: request.argv,
                env: request.env,
                cwd,
                stdin: request.stdin,
                timeout: binding
                    .exec_timeout(request.timeout_ms.map(u64::from))
                    .min(wall_left),
                output_cap: binding.output_cap(),
                sink: None,
                // Set from the sandbox's profile by `binding.exec`.
                limits: Default::default(),
            };
            binding.exec(exec).await
        })?;
        Ok(wit_sandbox::ExecOutput {
            exit_code: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            stdout_truncated: output.stdout_truncated,
            stderr_truncated: output.stderr_truncated,
            timed_out: output.timed_out,
            duration_ms: output.duration.as_millis() as u64,
        })
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.read_file(&path).await })
    }

    fn write_file(&mut self, path: String, data: Vec<u8>) -> Result<(), PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.write_file(&path, data).await })
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<wit_sandbox::DirEntry>, PluginError> {
        let path = parse_path(&path)?;
        let entries = self.on_sandbox(|b| async move { b.list_dir(&path).await })?;
        Ok(entries
            .into_iter()
            .map(|entry| wit_sandbox::DirEntry {
                name: entry.name,
                kind: match entry.kind {
                    crate::sandbox::EntryKind::File => wit_sandbox::EntryKind::File,
                    crate::sandbox::EntryKind::Directory => wit_sandbox::EntryKind::Directory,
                    crate::sandbox::EntryKind::Symlink => wit_sandbox::EntryKind::Symlink,
                    crate::sandbox::EntryKind::Other => wit_sandbox::EntryKind::Other,
                },
                size: entry.size,
            })
            .collect())
    }

    fn remove(&mut self, path: String, recursive: bool) -> Result<(), PluginError> {
        let path = parse_path(&path)?;
        self.on_sandbox(|b| async move { b.remove(&path, recursive).await })
    }
}
