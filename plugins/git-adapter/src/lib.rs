//! Wharf capability adapter `git`.
//!
//! Every operation runs the sandbox's own `git` (the base image has it; a
//! process sandbox sees the host's `/usr`), as the sandbox user, inside the
//! workspace. Sandboxes cannot see host paths, so a repository reaches one by
//! what git inside the sandbox can reach: a path in the workspace (a bare
//! repository uploaded or made there), a `file://` URL of such a path, or a
//! network URL when the sandbox's profile has a network.
//!
//! A commit needs an author: the input's `author_name` / `author_email`, else
//! the repository's `user.name` / `user.email`, else `Wharf <wharf@localhost>`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::{PluginError, sandbox};

/// Author and committer when neither the input nor the repository names one.
pub const DEFAULT_NAME: &str = "Wharf";
pub const DEFAULT_EMAIL: &str = "wharf@localhost";
/// Default and largest `max_bytes` of `diff`.
pub const DIFF_DEFAULT_BYTES: u32 = 256 * 1024;
pub const DIFF_MAX_BYTES: u32 = 1024 * 1024;
/// Default and largest `max_count` of `log`.
pub const LOG_DEFAULT: u32 = 20;
pub const LOG_MAX: u32 = 1000;
/// The most entries `status` and `diff` list.
pub const ENTRIES_MAX: usize = 1000;
/// Time limit of an operation unless the input gives one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of git's stderr an error carries.
const ERROR_TEXT_MAX: usize = 2000;

fn default_dot() -> String {
    ".".to_string()
}

/// `git <args>` in the repository `dir`, non-interactive and parseable.
fn git(dir: &str, timeout_ms: Option<u32>) -> sandbox::Command {
    sandbox::Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "-c",
            "core.quotepath=off",
            "-c",
            "color.ui=never",
            "-c",
            "protocol.ext.allow=never",
        ])
        .cwd(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .timeout(timeout_ms.map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(u64::from(ms))))
}

/// Runs `command`; a failure is `git_error` (or `not_a_repository`) with git's words.
fn run(command: sandbox::Command, what: &str) -> Result<sandbox::ExecOutput, PluginError> {
    let out = command.output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            format!("git {what} ran past its time limit"),
        ));
    }
    if out.success() {
        return Ok(out);
    }
    Err(git_error(what, &out))
}

fn git_error(what: &str, out: &sandbox::ExecOutput) -> PluginError {
    let stderr = out.stderr_lossy();
    let mut text = stderr.trim().to_string();
    if text.is_empty() {
        text = out.stdout_lossy().trim().to_string();
    }
    if text.len() > ERROR_TEXT_MAX {
        let mut cut = ERROR_TEXT_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = format!("{}...", &text[..cut]);
    }
    let code = if text.contains("not a git repository") {
        "not_a_repository"
    } else {
        "git_error"
    };
    PluginError::new(
        code,
        format!("git {what} failed (exit {:?}): {text}", out.exit_code),
    )
}

/// Refuses an argument git could read as an option, or a path leaving the workspace.
fn check_arg(what: &str, value: &str) -> Result<(), PluginError> {
    if value.is_empty() || value.starts_with('-') || value.contains(['\0', '\n']) {
        return Err(PluginError::invalid_input(format!(
            "`{what}` must be non-empty, on one line, and not start with `-`"
        )));
    }
    Ok(())
}

