//! Wharf capability adapter `shell`.
//!
//! Operation `run` runs `sh -c <command>` in the sandbox that the call targets
//! and returns its exit code and output (as lossy UTF-8 text).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::{PluginError, sandbox};

/// Input of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// Shell command line, run as `sh -c <command>`.
    pub command: String,
    /// Working directory relative to the sandbox workspace; the workspace root when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text written to the command's stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall-clock limit in milliseconds; the host's default (and cap) applies when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u32>,
}

/// Output of `run`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOutput {
    /// Exit status; null when the process was killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    /// Standard output, invalid UTF-8 replaced by U+FFFD.
    pub stdout: String,
    /// Standard error, invalid UTF-8 replaced by U+FFFD.
    pub stderr: String,
    /// Wall-clock run time in milliseconds.
    pub duration_ms: u64,
    /// Whether stdout was cut at the host's output cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the host's output cap.
    pub stderr_truncated: bool,
    /// Whether the command was killed by the timeout.
    pub timed_out: bool,
}

impl RunInput {
    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.command.trim().is_empty() {
            return Err(PluginError::invalid_input("`command` must not be empty"));
        }
        if self.command.contains('\0') {
            return Err(PluginError::invalid_input(
                "`command` must not contain NUL bytes",
            ));
        }
        if let Some(cwd) = &self.cwd {
            if cwd.is_empty() {
                return Err(PluginError::invalid_input(
                    "`cwd` must not be empty; omit it for the workspace root",
                ));
            }
            if cwd.contains('\0') {
                return Err(PluginError::invalid_input(
                    "`cwd` must not contain NUL bytes",
                ));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(PluginError::invalid_input(format!(
                    "`env` key {key:?} is not a valid variable name (empty, or contains `=` or NUL)"
                )));
            }
            if value.contains('\0') {
                return Err(PluginError::invalid_input(format!(
                    "`env` value of {key:?} must not contain NUL bytes"
                )));
            }
        }
        if self.timeout_ms == Some(0) {
            return Err(PluginError::invalid_input(
                "`timeout_ms` must be at least 1",
            ));
        }
        Ok(())
    }

    /// The sandbox command this input describes.
    pub fn to_command(&self) -> sandbox::Command {
        let mut cmd = sandbox::Command::new("sh")
            .arg("-c")
            .arg(self.command.as_str())
            .envs(&self.env);
        if let Some(cwd) = &self.cwd {
            cmd = cmd.cwd(cwd.as_str());
        }
        if let Some(stdin) = &self.stdin {
            cmd = cmd.stdin(stdin.as_bytes());
        }
        if let Some(ms) = self.timeout_ms {
            cmd = cmd.timeout(Duration::from_millis(u64::from(ms)));
        }
        cmd
    }
}

/// Operation `run`.
pub fn run(input: RunInput) -> Result<RunOutput, PluginError> {
    input.validate()?;
    let out = input.to_command().output()?;
    if out.timed_out {
        wharf_plugin_sdk::debug!("command timed out after {} ms", out.duration_ms);
    }
    Ok(RunOutput {
        exit_code: out.exit_code,
        stdout: out.stdout_lossy().into_owned(),
        stderr: out.stderr_lossy().into_owned(),
        duration_ms: out.duration_ms,
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
        timed_out: out.timed_out,
    })
}

/// The `shell` adapter.
pub struct Shell;

impl Adapter for Shell {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "shell",
            env!("CARGO_PKG_VERSION"),
            "Runs shell commands (`sh -c`) in the sandbox",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add(
            "run",
            "Runs `sh -c <command>` and returns its exit code, stdout and stderr",
            run,
        );
    }
}

