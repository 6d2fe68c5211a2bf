//! Wharf capability adapter `filesystem`.
//!
//! `read`, `write`, `list` and `delete` are the host's file primitives (on
//! Docker they go through the sandbox's exec agent, with no engine round
//! trip). `glob` and `search` run one command inside the sandbox (`find`,
//! `grep`), so a tree of thousands of files costs one exec, not one host call
//! per file. Every answer is bounded: reads by `max_bytes`, listings and
//! matches by `limit`, each saying when it was cut (`truncated`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::sandbox::{self, EntryKind};

/// The most bytes one `read` returns (also its default).
pub const READ_MAX_BYTES: u64 = 1024 * 1024;
/// The most entries `list` and matches `glob` return.
pub const LIST_MAX: u32 = 10_000;
/// Default `limit` of `list` and `glob`.
pub const LIST_DEFAULT: u32 = 1_000;
/// The most matches one `search` returns.
pub const SEARCH_MAX: u32 = 10_000;
/// Default `limit` of `search`.
pub const SEARCH_DEFAULT: u32 = 100;
/// Longest matched line kept, in characters; longer ones are cut (`line_truncated`).
pub const LINE_MAX_CHARS: usize = 500;
/// Bytes of one grep output line kept inside the sandbox (path and line).
const GREP_LINE_BYTES: usize = 4096;
/// Time limit of `glob` and `search` unless the input gives one.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// How file content travels in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text.
    Text,
    /// Base64 (standard alphabet, padded) of the raw bytes.
    Base64,
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

impl From<EntryKind> for Kind {
    fn from(kind: EntryKind) -> Self {
        match kind {
            EntryKind::File => Kind::File,
            EntryKind::Directory => Kind::Directory,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::Other => Kind::Other,
        }
    }
}

fn invalid_path(message: impl Into<String>) -> PluginError {
    PluginError::new("invalid_path", message)
}

/// Checks a workspace-relative path given to a command inside the sandbox
/// (the host checks the paths of its own primitives): not absolute, no `..`,
/// no NUL, and never read as an option.
fn check_relative(what: &str, path: &str) -> Result<(), PluginError> {
    if path.contains('\0') {
        return Err(invalid_path(format!("`{what}` contains NUL")));
    }
    if path.starts_with('/') {
        return Err(invalid_path(format!(
            "`{what}` is absolute; paths are relative to the sandbox workspace"
        )));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(invalid_path(format!("`{what}` contains `..`")));
    }
    Ok(())
}

/// `base` joined with `rel`, both workspace-relative (`.` or empty: the root).
fn join(base: &str, rel: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.is_empty() || base == "." {
        rel.to_string()
    } else {
        format!("{base}/{rel}")
    }
}

fn default_dot() -> String {
    ".".to_string()
}

// ---------------------------------------------------------------- read

/// Input of `read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// File path, relative to the workspace.
    pub path: String,
    /// First byte to return.
    #[serde(default)]
    pub offset: u64,
    /// The most bytes to return (default and maximum 1 MiB).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: Option<u64>,
    /// `text` or `base64`; when absent, text if the bytes are UTF-8, else base64.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

/// Output of `read`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutput {
    pub path: String,
    /// The bytes read, in `encoding`.
    pub content: String,
    pub encoding: Encoding,
    /// The file's size in bytes.
    pub size: u64,
    /// The first byte returned.
    pub offset: u64,
    /// Bytes returned.
    pub bytes: u64,
    /// Whether the file goes on past what was returned (read on from `offset + bytes`).
    pub truncated: bool,
}

