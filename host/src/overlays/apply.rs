//! Applying and reverting overlays on a directory tree, all or nothing.
//!
//! Every file an overlay touches is read once into memory (never through a symbolic link,
//! at most [`MAX_TREE_FILE_BYTES`]); every patch of every selected overlay is applied there
//! first (the dry run); only when all apply is anything written, each file through a
//! temporary file renamed into place, and a failed write puts back what was already written.
//!
//! An overlay counts as already applied when its reverse applies cleanly to the tree (every
//! reversed hunk finds its lines, every added file is there with the same content): it is then
//! reported and left alone, so applying twice never duplicates a change. Reverting is the
//! mirror image: an overlay whose forward patch applies cleanly is not applied and is left
//! alone; one whose reverse applies is undone.
//!
//! Patches are parsed and applied by `diffy` (in-process, exact context lines, a hunk may move
//! from its line number like GNU patch without fuzz, hunks reported by index). The `git apply`
//! CLI does the same job, but needs git on the host, reports the failing line rather than the
//! hunk, and run inside a subdirectory of a repository it silently skips paths outside it;
//! parsing in-process also lets the pack loader validate every path before anything applies.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::Selected;
use super::load::{Change, parse_patch};
use crate::error::{ErrorCode, WharfError, WharfResult};

/// Largest file of the tree an overlay may patch (the tree is the client's repository).
pub const MAX_TREE_FILE_BYTES: u64 = 16 << 20;

/// What happened to one overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Applied,
    /// Its changes were already in the tree: nothing was written.
    AlreadyApplied,
    Reverted,
    /// Revert: its changes were not in the tree: nothing was written.
    NotApplied,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    pub pack: String,
    pub pack_version: String,
    pub overlay: String,
    pub action: Action,
    /// The tree paths it changed (empty when nothing was written).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Apply,
    Revert,
}

/// Applies (or reverts) `selected` in order on the tree at `root`. With `dry_run`, checks and
/// reports without writing. Any overlay that neither applies nor is already applied fails the
/// whole call with `overlay_conflict` and the tree is as it was. Blocking.
pub fn run(
    root: &Path,
    selected: &[Selected],
    direction: Direction,
    dry_run: bool,
) -> WharfResult<Vec<Outcome>> {
    let root = root
        .canonicalize()
        .map_err(|err| WharfError::validation(format!("tree {}: {err}", root.display())))?;
    if !root.is_dir() {
        return Err(WharfError::validation(format!(
            "tree {} is not a directory",
            root.display()
        )));
    }
    let mut tree = Tree::new(root);
    let mut outcomes = Vec::new();
    // Reverting undoes the last overlay first.
    let order: Vec<&Selected> = match direction {
        Direction::Apply => selected.iter().collect(),
        Direction::Revert => selected.iter().rev().collect(),
    };
    for chosen in order {
        for path in chosen.overlay.paths() {
            tree.load(&path)?;
        }
        let mut undone = tree.clone();
        let undo = backward(&mut undone, chosen);
        let action = match (direction, undo) {
            (Direction::Apply, Ok(())) => Action::AlreadyApplied,
            (Direction::Apply, Err(_)) => {
                let mut done = tree.clone();
                forward(&mut done, chosen)?;
                tree = done;
                Action::Applied
            }
            (Direction::Revert, Ok(())) => {
                tree = undone;
                Action::Reverted
            }
            (Direction::Revert, Err(undo)) => {
                // Not undoable: fine when it was never applied, a conflict otherwise.
                let mut done = tree.clone();
                if forward(&mut done, chosen).is_err() {
                    return Err(undo);
                }
                Action::NotApplied
            }
        };
        let files = if matches!(action, Action::Applied | Action::Reverted) {
            chosen.overlay.paths()
        } else {
            Vec::new()
        };
        outcomes.push(Outcome {
            pack: chosen.pack.clone(),
            pack_version: chosen.pack_version.clone(),
            overlay: chosen.overlay.id.clone(),
            action,
            files,
        });
    }
    if !dry_run {
        tree.write()?;
    }
    if direction == Direction::Revert {
        outcomes.reverse();
    }
    Ok(outcomes)
}

fn conflict(chosen: &Selected, message: String) -> WharfError {
    WharfError::new(
        ErrorCode::OverlayConflict,
        format!("overlay {}: {message}", chosen.name()),
    )
}

