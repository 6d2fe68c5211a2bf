//! Reading a pack's `overlays/<id>/overlay.toml` files and everything they name, and
//! validating them: a bad overlay fails the whole pack load (like a bad `pack.toml`), with
//! the file and field in the reason.

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::sync::Arc;

use diffy::patch_set::{FileMode, FileOperation, ParseOptions, PatchSet};
use semver::VersionReq;
use serde::Deserialize;

use super::{AddedFile, Overlay, PatchFile};
use crate::packs::manifest::{check_relative, valid_id};

/// The data folder overlays live in, and the file that describes one.
pub const OVERLAYS_DIR: &str = "overlays";
pub const OVERLAY_FILE: &str = "overlay.toml";

/// Bounds on what a pack may carry (operators install packs, but nothing is unbounded).
pub const MAX_OVERLAYS_PER_PACK: usize = 64;
pub const MAX_PATCHES: usize = 64;
pub const MAX_FILES: usize = 64;
pub const MAX_PATCH_BYTES: u64 = 1 << 20;
pub const MAX_ADDED_FILE_BYTES: u64 = 1 << 20;
const MAX_DESCRIPTION_CHARS: usize = 1000;
const MAX_TREE_PATH_BYTES: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    target: String,
    versions: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    patches: Vec<String>,
    #[serde(default)]
    files: Vec<RawAddedFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddedFile {
    /// Where the file goes in the target tree.
    path: String,
    /// The file's content, inside the overlay folder.
    source: String,
}

/// The overlays of a pack: `<data_root>/overlays/*/overlay.toml`, sorted by id.
///
/// `pack_dir` is the pack as dropped, `data` its declared data folders and `data_root` the
/// copy the generation reads (for the CLI, the pack dir itself). A pack that has an
/// `overlays/` folder without declaring it is refused: its overlays would silently be
/// missing otherwise. Blocking.
pub fn load_overlays(
    pack_dir: &Path,
    data: &[String],
    data_root: Option<&Path>,
) -> Result<Vec<Arc<Overlay>>, String> {
    let declared = data.iter().any(|folder| {
        let parts: Vec<_> = Path::new(folder)
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        parts == [Component::Normal(std::ffi::OsStr::new(OVERLAYS_DIR))]
    });
    if !declared {
        if std::fs::symlink_metadata(pack_dir.join(OVERLAYS_DIR)).is_ok() {
            return Err(format!(
                "{OVERLAYS_DIR}/: the pack has an overlays folder but does not declare it; add \"{OVERLAYS_DIR}\" to `data` in pack.toml"
            ));
        }
        return Ok(Vec::new());
    }
    let Some(root) = data_root else {
        return Ok(Vec::new());
    };
    let folder = root.join(OVERLAYS_DIR);
    let entries = std::fs::read_dir(&folder).map_err(|err| format!("{OVERLAYS_DIR}/: {err}"))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("{OVERLAYS_DIR}/: {err}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|err| format!("{OVERLAYS_DIR}/{name}: {err}"))?;
        if kind.is_dir() {
            dirs.push(name);
        } else if kind.is_symlink() {
            return Err(format!(
                "{OVERLAYS_DIR}/{name} is a symbolic link; overlays must be real directories"
            ));
        }
        // Plain files beside the overlay folders (a README) are not overlays.
    }
    if dirs.len() > MAX_OVERLAYS_PER_PACK {
        return Err(format!(
            "{OVERLAYS_DIR}/: {} overlays; a pack may carry at most {MAX_OVERLAYS_PER_PACK}",
            dirs.len()
        ));
    }
    dirs.sort();
    dirs.iter()
        .map(|id| load_overlay(&folder.join(id), id).map(Arc::new))
        .collect()
}

