//! Wharf capability adapter `python`.
//!
//! Operation `run` runs Python code with the sandbox's `python3` and returns
//! its exit code, stdout and stderr, and a structured `result`: **the value the
//! code assigns to a global named `result`**, as JSON (`result = {"answer":
//! 42}`). The code runs as the module `__main__`, like `python3 -c`.
//!
//! How it works: the code travels on stdin (no argument-size limit) to a small
//! runner (`runner.py`, passed with `python3 -c`). The runner compiles and runs
//! it and writes what the adapter needs (the result, a compile error, the
//! exception) to a report file whose name carries 128 random bits, created
//! with `O_EXCL` before the code runs; the adapter reads and removes it.
//! Nothing the code prints on stdout or stderr can pose as the result.
//!
//! A `SyntaxError` (or `IndentationError`) is the error `compile_error`, whose
//! message names the line; nothing ran. Code running past its time limit is
//! the error `timeout`. An exception raised by the code is not an adapter
//! error: the answer has exit code 1, the traceback on stderr, and
//! `exception` (type, message, line).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::serde_json::{self, Value};
use wharf_plugin_sdk::{PluginError, sandbox};

/// The runner that `python3 -c` executes; the payload comes on stdin.
const RUNNER: &str = include_str!("runner.py");

/// Input of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// Python source, run as the module `__main__`. Assign a global `result` to
    /// return a JSON value.
    pub code: String,
    /// Text the code reads from `sys.stdin`.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Working directory relative to the workspace (default: the workspace root).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit in milliseconds; the host's default (and cap) applies when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u32>,
}

/// Where the code raised.
#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct Exception {
    /// Exception class, e.g. `ZeroDivisionError`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// Line of the code where it was raised (innermost frame of the code).
    pub line: Option<u64>,
}

/// Output of `run`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOutput {
    /// Exit status (`sys.exit(n)` gives n; an uncaught exception 1); null when killed.
    pub exit_code: Option<i32>,
    /// Standard output, invalid UTF-8 replaced by U+FFFD.
    pub stdout: String,
    /// Standard error (tracebacks included).
    pub stderr: String,
    /// The JSON value of the code's global `result`; null when it set none.
    pub result: Option<Value>,
    /// Why `result` is null although the code set one (not JSON, or over 1 MiB).
    pub result_error: Option<String>,
    /// The exception that ended the code, if one did.
    pub exception: Option<Exception>,
    /// Wall-clock run time in milliseconds.
    pub duration_ms: u64,
    /// Whether stdout was cut at the host's output cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the host's output cap.
    pub stderr_truncated: bool,
}

/// A compile error as the runner reports it.
#[derive(Debug, Deserialize)]
struct CompileError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    line: Option<u64>,
    column: Option<u64>,
    text: Option<String>,
}

/// What the runner wrote to the report file.
#[derive(Debug, Default, Deserialize)]
struct Report {
    #[serde(default)]
    result: Option<Value>,
    result_error: Option<String>,
    compile_error: Option<CompileError>,
    exception: Option<Exception>,
}

impl RunInput {
    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.code.contains('\0') {
            return Err(PluginError::invalid_input(
                "`code` must not contain NUL bytes",
            ));
        }
        if self
            .cwd
            .as_deref()
            .is_some_and(|cwd| cwd.is_empty() || cwd.contains('\0'))
        {
            return Err(PluginError::invalid_input(
                "`cwd` must be a non-empty path without NUL; omit it for the workspace root",
            ));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(PluginError::invalid_input(format!(
                    "`env` key {key:?} is not a valid variable name"
                )));
            }
        }
        if self.env.values().any(|value| value.contains('\0')) {
            return Err(PluginError::invalid_input(
                "`env` values must not contain NUL",
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err(PluginError::invalid_input(
                "`timeout_ms` must be at least 1",
            ));
        }
        Ok(())
    }
}

/// 128 bits from the host's CSPRNG: each `RandomState` is keyed from WASI random.
fn token() -> String {
    let word = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        hasher.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

/// `name` inside the working directory `cwd` (workspace-relative).
fn in_cwd(cwd: Option<&str>, name: &str) -> String {
    match cwd.map(|c| c.trim_end_matches('/')) {
        Some(dir) if !dir.is_empty() && dir != "." => format!("{dir}/{name}"),
        _ => name.to_string(),
    }
}

/// The error `compile_error`, naming the line.
fn compile_error(error: CompileError) -> PluginError {
    let place = match (error.line, error.column) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "an unknown line".to_string(),
    };
    let text = error
        .text
        .filter(|t| !t.trim().is_empty())
        .map(|t| format!(": `{}`", t.trim()))
        .unwrap_or_default();
    PluginError::new(
        "compile_error",
        format!("{} at {place}: {}{text}", error.kind, error.message),
    )
}