fn check_relative(what: &str, path: &str) -> Result<(), PluginError> {
    check_arg(what, path)?;
    if path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(PluginError::new(
            "invalid_path",
            format!("`{what}` must be relative to the workspace, without `..`"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- clone

/// Input of `clone`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneInput {
    /// What git in the sandbox can reach: a path in the workspace (e.g. `origin.git`),
    /// `file:///workspace/origin.git`, or a network URL if the profile has a network.
    pub url: String,
    /// Destination directory, relative to the workspace; default: the
    /// repository's name (`origin.git` -> `origin`).
    #[serde(default)]
    pub path: Option<String>,
    /// Branch or tag to check out.
    #[serde(default)]
    pub branch: Option<String>,
    /// Shallow clone with this many commits.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub depth: Option<u32>,
    /// Time limit in milliseconds (default 120000; the host caps it).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u32>,
}

/// Output of `clone`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CloneOutput {
    /// Where the repository was cloned, relative to the workspace.
    pub path: String,
    /// The commit checked out; null for an empty repository.
    pub head: Option<String>,
    /// The branch checked out; null when detached or empty.
    pub branch: Option<String>,
}

/// The directory `git clone` would make for `url`.
pub fn default_clone_dir(url: &str) -> Option<String> {
    let trimmed = url.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/.git").unwrap_or(trimmed);
    let last = trimmed.rsplit(['/', ':']).next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// Operation `clone`.
pub fn clone(input: CloneInput) -> Result<CloneOutput, PluginError> {
    check_arg("url", &input.url)?;
    let path = match input.path {
        Some(path) => path,
        None => default_clone_dir(&input.url).ok_or_else(|| {
            PluginError::invalid_input("cannot tell a directory name from `url`; give `path`")
        })?,
    };
    check_relative("path", &path)?;
    let mut command = git(".", input.timeout_ms).args(["clone", "--quiet"]);
    if let Some(branch) = &input.branch {
        check_arg("branch", branch)?;
        command = command.args(["--branch", branch]);
    }
    if let Some(depth) = input.depth {
        if depth == 0 {
            return Err(PluginError::invalid_input("`depth` must be at least 1"));
        }
        command = command.arg(format!("--depth={depth}"));
    }
    run(command.args(["--", &input.url, &path]), "clone")?;
    let (head, branch) = head_and_branch(&path)?;
    Ok(CloneOutput { path, head, branch })
}

/// The commit and branch checked out in `dir` (None for an empty repository / detached HEAD).
fn head_and_branch(dir: &str) -> Result<(Option<String>, Option<String>), PluginError> {
    let out = git(dir, None)
        .args(["rev-parse", "-q", "--verify", "HEAD^{commit}"])
        .output()?;
    let head = out
        .success()
        .then(|| out.stdout_lossy().trim().to_string())
        .filter(|h| !h.is_empty());
    let out = git(dir, None)
        .args(["symbolic-ref", "-q", "--short", "HEAD"])
        .output()?;
    let branch = out
        .success()
        .then(|| out.stdout_lossy().trim().to_string())
        .filter(|b| !b.is_empty());
    Ok((head, branch))
}

// ---------------------------------------------------------------- status

/// Input of `status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoInput {
    /// The repository's directory, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
}

/// One changed path.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    /// For a rename or copy, the path it came from.
    pub orig_path: Option<String>,
    /// Index (staged) status letter: `M`, `A`, `D`, `R`, `C`, `U`, `?` (untracked), `.` (none).
    pub index: String,
    /// Work tree status letter, same letters.
    pub worktree: String,
}

/// Output of `status`.
#[derive(Debug, Serialize, JsonSchema, Default)]
pub struct StatusOutput {
    /// Current branch; null when detached.
    pub branch: Option<String>,
    /// The commit checked out; null before the first commit.
    pub head: Option<String>,
    /// The upstream branch, if one is set.
    pub upstream: Option<String>,
    /// Commits ahead of / behind the upstream.
    pub ahead: Option<u64>,
    pub behind: Option<u64>,
    /// Whether nothing is staged, modified or untracked.
    pub clean: bool,
    /// Changed and untracked paths (at most 1000).
    pub changes: Vec<Change>,
    /// Whether changes were left out.
    pub truncated: bool,
}

/// Parses `git status --porcelain=v2 --branch -z`.
pub fn parse_status(stdout: &[u8]) -> StatusOutput {
    let mut status = StatusOutput::default();
    let mut records = stdout
        .split(|b| *b == 0)
        .map(|r| String::from_utf8_lossy(r).into_owned());
    let mut total = 0usize;
    while let Some(record) = records.next() {
        if let Some(header) = record.strip_prefix("# ") {
            let (key, value) = header.split_once(' ').unwrap_or((header, ""));
            match key {
                "branch.oid" if value != "(initial)" => status.head = Some(value.to_string()),
                "branch.head" if value != "(detached)" => status.branch = Some(value.to_string()),
                "branch.upstream" => status.upstream = Some(value.to_string()),
                "branch.ab" => {
                    let mut parts = value.split(' ');
                    status.ahead = parts
                        .next()
                        .and_then(|a| a.trim_start_matches('+').parse().ok());
                    status.behind = parts
                        .next()
                        .and_then(|b| b.trim_start_matches('-').parse().ok());
                }
                _ => {}
            }
            continue;
        }
        let (kind, rest) = record.split_once(' ').unwrap_or((record.as_str(), ""));
        let change = match kind {
            // 1 XY sub mH mI mW hH hI path
            "1" => {
                let fields: Vec<&str> = rest.splitn(8, ' ').collect();
                fields.get(7).map(|path| xy_change(fields[0], path, None))
            }
            // 2 XY sub mH mI mW hH hI Xscore path, then the original path as its own record
            "2" => {
                let fields: Vec<&str> = rest.splitn(9, ' ').collect();
                let orig = records.next();
                fields.get(8).map(|path| xy_change(fields[0], path, orig))
            }
            // u XY sub m1 m2 m3 mW h1 h2 h3 path
            "u" => {
                let fields: Vec<&str> = rest.splitn(10, ' ').collect();
                fields.get(9).map(|path| xy_change(fields[0], path, None))
            }
            "?" if !rest.is_empty() => Some(Change {
                path: rest.to_string(),
                orig_path: None,
                index: "?".into(),
                worktree: "?".into(),
            }),
            _ => None,
        };
        if let Some(change) = change {
            total += 1;
            if status.changes.len() < ENTRIES_MAX {
                status.changes.push(change);
            }
        }
    }
    status.clean = total == 0;
    status.truncated = total > status.changes.len();
    status
}

fn xy_change(xy: &str, path: &str, orig_path: Option<String>) -> Change {
    let mut letters = xy.chars();
    Change {
        path: path.to_string(),
        orig_path,
        index: letters.next().unwrap_or('.').to_string(),
        worktree: letters.next().unwrap_or('.').to_string(),
    }
}

/// Operation `status`.
pub fn status(input: RepoInput) -> Result<StatusOutput, PluginError> {
    let out = run(
        git(&input.path, None).args([
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--untracked-files=all",
        ]),
        "status",
    )?;
    let mut status = parse_status(&out.stdout);
    status.truncated |= out.stdout_truncated;
    Ok(status)
}

// ---------------------------------------------------------------- diff

/// Input of `diff`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffInput {
    /// The repository's directory, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// Staged changes (`--cached`) instead of the work tree's unstaged ones.
    #[serde(default)]
    pub staged: bool,
    /// Only these paths (relative to the repository).
    #[serde(default)]
    pub paths: Vec<String>,
    /// The most bytes of patch text to return (default 256 KiB, at most 1 MiB).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: Option<u32>,
}

