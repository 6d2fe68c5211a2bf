//! Where a case may clone from, and the shallow clone itself (the `git` CLI).
//!
//! Two kinds of source:
//! - `https://` URLs, under the outbound address rules: for a caller without
//!   [`Reach::Any`] the host must resolve to public addresses only, and git is pinned to the
//!   addresses that were checked (`http.curloptResolve`), so DNS rebinding between the
//!   check and the connection cannot reach a private address; redirects are not followed;
//!   credentials in the URL are refused (they would show in logs and answers).
//! - local paths (absolute, or `file://`): a repository or bare repository on the server's
//!   own disk. Only admin keys may name any path; other keys only paths that resolve
//!   (symlinks followed) under one of `[cases] local_roots`, and never inside the data dir.
//!   A refused path gets the same answer whether or not it exists.
//!
//! git runs with no system or global config, no prompts, only the needed protocol
//! allowed, hooks off, and a deadline (`[cases] clone_timeout_ms`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::outbound::Reach;
use crate::outbound::address::classify;

/// The longest `git_url` and `ref` accepted.
pub const MAX_GIT_URL_LEN: usize = 2048;
pub const MAX_REF_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Https(url::Url),
    Local(PathBuf),
}

fn local_refused() -> WharfError {
    WharfError::new(
        ErrorCode::Forbidden,
        "cloning a local path needs an admin key, or a path under one of `[cases] local_roots` \
         (outside the data dir)",
    )
}

/// Checks `git_url` for a caller and says what it names.
pub fn classify_source(
    git_url: &str,
    admin: bool,
    local_roots: &[PathBuf],
    data_dir: &Path,
) -> WharfResult<Source> {
    if git_url.is_empty() || git_url.len() > MAX_GIT_URL_LEN {
        return Err(WharfError::validation(format!(
            "`git_url` must be 1 to {MAX_GIT_URL_LEN} characters"
        )));
    }
    if git_url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WharfError::validation(
            "`git_url` must not contain whitespace or control characters",
        ));
    }
    let path = if let Some(rest) = git_url.strip_prefix("https://") {
        let url = url::Url::parse(git_url)
            .map_err(|err| WharfError::validation(format!("`git_url` is not a URL: {err}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WharfError::validation(
                "`git_url` must not carry credentials: they would show in logs and answers",
            ));
        }
        if url.fragment().is_some() || url.host_str().is_none_or(str::is_empty) || rest.is_empty() {
            return Err(WharfError::validation(
                "`git_url` must be https://host/path with no fragment",
            ));
        }
        return Ok(Source::Https(url));
    } else if git_url.starts_with("file://") {
        url::Url::parse(git_url)
            .ok()
            .and_then(|url| url.to_file_path().ok())
            .ok_or_else(|| WharfError::validation("`git_url` is not a valid file:// URL"))?
    } else if git_url.starts_with('/') {
        PathBuf::from(git_url)
    } else {
        return Err(WharfError::validation(
            "`git_url` must be an https:// URL, a file:// URL or an absolute local path",
        ));
    };
    let canonical = match std::fs::canonicalize(&path) {
        Ok(canonical) => canonical,
        Err(_) if !admin => return Err(local_refused()),
        Err(err) => {
            return Err(WharfError::validation(format!(
                "`git_url` {}: {err}",
                path.display()
            )));
        }
    };
    if !admin {
        let inside_data = std::fs::canonicalize(data_dir)
            .map(|data| canonical.starts_with(data))
            .unwrap_or(true);
        let under_root = local_roots
            .iter()
            .any(|root| std::fs::canonicalize(root).is_ok_and(|root| canonical.starts_with(root)));
        if inside_data || !under_root {
            return Err(local_refused());
        }
    }
    Ok(Source::Local(canonical))
}

/// Checks a `ref`: a branch, tag or commit name git accepts, never an option.
pub fn check_ref(git_ref: &str) -> WharfResult<()> {
    let ok = !git_ref.is_empty()
        && git_ref.len() <= MAX_REF_LEN
        && !git_ref.starts_with('-')
        && !git_ref.contains("..")
        && !git_ref.contains("@{")
        && !git_ref.ends_with('/')
        && !git_ref.ends_with(".lock")
        && git_ref
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-+@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(WharfError::validation(format!(
            "`ref` must be a branch, tag or commit name: 1 to {MAX_REF_LEN} of A-Z a-z 0-9 . _ / - + @, \
             not starting with `-`, without `..` or `@{{`"
        )))
    }
}

