//! A generation's data: its declared `data` folders, copied when it loads into a
//! content-addressed directory (`<data_dir>/pack-data/<sha256>/`). Plugins see that copy at
//! `/pack` and the host reads pack profiles from it, so editing or deleting the pack
//! directory never changes what a serving or draining generation reads, and a folder the
//! manifest does not declare is simply not there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::loader::{MAX_PACK_BYTES, content_digest};

/// Staging directories are named `.tmp-…`; a crash may leave some behind.
const STAGING_PREFIX: &str = ".tmp-";

pub struct DataSnapshots {
    root: PathBuf,
    staging: AtomicU64,
}

impl DataSnapshots {
    /// Snapshots live under `root`; staging copies left by a crash are removed.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self {
            root,
            staging: AtomicU64::new(0),
        })
    }

    /// Copies the declared `folders` of `pack_dir` into a snapshot and returns its
    /// directory; `None` when the pack declares no data. The digest is taken from the copy
    /// itself, so a pack edited while it is copied cannot make the name lie. Blocking.
    pub fn snapshot(&self, pack_dir: &Path, folders: &[String]) -> Result<Option<PathBuf>, String> {
        if folders.is_empty() {
            return Ok(None);
        }
        let staging = self.root.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            self.staging.fetch_add(1, Ordering::Relaxed)
        ));
        let copied = copy_folders(pack_dir, folders, &staging).and_then(|()| {
            content_digest(&staging).map_err(|err| format!("data: cannot read the copy: {err}"))
        });
        let digest = match copied {
            Ok(digest) => digest,
            Err(why) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(why);
            }
        };
        let snapshot = self.root.join(&digest);
        if snapshot.is_dir() {
            // Same content as a snapshot already made: share it.
            let _ = std::fs::remove_dir_all(&staging);
        } else if let Err(err) = std::fs::rename(&staging, &snapshot) {
            let _ = std::fs::remove_dir_all(&staging);
            if !snapshot.is_dir() {
                return Err(format!("data: cannot store the snapshot: {err}"));
            }
        }
        Ok(Some(snapshot))
    }

    /// Removes every snapshot that no generation in `live` uses any more.
    pub fn retain(&self, live: &HashSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let staging = entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX);
            if !staging && !live.contains(&path) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Copies each declared folder (validated relative paths) from `pack_dir` to the same
/// place under `to`. Only regular files and directories are copied; a symbolic link or
/// any other kind of file refuses the pack, since it could lead outside it.
fn copy_folders(pack_dir: &Path, folders: &[String], to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|err| format!("data: cannot stage a copy: {err}"))?;
    let mut total = 0u64;
    for folder in folders {
        let mut from = pack_dir.to_path_buf();
        for part in Path::new(folder).components() {
            from.push(part);
            let meta = std::fs::symlink_metadata(&from)
                .map_err(|err| format!("data: declared folder {folder:?} is missing: {err}"))?;
            if meta.file_type().is_symlink() {
                return Err(format!(
                    "data: declared folder {folder:?} is a symbolic link; data folders must be real directories"
                ));
            }
        }
        if !from.is_dir() {
            return Err(format!(
                "data: declared folder {folder:?} is not a directory"
            ));
        }
        copy_tree(&from, &to.join(folder), folder, &mut total)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, shown: &str, total: &mut u64) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|err| format!("data: {shown}: {err}"))?;
    let entries = std::fs::read_dir(from).map_err(|err| format!("data: {shown}: {err}"))?;
    for entry in entries {
        let entry = entry.map_err(|err| format!("data: {shown}: {err}"))?;
        let name = entry.file_name();
        let shown = format!("{shown}/{}", name.to_string_lossy());
        let kind = entry
            .file_type()
            .map_err(|err| format!("data: {shown}: {err}"))?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name), &shown, total)?;
        } else if kind.is_file() {
            *total += std::fs::copy(entry.path(), to.join(&name))
                .map_err(|err| format!("data: {shown}: {err}"))?;
            if *total > MAX_PACK_BYTES {
                return Err(format!(
                    "data: the data folders are larger than {} MiB",
                    MAX_PACK_BYTES >> 20
                ));
            }
        } else {
            return Err(format!(
                "data: {shown} is a symbolic link or special file; data folders may hold only files and directories"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_folders_are_copied_and_content_names_the_snapshot() {
        let pack = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(pack.path().join("assets/deep")).unwrap();
        std::fs::create_dir_all(pack.path().join("secret")).unwrap();
        std::fs::write(pack.path().join("assets/deep/a.txt"), "one").unwrap();
        std::fs::write(pack.path().join("secret/key.txt"), "hidden").unwrap();
        std::fs::write(pack.path().join("pack.toml"), "id = 'x'").unwrap();
        let snapshots = DataSnapshots::new(data.path().join("pack-data")).unwrap();

        let first = snapshots
            .snapshot(pack.path(), &["assets".into()])
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(first.join("assets/deep/a.txt")).unwrap(),
            "one"
        );
        assert!(!first.join("secret").exists() && !first.join("pack.toml").exists());
        // Same content: same snapshot. Other content: another one; the first is untouched.
        let again = snapshots
            .snapshot(pack.path(), &["assets".into()])
            .unwrap()
            .unwrap();
        assert_eq!(first, again);
        std::fs::write(pack.path().join("assets/deep/a.txt"), "two").unwrap();
        let second = snapshots
            .snapshot(pack.path(), &["assets".into()])
            .unwrap()
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_to_string(first.join("assets/deep/a.txt")).unwrap(),
            "one"
        );
        assert_eq!(snapshots.snapshot(pack.path(), &[]).unwrap(), None);

        snapshots.retain(&HashSet::from([second.clone()]));
        assert!(!first.exists() && second.exists());
    }

    #[test]
    fn missing_folders_and_symlinks_are_refused() {
        let pack = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let snapshots = DataSnapshots::new(data.path().to_path_buf()).unwrap();
        let err = snapshots
            .snapshot(pack.path(), &["nope".into()])
            .unwrap_err();
        assert!(err.contains("\"nope\" is missing"), "{err}");

        std::os::unix::fs::symlink("/etc", pack.path().join("etc")).unwrap();
        let err = snapshots
            .snapshot(pack.path(), &["etc".into()])
            .unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");

        std::fs::create_dir(pack.path().join("assets")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", pack.path().join("assets/passwd")).unwrap();
        let err = snapshots
            .snapshot(pack.path(), &["assets".into()])
            .unwrap_err();
        assert!(err.contains("assets/passwd"), "{err}");
        // Nothing half-made is left behind.
        assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);
    }
}