/// Operation `read`.
pub fn read(input: ReadInput) -> Result<ReadOutput, PluginError> {
    let max = input.max_bytes.unwrap_or(READ_MAX_BYTES);
    if max == 0 || max > READ_MAX_BYTES {
        return Err(PluginError::invalid_input(format!(
            "`max_bytes` must be in 1..={READ_MAX_BYTES}"
        )));
    }
    let (size, mut bytes) = match sandbox::read_file(&input.path) {
        Ok(data) => {
            let size = data.len() as u64;
            let start = input.offset.min(size) as usize;
            let end = input.offset.saturating_add(max).min(size) as usize;
            (size, data[start..end].to_vec())
        }
        // Larger than the host reads whole for a plugin: read the range inside the sandbox.
        Err(err) if err.is("payload_too_large") => read_range(&input.path, input.offset, max)?,
        Err(err) => return Err(err),
    };
    let encoding = match input.encoding {
        Some(encoding) => encoding,
        None if utf8_prefix_len(&bytes) + 3 >= bytes.len() && text_cut(&bytes).is_some() => {
            Encoding::Text
        }
        None => Encoding::Base64,
    };
    let content = match encoding {
        Encoding::Base64 => BASE64.encode(&bytes),
        Encoding::Text => {
            let keep = text_cut(&bytes).ok_or_else(|| {
                PluginError::new(
                    "invalid_data",
                    format!(
                        "{} is not UTF-8 text at byte {}; read it with \"encoding\": \"base64\"",
                        input.path,
                        input.offset + utf8_prefix_len(&bytes) as u64
                    ),
                )
            })?;
            // A multi-byte character cut by `max_bytes` is left for the next read.
            bytes.truncate(keep);
            String::from_utf8(bytes.clone()).expect("checked UTF-8")
        }
    };
    let returned = bytes.len() as u64;
    Ok(ReadOutput {
        path: input.path,
        content,
        encoding,
        size,
        offset: input.offset,
        bytes: returned,
        truncated: input.offset.saturating_add(returned) < size,
    })
}

fn utf8_prefix_len(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(err) => err.valid_up_to(),
    }
}

/// How many leading bytes are text: all of them, or all but a character cut
/// at the end; `None` when invalid UTF-8 comes earlier.
fn text_cut(bytes: &[u8]) -> Option<usize> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Some(bytes.len()),
        Err(err) if err.error_len().is_none() => Some(err.valid_up_to()),
        Err(_) => None,
    }
}

/// Reads `max` bytes at `offset` of a large file with `tail | head` in the sandbox.
fn read_range(path: &str, offset: u64, max: u64) -> Result<(u64, Vec<u8>), PluginError> {
    // The size goes to stderr, so stdout is the range alone (at most the exec output cap).
    const SCRIPT: &str = r#"wc -c < "$1" >&2 || exit 3; tail -c +"$2" -- "$1" | head -c "$3""#;
    let out = sandbox::Command::new("sh")
        .args(["-c", SCRIPT, "sh", path])
        .arg((offset + 1).to_string())
        .arg(max.to_string())
        .env("LC_ALL", "C")
        .timeout(SCAN_TIMEOUT)
        .output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            format!("reading {path} timed out"),
        ));
    }
    let size = out.stderr_lossy().trim().parse::<u64>();
    match size {
        Ok(size) if out.success() => Ok((size, out.stdout)),
        _ => Err(PluginError::internal(format!(
            "reading {path} in the sandbox failed: {}",
            out.stderr_lossy().trim()
        ))),
    }
}

// ---------------------------------------------------------------- write

/// Input of `write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteInput {
    /// File path, relative to the workspace; an existing file is replaced.
    pub path: String,
    /// The new content, in `encoding`.
    pub content: String,
    /// `text` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// Create missing parent directories first (default false: a missing parent is `file_not_found`).
    #[serde(default)]
    pub create_dirs: bool,
}

/// Output of `write`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WriteOutput {
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
}

/// Operation `write`.
pub fn write(input: WriteInput) -> Result<WriteOutput, PluginError> {
    let data = match input.encoding.unwrap_or(Encoding::Text) {
        Encoding::Text => input.content.into_bytes(),
        Encoding::Base64 => BASE64
            .decode(input.content.as_bytes())
            .map_err(|err| PluginError::invalid_input(format!("`content` is not base64: {err}")))?,
    };
    if input.create_dirs
        && let Some((parent, _)) = input.path.trim_end_matches('/').rsplit_once('/')
        && !parent.is_empty()
    {
        check_relative("path", parent)?;
        let out = sandbox::Command::new("mkdir")
            .args(["-p", "--", parent])
            .timeout(Duration::from_secs(30))
            .output()?;
        if !out.success() {
            return Err(PluginError::new(
                "conflict",
                format!("cannot create {parent}: {}", out.stderr_lossy().trim()),
            ));
        }
    }
    sandbox::write_file(&input.path, &data)?;
    Ok(WriteOutput {
        path: input.path,
        bytes: data.len() as u64,
    })
}

// ---------------------------------------------------------------- list

/// Input of `list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInput {
    /// Directory, relative to the workspace (default: the workspace root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// The most entries to return (default 1000, at most 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
}

/// One directory entry.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    /// Size in bytes (files).
    pub size: u64,
}

