//! A fake sandbox for native unit tests of adapters (not built for wasm32).
//!
//! Inside a component, [`sandbox`](crate::sandbox) calls go to the Wharf host. Under
//! `cargo test` there is no host, so install a [`FakeSandbox`] for the current thread: an
//! in-memory filesystem and scripted exec results. The adapter's ordinary code
//! (`sandbox::read_file`, `sandbox::Command::output`, ...) then runs against it, and the
//! test can look at what the adapter wrote and ran.
//!
//! ```
//! use wharf_plugin_sdk::sandbox::{self, ExecOutput};
//! use wharf_plugin_sdk::testing::FakeSandbox;
//!
//! let fake = FakeSandbox::new()
//!     .file("notes/a.txt", "hello")
//!     .on_exec(["wc", "-c", "notes/a.txt"], ExecOutput::ok("5 notes/a.txt\n"))
//!     .install();
//!
//! assert_eq!(sandbox::read_to_string("notes/a.txt").unwrap(), "hello");
//! let out = sandbox::Command::new("wc").args(["-c", "notes/a.txt"]).output().unwrap();
//! assert_eq!(out.stdout_lossy(), "5 notes/a.txt\n");
//! sandbox::write_file("notes/b.txt", "bye").unwrap();
//!
//! assert_eq!(fake.file_text("notes/b.txt").as_deref(), Some("bye"));
//! assert_eq!(fake.execs()[0].argv, ["wc", "-c", "notes/a.txt"]);
//! assert_eq!(sandbox::read_file("missing").unwrap_err().code, "file_not_found");
//! ```
//!
//! The fake answers with the host's error codes for the same mistakes: `invalid_path`
//! (absolute paths, `..`, NUL), `file_not_found`, `validation_error` (reading a
//! directory, listing a file), `conflict` (removing a non-empty directory without
//! `recursive`). An exec that matches no script fails with `unscripted_exec`, naming its
//! argv, so a test sees at once which command it did not expect. It does not run
//! anything and does not model symbolic links, permissions or the host's size limits.
//!
//! The fake belongs to the thread that installed it and is removed when the returned
//! [`Installed`] guard drops; tests running in parallel each have their own.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::PluginError;
use crate::sandbox::{Command, DirEntry, EntryKind, ExecOutput, FileStat};

thread_local! {
    static INSTALLED: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

/// Runs `f` on the fake installed for this thread, or fails as the SDK always did natively.
pub(crate) fn with_installed<T>(
    what: &str,
    f: impl FnOnce(&mut State) -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    let state = INSTALLED.with(|slot| slot.borrow().clone());
    match state {
        Some(state) => f(&mut state.borrow_mut()),
        None => Err(PluginError::new(
            crate::error::codes::UNSUPPORTED,
            format!(
                "sandbox {what} is only available inside a Wharf WebAssembly component \
                 (or, in native tests, with a wharf_plugin_sdk::testing::FakeSandbox installed)"
            ),
        )),
    }
}

/// One exec the adapter ran, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCall {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables, in the order they were set.
    pub env: Vec<(String, String)>,
    /// Working directory, relative to the workspace.
    pub cwd: Option<String>,
    /// Bytes given on stdin.
    pub stdin: Option<Vec<u8>>,
    /// Timeout asked for, in milliseconds.
    pub timeout_ms: Option<u32>,
}

type ExecScript = Box<dyn FnMut(&ExecCall) -> Option<Result<ExecOutput, PluginError>>>;

/// An in-memory sandbox with scripted exec results; see the [module docs](self).
#[derive(Default)]
#[must_use = "a FakeSandbox does nothing until `install()`"]
pub struct FakeSandbox {
    state: State,
}

#[derive(Default)]
pub(crate) struct State {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    scripts: Vec<ExecScript>,
    execs: Vec<ExecCall>,
}

