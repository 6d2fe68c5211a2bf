//! Typed access to the sandbox that the current call targets (adapters only).
//!
//! The host binds these primitives to exactly one sandbox per call: an adapter
//! cannot name another sandbox. Paths are relative to the sandbox workspace;
//! absolute paths, `..` segments and symlink escapes are refused by the host
//! with `invalid_path`. Calls made outside of `invoke` (for example from
//! `describe`) fail with `no_sandbox`.
//!
//! ```no_run
//! use std::time::Duration;
//! use wharf_plugin_sdk::{sandbox, PluginError};
//!
//! fn count_lines() -> Result<usize, PluginError> {
//!     let out = sandbox::Command::new("sh")
//!         .args(["-c", "wc -l < data.txt"])
//!         .env("LC_ALL", "C")
//!         .timeout(Duration::from_secs(5))
//!         .output()?;
//!     if !out.success() {
//!         return Err(PluginError::new("command_failed", out.stderr_lossy()));
//!     }
//!     sandbox::write_file("count.txt", out.stdout.as_slice())?;
//!     out.stdout_lossy().trim().parse().map_err(|e| PluginError::internal(format!("{e}")))
//! }
//! ```
//!
//! Outside of a WebAssembly component (native unit tests) these functions act on the
//! [`FakeSandbox`](crate::testing::FakeSandbox) installed for the current thread, an
//! in-memory filesystem with scripted exec results; without one, they return an
//! `unsupported` error.

use std::borrow::Cow;
use std::time::Duration;

use crate::PluginError;

/// A process to run in the sandbox, built like [`std::process::Command`].
///
/// `argv[0]` (the program) is looked up on the sandbox `PATH`; no shell is
/// involved unless you run one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a Command does nothing until `output()` runs it"]
pub struct Command {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout_ms: Option<u32>,
}

impl Command {
    /// A command running `program` with no arguments, no extra environment,
    /// in the workspace root, with empty stdin and the host's default timeout.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            argv: vec![program.into()],
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout_ms: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Working directory, relative to the sandbox workspace.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Bytes written to the process's stdin (then closed).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Wall-clock limit for the process tree, rounded up to whole
    /// milliseconds (at most `u32::MAX` ms). The host caps it further.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let mut ms = timeout.as_millis();
        if !timeout.subsec_nanos().is_multiple_of(1_000_000) {
            ms += 1;
        }
        self.timeout_ms = Some(u32::try_from(ms).unwrap_or(u32::MAX));
        self
    }

    /// The program and its arguments.
    pub fn get_argv(&self) -> &[String] {
        &self.argv
    }

    /// The extra environment variables, in the order they were set.
    pub fn get_envs(&self) -> &[(String, String)] {
        &self.env
    }

    /// The working directory, if set.
    pub fn get_cwd(&self) -> Option<&str> {
        self.cwd.as_deref()
    }

    /// The bytes for stdin, if set.
    pub fn get_stdin(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }

    /// The timeout in milliseconds, if set.
    pub fn get_timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    /// Runs the command to completion and collects its output.
    ///
    /// A non-zero exit status is not an error: check [`ExecOutput::success`].
    /// Errors are the host's: `no_sandbox`, `invalid_path` (bad `cwd`),
    /// `sandbox_unavailable`, ...
    pub fn output(self) -> Result<ExecOutput, PluginError> {
        imp::exec(self)
    }
}

/// What a finished [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Exit status; `None` when the process was killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    /// Captured stdout (possibly truncated by the host's output cap).
    pub stdout: Vec<u8>,
    /// Captured stderr (possibly truncated by the host's output cap).
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at the host's output cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the host's output cap.
    pub stderr_truncated: bool,
    /// Whether the process tree was killed by the timeout.
    pub timed_out: bool,
    /// Wall-clock run time in milliseconds.
    pub duration_ms: u64,
}

impl ExecOutput {
    /// True when the process exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Stdout as text, invalid UTF-8 replaced by U+FFFD.
    pub fn stdout_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// Stderr as text, invalid UTF-8 replaced by U+FFFD.
    pub fn stderr_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }

    /// Wall-clock run time.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