/// Operation `run`.
pub fn run(input: RunInput) -> Result<RunOutput, PluginError> {
    input.validate()?;
    let report_name = format!(".wharf-python-{}.json", token());
    let payload = serde_json::json!({
        "code": input.code,
        "stdin": input.stdin,
        "report": report_name,
    });
    let mut command = sandbox::Command::new("python3")
        .args(["-c", RUNNER])
        .envs(&input.env)
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(payload.to_string().into_bytes());
    if let Some(cwd) = &input.cwd {
        command = command.cwd(cwd.as_str());
    }
    if let Some(ms) = input.timeout_ms {
        command = command.timeout(Duration::from_millis(u64::from(ms)));
    }
    let out = command.output()?;
    let report_path = in_cwd(input.cwd.as_deref(), &report_name);
    let report = sandbox::read_file(&report_path);
    if report.is_ok() {
        let _ = sandbox::remove(&report_path, false);
    }
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            format!(
                "the code ran past its time limit of {} ms and was killed",
                out.duration_ms
            ),
        ));
    }
    // No report: the code ended the interpreter itself (`os._exit`, a signal).
    let report: Report = match report {
        Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes)
            .map_err(|err| PluginError::internal(format!("unreadable runner report: {err}")))?,
        _ => Report::default(),
    };
    if let Some(error) = report.compile_error {
        return Err(compile_error(error));
    }
    Ok(RunOutput {
        exit_code: out.exit_code,
        stdout: out.stdout_lossy().into_owned(),
        stderr: out.stderr_lossy().into_owned(),
        result: report.result,
        result_error: report.result_error,
        exception: report.exception,
        duration_ms: out.duration_ms,
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
    })
}

/// The `python` adapter.
pub struct Python;

impl Adapter for Python {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "python",
            env!("CARGO_PKG_VERSION"),
            "Runs Python code in the sandbox; a global `result` comes back as JSON",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add(
            "run",
            "Runs Python code (`python3`); returns exit code, stdout, stderr and the JSON value of a global `result`. A SyntaxError is `compile_error` with its line; running past `timeout_ms` is `timeout`",
            run,
        );
    }
}

wharf_plugin_sdk::export_adapter!(Python);

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::{describe, invoke};

    use super::*;

    #[test]
    fn describes_run_with_a_result_field() {
        let d = describe::<Python>();
        assert_eq!(d.info.capability, "python");
        let input: Value = serde_json::from_str(&d.operations[0].input_schema).unwrap();
        assert_eq!(input["required"], serde_json::json!(["code"]));
        let output: Value = serde_json::from_str(&d.operations[0].output_schema).unwrap();
        assert!(output["properties"]["result"].is_object());
        assert!(output["properties"]["exception"].is_object());
    }

    #[test]
    fn refuses_bad_input() {
        for json in [
            r#"{"code": "a\u0000"}"#,
            r#"{"code": "1", "cwd": ""}"#,
            r#"{"code": "1", "env": {"A=B": "1"}}"#,
            r#"{"code": "1", "timeout_ms": 0}"#,
            r#"{"source": "1"}"#,
        ] {
            let err = invoke::<Python>("run", json).unwrap_err();
            assert_eq!(err.code, "invalid_input", "{json}: {err}");
        }
    }

    #[test]
    fn compile_errors_name_the_line() {
        let err = compile_error(CompileError {
            kind: "SyntaxError".into(),
            message: "invalid syntax".into(),
            line: Some(3),
            column: Some(7),
            text: Some("x = = 1\n".into()),
        });
        assert_eq!(err.code, "compile_error");
        assert_eq!(
            err.message,
            "SyntaxError at line 3, column 7: invalid syntax: `x = = 1`"
        );
    }

    #[test]
    fn tokens_differ_and_reports_land_in_the_cwd() {
        assert_ne!(token(), token());
        assert_eq!(token().len(), 32);
        assert_eq!(in_cwd(Some("a/b/"), "r.json"), "a/b/r.json");
        assert_eq!(in_cwd(Some("."), "r.json"), "r.json");
        assert_eq!(in_cwd(None, "r.json"), "r.json");
    }
}