impl FakeSandbox {
    /// An empty workspace with no scripted command.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file (and its parent directories).
    ///
    /// # Panics
    ///
    /// If `path` is not a valid sandbox path (a mistake in the test).
    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        let path = normalize(path).unwrap_or_else(|err| panic!("FakeSandbox::file: {err}"));
        self.state.add_parents(&path);
        self.state.files.insert(path, content.into());
        self
    }

    /// Adds an empty directory (and its parents).
    ///
    /// # Panics
    ///
    /// If `path` is not a valid sandbox path.
    pub fn dir(mut self, path: &str) -> Self {
        let path = normalize(path).unwrap_or_else(|err| panic!("FakeSandbox::dir: {err}"));
        self.state.add_parents(&path);
        if !path.is_empty() {
            self.state.dirs.insert(path);
        }
        self
    }

    /// Answers every exec whose argv is exactly `argv` with `output`.
    pub fn on_exec<I, S>(self, argv: I, output: ExecOutput) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        self.on_exec_fn(move |call| (call.argv == argv).then(|| Ok(output.clone())))
    }

    /// Answers execs with a function: `None` passes the exec on to the next script.
    /// Scripts are tried in the order they were added.
    pub fn on_exec_fn<F>(mut self, script: F) -> Self
    where
        F: FnMut(&ExecCall) -> Option<Result<ExecOutput, PluginError>> + 'static,
    {
        self.state.scripts.push(Box::new(script));
        self
    }

    /// Makes this fake the sandbox of the current thread until the guard drops (a fake
    /// installed before it comes back then).
    pub fn install(self) -> Installed {
        let state = Rc::new(RefCell::new(self.state));
        let previous = INSTALLED.with(|slot| slot.borrow_mut().replace(state.clone()));
        Installed { state, previous }
    }
}

/// The installed fake: inspect it while it is installed; dropping it uninstalls it.
#[must_use = "the fake is uninstalled when this guard drops"]
pub struct Installed {
    state: Rc<RefCell<State>>,
    previous: Option<Rc<RefCell<State>>>,
}