/// Output of `list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListOutput {
    pub path: String,
    /// Entries sorted by name, at most `limit`.
    pub entries: Vec<Entry>,
    /// Entries in the directory.
    pub total: u64,
    /// Whether entries were left out (more than `limit`).
    pub truncated: bool,
}

fn limit(given: Option<u32>, default: u32, max: u32) -> Result<usize, PluginError> {
    match given.unwrap_or(default) {
        n if n == 0 || n > max => Err(PluginError::invalid_input(format!(
            "`limit` must be in 1..={max}"
        ))),
        n => Ok(n as usize),
    }
}

/// Operation `list`.
pub fn list(input: ListInput) -> Result<ListOutput, PluginError> {
    let limit = limit(input.limit, LIST_DEFAULT, LIST_MAX)?;
    let mut entries = sandbox::list_dir(&input.path)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let total = entries.len() as u64;
    entries.truncate(limit);
    Ok(ListOutput {
        path: input.path,
        truncated: total > entries.len() as u64,
        total,
        entries: entries
            .into_iter()
            .map(|e| Entry {
                name: e.name,
                kind: e.kind.into(),
                size: e.size,
            })
            .collect(),
    })
}

// ---------------------------------------------------------------- delete

/// Input of `delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteInput {
    /// File or directory, relative to the workspace (a symlink itself, not its target).
    pub path: String,
    /// Remove a non-empty directory with everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// Output of `delete`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteOutput {
    pub path: String,
    pub deleted: bool,
}

/// Operation `delete`.
pub fn delete(input: DeleteInput) -> Result<DeleteOutput, PluginError> {
    sandbox::remove(&input.path, input.recursive)?;
    Ok(DeleteOutput {
        path: input.path,
        deleted: true,
    })
}

// ---------------------------------------------------------------- glob

/// Input of `glob`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobInput {
    /// Glob over paths relative to `path`: `*` and `?` within one name, `**` across
    /// directories (`**/*.rs`), `[abc]`, `[!abc]`, `{a,b}`. `*` also matches names
    /// starting with a dot.
    pub pattern: String,
    /// Directory to match under, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// The most matches to return (default 1000, at most 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
    /// Time limit in milliseconds (default 60000; the host caps it).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u32>,
}

/// One path `glob` or `search` found.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Found {
    /// Path relative to the workspace.
    pub path: String,
    pub kind: Kind,
    pub size: u64,
}

/// Output of `glob`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GlobOutput {
    /// Matches sorted by path: the first `limit` found.
    pub matches: Vec<Found>,
    /// Whether more paths matched than `limit`.
    pub truncated: bool,
}

/// The POSIX extended regular expression (as `find -regex` takes it) that
/// matches what `pattern` matches.
pub fn glob_to_ere(pattern: &str) -> Result<String, PluginError> {
    let chars: Vec<char> = pattern.trim_start_matches("./").chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let end = translate(&chars, &mut i, &mut out, 0)?;
    debug_assert!(end);
    Ok(out)
}