/// Applies one overlay to the in-memory tree.
fn forward(tree: &mut Tree, chosen: &Selected) -> WharfResult<()> {
    for patch in &chosen.overlay.patches {
        let changes = parse_patch(&patch.text)
            .map_err(|why| conflict(chosen, format!("patch {}: {why}", patch.name)))?;
        for change in changes {
            let at = |what: String| conflict(chosen, format!("patch {}: {what}", patch.name));
            let path = change.path().to_string();
            let current = tree.get(&path)?;
            let next = match (&change, current) {
                (Change::Modify(_, p), Some(content)) => Some(hunks(p, content, &path, &at)?),
                (Change::Delete(_, p), Some(content)) => {
                    if !hunks(p, content, &path, &at)?.is_empty() {
                        return Err(at(format!(
                            "{path}: the patch deletes the file, but it holds more than the patch removes"
                        )));
                    }
                    None
                }
                (Change::Create(_, p), None) => Some(hunks(p, b"", &path, &at)?),
                (Change::Create(..), Some(_)) => {
                    return Err(at(format!(
                        "{path}: creates the file, but it already exists"
                    )));
                }
                (Change::Modify(..) | Change::Delete(..), None) => {
                    return Err(at(format!("{path}: the file does not exist")));
                }
            };
            tree.set(&path, next);
        }
    }
    for added in &chosen.overlay.files {
        if tree.get(&added.path)?.is_some() {
            return Err(conflict(
                chosen,
                format!("adds {}, but the tree already has that file", added.path),
            ));
        }
        tree.set(&added.path, Some(added.content.clone()));
    }
    Ok(())
}

/// Undoes one overlay in the in-memory tree; fails unless every change of it is there.
fn backward(tree: &mut Tree, chosen: &Selected) -> WharfResult<()> {
    for added in chosen.overlay.files.iter().rev() {
        match tree.get(&added.path)? {
            Some(content) if content == added.content.as_slice() => tree.set(&added.path, None),
            Some(_) => {
                return Err(conflict(
                    chosen,
                    format!("{} differs from the file the overlay adds", added.path),
                ));
            }
            None => {
                return Err(conflict(
                    chosen,
                    format!("{} (added by the overlay) is missing", added.path),
                ));
            }
        }
    }
    for patch in chosen.overlay.patches.iter().rev() {
        let changes = parse_patch(&patch.text)
            .map_err(|why| conflict(chosen, format!("patch {}: {why}", patch.name)))?;
        for change in changes.iter().rev() {
            let at =
                |what: String| conflict(chosen, format!("reverting patch {}: {what}", patch.name));
            let path = change.path().to_string();
            let current = tree.get(&path)?;
            let next = match (change, current) {
                (Change::Modify(_, p), Some(content)) => {
                    Some(hunks(&p.reverse(), content, &path, &at)?)
                }
                (Change::Create(_, p), Some(content)) => {
                    if !hunks(&p.reverse(), content, &path, &at)?.is_empty() {
                        return Err(at(format!(
                            "{path}: the patch created it, but it now holds more than the patch added"
                        )));
                    }
                    None
                }
                (Change::Delete(_, p), None) => Some(hunks(&p.reverse(), b"", &path, &at)?),
                (Change::Delete(..), Some(_)) => {
                    return Err(at(format!("{path}: the patch deletes it, but it is there")));
                }
                (Change::Modify(..) | Change::Create(..), None) => {
                    return Err(at(format!("{path}: the file does not exist")));
                }
            };
            tree.set(&path, next);
        }
    }
    Ok(())
}

/// Applies every hunk of `patch` to `content`; a hunk that finds no place names itself.
fn hunks(
    patch: &diffy::Patch<'_, [u8]>,
    content: &[u8],
    path: &str,
    at: &dyn Fn(String) -> WharfError,
) -> WharfResult<Vec<u8>> {
    diffy::apply_bytes(content, patch).map_err(|err| {
        // diffy numbers hunks from 1 in its message ("error applying hunk #2").
        let index: usize = err
            .to_string()
            .rsplit('#')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let header = patch
            .hunks()
            .get(index.saturating_sub(1))
            .map(|h| {
                let (old, new) = (h.old_range(), h.new_range());
                format!(
                    " (@@ -{},{} +{},{} @@)",
                    old.start(),
                    old.len(),
                    new.start(),
                    new.len()
                )
            })
            .unwrap_or_default();
        at(format!(
            "{path}: hunk {index} of {}{header} does not apply",
            patch.hunks().len()
        ))
    })
}

/// The files an overlay run touches: what was on disk, and what should be.
#[derive(Clone)]
struct Tree {
    root: PathBuf,
    files: BTreeMap<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    original: Option<Vec<u8>>,
    current: Option<Vec<u8>>,
    /// Permission bits of the original file.
    mode: Option<u32>,
}

