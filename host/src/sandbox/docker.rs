//! The Docker driver: one container and one named volume per sandbox, through
//! the engine API (bollard).
//!
//! Every object is labelled `wharf.sandbox=<id>` and `wharf.owner=<owner>`.
//! Whatever the image says, a container is never privileged: every process
//! runs as the profile's `user` (default `1000:1000`), with all capabilities
//! dropped and `no-new-privileges`; its root filesystem is read-only (unless
//! the profile sets `read_only_root = false`) with a tmpfs `/tmp`; the only
//! mount is the sandbox's own named volume at the profile's workdir; memory,
//! pids and cpu limits are always set (the host's `[sandbox] docker_default_*`
//! where the profile names none); no network unless the profile asks for
//! `bridge`. Where the image has python3, execs go through the container's
//! exec agent ([`docker_agent`], PID 1), which runs each command in a session
//! of its own and kills that process group at the timeout and when the
//! command ends; elsewhere through `docker exec` under `timeout -s KILL`, with
//! the same group kill. File operations go through the agent too (reads,
//! writes, listings, removes, mkdir: one request each, bodies in chunks of at
//! most 64 KiB read / 128 KiB written, so no reply line nears the cap); the
//! agent resolves paths one name at a time from the workspace root and never
//! leaves it. Containers without the agent run them as `sh` scripts with
//! `docker exec`, streaming file bodies through the exec's stdin and stdout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, HostConfigLogConfig, Mount, MountType,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StopContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;

use super::docker_agent::{self, AgentConnection, Agents, Reply};
use super::profiles::{Network, Profile};
use super::{
    ByteStream, DirEntry, DriverHealth, EntryKind, ExecOutput, ExecRequest, FileDownload,
    FileUpload, SandboxDriver, SandboxPath, SandboxSpec, StreamKind, bytes_stream, refuse_root,
    upload_tmp_name,
};
use crate::config::SandboxConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};

pub const LABEL_SANDBOX: &str = "wharf.sandbox";
pub const LABEL_OWNER: &str = "wharf.owner";
/// The server instance (data dir) that owns the object: orphan GC of one
/// server never touches another's sandboxes on a shared engine.
pub const LABEL_INSTANCE: &str = "wharf.instance";
const LABEL_WORKDIR: &str = "wharf.workdir";

/// The task feeding an exec's input: bytes written, or why the input broke off.
type StdinWriter = tokio::task::JoinHandle<WharfResult<u64>>;

/// The output of an attached exec.
type ExecStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

/// The limits a Docker sandbox gets where its profile names none
/// (`[sandbox] docker_default_memory_mib`, `docker_default_pids`,
/// `docker_default_cpus`): no container runs without all three.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DockerDefaults {
    pub memory_mib: u64,
    pub pids: i64,
    pub cpus: f64,
}

impl DockerDefaults {
    /// The defaults of `config`, refused unless each is a limit the engine enforces.
    pub fn from_config(config: &SandboxConfig) -> anyhow::Result<Self> {
        let defaults = Self {
            memory_mib: config.docker_default_memory_mib,
            pids: config.docker_default_pids,
            cpus: config.docker_default_cpus,
        };
        defaults
            .check("[sandbox] docker_default_")
            .map_err(anyhow::Error::msg)?;
        Ok(defaults)
    }

    /// Why these values are not limits the engine enforces, if they are not;
    /// `prefix` names where they come from.
    fn check(&self, prefix: &str) -> Result<(), String> {
        // The engine refuses less than 6 MiB of memory; 0 or a negative pids
        // limit means no limit at all.
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(format!(
                "{prefix}memory_mib must be in [{MIN_MEMORY_MIB}, {MAX_MEMORY_MIB}]"
            ));
        }
        if self.pids < 1 {
            return Err(format!("{prefix}pids must be at least 1"));
        }
        if !(self.cpus > 0.0 && self.cpus <= 256.0) {
            return Err(format!("{prefix}cpus must be in (0, 256]"));
        }
        Ok(())
    }

    /// The limits of a sandbox of `profile`: its own, else these.
    fn for_profile(&self, profile: &Profile) -> WharfResult<Self> {
        let limits = Self {
            memory_mib: profile.memory_mib.unwrap_or(self.memory_mib),
            pids: profile.pids_limit.unwrap_or(self.pids),
            cpus: profile.cpus.unwrap_or(self.cpus),
        };
        limits
            .check("")
            .map_err(|why| WharfError::validation(format!("profile {:?}: {why}", profile.name)))?;
        Ok(limits)
    }
}

/// Refuses a profile `user` other than a numeric, non-root `uid:gid`: a name
/// would be looked up in the image's own `/etc/passwd`, which may map it to 0.
fn check_user(profile: &Profile) -> WharfResult<()> {
    let ids = profile
        .user
        .split_once(':')
        .and_then(|(uid, gid)| Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?)));
    match ids {
        Some((uid, gid)) if uid > 0 && gid > 0 => Ok(()),
        _ => Err(WharfError::validation(format!(
            "profile {:?}: user must be a numeric uid:gid other than root (e.g. \"1000:1000\"), not {:?}",
            profile.name, profile.user
        ))),
    }
}

/// The smallest memory limit the engine accepts.
const MIN_MEMORY_MIB: u64 = 6;
/// The largest memory limit taken (16 TiB): its byte count fits the engine's i64.
const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;

pub struct DockerDriver {
    docker: Docker,
    instance: String,
    defaults: DockerDefaults,
    /// Workdir of each known sandbox (also kept in a container label).
    workdirs: Mutex<HashMap<String, String>>,
    /// Last `oom_kill` count read from each sandbox's cgroup.
    oom_counts: Mutex<HashMap<String, u64>>,
    agents: Agents,
}

/// The object name of a sandbox's container and volume.
pub fn object_name(sandbox_id: &str) -> String {
    format!("wharf-{sandbox_id}")
}

fn engine_error(what: &str, err: bollard::errors::Error) -> WharfError {
    WharfError::new(
        ErrorCode::DriverUnavailable,
        format!("docker: {what}: {err}"),
    )
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn label_filter(instance: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            LABEL_SANDBOX.to_string(),
            format!("{LABEL_INSTANCE}={instance}"),
        ],
    )])
}