/// Translates until the end (true) or, inside braces, a closing `}` (false).
fn translate(
    chars: &[char],
    i: &mut usize,
    out: &mut String,
    depth: usize,
) -> Result<bool, PluginError> {
    while *i < chars.len() {
        let c = chars[*i];
        *i += 1;
        match c {
            '*' if chars.get(*i) == Some(&'*') => {
                *i += 1;
                let at_start = *i == 2 || chars.get(*i - 3) == Some(&'/');
                if at_start && chars.get(*i) == Some(&'/') {
                    *i += 1;
                    out.push_str("(.*/)?");
                } else {
                    out.push_str(".*");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => match chars[*i..].iter().skip(1).position(|c| *c == ']') {
                Some(close) => {
                    let body: String = chars[*i..*i + 1 + close].iter().collect();
                    *i += close + 2;
                    let body = body
                        .strip_prefix('!')
                        .map(|rest| format!("^{rest}"))
                        .unwrap_or(body);
                    out.push('[');
                    out.push_str(&body);
                    out.push(']');
                }
                None => out.push_str("\\["),
            },
            '{' => {
                if depth >= 8 {
                    return Err(PluginError::invalid_input(
                        "`pattern` nests braces too deep",
                    ));
                }
                out.push('(');
                loop {
                    if !translate(chars, i, out, depth + 1)? {
                        break;
                    }
                    if chars.get(*i - 1) != Some(&',') {
                        return Err(PluginError::invalid_input("`pattern` has an unclosed `{`"));
                    }
                    out.push('|');
                }
                out.push(')');
            }
            ',' if depth > 0 => return Ok(true),
            '}' if depth > 0 => return Ok(false),
            '\\' if *i < chars.len() => {
                let next = chars[*i];
                *i += 1;
                push_literal(out, next);
            }
            c => push_literal(out, c),
        }
    }
    if depth > 0 {
        return Err(PluginError::invalid_input("`pattern` has an unclosed `{`"));
    }
    Ok(true)
}

fn push_literal(out: &mut String, c: char) {
    if ".^$+()|{}[]\\*?".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

/// How deep a pattern without `**` can match (`a/*/c`: 3).
fn glob_depth(pattern: &str) -> Option<usize> {
    (!pattern.contains("**")).then(|| pattern.trim_start_matches("./").split('/').count())
}

/// Parses `find -printf '%y\t%s\t%P\0'` records under `base`.
fn parse_found(base: &str, stdout: &[u8]) -> Vec<Found> {
    stdout
        .split(|b| *b == 0)
        .filter(|record| !record.is_empty())
        .filter_map(|record| {
            let text = String::from_utf8_lossy(record);
            let mut fields = text.splitn(3, '\t');
            let kind = match fields.next()? {
                "f" => Kind::File,
                "d" => Kind::Directory,
                "l" => Kind::Symlink,
                _ => Kind::Other,
            };
            let size = fields.next()?.parse().unwrap_or(0);
            Some(Found {
                path: join(base, fields.next()?),
                kind,
                size,
            })
        })
        .collect()
}

fn scan_timeout(timeout_ms: Option<u32>) -> Duration {
    timeout_ms.map_or(SCAN_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)))
}

/// Operation `glob`.
pub fn glob(input: GlobInput) -> Result<GlobOutput, PluginError> {
    let limit = limit(input.limit, LIST_DEFAULT, LIST_MAX)?;
    if input.pattern.is_empty() || input.pattern.contains('\0') {
        return Err(PluginError::invalid_input(
            "`pattern` must be non-empty and without NUL",
        ));
    }
    if input.pattern.starts_with('/') || input.pattern.split('/').any(|p| p == "..") {
        return Err(invalid_path(
            "`pattern` must be relative to `path`, without `..`",
        ));
    }
    let regex = format!("\\./{}", glob_to_ere(&input.pattern)?);
    let depth = glob_depth(&input.pattern).map_or(String::new(), |d| format!("-maxdepth {d}"));
    // `head` stops `find` once one match past the limit is known.
    let script = format!(
        "find . -mindepth 1 {depth} -regextype posix-extended -regex \"$1\" -printf '%y\\t%s\\t%P\\0' 2>/dev/null | head -z -n {}",
        limit + 1
    );
    let out = sandbox::Command::new("sh")
        .args(["-c", &script, "sh", &regex])
        .cwd(input.path.as_str())
        .env("LC_ALL", "C")
        .timeout(scan_timeout(input.timeout_ms))
        .output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            format!("glob {:?} did not finish in time", input.pattern),
        ));
    }
    let mut matches = parse_found(&input.path, &out.stdout);
    let truncated = matches.len() > limit || out.stdout_truncated;
    matches.truncate(limit);
    matches.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(GlobOutput { matches, truncated })
}

// ---------------------------------------------------------------- search

/// Input of `search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    /// What to look for: a substring, or with `regex` a Perl-compatible regular
    /// expression (`grep -P`), matched line by line.
    pub query: String,
    /// Treat `query` as a regular expression (default: a plain substring).
    #[serde(default)]
    pub regex: bool,
    /// Ignore case.
    #[serde(default)]
    pub ignore_case: bool,
    /// Directory to search under, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// Only files whose name matches this glob (e.g. `*.py`).
    #[serde(default)]
    pub include: Option<String>,
    /// The most matches to return (default 100, at most 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
    /// Time limit in milliseconds (default 60000; the host caps it).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u32>,
}

/// One matching line.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Match {
    /// File path relative to the workspace.
    pub path: String,
    /// Line number, from 1.
    pub line: u64,
    /// The line (at most 500 characters).
    pub text: String,
    /// Whether `text` was cut.
    pub line_truncated: bool,
}

/// Output of `search`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOutput {
    /// Matching lines, in the order found, at most `limit`.
    pub matches: Vec<Match>,
    /// Number of matches returned.
    pub count: u64,
    /// Whether more lines matched than `limit` (the search stopped there).
    pub truncated: bool,
}