impl Tree {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            files: BTreeMap::new(),
        }
    }

    /// Reads `path` from disk once, refusing links and anything but regular files.
    fn load(&mut self, path: &str) -> WharfResult<()> {
        if self.files.contains_key(path) {
            return Ok(());
        }
        let (original, mode) = match resolve(&self.root, path)? {
            Some(file) => {
                let meta = std::fs::symlink_metadata(&file).map_err(|err| io(path, err))?;
                if meta.len() > MAX_TREE_FILE_BYTES {
                    return Err(tree_refusal(format!(
                        "{path} is larger than {} MiB; overlays patch source files",
                        MAX_TREE_FILE_BYTES >> 20
                    )));
                }
                let bytes = std::fs::read(&file).map_err(|err| io(path, err))?;
                (Some(bytes), Some(meta.permissions().mode() & 0o7777))
            }
            None => (None, None),
        };
        self.files.insert(
            path.to_string(),
            Entry {
                current: original.clone(),
                original,
                mode,
            },
        );
        Ok(())
    }

    fn get(&mut self, path: &str) -> WharfResult<Option<&[u8]>> {
        self.load(path)?;
        Ok(self.files[path].current.as_deref())
    }

    fn set(&mut self, path: &str, content: Option<Vec<u8>>) {
        if let Some(entry) = self.files.get_mut(path) {
            entry.current = content;
        }
    }

    /// Writes every changed file; on a failure, puts back what it already wrote.
    fn write(&self) -> WharfResult<()> {
        let changed: Vec<(&String, &Entry)> = self
            .files
            .iter()
            .filter(|(_, e)| e.current != e.original)
            .collect();
        let mut written: Vec<(&String, &Entry)> = Vec::new();
        for (path, entry) in changed {
            if let Err(err) = self.put(path, entry.current.as_deref(), entry.mode) {
                for (path, entry) in written.into_iter().rev() {
                    if let Err(undo) = self.put(path, entry.original.as_deref(), entry.mode) {
                        tracing::error!(%path, error = %undo.message, "overlay: could not put a file back");
                    }
                }
                return Err(err);
            }
            written.push((path, entry));
        }
        Ok(())
    }

    /// Makes `path` hold `content` (or not exist).
    fn put(&self, path: &str, content: Option<&[u8]>, mode: Option<u32>) -> WharfResult<()> {
        let file = self.root.join(path);
        match content {
            None => {
                if resolve(&self.root, path)?.is_some() {
                    std::fs::remove_file(&file).map_err(|err| io(path, err))?;
                    self.prune_empty_parents(&file);
                }
                Ok(())
            }
            Some(bytes) => {
                let parent = file.parent().expect("a tree path has a parent");
                make_dirs(&self.root, parent, path)?;
                // Re-check: nothing on the way may have become a link since it was read.
                resolve(&self.root, path)?;
                let name = file.file_name().expect("a file name").to_string_lossy();
                let staging = parent.join(format!(".{name}.wharf-overlay-{}", std::process::id()));
                let result = (|| {
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&staging)?;
                    out.write_all(bytes)?;
                    out.sync_all()?;
                    std::fs::set_permissions(
                        &staging,
                        std::fs::Permissions::from_mode(mode.unwrap_or(0o644)),
                    )?;
                    std::fs::rename(&staging, &file)
                })();
                if let Err(err) = result {
                    let _ = std::fs::remove_file(&staging);
                    return Err(io(path, err));
                }
                Ok(())
            }
        }
    }

    /// Directories a revert left empty go too (git does not keep empty directories either).
    fn prune_empty_parents(&self, file: &Path) {
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d == self.root || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// `root/path` when it is a regular file, `None` when it does not exist. A symbolic link or
/// a non-directory on the way, or a final entry that is not a regular file, is refused: an
/// overlay never reads or writes outside the tree through a link the tree holds.
fn resolve(root: &Path, path: &str) -> WharfResult<Option<PathBuf>> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = Path::new(path).components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(tree_refusal(format!("{path} is not a plain relative path")));
        };
        at.push(name);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io(path, err)),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(tree_refusal(format!(
                "{path}: {} is a symbolic link in the tree; overlays never write through links",
                at.strip_prefix(root).unwrap_or(&at).display()
            )));
        }
        if !last && !meta.is_dir() {
            return Err(tree_refusal(format!(
                "{path}: {} is not a directory",
                at.strip_prefix(root).unwrap_or(&at).display()
            )));
        }
        if last && !meta.is_file() {
            return Err(tree_refusal(format!("{path} is not a regular file")));
        }
    }
    Ok(Some(at))
}