/// Resolves an https source's host and checks every address against `reach`; returns the
/// `host:port:addr,...` pin for `http.curloptResolve` (none for [`Reach::Any`]).
async fn pin_https(url: &url::Url, reach: Reach, timeout: Duration) -> WharfResult<Option<String>> {
    if reach == Reach::Any {
        return Ok(None);
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((bare.as_str(), port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(err)) => {
                return Err(WharfError::new(
                    ErrorCode::GitCloneFailed,
                    format!("cannot resolve {host}: {err}"),
                ));
            }
            Err(_) => {
                return Err(WharfError::new(
                    ErrorCode::GitCloneFailed,
                    format!("resolving {host} timed out"),
                ));
            }
        };
    if addrs.is_empty() {
        return Err(WharfError::new(
            ErrorCode::GitCloneFailed,
            format!("{host} resolves to no address"),
        ));
    }
    for addr in &addrs {
        let class = classify(addr.ip());
        if !class.is_public() {
            return Err(WharfError::new(
                ErrorCode::TargetNotAllowed,
                format!(
                    "{host} resolves to {}, a {class} address: only admin keys may clone from there \
                     unless `[cases] allow_private_git` is on",
                    addr.ip()
                ),
            ));
        }
    }
    let list: Vec<String> = addrs
        .iter()
        .map(|addr| match addr {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        })
        .collect();
    Ok(Some(format!("{bare}:{port}:{}", list.join(","))))
}

/// What a clone printed and how it ended.
pub struct CloneOutput {
    /// git's messages, one per line.
    pub lines: Vec<String>,
    /// The commit checked out.
    pub commit: String,
}

/// Shallow-clones `source` at `git_ref` (the remote's HEAD without one) into `dir`, which
/// must not exist yet.
pub async fn clone(
    source: &Source,
    git_ref: Option<&str>,
    dir: &Path,
    reach: Reach,
    timeout: Duration,
) -> WharfResult<CloneOutput> {
    let started = tokio::time::Instant::now();
    let (remote, pin, file_allowed) = match source {
        Source::Https(url) => (
            url.to_string(),
            pin_https(url, reach, timeout).await?,
            false,
        ),
        Source::Local(path) => (
            url::Url::from_file_path(path)
                .map_err(|_| WharfError::validation("local path is not absolute"))?
                .to_string(),
            None,
            true,
        ),
    };
    std::fs::create_dir_all(dir)
        .map_err(|err| WharfError::internal(format!("creating the checkout dir: {err}")))?;
    let home = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let mut lines = Vec::new();
    let mut config = vec![
        "protocol.allow=never".to_string(),
        "protocol.https.allow=always".to_string(),
        format!(
            "protocol.file.allow={}",
            if file_allowed { "always" } else { "never" }
        ),
        "http.followRedirects=false".to_string(),
        "core.hooksPath=/dev/null".to_string(),
        "advice.detachedHead=false".to_string(),
        "init.defaultBranch=main".to_string(),
    ];
    if let Some(pin) = pin {
        config.push(format!("http.curloptResolve={pin}"));
    }
    let wanted = git_ref.unwrap_or("HEAD");
    let steps: [Vec<&str>; 3] = [
        vec!["init", "-q"],
        vec![
            "fetch",
            "--depth",
            "1",
            "--no-tags",
            "--",
            remote.as_str(),
            wanted,
        ],
        vec!["checkout", "-q", "--detach", "FETCH_HEAD"],
    ];
    for args in steps {
        let remaining = timeout.saturating_sub(started.elapsed());
        let output = run_git(dir, &home, &config, &args, remaining).await?;
        lines.extend(output.text.lines().map(str::to_string));
        if !output.success {
            return Err(clone_error(&output.text, wanted));
        }
    }
    let head = run_git(dir, &home, &config, &["rev-parse", "HEAD"], timeout).await?;
    Ok(CloneOutput {
        lines,
        commit: head.text.trim().to_string(),
    })
}

struct GitOutput {
    success: bool,
    text: String,
}

async fn run_git(
    dir: &Path,
    home: &Path,
    config: &[String],
    args: &[&str],
    timeout: Duration,
) -> WharfResult<GitOutput> {
    let mut command = tokio::process::Command::new("git");
    for entry in config {
        command.arg("-c").arg(entry);
    }
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|err| {
        WharfError::new(ErrorCode::GitCloneFailed, format!("cannot run git: {err}"))
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            Ok(GitOutput {
                success: output.status.success(),
                text,
            })
        }
        Ok(Err(err)) => Err(WharfError::new(
            ErrorCode::GitCloneFailed,
            format!("git failed to run: {err}"),
        )),
        Err(_) => Err(WharfError::new(
            ErrorCode::GitCloneFailed,
            format!(
                "the clone passed its time limit of {} s ([cases] clone_timeout_ms)",
                timeout.as_secs()
            ),
        )
        .with_retriable(false)),
    }
}