/// Runs `grep` and keeps its first `limit + 1` lines, each cut to
/// [`GREP_LINE_BYTES`]; exits with grep's own status (141 when `head`
/// stopped it early).
const SEARCH_SCRIPT: &str = r#"limit="$1"; shift
exec 4>&1
status=$( { { grep "$@"; echo "$?" >&3; } | head -n "$limit" | cut -b "1-$LINE_BYTES" >&4; } 3>&1 )
exit "$status""#;

/// Parses `grep -rnH -Z` lines: `path\0line:text`.
fn parse_matches(base: &str, stdout: &[u8]) -> Vec<Match> {
    stdout
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let nul = line.iter().position(|b| *b == 0)?;
            let path = String::from_utf8_lossy(&line[..nul]);
            let rest = &line[nul + 1..];
            let colon = rest.iter().position(|b| *b == b':')?;
            let number = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
            let text = String::from_utf8_lossy(&rest[colon + 1..]);
            let line_truncated =
                text.chars().count() > LINE_MAX_CHARS || line.len() >= GREP_LINE_BYTES;
            Some(Match {
                path: join(base, path.trim_start_matches("./")),
                line: number,
                text: text.chars().take(LINE_MAX_CHARS).collect(),
                line_truncated,
            })
        })
        .collect()
}

/// Operation `search`.
pub fn search(input: SearchInput) -> Result<SearchOutput, PluginError> {
    let limit = limit(input.limit, SEARCH_DEFAULT, SEARCH_MAX)?;
    if input.query.is_empty() || input.query.contains('\0') || input.query.contains('\n') {
        return Err(PluginError::invalid_input(
            "`query` must be non-empty, on one line, without NUL",
        ));
    }
    let mut args = vec![
        (limit + 1).to_string(),
        "-rnHIsZ".to_string(),
        "--exclude-dir=.git".to_string(),
        if input.regex { "-P" } else { "-F" }.to_string(),
    ];
    if input.ignore_case {
        args.push("-i".to_string());
    }
    if let Some(include) = &input.include {
        if include.is_empty() || include.contains('\0') {
            return Err(PluginError::invalid_input(
                "`include` must be a non-empty glob",
            ));
        }
        args.push(format!("--include={include}"));
    }
    args.extend([
        "-e".to_string(),
        input.query.clone(),
        "--".to_string(),
        ".".to_string(),
    ]);
    let out = sandbox::Command::new("sh")
        .args(["-c", SEARCH_SCRIPT, "sh"])
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .env("LINE_BYTES", GREP_LINE_BYTES.to_string())
        .cwd(input.path.as_str())
        .timeout(scan_timeout(input.timeout_ms))
        .output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            format!("search for {:?} did not finish in time", input.query),
        ));
    }
    // grep: 0 found, 1 none, 2 trouble (a bad pattern says why on stderr;
    // unreadable files are silenced by -s); 141: stopped by `head` (truncated).
    if out.exit_code == Some(2) && out.stdout.is_empty() && !out.stderr.is_empty() {
        return Err(PluginError::invalid_input(format!(
            "grep refused the query: {}",
            out.stderr_lossy().trim()
        )));
    }
    let mut matches = parse_matches(&input.path, &out.stdout);
    let truncated = matches.len() > limit || out.stdout_truncated;
    matches.truncate(limit);
    Ok(SearchOutput {
        count: matches.len() as u64,
        matches,
        truncated,
    })
}

/// The `filesystem` adapter.
pub struct Filesystem;

impl Adapter for Filesystem {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "filesystem",
            env!("CARGO_PKG_VERSION"),
            "Reads, writes, lists, deletes, globs and searches files in the sandbox workspace",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add(
            "read",
            "Reads a file (at most 1 MiB per call, from `offset`), as text or base64",
            read,
        )
        .read_only();
        ops.add(
            "write",
            "Creates or replaces a file with text or base64 content",
            write,
        )
        .idempotent();
        ops.add(
            "list",
            "Lists a directory: names, kinds and sizes, at most `limit` entries",
            list,
        )
        .read_only();
        ops.add(
            "delete",
            "Removes a file, a symlink, or a directory (`recursive` for a non-empty one)",
            delete,
        )
        .idempotent();
        ops.add(
            "glob",
            "Finds paths matching a glob (`**/*.rs`), at most `limit`",
            glob,
        )
        .read_only();
        ops.add(
            "search",
            "Finds lines containing a substring or matching a regex, at most `limit`; says when it stopped early",
            search,
        )
        .read_only();
    }
}

