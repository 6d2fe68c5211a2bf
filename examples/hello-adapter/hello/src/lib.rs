//! Capability adapter `notes`: the code of the tutorial in `examples/hello-adapter/README.md`.
//!
//! * `write` stores a note as `<name>.txt` in the sandbox workspace;
//! * `read` returns its first `max_bytes` bytes, without loading the rest;
//! * `words` counts its words with `wc -w`, run in the sandbox.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::{PluginError, sandbox};

/// The longest note `write` takes, in bytes.
const MAX_NOTE_BYTES: usize = 64 * 1024;

/// Input of `write`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteInput {
    /// Note name: 1-64 letters, digits, `-` or `_`.
    pub name: String,
    /// The note's text (at most 64 KiB).
    pub text: String,
}

/// Output of `write`.
#[derive(Serialize, JsonSchema)]
pub struct WriteOutput {
    /// Where the note is, relative to the workspace.
    pub path: String,
    /// Bytes written.
    pub bytes: usize,
}

/// Input of `read` and `words`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// Note name.
    pub name: String,
    /// Read at most this many bytes (default 4096).
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    4096
}

/// Output of `read`.
#[derive(Serialize, JsonSchema)]
pub struct ReadOutput {
    /// The text read (invalid UTF-8 replaced by U+FFFD).
    pub text: String,
    /// The note's full size in bytes.
    pub size: u64,
    /// Whether the note is longer than what was read.
    pub truncated: bool,
}

/// Input of `words`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WordsInput {
    /// Note name.
    pub name: String,
}

/// Output of `words`.
#[derive(Serialize, JsonSchema)]
pub struct WordsOutput {
    /// Words in the note, as `wc -w` counts them.
    pub words: u64,
}

fn note_path(name: &str) -> Result<String, PluginError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(PluginError::invalid_input(format!(
            "note name {name:?} must be 1-64 letters, digits, `-` or `_`"
        )));
    }
    Ok(format!("{name}.txt"))
}

/// Operation `write`.
pub fn write(input: WriteInput) -> Result<WriteOutput, PluginError> {
    let path = note_path(&input.name)?;
    if input.text.len() > MAX_NOTE_BYTES {
        return Err(PluginError::invalid_input(format!(
            "a note holds at most {MAX_NOTE_BYTES} bytes"
        )));
    }
    sandbox::write_file(&path, &input.text)?;
    wharf_plugin_sdk::info!("wrote {path}");
    Ok(WriteOutput {
        path,
        bytes: input.text.len(),
    })
}

/// Operation `read`: `stat` for the size, then only the bytes asked for.
pub fn read(input: ReadInput) -> Result<ReadOutput, PluginError> {
    let path = note_path(&input.name)?;
    if !(1..=1 << 20).contains(&input.max_bytes) {
        return Err(PluginError::invalid_input(
            "`max_bytes` must be 1..=1048576",
        ));
    }
    let size = sandbox::stat(&path)?.size;
    let bytes = sandbox::read_file_range(&path, 0, input.max_bytes)?;
    Ok(ReadOutput {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        size,
        truncated: size > bytes.len() as u64,
    })
}

/// Operation `words`: `wc -w` in the sandbox.
pub fn words(input: WordsInput) -> Result<WordsOutput, PluginError> {
    let path = note_path(&input.name)?;
    let out = sandbox::Command::new("wc")
        .args(["-w", path.as_str()])
        .env("LC_ALL", "C")
        .output()?;
    if !out.success() {
        return Err(PluginError::new("command_failed", out.stderr_lossy()));
    }
    let stdout = out.stdout_lossy();
    let words = stdout
        .split_whitespace()
        .next()
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| PluginError::new("invalid_data", format!("wc said {stdout:?}")))?;
    Ok(WordsOutput { words })
}

/// The `notes` adapter.
pub struct Notes;

impl Adapter for Notes {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "notes",
            env!("CARGO_PKG_VERSION"),
            "Keeps short text notes in the sandbox",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add("write", "Stores a note as `<name>.txt`", write)
            .idempotent()
            .add("read", "Returns the start of a note", read)
            .read_only()
            .add("words", "Counts the words of a note with `wc -w`", words)
            .read_only();
    }
}

wharf_plugin_sdk::export_adapter!(Notes);

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::invoke;
    use wharf_plugin_sdk::sandbox::ExecOutput;
    use wharf_plugin_sdk::testing::FakeSandbox;

    use super::*;

    #[test]
    fn write_then_read() {
        let sandbox = FakeSandbox::new().install();
        let out = invoke::<Notes>("write", r#"{"name": "todo", "text": "buy milk"}"#).unwrap();
        assert_eq!(out, r#"{"path":"todo.txt","bytes":8}"#);
        assert_eq!(sandbox.file_text("todo.txt").as_deref(), Some("buy milk"));

        let out = invoke::<Notes>("read", r#"{"name": "todo", "max_bytes": 3}"#).unwrap();
        assert_eq!(out, r#"{"text":"buy","size":8,"truncated":true}"#);
    }

    #[test]
    fn words_runs_wc_in_the_sandbox() {
        let sandbox = FakeSandbox::new()
            .file("todo.txt", "buy milk")
            .on_exec(["wc", "-w", "todo.txt"], ExecOutput::ok("2 todo.txt\n"))
            .install();
        let out = invoke::<Notes>("words", r#"{"name": "todo"}"#).unwrap();
        assert_eq!(out, r#"{"words":2}"#);
        assert_eq!(
            sandbox.execs()[0].env,
            [("LC_ALL".to_string(), "C".to_string())]
        );
    }

    #[test]
    fn bad_names_and_missing_notes() {
        let _sandbox = FakeSandbox::new().install();
        let err = invoke::<Notes>("write", r#"{"name": "../x", "text": ""}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        let err = invoke::<Notes>("read", r#"{"name": "nope"}"#).unwrap_err();
        assert_eq!(err.code, "file_not_found");
    }
}