/// Lines added and deleted in one file (null for binary files).
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FileStat {
    pub path: String,
    pub added: Option<u64>,
    pub deleted: Option<u64>,
}

/// Output of `diff`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DiffOutput {
    /// Changed files (at most 1000).
    pub files: Vec<FileStat>,
    /// The unified diff, at most `max_bytes`.
    pub diff: String,
    /// Whether the diff text or the file list was cut.
    pub truncated: bool,
}

/// Parses `git diff --numstat -z`: `added\tdeleted\tpath\0`, or for a
/// rename `added\tdeleted\t\0from\0to\0`.
pub fn parse_numstat(stdout: &[u8]) -> Vec<FileStat> {
    let mut records = stdout
        .split(|b| *b == 0)
        .map(|r| String::from_utf8_lossy(r).into_owned());
    let mut files = Vec::new();
    while let Some(record) = records.next() {
        let mut fields = record.splitn(3, '\t');
        let (Some(added), Some(deleted), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = if path.is_empty() {
            let _from = records.next();
            records.next().unwrap_or_default()
        } else {
            path.to_string()
        };
        files.push(FileStat {
            path,
            added: added.parse().ok(),
            deleted: deleted.parse().ok(),
        });
    }
    files
}

/// Operation `diff`.
pub fn diff(input: DiffInput) -> Result<DiffOutput, PluginError> {
    let max = input.max_bytes.unwrap_or(DIFF_DEFAULT_BYTES);
    if max == 0 || max > DIFF_MAX_BYTES {
        return Err(PluginError::invalid_input(format!(
            "`max_bytes` must be in 1..={DIFF_MAX_BYTES}"
        )));
    }
    for path in &input.paths {
        check_arg("paths", path)?;
    }
    let base = |extra: &[&str]| {
        let mut command = git(&input.path, None).args(["diff", "--no-ext-diff", "--no-textconv"]);
        if input.staged {
            command = command.arg("--cached");
        }
        command
            .args(extra.iter().copied())
            .arg("--")
            .args(input.paths.iter().cloned())
    };
    let numstat = run(base(&["--numstat", "-z"]), "diff")?;
    let mut files = parse_numstat(&numstat.stdout);
    let mut truncated = numstat.stdout_truncated || files.len() > ENTRIES_MAX;
    files.truncate(ENTRIES_MAX);
    let patch = run(base(&["--no-color"]), "diff")?;
    let mut text = patch.stdout;
    truncated |= patch.stdout_truncated || text.len() > max as usize;
    text.truncate(max as usize);
    Ok(DiffOutput {
        files,
        diff: String::from_utf8_lossy(&text).into_owned(),
        truncated,
    })
}

// ---------------------------------------------------------------- commit

/// Input of `commit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitInput {
    /// The repository's directory, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// The commit message.
    pub message: String,
    /// Stage these paths first (relative to the repository).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Stage every change first, untracked files included (`git add -A`).
    /// Default: true when `paths` is empty.
    #[serde(default)]
    pub all: Option<bool>,
    /// Author and committer name (default: the repository's `user.name`, else `Wharf`).
    #[serde(default)]
    pub author_name: Option<String>,
    /// Author and committer email (default: the repository's `user.email`, else `wharf@localhost`).
    #[serde(default)]
    pub author_email: Option<String>,
    /// Commit even when nothing changed.
    #[serde(default)]
    pub allow_empty: bool,
}