/// Creates the missing directories from `root` down to `dir`, refusing links on the way.
fn make_dirs(root: &Path, dir: &Path, shown: &str) -> WharfResult<()> {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() && !meta.file_type().is_symlink() => {}
            Ok(_) => {
                return Err(tree_refusal(format!(
                    "{shown}: {} is a link or a file, not a directory",
                    at.strip_prefix(root).unwrap_or(&at).display()
                )));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|err| io(shown, err))?;
            }
            Err(err) => return Err(io(shown, err)),
        }
    }
    Ok(())
}

fn tree_refusal(message: String) -> WharfError {
    WharfError::new(ErrorCode::OverlayConflict, message)
}

fn io(path: &str, err: std::io::Error) -> WharfError {
    WharfError::internal(format!("overlay: {path}: {err}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::overlays::{AddedFile, Overlay, PatchFile};

    const APP: &str = "import os\n\ndef route(channel):\n    return \"responses\"\n\ndef main():\n    print(route(os.environ.get(\"CHANNEL\")))\n";

    const FIX: &str = "diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -2,5 +2,5 @@\n \n def route(channel):\n-    return \"responses\"\n+    return \"chat_completions\"\n \n def main():\n";

    /// Touches a second file; its hunk conflicts when `lib.py` was changed.
    const LIB: &str = "diff --git a/lib.py b/lib.py\n--- a/lib.py\n+++ b/lib.py\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n";

    fn selected(id: &str, patches: &[(&str, &str)], files: &[(&str, &str)]) -> Selected {
        let patches = patches
            .iter()
            .map(|(name, text)| PatchFile {
                name: name.to_string(),
                text: text.as_bytes().to_vec(),
                files: parse_patch(text.as_bytes())
                    .unwrap()
                    .iter()
                    .map(|c| c.path().to_string())
                    .collect(),
            })
            .collect();
        Selected {
            pack: "pack".into(),
            pack_version: "1.0.0".into(),
            overlay: Arc::new(Overlay {
                id: id.into(),
                target: "app".into(),
                versions: "*".parse().unwrap(),
                description: String::new(),
                patches,
                files: files
                    .iter()
                    .map(|(path, content)| AddedFile {
                        path: path.to_string(),
                        content: content.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
        }
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), APP).unwrap();
        std::fs::write(dir.path().join("lib.py"), "one\ntwo\nthree\n").unwrap();
        dir
    }

    fn read(dir: &Path, rel: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(rel)).ok()
    }

    fn snapshot(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                if path.is_dir() {
                    stack.push(path);
                    out.push((rel, "<dir>".into()));
                } else {
                    out.push((rel, std::fs::read_to_string(&path).unwrap_or_default()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn applies_then_detects_it_then_reverts() {
        let dir = tree();
        let fix = selected(
            "fix",
            &[("0001.patch", FIX), ("0002.patch", LIB)],
            &[("docs/overlays/NOTE", "patched by fix\n")],
        );
        let before = snapshot(dir.path());

        let dry = run(
            dir.path(),
            std::slice::from_ref(&fix),
            Direction::Apply,
            true,
        )
        .unwrap();
        assert_eq!(dry[0].action, Action::Applied);
        assert_eq!(snapshot(dir.path()), before, "a dry run writes nothing");

        let done = run(
            dir.path(),
            std::slice::from_ref(&fix),
            Direction::Apply,
            false,
        )
        .unwrap();
        assert_eq!(done[0].action, Action::Applied);
        assert_eq!(done[0].files, ["app.py", "lib.py", "docs/overlays/NOTE"]);
        assert!(
            read(dir.path(), "app.py")
                .unwrap()
                .contains("\"chat_completions\"")
        );
        assert_eq!(read(dir.path(), "lib.py").unwrap(), "one\nTWO\nthree\n");
        assert_eq!(
            read(dir.path(), "docs/overlays/NOTE").unwrap(),
            "patched by fix\n"
        );
        let applied = snapshot(dir.path());

        // Again: detected, nothing duplicated or written.
        let again = run(
            dir.path(),
            std::slice::from_ref(&fix),
            Direction::Apply,
            false,
        )
        .unwrap();
        assert_eq!(again[0].action, Action::AlreadyApplied);
        assert!(again[0].files.is_empty());
        assert_eq!(snapshot(dir.path()), applied);

        let reverted = run(
            dir.path(),
            std::slice::from_ref(&fix),
            Direction::Revert,
            false,
        )
        .unwrap();
        assert_eq!(reverted[0].action, Action::Reverted);
        assert_eq!(
            snapshot(dir.path()),
            before,
            "revert restores the tree exactly"
        );
        let twice = run(dir.path(), &[fix], Direction::Revert, false).unwrap();
        assert_eq!(twice[0].action, Action::NotApplied);
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn a_conflict_names_file_and_hunk_and_writes_nothing() {
        let dir = tree();
        std::fs::write(
            dir.path().join("lib.py"),
            "one\ntwo, changed upstream\nthree\n",
        )
        .unwrap();
        let before = snapshot(dir.path());
        // The first overlay applies; the second's second patch conflicts: nothing at all is
        // written, not even the first overlay.
        let first = selected("first", &[("0001.patch", FIX)], &[("NOTE", "x\n")]);
        let second = selected(
            "second",
            &[
                ("0001.patch", FIX.replace("chat_completions", "x").as_str()),
                ("0002.patch", LIB),
            ],
            &[],
        );
        let err = run(dir.path(), &[first, second], Direction::Apply, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::OverlayConflict);
        // The second overlay's first patch also conflicts once the first overlay changed the
        // line: the error names that one, the first that fails.
        assert!(
            err.message.contains("overlay pack/second"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("app.py: hunk 1 of 1 (@@ -2,5 +2,5 @@) does not apply"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(dir.path()), before);

        let only_lib = selected("lib", &[("0001.patch", FIX), ("0002.patch", LIB)], &[]);
        let err = run(dir.path(), &[only_lib], Direction::Apply, false).unwrap_err();
        assert!(
            err.message
                .contains("patch 0002.patch: lib.py: hunk 1 of 1"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(dir.path()), before, "app.py is not half-patched");
    }

    #[test]
    fn creates_and_deletes_files() {
        let dir = tree();
        let create = "diff --git a/new/mod.py b/new/mod.py\nnew file mode 100644\n--- /dev/null\n+++ b/new/mod.py\n@@ -0,0 +1,2 @@\n+x = 1\n+y = 2\n";
        let delete = "diff --git a/lib.py b/lib.py\ndeleted file mode 100644\n--- a/lib.py\n+++ /dev/null\n@@ -1,3 +0,0 @@\n-one\n-two\n-three\n";
        let before = snapshot(dir.path());
        let overlay = selected("cd", &[("1.patch", create), ("2.patch", delete)], &[]);
        run(
            dir.path(),
            std::slice::from_ref(&overlay),
            Direction::Apply,
            false,
        )
        .unwrap();
        assert_eq!(read(dir.path(), "new/mod.py").unwrap(), "x = 1\ny = 2\n");
        assert!(read(dir.path(), "lib.py").is_none());
        assert_eq!(
            run(
                dir.path(),
                std::slice::from_ref(&overlay),
                Direction::Apply,
                false
            )
            .unwrap()[0]
                .action,
            Action::AlreadyApplied
        );
        run(dir.path(), &[overlay], Direction::Revert, false).unwrap();
        assert_eq!(
            snapshot(dir.path()),
            before,
            "the created directory went too"
        );
    }

    #[test]
    fn an_added_file_that_exists_with_other_content_conflicts() {
        let dir = tree();
        std::fs::write(dir.path().join("NOTE"), "mine\n").unwrap();
        let overlay = selected("note", &[], &[("NOTE", "theirs\n")]);
        let err = run(dir.path(), &[overlay], Direction::Apply, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::OverlayConflict);
        assert_eq!(read(dir.path(), "NOTE").unwrap(), "mine\n");
    }

    /// A repository that holds a link where the overlay writes must not make the host write
    /// (or read) outside the tree.
    #[test]
    fn never_writes_through_a_link_in_the_tree() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("app.py"), APP).unwrap();
        std::fs::create_dir(outside.path().join("docs")).unwrap();
        let dir = tree();
        std::fs::remove_file(dir.path().join("app.py")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("app.py"), dir.path().join("app.py"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("docs"), dir.path().join("docs")).unwrap();

        let patch = selected("fix", &[("0001.patch", FIX)], &[]);
        let err = run(dir.path(), &[patch], Direction::Apply, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::OverlayConflict);
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        let add = selected("note", &[], &[("docs/NOTE", "x\n")]);
        let err = run(dir.path(), &[add], Direction::Apply, false).unwrap_err();
        assert!(err.message.contains("symbolic link"), "{}", err.message);

        assert_eq!(read(outside.path(), "app.py").unwrap(), APP);
        assert!(read(outside.path(), "docs/NOTE").is_none());
    }
}