/// One overlay folder; `id` is its directory name.
pub fn load_overlay(dir: &Path, id: &str) -> Result<Overlay, String> {
    let file = format!("{OVERLAYS_DIR}/{id}/{OVERLAY_FILE}");
    let at = |field: &str, message: String| {
        if field.is_empty() {
            format!("{file}: {message}")
        } else {
            format!("{file}: {field}: {message}")
        }
    };
    if !valid_id(id) {
        return Err(format!(
            "{OVERLAYS_DIR}/{id}: the folder name is the overlay id and must be 2-64 chars of a-z, 0-9 and '-', starting with a letter"
        ));
    }
    let text = read_regular(&dir.join(OVERLAY_FILE), 64 << 10)
        .map_err(|why| at("", why))
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| at("", "is not UTF-8".into())))?;
    let raw: RawOverlay = toml::from_str(&text).map_err(|err| {
        at(
            "",
            format!(
                "invalid TOML: {}",
                err.to_string().trim().replace('\n', " ")
            ),
        )
    })?;
    if !valid_target(&raw.target) {
        return Err(at(
            "target",
            format!(
                "{:?} must be 1-64 chars of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
                raw.target
            ),
        ));
    }
    let versions = VersionReq::parse(&raw.versions).map_err(|err| {
        at(
            "versions",
            format!("{:?} is not a semver requirement: {err}", raw.versions),
        )
    })?;
    if raw.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(at(
            "description",
            format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if raw.patches.is_empty() && raw.files.is_empty() {
        return Err(at(
            "patches",
            "an overlay needs at least one patch or added file".into(),
        ));
    }
    if raw.patches.len() > MAX_PATCHES || raw.files.len() > MAX_FILES {
        return Err(at(
            "",
            format!("at most {MAX_PATCHES} patches and {MAX_FILES} added files"),
        ));
    }
    let mut patches = Vec::new();
    for (i, name) in raw.patches.iter().enumerate() {
        let field = format!("patches[{i}]");
        check_relative(name).map_err(|why| at(&field, why))?;
        let bytes = read_regular(&dir.join(name), MAX_PATCH_BYTES)
            .map_err(|why| at(&field, format!("{name}: {why}")))?;
        let files = patch_targets(&bytes).map_err(|why| at(&field, format!("{name}: {why}")))?;
        patches.push(PatchFile {
            name: name.clone(),
            text: bytes,
            files,
        });
    }
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, added) in raw.files.iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        check_tree_path(&added.path).map_err(|why| at(&field("path"), why))?;
        if !seen.insert(added.path.clone()) {
            return Err(at(
                &field("path"),
                format!("{:?} is added twice", added.path),
            ));
        }
        check_relative(&added.source).map_err(|why| at(&field("source"), why))?;
        let content = read_regular(&dir.join(&added.source), MAX_ADDED_FILE_BYTES)
            .map_err(|why| at(&field("source"), format!("{}: {why}", added.source)))?;
        files.push(AddedFile {
            path: normal_path(&added.path),
            content,
        });
    }
    Ok(Overlay {
        id: id.to_string(),
        target: raw.target,
        versions,
        description: raw.description,
        patches,
        files,
    })
}

/// Reads a regular file (never through a symbolic link) of at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if !meta.file_type().is_file() {
        return Err("is not a regular file (symbolic links are refused)".into());
    }
    if meta.len() > max {
        return Err(format!("larger than {} KiB", max >> 10));
    }
    std::fs::read(path).map_err(|err| format!("cannot read: {err}"))
}