/// Output of `commit`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommitOutput {
    /// The new commit.
    pub commit: String,
    /// The branch it is on; null when detached.
    pub branch: Option<String>,
    /// The message's first line.
    pub summary: String,
}

/// Stages, checks there is something to commit, commits with the message on
/// stdin, and fills in the author only where neither the input nor the
/// repository names one.
const COMMIT_SCRIPT: &str = r#"g() { git -c safe.directory='*' "$@"; }
case "$WHARF_STAGE" in
  all) g add -A || exit 70 ;;
  paths) g add -- "$@" || exit 70 ;;
esac
if [ "$WHARF_ALLOW_EMPTY" != 1 ] && g diff --cached --quiet; then exit 3; fi
if [ -z "${GIT_AUTHOR_NAME:-}" ] && ! g config user.name >/dev/null; then
  export GIT_AUTHOR_NAME="$WHARF_DEFAULT_NAME" GIT_COMMITTER_NAME="$WHARF_DEFAULT_NAME"
fi
if [ -z "${GIT_AUTHOR_EMAIL:-}" ] && ! g config user.email >/dev/null; then
  export GIT_AUTHOR_EMAIL="$WHARF_DEFAULT_EMAIL" GIT_COMMITTER_EMAIL="$WHARF_DEFAULT_EMAIL"
fi
set -- --quiet --file=-
[ "$WHARF_ALLOW_EMPTY" = 1 ] && set -- "$@" --allow-empty
g commit "$@" || exit 71
g rev-parse HEAD"#;

/// Operation `commit`.
pub fn commit(input: CommitInput) -> Result<CommitOutput, PluginError> {
    if input.message.trim().is_empty() || input.message.contains('\0') {
        return Err(PluginError::invalid_input(
            "`message` must be non-empty and without NUL",
        ));
    }
    for path in &input.paths {
        check_arg("paths", path)?;
    }
    let stage = match (input.all, input.paths.is_empty()) {
        (Some(true), _) | (None, true) => "all",
        (_, false) => "paths",
        (Some(false), true) => "none",
    };
    let mut command = sandbox::Command::new("sh")
        .args(["-c", COMMIT_SCRIPT, "sh"])
        .args(input.paths.iter().cloned())
        .cwd(input.path.as_str())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("WHARF_STAGE", stage)
        .env(
            "WHARF_ALLOW_EMPTY",
            if input.allow_empty { "1" } else { "0" },
        )
        .env("WHARF_DEFAULT_NAME", DEFAULT_NAME)
        .env("WHARF_DEFAULT_EMAIL", DEFAULT_EMAIL)
        .stdin(input.message.clone().into_bytes())
        .timeout(DEFAULT_TIMEOUT);
    for (value, names) in [
        (
            &input.author_name,
            ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"],
        ),
        (
            &input.author_email,
            ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"],
        ),
    ] {
        if let Some(value) = value {
            if value.trim().is_empty() || value.contains(['\0', '\n', '<', '>']) {
                return Err(PluginError::invalid_input(
                    "`author_name` / `author_email` must be one line without `<` or `>`",
                ));
            }
            command = command
                .env(names[0], value.as_str())
                .env(names[1], value.as_str());
        }
    }
    let out = command.output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            "git commit ran past its time limit",
        ));
    }
    match out.exit_code {
        Some(0) => {}
        Some(3) => {
            return Err(PluginError::new(
                "nothing_to_commit",
                "nothing to commit: no staged change (set `allow_empty` to commit anyway)",
            ));
        }
        _ => return Err(git_error("commit", &out)),
    }
    let commit = out
        .stdout_lossy()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let (_, branch) = head_and_branch(&input.path)?;
    Ok(CommitOutput {
        commit,
        branch,
        summary: input.message.lines().next().unwrap_or_default().to_string(),
    })
}