impl ExecOutput {
    /// A successful exit (status 0) with `stdout`; handy for scripting a
    /// [`FakeSandbox`](crate::testing::FakeSandbox) in native tests.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            exit_code: Some(0),
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    /// A failed exit with `code` and `stderr`; handy for scripting a
    /// [`FakeSandbox`](crate::testing::FakeSandbox) in native tests.
    pub fn failed(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        Self {
            exit_code: Some(code),
            stderr: stderr.into(),
            ..Self::default()
        }
    }
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (socket, device, ...).
    Other,
}

/// One entry of [`list_dir`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirEntry {
    /// File name (no directory part).
    pub name: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Size in bytes (files; 0 or filesystem-specific for others).
    pub size: u64,
}

/// What [`stat`] knows about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStat {
    /// What the path is (a symbolic link is reported as one, not followed).
    pub kind: EntryKind,
    /// Size in bytes (files; 0 or filesystem-specific for others).
    pub size: u64,
}

/// Reads a whole file. The host refuses files over its plugin read limit with
/// `payload_too_large`; for large files use [`read_file_range`], since the whole file
/// would land in the plugin's memory (64 MiB by default).
pub fn read_file(path: &str) -> Result<Vec<u8>, PluginError> {
    imp::read_file(path)
}

/// Reads `length` bytes from `offset`: fewer only at the end of the file, none past it.
/// Only the slice enters the plugin's memory. A `length` over the host's plugin read
/// limit is `payload_too_large`. Needs `requires.wharf = "^0.2"`.
///
/// ```no_run
/// # use wharf_plugin_sdk::{sandbox, PluginError};
/// # fn head() -> Result<Vec<u8>, PluginError> {
/// let first_kib = sandbox::read_file_range("big.log", 0, 1024)?;
/// # Ok(first_kib) }
/// ```
pub fn read_file_range(path: &str, offset: u64, length: u64) -> Result<Vec<u8>, PluginError> {
    imp::read_file_range(path, offset, length)
}

/// Kind and size of a path; a missing path is `file_not_found`. Needs
/// `requires.wharf = "^0.2"`.
pub fn stat(path: &str) -> Result<FileStat, PluginError> {
    imp::stat(path)
}

