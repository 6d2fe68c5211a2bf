//! The build context of a case: where its Dockerfile is, and the tar sent to the engine.

use std::path::{Component, Path, PathBuf};

use crate::error::{ErrorCode, WharfError, WharfResult};

/// The longest `dockerfile` or `context_dir` accepted.
pub const MAX_REL_PATH_LEN: usize = 512;

/// Checks a path inside the repository given in a request: relative, no `..`, no NUL.
pub fn check_relative(field: &str, path: &str) -> WharfResult<()> {
    let ok = !path.is_empty()
        && path.len() <= MAX_REL_PATH_LEN
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(WharfError::validation(format!(
            "`{field}` must be a relative path inside the repository (1 to {MAX_REL_PATH_LEN} bytes, no `..`)"
        )))
    }
}

/// The context directory and the Dockerfile's path within it, both checked to stay inside
/// the checkout once every symlink is followed.
pub fn resolve(
    checkout: &Path,
    context_dir: Option<&str>,
    dockerfile: Option<&str>,
) -> WharfResult<(PathBuf, String)> {
    let root = std::fs::canonicalize(checkout)
        .map_err(|err| WharfError::internal(format!("checkout: {err}")))?;
    let context = root.join(context_dir.unwrap_or("."));
    let context = std::fs::canonicalize(&context)
        .ok()
        .filter(|c| c.starts_with(&root) && c.is_dir())
        .ok_or_else(|| {
            WharfError::new(
                ErrorCode::DockerfileNotFound,
                format!(
                    "context_dir `{}` is not a directory inside the repository",
                    context_dir.unwrap_or(".")
                ),
            )
        })?;
    let name = dockerfile.unwrap_or("Dockerfile");
    let found = std::fs::canonicalize(context.join(name))
        .ok()
        .filter(|f| f.starts_with(&context) && f.is_file());
    if found.is_none() {
        return Err(WharfError::new(
            ErrorCode::DockerfileNotFound,
            format!(
                "no Dockerfile `{name}` in context `{}` of the repository",
                context_dir.unwrap_or(".")
            ),
        ));
    }
    Ok((context, name.to_string()))
}

/// The context as a tar: files, directories and symlinks (stored as links, never
/// followed), `.git` left out; fails past `max_bytes` of file content.
pub fn context_tar(context: &Path, max_bytes: u64) -> WharfResult<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut total = 0u64;
    add_dir(&mut builder, context, Path::new(""), &mut total, max_bytes)?;
    builder
        .into_inner()
        .map_err(|err| WharfError::internal(format!("build context: {err}")))
}

fn add_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &Path,
    total: &mut u64,
    max_bytes: u64,
) -> WharfResult<()> {
    let io = |err: std::io::Error| WharfError::internal(format!("build context: {err}"));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        let inner = rel.join(&name);
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            builder.append_dir(&inner, &path).map_err(io)?;
            add_dir(builder, &path, &inner, total, max_bytes)?;
        } else if kind.is_file() || kind.is_symlink() {
            if kind.is_file() {
                *total += entry.metadata().map_err(io)?.len();
                if *total > max_bytes {
                    return Err(WharfError::new(
                        ErrorCode::DockerBuildFailed,
                        format!(
                            "the build context is larger than {} MiB ([cases] max_context_mib)",
                            max_bytes >> 20
                        ),
                    ));
                }
            }
            builder.append_path_with_name(&path, &inner).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_must_stay_inside_the_context() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("Dockerfile"), "FROM x").unwrap();
        std::fs::create_dir(repo.path().join("app")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", repo.path().join("app/Dockerfile")).unwrap();
        assert!(resolve(repo.path(), None, None).is_ok());
        assert_eq!(
            resolve(repo.path(), Some("app"), None).unwrap_err().code,
            ErrorCode::DockerfileNotFound
        );
        assert_eq!(
            resolve(repo.path(), None, Some("Nope")).unwrap_err().code,
            ErrorCode::DockerfileNotFound
        );
        assert!(check_relative("context_dir", "../x").is_err());
        assert!(check_relative("context_dir", "/x").is_err());
        check_relative("context_dir", "a/b").unwrap();
    }

    #[test]
    fn the_context_tar_skips_git_and_keeps_links_as_links() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir(repo.path().join(".git")).unwrap();
        std::fs::write(repo.path().join(".git/config"), "x").unwrap();
        std::fs::write(repo.path().join("index.html"), "hi").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", repo.path().join("link")).unwrap();
        let tar = context_tar(repo.path(), 1 << 20).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<(String, bool)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![("index.html".into(), false), ("link".into(), true)]
        );
        assert_eq!(
            context_tar(repo.path(), 1).unwrap_err().code,
            ErrorCode::DockerBuildFailed
        );
    }
}