// ---------------------------------------------------------------- log

/// Input of `log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogInput {
    /// The repository's directory, relative to the workspace (default: the root).
    #[serde(default = "default_dot")]
    pub path: String,
    /// The most commits to return (default 20, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub max_count: Option<u32>,
    /// Where to start (branch, tag, commit; default `HEAD`).
    #[serde(default)]
    pub rev: Option<String>,
}

/// One commit.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub parents: Vec<String>,
    pub author: String,
    pub email: String,
    /// Author date, ISO 8601.
    pub date: String,
    pub subject: String,
}

/// Output of `log`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogOutput {
    /// Newest first.
    pub commits: Vec<Commit>,
}

/// Parses `git log -z --format=%H%x1f%P%x1f%an%x1f%ae%x1f%aI%x1f%s`.
pub fn parse_log(stdout: &[u8]) -> Vec<Commit> {
    stdout
        .split(|b| *b == 0)
        .filter_map(|record| {
            let text = String::from_utf8_lossy(record);
            let fields: Vec<&str> = text.trim_start_matches('\n').splitn(6, '\u{1f}').collect();
            let [sha, parents, author, email, date, subject] = fields[..] else {
                return None;
            };
            Some(Commit {
                sha: sha.to_string(),
                parents: parents.split_whitespace().map(str::to_string).collect(),
                author: author.to_string(),
                email: email.to_string(),
                date: date.to_string(),
                subject: subject.to_string(),
            })
        })
        .collect()
}

/// Operation `log`.
pub fn log(input: LogInput) -> Result<LogOutput, PluginError> {
    let count = input.max_count.unwrap_or(LOG_DEFAULT);
    if count == 0 || count > LOG_MAX {
        return Err(PluginError::invalid_input(format!(
            "`max_count` must be in 1..={LOG_MAX}"
        )));
    }
    let mut command = git(&input.path, None).args([
        "log".to_string(),
        "-z".to_string(),
        format!("--max-count={count}"),
        "--format=%H%x1f%P%x1f%an%x1f%ae%x1f%aI%x1f%s".to_string(),
    ]);
    if let Some(rev) = &input.rev {
        check_arg("rev", rev)?;
        command = command.arg(rev.as_str());
    }
    let out = command.arg("--").output()?;
    if out.timed_out {
        return Err(PluginError::new(
            "timeout",
            "git log ran past its time limit",
        ));
    }
    if !out.success() {
        // A repository without commits has no log, which is not an error.
        if input.rev.is_none() && out.stderr_lossy().contains("does not have any commits") {
            return Ok(LogOutput {
                commits: Vec::new(),
            });
        }
        return Err(git_error("log", &out));
    }
    Ok(LogOutput {
        commits: parse_log(&out.stdout),
    })
}

/// The `git` adapter.
pub struct Git;