/// Reads a whole file as UTF-8 text; invalid UTF-8 is an `invalid_data` error.
pub fn read_to_string(path: &str) -> Result<String, PluginError> {
    let bytes = read_file(path)?;
    String::from_utf8(bytes).map_err(|err| {
        PluginError::new(
            crate::error::codes::INVALID_DATA,
            format!(
                "`{path}` is not valid UTF-8 (first invalid byte at offset {})",
                err.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Creates or replaces a file with `data`.
pub fn write_file(path: &str, data: impl AsRef<[u8]>) -> Result<(), PluginError> {
    imp::write_file(path, data.as_ref())
}

/// Lists a directory (not recursive; no `.`/`..`).
pub fn list_dir(path: &str) -> Result<Vec<DirEntry>, PluginError> {
    imp::list_dir(path)
}

/// Removes a file, or a directory (`recursive` must be true for a non-empty one).
pub fn remove(path: &str, recursive: bool) -> Result<(), PluginError> {
    imp::remove(path, recursive)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Command, DirEntry, EntryKind, ExecOutput};
    use crate::__bindings::adapter::wharf::plugin::sandbox as wit;
    use crate::PluginError;

    pub(super) fn exec(cmd: Command) -> Result<ExecOutput, PluginError> {
        let request = wit::ExecRequest {
            argv: cmd.argv,
            env: cmd.env,
            cwd: cmd.cwd,
            stdin: cmd.stdin,
            timeout_ms: cmd.timeout_ms,
        };
        let out = wit::exec(&request)?;
        Ok(ExecOutput {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
            timed_out: out.timed_out,
            duration_ms: out.duration_ms,
        })
    }

    pub(super) fn read_file(path: &str) -> Result<Vec<u8>, PluginError> {
        Ok(wit::read_file(path)?)
    }

    pub(super) fn write_file(path: &str, data: &[u8]) -> Result<(), PluginError> {
        Ok(wit::write_file(path, data)?)
    }

    pub(super) fn list_dir(path: &str) -> Result<Vec<DirEntry>, PluginError> {
        Ok(wit::list_dir(path)?
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                kind: match e.kind {
                    wit::EntryKind::File => EntryKind::File,
                    wit::EntryKind::Directory => EntryKind::Directory,
                    wit::EntryKind::Symlink => EntryKind::Symlink,
                    wit::EntryKind::Other => EntryKind::Other,
                },
                size: e.size,
            })
            .collect())
    }

    pub(super) fn remove(path: &str, recursive: bool) -> Result<(), PluginError> {
        Ok(wit::remove(path, recursive)?)
    }

    pub(super) fn read_file_range(
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, PluginError> {
        Ok(wit::read_file_range(path, offset, length)?)
    }

    pub(super) fn stat(path: &str) -> Result<super::FileStat, PluginError> {
        let stat = wit::stat(path)?;
        Ok(super::FileStat {
            kind: entry_kind(stat.kind),
            size: stat.size,
        })
    }

    fn entry_kind(kind: wit::EntryKind) -> EntryKind {
        match kind {
            wit::EntryKind::File => EntryKind::File,
            wit::EntryKind::Directory => EntryKind::Directory,
            wit::EntryKind::Symlink => EntryKind::Symlink,
            wit::EntryKind::Other => EntryKind::Other,
        }
    }
}

/// Native builds (unit tests, clippy): the fake sandbox of the current thread, if any.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Command, DirEntry, ExecOutput, FileStat};
    use crate::PluginError;
    use crate::testing::with_installed;

    pub(super) fn exec(cmd: Command) -> Result<ExecOutput, PluginError> {
        with_installed("exec", |fake| fake.exec(cmd))
    }

    pub(super) fn read_file(path: &str) -> Result<Vec<u8>, PluginError> {
        with_installed("read-file", |fake| fake.read_file(path))
    }

    pub(super) fn read_file_range(
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, PluginError> {
        with_installed("read-file-range", |fake| {
            fake.read_file_range(path, offset, length)
        })
    }

    pub(super) fn stat(path: &str) -> Result<FileStat, PluginError> {
        with_installed("stat", |fake| fake.stat(path))
    }

    pub(super) fn write_file(path: &str, data: &[u8]) -> Result<(), PluginError> {
        with_installed("write-file", |fake| fake.write_file(path, data))
    }

    pub(super) fn list_dir(path: &str) -> Result<Vec<DirEntry>, PluginError> {
        with_installed("list-dir", |fake| fake.list_dir(path))
    }

    pub(super) fn remove(path: &str, recursive: bool) -> Result<(), PluginError> {
        with_installed("remove", |fake| fake.remove(path, recursive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_builder() {
        let cmd = Command::new("sh")
            .arg("-c")
            .args(["echo hi"])
            .env("A", "1")
            .envs([("B", "2")])
            .cwd("sub")
            .stdin("in");
        assert_eq!(cmd.get_argv(), ["sh", "-c", "echo hi"]);
        assert_eq!(
            cmd.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string())
            ]
        );
        assert_eq!(cmd.cwd.as_deref(), Some("sub"));
        assert_eq!(cmd.stdin.as_deref(), Some(&b"in"[..]));
    }

    #[test]
    fn timeout_rounds_up_and_saturates() {
        assert_eq!(
            Command::new("x")
                .timeout(Duration::from_millis(1500))
                .timeout_ms,
            Some(1500)
        );
        assert_eq!(
            Command::new("x")
                .timeout(Duration::from_micros(1))
                .timeout_ms,
            Some(1)
        );
        assert_eq!(
            Command::new("x")
                .timeout(Duration::from_secs(u64::MAX))
                .timeout_ms,
            Some(u32::MAX)
        );
    }

    #[test]
    fn native_calls_are_unsupported() {
        let err = Command::new("true").output().unwrap_err();
        assert_eq!(err.code, "unsupported");
        assert_eq!(read_to_string("x").unwrap_err().code, "unsupported");
    }

    #[test]
    fn exec_output_helpers() {
        let out = ExecOutput {
            exit_code: Some(0),
            stdout: b"a\xffb".to_vec(),
            duration_ms: 7,
            ..Default::default()
        };
        assert!(out.success());
        assert_eq!(out.stdout_lossy(), "a\u{fffd}b");
        assert_eq!(out.duration(), Duration::from_millis(7));
        assert!(!ExecOutput::default().success());
    }
}