wharf_plugin_sdk::export_adapter!(Filesystem);

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::{describe, invoke};
    use wharf_plugin_sdk::serde_json;

    use super::*;

    #[test]
    fn describes_six_operations_with_schemas() {
        let d = describe::<Filesystem>();
        assert_eq!(d.info.capability, "filesystem");
        let names: Vec<_> = d.operations.iter().map(|op| op.name.as_str()).collect();
        assert_eq!(names, ["read", "write", "list", "delete", "glob", "search"]);
        for op in &d.operations {
            let input: serde_json::Value = serde_json::from_str(&op.input_schema).unwrap();
            let output: serde_json::Value = serde_json::from_str(&op.output_schema).unwrap();
            assert_eq!(input["type"], "object", "{}", op.name);
            assert_eq!(output["type"], "object", "{}", op.name);
            assert!(output["properties"].as_object().unwrap().len() >= 2);
        }
        // What MCP clients see as tool annotations.
        let read_only: Vec<_> = d
            .operations
            .iter()
            .filter(|op| op.hints.read_only)
            .map(|op| op.name.as_str())
            .collect();
        assert_eq!(read_only, ["read", "list", "glob", "search"]);
    }

    #[test]
    fn refuses_bad_input_before_any_sandbox_call() {
        for (op, json, needle) in [
            ("read", r#"{"path": "a", "max_bytes": 0}"#, "max_bytes"),
            (
                "read",
                r#"{"path": "a", "max_bytes": 2000000}"#,
                "max_bytes",
            ),
            ("list", r#"{"limit": 0}"#, "limit"),
            ("glob", r#"{"pattern": ""}"#, "pattern"),
            ("glob", r#"{"pattern": "a/{b,c"}"#, "unclosed"),
            ("search", r#"{"query": ""}"#, "query"),
            ("search", r#"{"query": "a\nb"}"#, "query"),
            ("search", r#"{"query": "a", "limit": 10001}"#, "limit"),
            (
                "write",
                r#"{"path": "a", "content": "!", "encoding": "base64"}"#,
                "base64",
            ),
        ] {
            let err = invoke::<Filesystem>(op, json).unwrap_err();
            assert_eq!(err.code, "invalid_input", "{op} {json}: {err}");
            assert!(err.message.contains(needle), "{op} {json}: {err}");
        }
        let err = invoke::<Filesystem>("glob", r#"{"pattern": "../x"}"#).unwrap_err();
        assert_eq!(err.code, "invalid_path");
        let err = invoke::<Filesystem>(
            "write",
            r#"{"path": "../a/b", "content": "", "create_dirs": true}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, "invalid_path");
    }

    #[test]
    fn globs_become_anchored_extended_regexes() {
        for (glob, ere) in [
            ("*.rs", "[^/]*\\.rs"),
            ("**/*.rs", "(.*/)?[^/]*\\.rs"),
            ("src/**", "src/.*"),
            ("a/**/b?.{txt,md}", "a/(.*/)?b[^/]\\.(txt|md)"),
            ("[!a]x[bc]", "[^a]x[bc]"),
            ("./a+b(c)", "a\\+b\\(c\\)"),
            ("x[", "x\\["),
        ] {
            assert_eq!(glob_to_ere(glob).unwrap(), ere, "{glob}");
        }
        assert_eq!(glob_depth("a/*/c"), Some(3));
        assert_eq!(glob_depth("**/c"), None);
    }

    #[test]
    fn parses_grep_and_find_output() {
        let grep = b"./a/b.txt\x0012:hello world\n./c\x003:x:y\nnonsense\n";
        let matches = parse_matches("src", grep);
        assert_eq!(
            matches,
            [
                Match {
                    path: "src/a/b.txt".into(),
                    line: 12,
                    text: "hello world".into(),
                    line_truncated: false
                },
                Match {
                    path: "src/c".into(),
                    line: 3,
                    text: "x:y".into(),
                    line_truncated: false
                },
            ]
        );
        let found = parse_found(".", b"f\t5\ta/b.rs\0d\t4096\ta\0");
        assert_eq!(found[0].path, "a/b.rs");
        assert_eq!(found[1].kind, Kind::Directory);
    }

    #[test]
    fn text_cut_keeps_whole_characters() {
        assert_eq!(text_cut("héllo".as_bytes()), Some(6));
        assert_eq!(text_cut(&"hé".as_bytes()[..2]), Some(1));
        assert_eq!(text_cut(b"a\xffb"), None);
    }
}