/// The error of a failed git command, from what it printed.
fn clone_error(text: &str, wanted: &str) -> WharfError {
    let lower = text.to_lowercase();
    let last: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let said = last.join(" | ");
    if lower.contains("couldn't find remote ref")
        || lower.contains("not our ref")
        || lower.contains("unadvertised object")
        || lower.contains("no such remote ref")
    {
        return WharfError::new(
            ErrorCode::RefNotFound,
            format!("ref `{wanted}` is not in the repository: {said}"),
        );
    }
    let transient = [
        "could not resolve host",
        "failed to connect",
        "connection timed out",
        "connection reset",
        "early eof",
        "rpc failed",
        "temporary failure",
    ]
    .iter()
    .any(|needle| lower.contains(needle));
    WharfError::new(ErrorCode::GitCloneFailed, format!("git: {said}")).with_retriable(transient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_with_credentials_are_refused() {
        let dir = std::env::temp_dir();
        let err = classify_source("https://u:p@example.com/r.git", true, &[], &dir).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(matches!(
            classify_source("https://example.com/r.git", false, &[], &dir),
            Ok(Source::Https(_))
        ));
        for bad in [
            "git@example.com:r.git",
            "-uhttps://x",
            "ssh://h/r",
            "ext::sh -c x",
        ] {
            assert!(classify_source(bad, true, &[], &dir).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_paths_need_admin_or_a_root_outside_the_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let repos = root.path().join("repos");
        let data = root.path().join("data");
        std::fs::create_dir_all(repos.join("app")).unwrap();
        std::fs::create_dir_all(data.join("secret")).unwrap();
        let app = repos.join("app");
        let app = app.to_str().unwrap();
        let secret = data.join("secret");
        let secret = secret.to_str().unwrap();
        // Non-admin: refused without a root, allowed under one.
        assert_eq!(
            classify_source(app, false, &[], &data).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(classify_source(app, false, std::slice::from_ref(&repos), &data).is_ok());
        // The data dir is never a source for a non-admin, even under a configured root.
        assert_eq!(
            classify_source(secret, false, &[root.path().to_path_buf()], &data)
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        // A symlink under the root that points into the data dir does not get through.
        std::os::unix::fs::symlink(data.join("secret"), repos.join("link")).unwrap();
        let link = repos.join("link");
        assert_eq!(
            classify_source(
                link.to_str().unwrap(),
                false,
                std::slice::from_ref(&repos),
                &data
            )
            .unwrap_err()
            .code,
            ErrorCode::Forbidden
        );
        // A missing path is refused the same way (no existence oracle).
        let missing = classify_source("/no/such/path", false, &[], &data).unwrap_err();
        assert_eq!(missing.code, ErrorCode::Forbidden);
        // Admin keys may clone any path.
        assert!(classify_source(secret, true, &[], &data).is_ok());
    }

    #[test]
    fn refs_are_names_never_options() {
        for good in ["main", "v0.1.129", "feature/x", "0123abcd"] {
            check_ref(good).unwrap();
        }
        for bad in ["", "-c", "a..b", "x@{1}", "a b", "a;b", "dir/"] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
    }
}