/// Output of a helper command run in a sandbox.
struct Raw {
    code: i64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// How feeding the command's input went (bytes written).
    stdin: WharfResult<u64>,
}

/// Runs the command under `timeout` (which makes its own process group and
/// kills the group at the deadline), then kills whatever is left of that group
/// when the command ends: an exec leaves no process behind.
const EXEC_WRAPPER: &str = r#"t="$1"; shift
exec 3<&0
timeout -s KILL "$t" "$@" <&3 3<&- &
p=$!
exec 3<&-
wait "$p"; rc=$?
kill -KILL -"$p" 2>/dev/null
exit "$rc""#;

/// File operations run as one `sh` script inside the container, as the
/// sandbox user. Layer two of path safety: the target is resolved with
/// `realpath -m` (every symlink followed) and must stay under the workdir.
const RESOLVE: &str = r#"set -u
root="$1"; rel="$2"; op="$3"
if [ "$op" = rm ]; then
  parent=$(realpath -m -- "$root/$(dirname -- "$rel")") || exit 70
  p="$parent/$(basename -- "$rel")"
  case "$parent" in "$root"|"$root"/*) ;; *) exit 71;; esac
  [ "$p" = "$root/." ] && exit 71
else
  p=$(realpath -m -- "$root/$rel") || exit 70
  case "$p" in "$root"|"$root"/*) ;; *) exit 71;; esac
fi
case "$op" in
  read) [ -e "$p" ] || exit 72; [ -d "$p" ] && exit 73
        s=$(stat -L -c %s -- "$p") || exit 70; exec 3<"$p" || exit 70
        printf '%s\n' "$s"; exec head -c "$s" <&3 ;;
  write) d=$(dirname -- "$p"); [ -d "$d" ] || exit 72; [ -d "$p" ] && exit 73
         t="$d/$4"; cat > "$t" || { rm -f -- "$t"; exit 70; }
         [ -z "$5" ] && exit 0
         [ "$(wc -c < "$t")" -eq "$5" ] || { rm -f -- "$t"; exit 77; }
         mv -f -- "$t" "$p" || { rm -f -- "$t"; exit 70; } ;;
  commit) t="$(dirname -- "$p")/$4"; [ -d "$p" ] && { rm -f -- "$t"; exit 73; }
          mv -f -- "$t" "$p" || { rm -f -- "$t"; exit 70; } ;;
  discard) rm -f -- "$(dirname -- "$p")/$4" ;;
  list) [ -e "$p" ] || exit 72; [ -d "$p" ] || exit 74; cd -- "$p" && exec find . -mindepth 1 -maxdepth 1 -printf '%y\t%s\t%f\0' ;;
  rm) { [ -e "$p" ] || [ -L "$p" ]; } || exit 72
      if [ -d "$p" ] && [ ! -L "$p" ]; then
        if [ "$4" = 1 ]; then rm -rf -- "$p"; else rmdir -- "$p" 2>/dev/null || exit 75; fi
      else rm -f -- "$p"; fi ;;
  mkdir) if [ -e "$p" ] && [ ! -d "$p" ]; then exit 76; fi; mkdir -p -- "$p" ;;
  cwd) [ -d "$p" ] || exit 72; printf '%s' "$p" ;;
esac"#;

/// The container of a sandbox of `profile`, with its volume `name`: confined
/// and limited whatever its image says.
fn container_body(
    profile: &Profile,
    limits: &DockerDefaults,
    name: &str,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let memory_bytes = (limits.memory_mib * 1024 * 1024) as i64;
    let host_config = HostConfig {
        memory: Some(memory_bytes),
        // No swap beyond the memory limit: past it, the OOM killer acts.
        memory_swap: Some(memory_bytes),
        nano_cpus: Some((limits.cpus * 1e9) as i64),
        pids_limit: Some(limits.pids),
        network_mode: Some(match profile.network {
            Network::None => "none".to_string(),
            Network::Bridge => "bridge".to_string(),
        }),
        privileged: Some(false),
        // No engine init: the main process is PID 1 itself (the agent, or the
        // no-agent loop), which reaps orphans and, as PID 1, cannot be
        // killed or stopped from inside the container.
        init: Some(false),
        readonly_rootfs: Some(profile.read_only_root),
        // Writable scratch space on a read-only root; its pages count
        // against the memory limit.
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            format!("rw,nosuid,nodev,mode=1777,size={}m", limits.memory_mib),
        )])),
        // The agent's stdout carries every exec's output: the engine
        // must not also keep it in a log file on the host's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        mounts: Some(vec![Mount {
            target: Some(profile.workdir.clone()),
            source: Some(name.to_string()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }]),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(profile.image.clone()),
        // Every process of the container, engine execs included, runs as
        // this user; the image's `USER` is not consulted.
        user: Some(profile.user.clone()),
        cmd: Some(docker_agent::container_command()),
        // Nothing to shut down gracefully; and PID 1 ignores SIGTERM.
        stop_signal: Some("SIGKILL".to_string()),
        env: Some(vec![docker_agent::source_variable()]),
        // The agent reads its requests from stdin, kept open between attaches.
        open_stdin: Some(true),
        stdin_once: Some(false),
        working_dir: Some(profile.workdir.clone()),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Maps a file operation script's exit code to its result (its stdout) or error.
fn file_op_result(raw: Raw, op: &str, path: &SandboxPath) -> WharfResult<Vec<u8>> {
    let shown = if path.is_root() {
        ".".to_string()
    } else {
        path.to_string()
    };
    match raw.code {
        0 => Ok(raw.stdout),
        71 => Err(WharfError::new(
            ErrorCode::InvalidPath,
            format!("path {shown:?} escapes the sandbox workspace"),
        )),
        72 => Err(WharfError::new(
            ErrorCode::FileNotFound,
            format!("{shown}: no such file or directory"),
        )),
        73 => Err(WharfError::validation(format!("{shown} is a directory"))),
        74 => Err(WharfError::validation(format!(
            "{shown} is not a directory"
        ))),
        75 => Err(WharfError::new(
            ErrorCode::Conflict,
            format!("{shown} is a non-empty directory; remove it recursively"),
        )),
        76 => Err(WharfError::new(
            ErrorCode::Conflict,
            format!("{shown} exists and is not a directory"),
        )),
        77 => Err(WharfError::validation(format!(
            "upload of {shown} ended short of its announced size; the file is unchanged"
        ))),
        code => Err(WharfError::internal(format!(
            "file operation {op} on {shown} failed ({code}): {}",
            String::from_utf8_lossy(&raw.stderr).trim()
        ))),
    }
}

/// Bytes of an upload per agent request (a base64 line of about 171 KiB).
const AGENT_WRITE_CHUNK: usize = 128 * 1024;
/// How long a file request through the agent may take to answer.
const AGENT_FILE_TIMEOUT: Duration = Duration::from_secs(120);

/// The error an agent's refusal stands for.
fn agent_error(code: &str, message: String) -> WharfError {
    match code {
        "invalid_path" => WharfError::new(ErrorCode::InvalidPath, message),
        "file_not_found" => WharfError::new(ErrorCode::FileNotFound, message),
        "not_found" | "is_directory" | "not_directory" | "not_regular" | "size_mismatch" => {
            WharfError::validation(message)
        }
        "not_empty" | "exists" | "changed" => WharfError::new(ErrorCode::Conflict, message),
        _ => WharfError::internal(format!("exec agent: {message}")),
    }
}

/// A directory entry's kind as `find -printf %y` and the agent name it.
fn entry_kind(kind: &str) -> EntryKind {
    match kind {
        "f" => EntryKind::File,
        "d" => EntryKind::Directory,
        "l" => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// A download in progress through the agent. Dropped before its last reply
/// (the client went away), it tells the agent to stop reading.
struct AgentRead {
    replies: tokio::sync::mpsc::Receiver<Reply>,
    cancel: Option<(Arc<AgentConnection>, String)>,
}

impl Drop for AgentRead {
    fn drop(&mut self) {
        if let Some((agent, id)) = self.cancel.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = agent
                    .notify(&serde_json::json!({"op": "cancel", "target": id}))
                    .await;
            });
        }
    }
}

impl DockerDriver {
    /// Connects to the local engine; `None` when no daemon answers.
    pub async fn connect(instance: &str, defaults: DockerDefaults) -> Option<Self> {
        let docker = Docker::connect_with_local_defaults().ok()?;
        match tokio::time::timeout(Duration::from_secs(3), docker.ping()).await {
            Ok(Ok(_)) => Some(Self {
                docker,
                instance: instance.to_string(),
                defaults,
                workdirs: Mutex::new(HashMap::new()),
                oom_counts: Mutex::new(HashMap::new()),
                agents: Agents::default(),
            }),
            _ => None,
        }
    }

    async fn workdir(&self, sandbox_id: &str) -> WharfResult<String> {
        if let Some(dir) = self.workdirs.lock().get(sandbox_id) {
            return Ok(dir.clone());
        }
        let info = self
            .docker
            .inspect_container(&object_name(sandbox_id), None)
            .await
            .map_err(|err| {
                if is_not_found(&err) {
                    WharfError::not_found(format!("container of sandbox {sandbox_id}"))
                } else {
                    engine_error("inspect", err)
                }
            })?;
        let dir = info
            .config
            .and_then(|c| c.labels)
            .and_then(|labels| labels.get(LABEL_WORKDIR).cloned())
            .unwrap_or_else(|| "/workspace".to_string());
        self.workdirs
            .lock()
            .insert(sandbox_id.to_string(), dir.clone());
        Ok(dir)
    }

    /// Creates an exec of `config` in the sandbox's container and attaches to
    /// it; a task streams `stdin` (if any) into the exec and then closes its
    /// input. Returns the exec's id, its output and the writer task, which
    /// ends with the bytes written, or with the error that cut `stdin` short.
    async fn attach_exec(
        &self,
        sandbox_id: &str,
        config: ExecConfig,
        stdin: Option<ByteStream>,
    ) -> WharfResult<(String, ExecStream, StdinWriter)> {
        let exec = self
            .docker
            .create_exec(
                &object_name(sandbox_id),
                ExecConfig {
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..config
                },
            )
            .await
            .map_err(|err| self.exec_error(sandbox_id, err))?;
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|err| engine_error("exec", err))?;
        let StartExecResults::Attached { output, mut input } = started else {
            return Err(WharfError::internal("docker exec did not attach"));
        };
        let writer = tokio::spawn(async move {
            let mut written = 0u64;
            if let Some(mut stdin) = stdin {
                while let Some(chunk) = stdin.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(err) => {
                            // Closing input now makes the command see a short body.
                            let _ = input.shutdown().await;
                            return Err(err);
                        }
                    };
                    // A command that stopped reading explains itself by its exit code.
                    if input.write_all(&chunk).await.is_err() {
                        break;
                    }
                    written += chunk.len() as u64;
                }
            }
            let _ = input.shutdown().await;
            Ok(written)
        });
        Ok((exec.id, output, writer))
    }

    /// Runs `cmd` in the container and collects all of its output.
    async fn raw(
        &self,
        sandbox_id: &str,
        cmd: Vec<String>,
        stdin: Option<ByteStream>,
    ) -> WharfResult<Raw> {
        let (exec_id, mut output, writer) = self
            .attach_exec(
                sandbox_id,
                ExecConfig {
                    cmd: Some(cmd),
                    ..Default::default()
                },
                stdin,
            )
            .await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = output.next().await {
            match chunk.map_err(|err| engine_error("exec output", err))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.extend_from_slice(&message)
                }
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let stdin = writer
            .await
            .unwrap_or_else(|_| Err(WharfError::internal("exec input task failed")));
        let code = self.exit_code(&exec_id).await?;
        Ok(Raw {
            code: code.unwrap_or(-1),
            stdout,
            stderr,
            stdin,
        })
    }

    async fn exit_code(&self, exec_id: &str) -> WharfResult<Option<i64>> {
        // The stream ends a moment before the engine records the exit code.
        for _ in 0..50 {
            let info = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|err| engine_error("exec inspect", err))?;
            if info.running != Some(true) {
                return Ok(info.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(None)
    }

    fn exec_error(&self, sandbox_id: &str, err: bollard::errors::Error) -> WharfError {
        match &err {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => WharfError::new(
                ErrorCode::SessionNotReady,
                format!("the container of sandbox {sandbox_id} is gone"),
            ),
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            } => WharfError::new(
                ErrorCode::SessionNotReady,
                format!("the container of sandbox {sandbox_id} is not running"),
            )
            .with_retry_after(Duration::from_millis(1000)),
            _ => engine_error("exec", err),
        }
    }

    /// The command running one file operation script on `path`.
    async fn file_command(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        op: &str,
        extra: &[&str],
    ) -> WharfResult<Vec<String>> {
        let root = self.workdir(sandbox_id).await?;
        let path = path.to_string();
        let mut cmd: Vec<String> = ["sh", "-c", RESOLVE, "sh", &root, &path, op]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cmd.extend(extra.iter().map(|s| s.to_string()));
        Ok(cmd)
    }

    /// Runs one file operation script and returns its output.
    async fn file_op(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        op: &str,
        extra: &[&str],
    ) -> WharfResult<Vec<u8>> {
        let cmd = self.file_command(sandbox_id, path, op, extra).await?;
        let raw = self.raw(sandbox_id, cmd, None).await?;
        file_op_result(raw, op, path)
    }

    /// The sandbox's agent connection, or `None` when its container has no
    /// agent. A container whose main process cannot be told yet, or whose
    /// agent does not answer, is not ready: its commands never go through
    /// the engine's exec instead, where they could run before the agent has
    /// made itself unreachable.
    async fn agent(
        &self,
        sandbox_id: &str,
    ) -> WharfResult<Option<std::sync::Arc<AgentConnection>>> {
        let container = object_name(sandbox_id);
        self.agents
            .get(sandbox_id, || docker_agent::probe(&self.docker, &container))
            .await
            .map_err(|why| {
                tracing::debug!(sandbox_id, %why, "exec agent not reachable");
                WharfError::new(
                    ErrorCode::SessionNotReady,
                    format!("the exec agent of sandbox {sandbox_id} is not reachable: {why}"),
                )
                .with_retry_after(Duration::from_millis(1000))
            })
    }

    /// An exec through the sandbox's agent: one request on the attached
    /// connection, no engine round trip.
    async fn exec_with_agent(
        &self,
        agent: &AgentConnection,
        sandbox_id: &str,
        request: ExecRequest,
    ) -> WharfResult<ExecOutput> {
        let root = self.workdir(sandbox_id).await?;
        let message = serde_json::json!({
            "op": "exec",
            "argv": request.argv,
            "env": request.env.iter().cloned().collect::<HashMap<String, String>>(),
            "root": root,
            "cwd": request.cwd.as_ref().map(|cwd| cwd.to_string()),
            "stdin": request.stdin.as_ref().map(|data| BASE64.encode(data)),
            "timeout": request.timeout.as_secs_f64(),
        });
        let gone = || {
            self.agents.forget(sandbox_id);
            WharfError::new(
                ErrorCode::SessionNotReady,
                format!("the runtime of sandbox {sandbox_id} went away during the exec"),
            )
            .with_retry_after(Duration::from_millis(1000))
        };
        let started = Instant::now();
        let mut replies = agent.request(message).await.map_err(|_| gone())?;
        // The agent kills the group at the timeout; this is the safety net.
        let deadline = tokio::time::Instant::now() + request.timeout + Duration::from_secs(3);
        let mut out = ExecOutput::default();
        let code = loop {
            let reply = match tokio::time::timeout_at(deadline, replies.recv()).await {
                Err(_) => {
                    out.timed_out = true;
                    break None;
                }
                Ok(None) => return Err(gone()),
                Ok(Some(reply)) => reply,
            };
            if let Some(data) = &reply.data {
                let kind = if reply.stream.as_deref() == Some("err") {
                    StreamKind::Stderr
                } else {
                    StreamKind::Stdout
                };
                let data = BASE64
                    .decode(data)
                    .map_err(|err| WharfError::internal(format!("exec agent output: {err}")))?;
                out.keep(kind, &data, request.output_cap, request.sink.as_ref())
                    .await;
            } else if let Some(error) = &reply.error {
                return Err(agent_error(
                    error,
                    reply.message.clone().unwrap_or_default(),
                ));
            } else if let Some(code) = reply.exit {
                out.timed_out = reply.timed_out == Some(true);
                break Some(code);
            }
        };
        out.duration = started.elapsed();
        Ok(self.settle(sandbox_id, out, code).await)
    }

    /// Sets the exit code from the command's `code` (none after a timeout)
    /// and, for a command killed by SIGKILL, whether the OOM killer did it.
    async fn settle(&self, sandbox_id: &str, mut out: ExecOutput, code: Option<i64>) -> ExecOutput {
        out.exit_code = if out.timed_out {
            None
        } else {
            code.map(|c| c as i32)
        };
        if code == Some(137) && !out.timed_out {
            out.oom_killed = self.oom_happened(sandbox_id).await;
        }
        out
    }

    /// An exec through the engine (`docker exec`), for containers without
    /// the agent.
    async fn exec_with_engine(
        &self,
        sandbox_id: &str,
        request: ExecRequest,
    ) -> WharfResult<ExecOutput> {
        let workdir = match &request.cwd {
            Some(cwd) if !cwd.is_root() => {
                String::from_utf8_lossy(&self.file_op(sandbox_id, cwd, "cwd", &[]).await?)
                    .into_owned()
            }
            _ => self.workdir(sandbox_id).await?,
        };
        let secs = request.timeout.as_secs_f64().max(0.001);
        let mut cmd: Vec<String> = ["sh", "-c", EXEC_WRAPPER, "sh", &format!("{secs:.3}")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cmd.extend(request.argv.iter().cloned());
        let env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let started = Instant::now();
        let (exec_id, mut output, writer) = self
            .attach_exec(
                sandbox_id,
                ExecConfig {
                    cmd: Some(cmd),
                    env: Some(env),
                    working_dir: Some(workdir),
                    ..Default::default()
                },
                request.stdin.clone().map(bytes_stream),
            )
            .await?;
        let mut out = ExecOutput::default();
        // `timeout` kills the group; the host deadline is a safety net for
        // processes that left the group but hold the output open.
        let deadline = tokio::time::Instant::now() + request.timeout + Duration::from_secs(3);
        let mut host_deadline_hit = false;
        loop {
            let next = match tokio::time::timeout_at(deadline, output.next()).await {
                Ok(next) => next,
                Err(_) => {
                    host_deadline_hit = true;
                    break;
                }
            };
            let Some(chunk) = next else { break };
            let (kind, message) = match chunk.map_err(|err| engine_error("exec output", err))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    (StreamKind::Stdout, message)
                }
                LogOutput::StdErr { message } => (StreamKind::Stderr, message),
                LogOutput::StdIn { .. } => continue,
            };
            out.keep(kind, &message, request.output_cap, request.sink.as_ref())
                .await;
        }
        writer.abort();
        out.duration = started.elapsed();
        let code = if host_deadline_hit {
            None
        } else {
            self.exit_code(&exec_id).await?
        };
        // `timeout -s KILL` dies with its group: 137 at (or past) the deadline.
        let killed = code == Some(137) || code == Some(124);
        out.timed_out = host_deadline_hit
            || (killed && out.duration + Duration::from_millis(20) >= request.timeout);
        Ok(self.settle(sandbox_id, out, code).await)
    }

    /// The error a lost agent connection gives: the sandbox's connection is
    /// forgotten, and the next call makes a new one.
    fn agent_gone(&self, sandbox_id: &str) -> WharfError {
        self.agents.forget(sandbox_id);
        WharfError::new(
            ErrorCode::SessionNotReady,
            format!("the runtime of sandbox {sandbox_id} went away during the call"),
        )
        .with_retry_after(Duration::from_millis(1000))
    }

    /// Sends one file request to the agent and waits for its last reply
    /// (`done`, or an error), collecting any directory entries on the way.
    async fn agent_file_request(
        &self,
        agent: &AgentConnection,
        sandbox_id: &str,
        message: serde_json::Value,
    ) -> WharfResult<(Reply, Vec<(String, String, u64)>)> {
        let mut replies = agent
            .request(message)
            .await
            .map_err(|_| self.agent_gone(sandbox_id))?;
        let mut entries = Vec::new();
        loop {
            let mut reply = match tokio::time::timeout(AGENT_FILE_TIMEOUT, replies.recv()).await {
                Err(_) => {
                    return Err(WharfError::new(
                        ErrorCode::Timeout,
                        "the sandbox's exec agent did not finish the file operation in time",
                    ));
                }
                Ok(None) => return Err(self.agent_gone(sandbox_id)),
                Ok(Some(reply)) => reply,
            };
            if let Some(code) = &reply.error {
                return Err(agent_error(code, reply.message.clone().unwrap_or_default()));
            }
            if let Some(batch) = reply.entries.take() {
                entries.extend(batch);
            }
            if reply.done.is_some() {
                return Ok((reply, entries));
            }
        }
    }

    /// A file read through the agent: its size first, then the bytes as the
    /// caller takes them. A download dropped early cancels the read.
    async fn read_with_agent(
        &self,
        agent: Arc<AgentConnection>,
        sandbox_id: &str,
        path: &SandboxPath,
    ) -> WharfResult<FileDownload> {
        let root = self.workdir(sandbox_id).await?;
        let message = serde_json::json!({"op": "read", "root": root, "path": path.to_string()});
        let (id, mut replies) = agent
            .tracked_request(message)
            .await
            .map_err(|_| self.agent_gone(sandbox_id))?;
        let first = replies
            .recv()
            .await
            .ok_or_else(|| self.agent_gone(sandbox_id))?;
        if let Some(code) = &first.error {
            return Err(agent_error(code, first.message.clone().unwrap_or_default()));
        }
        let size = first.size.ok_or_else(|| {
            WharfError::internal(format!("reading {path}: the agent sent no size"))
        })?;
        let read = AgentRead {
            replies,
            cancel: Some((agent, id)),
        };
        let body = futures::stream::unfold(read, |mut read| async move {
            // Ended: the last reply came, or an error was handed on.
            read.cancel.as_ref()?;
            let reply = match read.replies.recv().await {
                Some(reply) => reply,
                None => {
                    let err = WharfError::new(
                        ErrorCode::SessionNotReady,
                        "the sandbox's exec agent went away during the download",
                    );
                    drop(read.cancel.take());
                    return Some((Err(err), read));
                }
            };
            if reply.done.is_some() {
                drop(read.cancel.take());
                return None;
            }
            if let Some(code) = &reply.error {
                drop(read.cancel.take());
                let err = agent_error(code, reply.message.clone().unwrap_or_default());
                return Some((Err(err), read));
            }
            let data = reply.data.as_deref().unwrap_or_default();
            let chunk = BASE64
                .decode(data)
                .map(Bytes::from)
                .map_err(|err| WharfError::internal(format!("exec agent file data: {err}")));
            Some((chunk, read))
        });
        Ok(FileDownload {
            size,
            body: Box::pin(body),
        })
    }

    /// A file written through the agent: a temporary file beside the target,
    /// filled in chunks and renamed over it when the body ended well; on any
    /// error it is removed and the old file stays.
    async fn write_with_agent(
        &self,
        agent: &AgentConnection,
        sandbox_id: &str,
        path: &SandboxPath,
        upload: FileUpload,
    ) -> WharfResult<u64> {
        let root = self.workdir(sandbox_id).await?;
        let handle = docker_agent::request_id();
        let open = serde_json::json!({
            "op": "write_open", "root": root, "path": path.to_string(),
            "handle": handle, "tmp": upload_tmp_name(),
        });
        self.agent_file_request(agent, sandbox_id, open).await?;
        let mut body = upload.body;
        let sent: WharfResult<()> = async {
            while let Some(chunk) = body.next().await {
                for piece in chunk?.chunks(AGENT_WRITE_CHUNK) {
                    let message = serde_json::json!({
                        "op": "write_chunk", "handle": handle, "data": BASE64.encode(piece),
                    });
                    agent
                        .notify(&message)
                        .await
                        .map_err(|_| self.agent_gone(sandbox_id))?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(err) = sent {
            let abort = serde_json::json!({"op": "write_abort", "handle": handle});
            let _ = self.agent_file_request(agent, sandbox_id, abort).await;
            return Err(err);
        }
        let commit = serde_json::json!({
            "op": "write_commit", "handle": handle, "size": upload.declared_size,
        });
        let (reply, _) = self.agent_file_request(agent, sandbox_id, commit).await?;
        Ok(reply.written.unwrap_or_default())
    }

    /// Reads the cgroup's OOM-kill counter; true when it grew since last read.
    async fn oom_happened(&self, sandbox_id: &str) -> bool {
        // cgroup v2 `memory.events`, or v1 `memory.oom_control`: both have an `oom_kill N` line.
        let script =
            "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null";
        let cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let Ok(raw) = self.raw(sandbox_id, cmd, None).await else {
            return false;
        };
        let text = String::from_utf8_lossy(&raw.stdout);
        let count = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let previous = self
            .oom_counts
            .lock()
            .insert(sandbox_id.to_string(), count)
            .unwrap_or(0);
        count > previous
    }
}

#[async_trait]
impl SandboxDriver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, sandbox_id: &str, spec: &SandboxSpec) -> WharfResult<()> {
        let profile = &spec.profile;
        let name = object_name(sandbox_id);
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), sandbox_id.to_string()),
            (LABEL_OWNER.to_string(), spec.owner.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_WORKDIR.to_string(), profile.workdir.clone()),
            ("wharf.profile".to_string(), profile.name.clone()),
        ]);
        let limits = self.defaults.for_profile(profile)?;
        check_user(profile)?;
        let result: WharfResult<()> = async {
            self.docker
                .create_volume(VolumeCreateRequest { name: Some(name.clone()), labels: Some(labels.clone()), ..Default::default() })
                .await
                .map_err(|err| engine_error("create volume", err))?;
            let body = container_body(profile, &limits, &name, labels.clone());
            let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
            self.docker.create_container(Some(options), body).await.map_err(|err| match &err {
                bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => WharfError::validation(format!(
                    "image {:?} is not available locally; build it with scripts/build-base-image",
                    profile.image
                )),
                _ => engine_error("create container", err),
            })?;
            self.docker.start_container(&name, None).await.map_err(|err| engine_error("start container", err))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.workdirs
                    .lock()
                    .insert(sandbox_id.to_string(), profile.workdir.clone());
                Ok(())
            }
            Err(err) => {
                // Nothing half-made is left behind.
                let _ = self.destroy(sandbox_id).await;
                Err(err)
            }
        }
    }

    async fn destroy(&self, sandbox_id: &str) -> WharfResult<()> {
        let name = object_name(sandbox_id);
        // By label, not only by name: whatever carries this sandbox's labels goes.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_SANDBOX}={sandbox_id}"),
                format!("{LABEL_INSTANCE}={}", self.instance),
            ],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|err| engine_error("list containers", err))?;
        let mut targets: Vec<String> = listed.into_iter().filter_map(|c| c.id).collect();
        targets.push(name.clone());
        for target in targets {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match self.docker.remove_container(&target, Some(options)).await {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(engine_error("remove container", err)),
            }
        }
        match self
            .docker
            .remove_volume(&name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(engine_error("remove volume", err)),
        }
        self.workdirs.lock().remove(sandbox_id);
        self.oom_counts.lock().remove(sandbox_id);
        self.agents.forget(sandbox_id);
        Ok(())
    }

    async fn stop(&self, sandbox_id: &str) -> WharfResult<()> {
        self.agents.forget(sandbox_id);
        let options = StopContainerOptions {
            t: Some(1),
            ..Default::default()
        };
        match self
            .docker
            .stop_container(&object_name(sandbox_id), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(err) => Err(engine_error("stop container", err)),
        }
    }

    async fn start(&self, sandbox_id: &str) -> WharfResult<()> {
        self.agents.forget(sandbox_id);
        match self
            .docker
            .start_container(&object_name(sandbox_id), None)
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(err) => Err(engine_error("start container", err)),
        }
    }

    async fn health(&self, sandbox_id: &str) -> WharfResult<DriverHealth> {
        match self
            .docker
            .inspect_container(&object_name(sandbox_id), None)
            .await
        {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running == Some(true) {
                    Ok(DriverHealth::Running)
                } else {
                    Ok(DriverHealth::Dead {
                        oom_killed: state.oom_killed == Some(true),
                        exit_code: state.exit_code,
                    })
                }
            }
            Err(err) if is_not_found(&err) => Ok(DriverHealth::Missing),
            Err(err) => Err(engine_error("inspect", err)),
        }
    }

    async fn image_digest(&self, sandbox_id: &str) -> Option<String> {
        self.docker
            .inspect_container(&object_name(sandbox_id), None)
            .await
            .ok()
            .and_then(|info| info.image)
    }

    async fn image_id(&self, image: &str) -> Option<String> {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|info| info.id)
    }

    async fn sandbox_ids(&self) -> WharfResult<Vec<String>> {
        let mut ids = Vec::new();
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(&self.instance)),
                ..Default::default()
            }))
            .await
            .map_err(|err| engine_error("list containers", err))?;
        for container in containers {
            if let Some(id) = container
                .labels
                .and_then(|mut labels| labels.remove(LABEL_SANDBOX))
            {
                ids.push(id);
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filter(&self.instance)),
            }))
            .await
            .map_err(|err| engine_error("list volumes", err))?;
        for volume in volumes.volumes.unwrap_or_default() {
            if let Some(id) = volume.labels.get(LABEL_SANDBOX) {
                ids.push(id.clone());
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn exec(&self, sandbox_id: &str, request: ExecRequest) -> WharfResult<ExecOutput> {
        if request.argv.is_empty() {
            return Err(WharfError::validation("argv must not be empty"));
        }
        match self.agent(sandbox_id).await? {
            Some(agent) => self.exec_with_agent(&agent, sandbox_id, request).await,
            None => self.exec_with_engine(sandbox_id, request).await,
        }
    }

    async fn read_file(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<FileDownload> {
        if let Some(agent) = self.agent(sandbox_id).await? {
            return self.read_with_agent(agent, sandbox_id, path).await;
        }
        // The script prints the size on a line of its own, then exactly that
        // many bytes; without the size line, its exit code says what failed.
        let cmd = self.file_command(sandbox_id, path, "read", &[]).await?;
        let (exec_id, mut output, _) = self
            .attach_exec(
                sandbox_id,
                ExecConfig {
                    cmd: Some(cmd),
                    ..Default::default()
                },
                None,
            )
            .await?;
        let mut head = Vec::new();
        let mut stderr = Vec::new();
        while !head.contains(&b'\n') {
            match output.next().await {
                Some(chunk) => match chunk.map_err(|err| engine_error("exec output", err))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        head.extend_from_slice(&message)
                    }
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    LogOutput::StdIn { .. } => {}
                },
                None => {
                    let code = self.exit_code(&exec_id).await?;
                    let raw = Raw {
                        code: code.unwrap_or(-1),
                        stdout: head,
                        stderr,
                        stdin: Ok(0),
                    };
                    file_op_result(raw, "read", path)?;
                    return Err(WharfError::internal(format!(
                        "reading {path}: the sandbox sent no size"
                    )));
                }
            }
        }
        let newline = head.iter().position(|b| *b == b'\n').unwrap_or_default();
        let size = std::str::from_utf8(&head[..newline])
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| WharfError::internal(format!("reading {path}: bad size line")))?;
        let first = Bytes::copy_from_slice(&head[newline + 1..]);
        let rest = output.filter_map(|chunk| async move {
            match chunk {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok(message))
                }
                Ok(_) => None,
                Err(err) => Some(Err(engine_error("exec output", err))),
            }
        });
        let body = futures::stream::iter((!first.is_empty()).then_some(Ok(first))).chain(rest);
        Ok(FileDownload {
            size,
            body: Box::pin(body),
        })
    }

    async fn write_file(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        upload: FileUpload,
    ) -> WharfResult<u64> {
        refuse_root(path, "write to")?;
        if let Some(agent) = self.agent(sandbox_id).await? {
            return self
                .write_with_agent(&agent, sandbox_id, path, upload)
                .await;
        }
        // With an announced size, the script checks it and renames in one
        // exec; without one, a second exec commits once the body ended well.
        let tmp = upload_tmp_name();
        let declared = upload
            .declared_size
            .map(|n| n.to_string())
            .unwrap_or_default();
        let cmd = self
            .file_command(sandbox_id, path, "write", &[&tmp, &declared])
            .await?;
        let raw = self.raw(sandbox_id, cmd, Some(upload.body)).await?;
        let written = match raw.stdin {
            Ok(written) => written,
            Err(ref err) => {
                let err = err.clone();
                let _ = self.file_op(sandbox_id, path, "discard", &[&tmp]).await;
                return Err(err);
            }
        };
        file_op_result(raw, "write", path)?;
        if upload.declared_size.is_none() {
            self.file_op(sandbox_id, path, "commit", &[&tmp]).await?;
        }
        Ok(written)
    }

    async fn list_dir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<Vec<DirEntry>> {
        let mut entries = Vec::new();
        if let Some(agent) = self.agent(sandbox_id).await? {
            let root = self.workdir(sandbox_id).await?;
            let message = serde_json::json!({"op": "list", "root": root, "path": path.to_string()});
            let (_, listed) = self.agent_file_request(&agent, sandbox_id, message).await?;
            for (name, kind, size) in listed {
                entries.push(DirEntry {
                    name,
                    kind: entry_kind(&kind),
                    size,
                });
            }
        } else {
            let raw = self.file_op(sandbox_id, path, "list", &[]).await?;
            for record in raw.split(|b| *b == 0).filter(|r| !r.is_empty()) {
                let text = String::from_utf8_lossy(record);
                let mut fields = text.splitn(3, '\t');
                let (Some(kind), Some(size), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                entries.push(DirEntry {
                    name: name.to_string(),
                    kind: entry_kind(kind),
                    size: size.parse().unwrap_or(0),
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn remove(
        &self,
        sandbox_id: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> WharfResult<()> {
        refuse_root(path, "remove")?;
        if let Some(agent) = self.agent(sandbox_id).await? {
            let root = self.workdir(sandbox_id).await?;
            let message = serde_json::json!({
                "op": "remove", "root": root, "path": path.to_string(), "recursive": recursive,
            });
            return self
                .agent_file_request(&agent, sandbox_id, message)
                .await
                .map(|_| ());
        }
        self.file_op(sandbox_id, path, "rm", &[if recursive { "1" } else { "0" }])
            .await
            .map(|_| ())
    }

    async fn mkdir(&self, sandbox_id: &str, path: &SandboxPath) -> WharfResult<()> {
        if let Some(agent) = self.agent(sandbox_id).await? {
            let root = self.workdir(sandbox_id).await?;
            let message =
                serde_json::json!({"op": "mkdir", "root": root, "path": path.to_string()});
            return self
                .agent_file_request(&agent, sandbox_id, message)
                .await
                .map(|_| ());
        }
        self.file_op(sandbox_id, path, "mkdir", &[])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::sync::mpsc;

    use super::docker_agent::{AgentOutput, MAX_REPLY_LINE, Probe};
    use super::*;

    const SANDBOX: &str = "sbx_test";

    /// A driver whose engine is never called: its sandbox's workdir is known,
    /// and its agent connections are the fakes a test hands it.
    fn offline_driver(socket: &std::path::Path) -> DockerDriver {
        std::fs::write(socket, b"").unwrap();
        let docker =
            Docker::connect_with_unix(socket.to_str().unwrap(), 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        DockerDriver {
            docker,
            instance: "test".to_string(),
            defaults: DockerDefaults {
                memory_mib: 512,
                pids: 256,
                cpus: 1.0,
            },
            workdirs: Mutex::new(HashMap::from([(
                SANDBOX.to_string(),
                "/workspace".to_string(),
            )])),
            oom_counts: Mutex::new(HashMap::new()),
            agents: Agents::default(),
        }
    }

    /// One line the fake agent sends: its `id` is filled in from the request.
    type Script = fn(&serde_json::Value) -> Vec<Vec<u8>>;

    /// A connection to a fake agent that answers pings, and answers each
    /// exec request with what `script` returns (raw bytes, sent as they are).
    async fn fake_agent(script: Script) -> Arc<AgentConnection> {
        let (server_side, agent_side) = tokio::io::duplex(64 * 1024);
        let (out_sender, out_receiver) = mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let mut requests = BufReader::new(agent_side).lines();
            while let Ok(Some(line)) = requests.next_line().await {
                let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                let answer = if request["op"] == "ping" {
                    vec![format!("{{\"id\":{},\"pong\":true}}\n", request["id"]).into_bytes()]
                } else {
                    script(&request)
                };
                for chunk in answer {
                    if out_sender.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let output: AgentOutput = Box::pin(futures::stream::unfold(
            out_receiver,
            |mut receiver| async move {
                let message = receiver.recv().await?;
                Some((Ok(LogOutput::StdOut { message }), receiver))
            },
        ));
        AgentConnection::open(Box::pin(server_side), output, "fake")
            .await
            .unwrap()
    }

    fn echo_request() -> ExecRequest {
        ExecRequest {
            argv: vec!["echo".to_string(), "hello".to_string()],
            timeout: Duration::from_secs(10),
            output_cap: 1024,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_reply_line_past_the_cap_drops_the_connection_and_the_next_exec_makes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let driver = offline_driver(&dir.path().join("docker.sock"));

        // An agent that answers an exec with a line that never ends: more than
        // the cap, in 4 KiB chunks, without a newline.
        let flooding = fake_agent(|_| vec![vec![b'x'; 4096]; MAX_REPLY_LINE / 4096 + 2]).await;
        let connected = driver
            .agents
            .get(SANDBOX, || async { Ok(Probe::Agent(flooding.clone())) })
            .await
            .unwrap();
        assert!(connected.is_some());
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            driver.exec(SANDBOX, echo_request()),
        )
        .await
        .expect("the exec ends instead of waiting for a newline");
        let err = result.expect_err("a flooded connection gives no output");
        assert_eq!(err.code, ErrorCode::SessionNotReady, "{err:?}");
        assert!(err.retriable(), "{err:?}");
        assert!(flooding.is_closed(), "the connection was dropped");

        // The next exec makes a new connection (the probe runs again) and works.
        let good = fake_agent(|request| {
            let id = &request["id"];
            vec![
                format!("{{\"id\":{id},\"stream\":\"out\",\"data\":\"aGVsbG8K\"}}\n").into_bytes(),
                format!("{{\"id\":{id},\"exit\":0,\"timed_out\":false}}\n").into_bytes(),
            ]
        })
        .await;
        let probed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        driver
            .agents
            .get(SANDBOX, || async {
                probed.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(Probe::Agent(good.clone()))
            })
            .await
            .unwrap();
        assert!(probed.load(std::sync::atomic::Ordering::Relaxed));
        let out = driver.exec(SANDBOX, echo_request()).await.unwrap();
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (Some(0), b"hello\n".as_slice())
        );
    }

    #[tokio::test]
    async fn replies_with_another_id_never_reach_an_exec() {
        let dir = tempfile::tempdir().unwrap();
        let driver = offline_driver(&dir.path().join("docker.sock"));
        // Replies for ids the server did not send (as a forger would guess
        // them), then the true ones.
        let agent = fake_agent(|request| {
            let id = request["id"].as_str().unwrap();
            let mut lines = Vec::new();
            for guess in ["1", "2", "00000000000000000000000000000001"] {
                lines.push(
                    format!(
                        "{{\"id\":\"{guess}\",\"stream\":\"out\",\"data\":\"Rk9SR0VECg==\"}}\n"
                    )
                    .into_bytes(),
                );
                lines.push(format!("{{\"id\":\"{guess}\",\"exit\":0}}\n").into_bytes());
            }
            lines.push(
                format!("{{\"id\":\"{id}\",\"stream\":\"out\",\"data\":\"aGVsbG8K\"}}\n")
                    .into_bytes(),
            );
            lines
                .push(format!("{{\"id\":\"{id}\",\"exit\":3,\"timed_out\":false}}\n").into_bytes());
            lines
        })
        .await;
        driver
            .agents
            .get(SANDBOX, || async { Ok(Probe::Agent(agent.clone())) })
            .await
            .unwrap();
        let out = driver.exec(SANDBOX, echo_request()).await.unwrap();
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (Some(3), b"hello\n".as_slice())
        );
    }

    #[test]
    fn every_container_is_confined_and_limited_whatever_the_profile_omits() {
        let defaults = DockerDefaults {
            memory_mib: 300,
            pids: 100,
            cpus: 0.5,
        };
        let mut profile = Profile::builtin_docker();
        profile.memory_mib = None;
        profile.pids_limit = None;
        profile.cpus = None;
        let limits = defaults.for_profile(&profile).unwrap();
        assert_eq!(limits, defaults);
        let body = container_body(&profile, &limits, "wharf-x", HashMap::new());
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let host = body.host_config.unwrap();
        assert_eq!(host.memory, Some(300 * 1024 * 1024));
        assert_eq!(host.pids_limit, Some(100));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.init, Some(false));
        assert!(host.binds.is_none());

        profile.pids_limit = Some(0);
        let err = defaults.for_profile(&profile).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(err.message.contains("pids"), "{err:?}");
        profile.pids_limit = None;
        profile.memory_mib = Some(u64::MAX);
        let err = defaults.for_profile(&profile).unwrap_err();
        assert!(err.message.contains("memory_mib"), "{err:?}");

        // Only a numeric, non-root uid:gid.
        for user in [
            "0:0",
            "1000:0",
            "0:1000",
            "root",
            "sandbox:sandbox",
            "1000",
            "",
        ] {
            profile.user = user.to_string();
            let err = check_user(&profile).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError, "{user}");
        }
        profile.user = "1001:1002".to_string();
        check_user(&profile).unwrap();
        let config = SandboxConfig {
            docker_default_memory_mib: 0,
            ..SandboxConfig::default()
        };
        assert!(
            DockerDefaults::from_config(&config)
                .unwrap_err()
                .to_string()
                .contains("docker_default_memory_mib")
        );
    }
}
