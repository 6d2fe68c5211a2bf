//! A generation's data: its declared `data` folders, copied when it loads into a
//! content-addressed directory (`<data_dir>/pack-data/<sha256>/`). Plugins see that copy at
//! `/pack` and the host reads pack profiles from it, so editing or deleting the pack
//! directory never changes what a serving or draining generation reads, and a folder the
//! manifest does not declare is simply not there.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
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
///
/// The walk holds a descriptor of each directory and opens every name relative to it with
/// `O_NOFOLLOW`, then checks what it opened: whoever can write the pack directory cannot swap
/// a checked file or directory for a link between the check and the copy.
fn copy_folders(pack_dir: &Path, folders: &[String], to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|err| format!("data: cannot stage a copy: {err}"))?;
    let root = open_nofollow(None, pack_dir.as_os_str())
        .map_err(|err| format!("data: cannot open the pack directory: {err}"))?;
    let mut total = 0u64;
    for folder in folders {
        let mut dir = root
            .try_clone()
            .map_err(|err| format!("data: {folder}: {err}"))?;
        for part in Path::new(folder).components() {
            dir = match open_nofollow(Some(&dir), part.as_os_str()) {
                Ok(fd) if is_dir(&fd) => fd,
                Ok(_) => {
                    return Err(format!(
                        "data: declared folder {folder:?} is not a directory"
                    ));
                }
                Err(nix::errno::Errno::ELOOP) => {
                    return Err(format!(
                        "data: declared folder {folder:?} is a symbolic link; data folders must be real directories"
                    ));
                }
                Err(err) => {
                    return Err(format!(
                        "data: declared folder {folder:?} is missing: {err}"
                    ));
                }
            };
        }
        copy_tree(dir, &to.join(folder), folder, &mut total)?;
    }
    Ok(())
}

/// Opens `name` (relative to `dir`, or as given) without following a final symbolic link
/// (`ELOOP` for one), and without blocking on a FIFO.
fn open_nofollow(
    dir: Option<&std::os::fd::OwnedFd>,
    name: &std::ffi::OsStr,
) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{AT_FDCWD, OFlag, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    match dir {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => openat(AT_FDCWD, name, flags, Mode::empty()),
    }
}

fn is_dir(fd: &std::os::fd::OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn is_file(fd: &std::os::fd::OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

fn copy_tree(
    from: std::os::fd::OwnedFd,
    to: &Path,
    shown: &str,
    total: &mut u64,
) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|err| format!("data: {shown}: {err}"))?;
    let listing = from
        .try_clone()
        .map_err(|err| format!("data: {shown}: {err}"))?;
    let mut entries =
        nix::dir::Dir::from_fd(listing).map_err(|err| format!("data: {shown}: {err}"))?;
    let mut names = Vec::new();
    for entry in entries.iter() {
        let entry = entry.map_err(|err| format!("data: {shown}: {err}"))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let shown = format!("{shown}/{}", name.to_string_lossy());
        let special = || {
            format!(
                "data: {shown} is a symbolic link or special file; data folders may hold only files and directories"
            )
        };
        let fd = match open_nofollow(Some(&from), &name) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ELOOP) => return Err(special()),
            Err(err) => return Err(format!("data: {shown}: {err}")),
        };
        if is_dir(&fd) {
            copy_tree(fd, &to.join(&name), &shown, total)?;
        } else if is_file(&fd) {
            let mut source = std::fs::File::from(fd);
            let mut target = std::fs::File::create(to.join(&name))
                .map_err(|err| format!("data: {shown}: {err}"))?;
            // Bounded read: a file that grows while copied cannot push past the limit.
            let budget = MAX_PACK_BYTES.saturating_sub(*total) + 1;
            *total += std::io::copy(&mut std::io::Read::take(&mut source, budget), &mut target)
                .map_err(|err| format!("data: {shown}: {err}"))?;
            if *total > MAX_PACK_BYTES {
                return Err(format!(
                    "data: the data folders are larger than {} MiB",
                    MAX_PACK_BYTES >> 20
                ));
            }
        } else {
            return Err(special());
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

    /// A pack author who can write the pack directory swaps a data file for a link to a
    /// host file over and over while the pack loads: no snapshot ever holds the host file.
    #[test]
    fn a_file_swapped_for_a_link_mid_copy_never_brings_the_host_file_in() {
        let pack = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let host_secret = data.path().join("host-secret.txt");
        std::fs::write(&host_secret, "HOST-SECRET").unwrap();
        let assets = pack.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        for i in 0..32 {
            std::fs::write(assets.join(format!("f{i}.txt")), "plain").unwrap();
        }
        let target = assets.join("swapped.txt");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, target, host_secret) = (stop.clone(), target.clone(), host_secret.clone());
            std::thread::spawn(move || {
                let link = target.with_extension("link");
                let file = target.with_extension("file");
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::write(&file, "plain");
                    let _ = std::fs::rename(&file, &target);
                    let _ = std::os::unix::fs::symlink(&host_secret, &link);
                    let _ = std::fs::rename(&link, &target);
                }
            })
        };
        let snapshots = DataSnapshots::new(data.path().join("pack-data")).unwrap();
        for _ in 0..400 {
            if let Ok(Some(snapshot)) = snapshots.snapshot(pack.path(), &["assets".into()]) {
                let copied = std::fs::read_to_string(snapshot.join("assets/swapped.txt"))
                    .unwrap_or_default();
                assert_ne!(copied, "HOST-SECRET", "a host file came in through a link");
                snapshots.retain(&HashSet::new());
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
    }
}