impl Installed {
    /// The content of a file now, if it exists.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let path = normalize(path).ok()?;
        self.state.borrow().files.get(&path).cloned()
    }

    /// The content of a file now, as lossy UTF-8 text.
    pub fn file_text(&self, path: &str) -> Option<String> {
        self.file(path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether a file or directory exists now.
    pub fn exists(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|path| self.state.borrow().kind(&path).is_some())
    }

    /// Every exec the adapter ran so far, in order.
    pub fn execs(&self) -> Vec<ExecCall> {
        self.state.borrow().execs.clone()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        INSTALLED.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// The host's layer-one path rules: relative, no `..`, no NUL; `.` and empty segments
/// dropped. The workspace root is the empty string.
fn normalize(path: &str) -> Result<String, PluginError> {
    let invalid = |why: &str| PluginError::new("invalid_path", format!("path {path:?} {why}"));
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "is absolute; paths are relative to the sandbox workspace",
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains `..`")),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

fn not_found(path: &str) -> PluginError {
    PluginError::new("file_not_found", format!("{path}: no such file"))
}

impl State {
    fn add_parents(&mut self, path: &str) {
        let mut parent = parent_of(path);
        while !parent.is_empty() {
            self.dirs.insert(parent.to_owned());
            parent = parent_of(parent);
        }
    }

    fn kind(&self, path: &str) -> Option<EntryKind> {
        if path.is_empty() || self.dirs.contains(path) {
            Some(EntryKind::Directory)
        } else if self.files.contains_key(path) {
            Some(EntryKind::File)
        } else {
            None
        }
    }

    fn file_bytes(&self, path: &str) -> Result<&Vec<u8>, PluginError> {
        let path = normalize(path)?;
        match self.kind(&path) {
            Some(EntryKind::File) => Ok(&self.files[&path]),
            Some(_) => Err(PluginError::new(
                "validation_error",
                format!("{path} is a directory"),
            )),
            None => Err(not_found(&path)),
        }
    }

    pub(crate) fn exec(&mut self, cmd: Command) -> Result<ExecOutput, PluginError> {
        if cmd.get_argv().first().is_none_or(String::is_empty) {
            return Err(PluginError::new(
                "validation_error",
                "argv must not be empty",
            ));
        }
        if let Some(cwd) = cmd.get_cwd() {
            let cwd = normalize(cwd)?;
            if self.kind(&cwd) != Some(EntryKind::Directory) {
                return Err(not_found(&cwd));
            }
        }
        let call = ExecCall {
            argv: cmd.get_argv().to_vec(),
            env: cmd.get_envs().to_vec(),
            cwd: cmd.get_cwd().map(str::to_owned),
            stdin: cmd.get_stdin().map(<[u8]>::to_vec),
            timeout_ms: cmd.get_timeout_ms(),
        };
        self.execs.push(call.clone());
        for script in &mut self.scripts {
            if let Some(answer) = script(&call) {
                return answer;
            }
        }
        Err(PluginError::new(
            "unscripted_exec",
            format!(
                "the FakeSandbox has no script for exec {:?}; add one with on_exec",
                call.argv
            ),
        ))
    }

    pub(crate) fn read_file(&mut self, path: &str) -> Result<Vec<u8>, PluginError> {
        self.file_bytes(path).cloned()
    }

    pub(crate) fn read_file_range(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, PluginError> {
        let bytes = self.file_bytes(path)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
        Ok(bytes[start..end.min(bytes.len())].to_vec())
    }

    pub(crate) fn stat(&mut self, path: &str) -> Result<FileStat, PluginError> {
        let path = normalize(path)?;
        match self.kind(&path) {
            Some(EntryKind::File) => Ok(FileStat {
                kind: EntryKind::File,
                size: self.files[&path].len() as u64,
            }),
            Some(kind) => Ok(FileStat { kind, size: 0 }),
            None => Err(not_found(&path)),
        }
    }

    pub(crate) fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), PluginError> {
        let path = normalize(path)?;
        if path.is_empty() || self.dirs.contains(&path) {
            return Err(PluginError::new(
                "validation_error",
                format!("{path:?} is a directory"),
            ));
        }
        // Like the host: the parent directory must exist.
        if self.kind(parent_of(&path)) != Some(EntryKind::Directory) {
            return Err(not_found(&path));
        }
        self.files.insert(path, data.to_vec());
        Ok(())
    }

    pub(crate) fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, PluginError> {
        let path = normalize(path)?;
        match self.kind(&path) {
            Some(EntryKind::Directory) => {}
            Some(_) => {
                return Err(PluginError::new(
                    "validation_error",
                    format!("{path} is not a directory"),
                ));
            }
            None => return Err(not_found(&path)),
        }
        let children = |name: &&String| parent_of(name) == path && !name.is_empty();
        let mut entries: Vec<DirEntry> = self
            .dirs
            .iter()
            .filter(children)
            .map(|dir| DirEntry {
                name: dir.rsplit('/').next().unwrap_or(dir).to_owned(),
                kind: EntryKind::Directory,
                size: 0,
            })
            .chain(
                self.files
                    .iter()
                    .filter(|(name, _)| children(name))
                    .map(|(name, data)| DirEntry {
                        name: name.rsplit('/').next().unwrap_or(name).to_owned(),
                        kind: EntryKind::File,
                        size: data.len() as u64,
                    }),
            )
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub(crate) fn remove(&mut self, path: &str, recursive: bool) -> Result<(), PluginError> {
        let path = normalize(path)?;
        match self.kind(&path) {
            None => Err(not_found(&path)),
            Some(_) if path.is_empty() => Err(PluginError::new(
                "invalid_path",
                "cannot remove the workspace root",
            )),
            Some(EntryKind::Directory) => {
                let prefix = format!("{path}/");
                let inside = |name: &String| name.starts_with(&prefix);
                let has_children = self.files.keys().any(inside) || self.dirs.iter().any(inside);
                if has_children && !recursive {
                    return Err(PluginError::new(
                        "conflict",
                        format!("{path} is a non-empty directory; remove it recursively"),
                    ));
                }
                self.files.retain(|name, _| !inside(name));
                self.dirs.retain(|name| !inside(name) && *name != path);
                Ok(())
            }
            Some(_) => {
                self.files.remove(&path);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox;

    #[test]
    fn files_and_directories() {
        let fake = FakeSandbox::new()
            .file("a/b/c.txt", "abc")
            .dir("empty")
            .install();
        let names = |path| {
            sandbox::list_dir(path)
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.kind, e.size))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(""),
            [
                ("a".into(), EntryKind::Directory, 0),
                ("empty".into(), EntryKind::Directory, 0)
            ]
        );
        assert_eq!(names("./a//b"), [("c.txt".into(), EntryKind::File, 3)]);
        assert_eq!(
            sandbox::stat("a/b/c.txt").unwrap(),
            FileStat {
                kind: EntryKind::File,
                size: 3
            }
        );
        assert_eq!(sandbox::stat("a").unwrap().kind, EntryKind::Directory);
        assert_eq!(sandbox::read_file_range("a/b/c.txt", 1, 10).unwrap(), b"bc");
        assert_eq!(sandbox::read_file_range("a/b/c.txt", 9, 1).unwrap(), b"");
        assert_eq!(
            sandbox::read_file("a").unwrap_err().code,
            "validation_error"
        );
        assert_eq!(
            sandbox::list_dir("a/b/c.txt").unwrap_err().code,
            "validation_error"
        );
        assert_eq!(
            sandbox::write_file("nope/x", "1").unwrap_err().code,
            "file_not_found"
        );
        assert_eq!(
            sandbox::read_file("/etc/passwd").unwrap_err().code,
            "invalid_path"
        );
        assert_eq!(
            sandbox::read_file("a/../x").unwrap_err().code,
            "invalid_path"
        );
        assert_eq!(sandbox::remove("a", false).unwrap_err().code, "conflict");
        sandbox::remove("a", true).unwrap();
        assert!(!fake.exists("a/b/c.txt") && !fake.exists("a"));
        assert!(fake.exists("empty"));
        sandbox::remove("empty", false).unwrap();
        assert_eq!(sandbox::stat("empty").unwrap_err().code, "file_not_found");
    }

    #[test]
    fn scripted_execs_are_recorded() {
        let fake = FakeSandbox::new()
            .dir("src")
            .on_exec(["false"], ExecOutput::failed(1, "no"))
            .on_exec_fn(|call| {
                (call.argv[0] == "cat").then(|| Ok(ExecOutput::ok(call.stdin.clone().unwrap())))
            })
            .install();
        let out = sandbox::Command::new("cat")
            .stdin("piped")
            .cwd("src")
            .env("A", "1")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"piped");
        assert!(!sandbox::Command::new("false").output().unwrap().success());
        let err = sandbox::Command::new("rm").output().unwrap_err();
        assert_eq!(err.code, "unscripted_exec");
        assert!(err.message.contains("rm"), "{}", err.message);
        let err = sandbox::Command::new("cat")
            .cwd("nope")
            .output()
            .unwrap_err();
        assert_eq!(err.code, "file_not_found");
        let execs = fake.execs();
        assert_eq!(execs.len(), 3);
        assert_eq!(execs[0].cwd.as_deref(), Some("src"));
        assert_eq!(execs[0].env, [("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn uninstalled_on_drop_and_nested() {
        let outer = FakeSandbox::new().file("x", "outer").install();
        {
            let _inner = FakeSandbox::new().file("x", "inner").install();
            assert_eq!(sandbox::read_to_string("x").unwrap(), "inner");
        }
        assert_eq!(sandbox::read_to_string("x").unwrap(), "outer");
        drop(outer);
        assert_eq!(sandbox::read_file("x").unwrap_err().code, "unsupported");
    }
}