fn valid_target(target: &str) -> bool {
    (1..=64).contains(&target.len())
        && target.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && target
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A path in the tree an overlay changes: relative, no `..`, nothing inside `.git` (a patch
/// there could set hooks or `core.fsmonitor` and run code when the host next runs git).
pub fn check_tree_path(path: &str) -> Result<(), String> {
    check_relative(path)?;
    if path.len() > MAX_TREE_PATH_BYTES {
        return Err(format!("longer than {MAX_TREE_PATH_BYTES} bytes"));
    }
    let parts: Vec<_> = Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if parts.is_empty() {
        return Err(format!("{path:?} names no file"));
    }
    if parts
        .iter()
        .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
    {
        return Err(format!("{path:?} is inside .git; overlays never touch it"));
    }
    Ok(())
}

/// `a/./b` -> `a/b`: one spelling per file, so two changes of one file meet.
pub fn normal_path(path: &str) -> String {
    Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// One file's change in a patch, paths already stripped of their `a/` `b/` prefix.
pub enum Change<'a> {
    Modify(String, diffy::Patch<'a, [u8]>),
    Create(String, diffy::Patch<'a, [u8]>),
    Delete(String, diffy::Patch<'a, [u8]>),
}

impl Change<'_> {
    pub fn path(&self) -> &str {
        match self {
            Change::Modify(path, _) | Change::Create(path, _) | Change::Delete(path, _) => path,
        }
    }
}

/// Parses a patch file: a `git diff` (when it has `diff --git` headers) or a plain unified
/// diff, its paths with one leading component (`a/`, `b/`) as `git diff` writes them. Only
/// text changes that modify, create or delete a file are accepted: renames, copies, mode
/// changes to links or submodules and binary patches are refused.
pub fn parse_patch(text: &[u8]) -> Result<Vec<Change<'_>>, String> {
    let git = text
        .split(|b| *b == b'\n')
        .any(|line| line.starts_with(b"diff --git "));
    let options = if git {
        ParseOptions::gitdiff()
    } else {
        ParseOptions::unidiff()
    };
    let mut changes = Vec::new();
    for file in PatchSet::parse_bytes(text, options) {
        let file = file.map_err(|err| format!("not a unified diff: {err}"))?;
        for mode in [file.old_mode(), file.new_mode()].into_iter().flatten() {
            if matches!(mode, FileMode::Symlink | FileMode::Gitlink) {
                return Err(
                    "changes a symbolic link or submodule; overlays change only regular files"
                        .into(),
                );
            }
        }
        let operation = file.operation().strip_prefix(1);
        let path = |raw: &[u8]| -> Result<String, String> {
            let path = std::str::from_utf8(raw)
                .map_err(|_| "a file name is not UTF-8".to_string())?
                .trim_end_matches(['\r', '\n']);
            check_tree_path(path)?;
            Ok(normal_path(path))
        };
        let change = match (operation, file.patch().as_text()) {
            (_, None) => return Err("a binary patch; overlays patch text only".into()),
            (FileOperation::Modify { original, modified }, Some(patch)) => {
                let (from, to) = (path(&original)?, path(&modified)?);
                if from != to {
                    return Err(format!(
                        "renames {from:?} to {to:?}; overlays do not rename (delete one file, create the other)"
                    ));
                }
                Change::Modify(from, patch.clone())
            }
            (FileOperation::Create(name), Some(patch)) => {
                Change::Create(path(&name)?, patch.clone())
            }
            (FileOperation::Delete(name), Some(patch)) => {
                Change::Delete(path(&name)?, patch.clone())
            }
            (FileOperation::Rename { .. } | FileOperation::Copy { .. }, _) => {
                return Err("renames or copies a file; overlays do not".into());
            }
        };
        changes.push(change);
    }
    Ok(changes)
}

/// The tree paths a patch changes, validated.
fn patch_targets(text: &[u8]) -> Result<Vec<String>, String> {
    let changes = parse_patch(text)?;
    if changes.is_empty() {
        return Err("changes no file".into());
    }
    Ok(changes.iter().map(|c| c.path().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const PATCH: &str = "diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 3\n";

    fn overlay_dir(toml: &str, patch: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "overlays/fix-b/overlay.toml", toml);
        write(dir.path(), "overlays/fix-b/0001.patch", patch);
        write(dir.path(), "overlays/fix-b/files/NOTE", "patched\n");
        dir
    }

    const TOML: &str = r#"
target = "mini-relay"
versions = ">=0.1.120, <0.1.140"
description = "b is 3"
patches = ["0001.patch"]
files = [{ path = "docs/NOTE", source = "files/NOTE" }]
"#;

    #[test]
    fn loads_a_valid_overlay() {
        let dir = overlay_dir(TOML, PATCH);
        let data = ["overlays".to_string()];
        let overlays = load_overlays(dir.path(), &data, Some(dir.path())).unwrap();
        assert_eq!(overlays.len(), 1);
        let o = &overlays[0];
        assert_eq!((o.id.as_str(), o.target.as_str()), ("fix-b", "mini-relay"));
        assert!(o.versions.matches(&"0.1.129".parse().unwrap()));
        assert_eq!(o.patches[0].files, ["app.py"]);
        assert_eq!(o.files[0].path, "docs/NOTE");
    }

    #[test]
    fn undeclared_overlays_folder_is_refused() {
        let dir = overlay_dir(TOML, PATCH);
        let err = load_overlays(dir.path(), &["providers".into()], Some(dir.path())).unwrap_err();
        assert!(err.contains("does not declare it"), "{err}");
    }

    #[test]
    fn traversal_in_patches_and_added_files_is_refused() {
        for (toml, patch, expect) in [
            (
                TOML.to_string(),
                PATCH
                    .replace("a/app.py", "a/../../etc/passwd")
                    .replace("b/app.py", "b/../../etc/passwd"),
                "patches[0]",
            ),
            (
                TOML.to_string(),
                "--- /dev/null\n+++ b//etc/cron.d/x\n@@ -0,0 +1 @@\n+x\n".to_string(),
                "patches[0]",
            ),
            (
                TOML.to_string(),
                "--- a/.git/config\n+++ b/.git/config\n@@ -1 +1 @@\n-a\n+b\n".to_string(),
                "inside .git",
            ),
            (
                TOML.replace("docs/NOTE", "../NOTE"),
                PATCH.to_string(),
                "files[0].path",
            ),
            (
                TOML.replace("docs/NOTE", "/etc/NOTE"),
                PATCH.to_string(),
                "files[0].path",
            ),
            (
                TOML.replace("files/NOTE", "../../../pack.toml"),
                PATCH.to_string(),
                "files[0].source",
            ),
            (
                TOML.replace("0001.patch", "../0001.patch"),
                PATCH.to_string(),
                "patches[0]",
            ),
        ] {
            let dir = overlay_dir(&toml, &patch);
            let err =
                load_overlays(dir.path(), &["overlays".into()], Some(dir.path())).unwrap_err();
            assert!(err.contains(expect), "expected {expect:?} in {err}");
            assert!(err.contains("overlays/fix-b/overlay.toml"), "{err}");
        }
    }

    #[test]
    fn bad_fields_name_the_field() {
        for (toml, field) in [
            (TOML.replace("mini-relay", "Mini Relay"), "target"),
            (TOML.replace(">=0.1.120, <0.1.140", "newest"), "versions"),
            (format!("{TOML}\nsurprise = 1"), "invalid TOML"),
            (TOML.replace("0001.patch", "missing.patch"), "patches[0]"),
        ] {
            let dir = overlay_dir(&toml, PATCH);
            let err =
                load_overlays(dir.path(), &["overlays".into()], Some(dir.path())).unwrap_err();
            assert!(err.contains(field), "expected {field:?} in {err}");
        }
        let dir = overlay_dir(TOML, "this is not a diff\n");
        let err = load_overlays(dir.path(), &["overlays".into()], Some(dir.path())).unwrap_err();
        assert!(err.contains("not a unified diff"), "{err}");
    }

    #[test]
    fn links_and_renames_are_refused() {
        let dir = overlay_dir(TOML, PATCH);
        std::fs::remove_file(dir.path().join("overlays/fix-b/files/NOTE")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("overlays/fix-b/files/NOTE"))
            .unwrap();
        let err = load_overlays(dir.path(), &["overlays".into()], Some(dir.path())).unwrap_err();
        assert!(err.contains("symbolic links are refused"), "{err}");

        let rename = "diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to y\n";
        assert!(parse_patch(rename.as_bytes()).is_err());
        let link = "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n";
        let err = parse_patch(link.as_bytes()).err().unwrap();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