impl Adapter for Git {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "git",
            env!("CARGO_PKG_VERSION"),
            "Clones, inspects and commits git repositories inside the sandbox",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add(
            "clone",
            "Clones a repository git in the sandbox can reach (a workspace path, file://, or the network if allowed)",
            clone,
        )
        .non_destructive();
        ops.add(
            "status",
            "Branch, head, upstream and changed paths of a repository",
            status,
        )
        .read_only();
        ops.add(
            "diff",
            "Changed files with line counts, and the unified diff (work tree, or staged)",
            diff,
        )
        .read_only();
        ops.add(
            "commit",
            "Stages (all changes by default, or `paths`) and commits; author from the input, the repository, else Wharf",
            commit,
        )
        .non_destructive();
        ops.add("log", "Commits, newest first", log).read_only();
    }
}

wharf_plugin_sdk::export_adapter!(Git);

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::{describe, invoke};
    use wharf_plugin_sdk::serde_json;

    use super::*;

    #[test]
    fn describes_five_operations() {
        let d = describe::<Git>();
        assert_eq!(d.info.capability, "git");
        let names: Vec<_> = d.operations.iter().map(|op| op.name.as_str()).collect();
        assert_eq!(names, ["clone", "status", "diff", "commit", "log"]);
        for op in &d.operations {
            let output: serde_json::Value = serde_json::from_str(&op.output_schema).unwrap();
            assert_eq!(output["type"], "object", "{}", op.name);
        }
    }

    #[test]
    fn refuses_option_injection_and_escapes() {
        for (op, json, code) in [
            (
                "clone",
                r#"{"url": "--upload-pack=touch x"}"#,
                "invalid_input",
            ),
            (
                "clone",
                r#"{"url": "a.git", "path": "../x"}"#,
                "invalid_path",
            ),
            (
                "clone",
                r#"{"url": "a.git", "path": "/tmp/x"}"#,
                "invalid_path",
            ),
            ("clone", r#"{"url": "/"}"#, "invalid_input"),
            ("log", r#"{"rev": "--output=x"}"#, "invalid_input"),
            ("log", r#"{"max_count": 0}"#, "invalid_input"),
            ("diff", r#"{"paths": ["-x"]}"#, "invalid_input"),
            ("commit", r#"{"message": " "}"#, "invalid_input"),
        ] {
            let err = invoke::<Git>(op, json).unwrap_err();
            assert_eq!(err.code, code, "{op} {json}: {err}");
        }
    }

    #[test]
    fn clone_dir_follows_git() {
        for (url, dir) in [
            ("origin.git", Some("origin")),
            ("file:///workspace/origin.git/", Some("origin")),
            ("https://example.com/a/repo", Some("repo")),
            ("git@host:team/project.git", Some("project")),
            ("repo/.git", Some("repo")),
            ("/", None),
        ] {
            assert_eq!(default_clone_dir(url).as_deref(), dir, "{url}");
        }
    }

    #[test]
    fn parses_porcelain_numstat_and_log() {
        let status = parse_status(
            b"# branch.oid abc\0# branch.head main\0# branch.upstream origin/main\0# branch.ab +1 -2\0\
              1 .M N... 100644 100644 100644 h1 h2 a b.txt\0\
              2 R. N... 100644 100644 100644 h1 h2 R100 new.txt\0old.txt\0? u.txt\0",
        );
        assert_eq!(status.branch.as_deref(), Some("main"));
        assert_eq!(status.head.as_deref(), Some("abc"));
        assert_eq!((status.ahead, status.behind), (Some(1), Some(2)));
        assert!(!status.clean);
        assert_eq!(status.changes.len(), 3);
        assert_eq!(status.changes[0].path, "a b.txt");
        assert_eq!(status.changes[0].worktree, "M");
        assert_eq!(status.changes[1].orig_path.as_deref(), Some("old.txt"));
        assert_eq!(status.changes[2].index, "?");
        let initial = parse_status(b"# branch.oid (initial)\0# branch.head main\0");
        assert!(initial.clean && initial.head.is_none());

        let files = parse_numstat(b"1\t2\ta.txt\0-\t-\tbin\x000\t0\t\0old\0new\0");
        assert_eq!(files.len(), 3);
        assert_eq!(files[1].added, None);
        assert_eq!(files[2].path, "new");

        let log = parse_log(b"s1\x1fp1 p2\x1fAnn\x1fa@x\x1f2026-01-01T00:00:00+00:00\x1fHello\0\ns2\x1f\x1fB\x1fb@x\x1fd\x1fFirst\0");
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].parents, ["p1", "p2"]);
        assert_eq!(log[1].subject, "First");
        assert!(log[1].parents.is_empty());
    }
}
