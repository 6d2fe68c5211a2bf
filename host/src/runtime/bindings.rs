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
    /// thread, and keeps the time out of the plugin's own deadline.
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
        let started = Instant::now();
        let result = self.tokio.block_on(op(binding));
        self.host_time += started.elapsed();
        result.map_err(to_plugin_error)
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
        let output = self.on_sandbox(|binding| async move {
            let exec = ExecRequest {
                argv: request.argv,
                env: request.env,
                cwd,
                stdin: request.stdin,
                timeout: binding.exec_timeout(request.timeout_ms.map(u64::from)),
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
        let entries =
            self.on_sandbox(|b| async move { b.driver().list_dir(&b.sandbox_id, &path).await })?;
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
        self.on_sandbox(|b| async move { b.driver().remove(&b.sandbox_id, &path, recursive).await })
    }
}