wharf_plugin_sdk::export_adapter!(Shell);

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::{describe, invoke};
    use wharf_plugin_sdk::sandbox::ExecOutput;
    use wharf_plugin_sdk::serde_json;
    use wharf_plugin_sdk::testing::FakeSandbox;

    use super::*;

    fn input(json: &str) -> RunInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn describes_run() {
        let d = describe::<Shell>();
        assert_eq!(d.info.capability, "shell");
        assert_eq!(d.operations.len(), 1);
        // Any command may write or delete: the worst-case hints.
        assert!(!d.operations[0].hints.read_only && d.operations[0].hints.destructive);
        let schema: serde_json::Value =
            serde_json::from_str(&d.operations[0].input_schema).unwrap();
        assert_eq!(schema["required"], serde_json::json!(["command"]));
        let schema: serde_json::Value =
            serde_json::from_str(&d.operations[0].output_schema).unwrap();
        assert_eq!(
            schema["properties"]["exit_code"]["type"],
            serde_json::json!(["integer", "null"])
        );
    }

    #[test]
    fn refuses_bad_input() {
        for (json, needle) in [
            (r#"{"command": "  "}"#, "must not be empty"),
            (r#"{"command": "a\u0000b"}"#, "NUL"),
            (
                r#"{"command": "ls", "env": {"A=B": "x"}}"#,
                "not a valid variable name",
            ),
            (r#"{"command": "ls", "timeout_ms": 0}"#, "at least 1"),
            (r#"{"command": "ls", "cwd": ""}"#, "`cwd`"),
            (r#"{"command": "ls", "timeout_ms": -1}"#, "invalid value"),
            (r#"{"cmd": "ls"}"#, "unknown field `cmd`"),
            (r#"{}"#, "missing field `command`"),
        ] {
            let err = invoke::<Shell>("run", json).unwrap_err();
            assert_eq!(err.code, "invalid_input", "{json}");
            assert!(err.message.contains(needle), "{json}: {}", err.message);
        }
    }

    fn run_json(input: &str) -> serde_json::Value {
        serde_json::from_str(&invoke::<Shell>("run", input).unwrap()).unwrap()
    }

    #[test]
    fn runs_sh_in_the_sandbox() {
        let fake = FakeSandbox::new()
            .dir("work")
            .on_exec(["sh", "-c", "cat; echo $A"], ExecOutput::ok("in\n1\n"))
            .install();
        let out = run_json(
            r#"{"command": "cat; echo $A", "env": {"A": "1"}, "cwd": "work", "stdin": "in", "timeout_ms": 250}"#,
        );
        assert_eq!(out["exit_code"], 0);
        assert_eq!(out["stdout"], "in\n1\n");
        assert_eq!(out["stderr"], "");
        assert_eq!(out["timed_out"], false);
        let execs = fake.execs();
        assert_eq!(execs.len(), 1);
        assert_eq!(execs[0].env, [("A".to_string(), "1".to_string())]);
        assert_eq!(execs[0].cwd.as_deref(), Some("work"));
        assert_eq!(execs[0].stdin.as_deref(), Some(&b"in"[..]));
        assert_eq!(execs[0].timeout_ms, Some(250));
    }

    #[test]
    fn reports_failures_timeouts_and_truncation() {
        let _fake = FakeSandbox::new()
            .on_exec(["sh", "-c", "exit 3"], ExecOutput::failed(3, "nope\n"))
            .on_exec(
                ["sh", "-c", "sleep 9"],
                ExecOutput {
                    exit_code: None,
                    timed_out: true,
                    duration_ms: 100,
                    ..ExecOutput::default()
                },
            )
            .on_exec(
                ["sh", "-c", "yes"],
                ExecOutput {
                    stdout: b"y\n\xff".to_vec(),
                    stdout_truncated: true,
                    ..ExecOutput::ok("")
                },
            )
            .install();
        let out = run_json(r#"{"command": "exit 3"}"#);
        assert_eq!(
            (out["exit_code"].clone(), out["stderr"].clone()),
            (3.into(), "nope\n".into())
        );
        let out = run_json(r#"{"command": "sleep 9"}"#);
        assert!(out["exit_code"].is_null());
        assert_eq!(out["timed_out"], true);
        let out = run_json(r#"{"command": "yes"}"#);
        assert_eq!(out["stdout"], "y\n\u{fffd}");
        assert_eq!(out["stdout_truncated"], true);
    }

    #[test]
    fn sandbox_errors_pass_through() {
        let _fake = FakeSandbox::new().install();
        let err = invoke::<Shell>("run", r#"{"command": "ls", "cwd": "missing"}"#).unwrap_err();
        assert_eq!(err.code, "file_not_found");
        let err = invoke::<Shell>("run", r#"{"command": "ls", "cwd": "../up"}"#).unwrap_err();
        assert_eq!(err.code, "invalid_path");
    }

    #[test]
    fn builds_sh_command() {
        let cmd = input(r#"{"command": "echo $A", "env": {"A": "1"}, "cwd": "x", "stdin": "in", "timeout_ms": 5}"#)
            .to_command();
        assert_eq!(cmd.get_argv(), ["sh", "-c", "echo $A"]);
        let expected = sandbox::Command::new("sh")
            .args(["-c", "echo $A"])
            .env("A", "1")
            .cwd("x")
            .stdin("in")
            .timeout(Duration::from_millis(5));
        assert_eq!(cmd, expected);
    }
}
