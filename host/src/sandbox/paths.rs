//! Path safety, layer one: a sandbox path as the API accepts it.
//!
//! Layer two lives in each driver, which resolves the path inside the
//! sandbox root and refuses symlink escapes.

use std::path::{Component, Path, PathBuf};

use crate::error::{ErrorCode, WharfError, WharfResult};

/// The longest file name (one path segment) Linux filesystems take, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest sandbox path, in bytes: the kernel's 4096 less room for the
/// workspace's own location on the host.
pub const MAX_PATH_BYTES: usize = 3072;

/// A path relative to the sandbox workspace: not absolute, no `..`, no NUL,
/// names and the whole within what the filesystem takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath(PathBuf);

impl SandboxPath {
    pub fn parse(raw: &str) -> WharfResult<Self> {
        let invalid = |why: &str| {
            let shown: String = raw.chars().take(64).collect();
            let more = if shown.len() < raw.len() { "..." } else { "" };
            WharfError::new(
                ErrorCode::InvalidPath,
                format!("path {shown:?}{more} {why}"),
            )
        };
        if raw.contains('\0') {
            return Err(invalid("contains NUL"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(invalid(&format!("is longer than {MAX_PATH_BYTES} bytes")));
        }
        if raw.split('/').any(|name| name.len() > MAX_NAME_BYTES) {
            return Err(invalid(&format!(
                "has a name longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        let path = Path::new(raw);
        if path.is_absolute() {
            return Err(invalid(
                "is absolute; paths are relative to the sandbox workspace",
            ));
        }
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(invalid("contains `..`")),
                Component::RootDir | Component::Prefix(_) => return Err(invalid("is absolute")),
            }
        }
        Ok(SandboxPath(clean))
    }

    /// The workspace root itself.
    pub fn root() -> Self {
        SandboxPath(PathBuf::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// Resolves `path` under `root` on the local filesystem, refusing any
/// symlink (at any depth) that leads outside `root`.
///
/// The final component may not exist yet (for writes); its parent must.
pub fn resolve_local(root: &Path, path: &SandboxPath) -> WharfResult<PathBuf> {
    let root = root
        .canonicalize()
        .map_err(|err| WharfError::internal(format!("sandbox root is not accessible: {err}")))?;
    let mut resolved = root.clone();
    let parts: Vec<_> = path.as_path().components().collect();
    for (i, part) in parts.iter().enumerate() {
        resolved.push(part);
        let last = i + 1 == parts.len();
        match resolved.canonicalize() {
            Ok(real) => {
                if !real.starts_with(&root) {
                    return Err(WharfError::new(
                        ErrorCode::InvalidPath,
                        format!(
                            "path {:?} escapes the sandbox through a symlink",
                            path.to_string()
                        ),
                    ));
                }
                resolved = real;
            }
            Err(_) if last => {
                // A dangling symlink as the last part could be followed by a write: refuse it.
                if resolved.symlink_metadata().is_ok() {
                    return Err(WharfError::new(
                        ErrorCode::InvalidPath,
                        format!(
                            "path {:?} is a symlink to nowhere inside the sandbox",
                            path.to_string()
                        ),
                    ));
                }
            }
            Err(_) => {
                return Err(WharfError::new(
                    ErrorCode::FileNotFound,
                    format!(
                        "directory {:?} does not exist",
                        parts[..=i].iter().collect::<PathBuf>().display()
                    ),
                ));
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsafe_paths() {
        for bad in ["/etc/passwd", "../x", "a/../../b", "a\0b"] {
            let err = SandboxPath::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidPath, "{bad:?}");
        }
        assert_eq!(SandboxPath::parse("./a/b").unwrap().to_string(), "a/b");
        let longest_name = "n".repeat(MAX_NAME_BYTES);
        assert!(SandboxPath::parse(&longest_name).is_ok());
        let err = SandboxPath::parse(&format!("{longest_name}é")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath, "{}", err.message);
        assert!(
            err.message.len() < 200,
            "the message shows a prefix: {}",
            err.message
        );
        let deep = format!("{longest_name}/").repeat(MAX_PATH_BYTES / 256 + 1);
        let err = SandboxPath::parse(&deep).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath, "{}", err.message);
        assert!(SandboxPath::parse("").unwrap().is_root());
    }

    #[test]
    fn refuses_symlink_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let err =
            resolve_local(dir.path(), &SandboxPath::parse("etc/passwd").unwrap()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath);
        std::fs::create_dir(dir.path().join("inside")).unwrap();
        std::os::unix::fs::symlink("inside", dir.path().join("alias")).unwrap();
        let ok = resolve_local(dir.path(), &SandboxPath::parse("alias/new.txt").unwrap()).unwrap();
        assert!(ok.ends_with("inside/new.txt"));
    }
}
