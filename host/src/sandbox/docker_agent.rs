//! The host side of a Docker sandbox's exec agent (`docker_agent.py`).
//!
//! When the image has python3, the agent is the container's main process and
//! the server keeps one attached connection to the container's stdin and
//! stdout: an exec is one JSON line out and a few back, instead of the
//! engine's create/start/inspect round trips of `docker exec`. Images without
//! python3 run `sleep infinity` instead, and their execs use `docker exec`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptions;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const SOURCE: &str = include_str!("docker_agent.py");

/// The container variable that carries the agent's source. Copying a file in
/// with the engine's archive API costs about 50 ms per create; the variable
/// costs nothing. The agent drops it from the environment its commands get.
const SOURCE_VARIABLE: &str = "WHARF_EXEC_AGENT";
/// How the agent's process line starts in `docker top`.
const AGENT_COMMAND: &str = "python3 -u -c import os;";
/// How the fallback's process line starts (an image without python3).
const FALLBACK_COMMAND: &str = "sleep infinity";

/// The container's main command: the agent where the image has python3,
/// else a plain sleep.
pub(super) fn container_command() -> Vec<String> {
    let script = format!(
        "if command -v python3 >/dev/null 2>&1; then exec python3 -u -c 'import os; exec(os.environ.pop(\"{SOURCE_VARIABLE}\"))'; fi; exec {FALLBACK_COMMAND}"
    );
    vec!["sh".to_string(), "-c".to_string(), script]
}

/// The container environment entry that hands the agent its source.
pub(super) fn source_variable() -> String {
    format!("{SOURCE_VARIABLE}={SOURCE}")
}

/// One line from the agent (see `docker_agent.py` for the protocol).
#[derive(Debug, Deserialize)]
pub(super) struct Reply {
    id: Option<u64>,
    /// `out` or `err`, with base64 `data`.
    pub stream: Option<String>,
    pub data: Option<String>,
    pub exit: Option<i64>,
    pub timed_out: Option<bool>,
    pub error: Option<String>,
    pub message: Option<String>,
    pong: Option<bool>,
}

impl Reply {
    fn is_last(&self) -> bool {
        self.exit.is_some() || self.error.is_some() || self.pong.is_some()
    }
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Reply>>>>;

/// Replies buffered per request. The reader waits when a request's consumer
/// is slow (a streamed exec), so the agent's output backs up into the
/// container instead of the server's memory.
const REPLIES_BUFFERED: usize = 16;

/// Request ids are unique across connections: two connections to one
/// container both see every reply, and each keeps only its own.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An attached connection to one container's agent.
pub(super) struct AgentConnection {
    input: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

impl AgentConnection {
    /// Attaches to the container's stdio and checks that the agent answers.
    async fn connect(docker: &Docker, container: &str) -> Result<Arc<Self>, String> {
        let options = AttachContainerOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            stream: true,
            // Earlier output is not replayed. (The engine's detach keys,
            // ctrl-p ctrl-q, never occur: JSON escapes control characters.)
            logs: false,
            detach_keys: None,
        };
        let attached = docker
            .attach_container(container, Some(options))
            .await
            .map_err(|err| format!("attach: {err}"))?;
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_replies(
            attached.output,
            pending.clone(),
            closed.clone(),
            container.to_string(),
        ));
        let connection = Arc::new(Self {
            input: tokio::sync::Mutex::new(attached.input),
            pending,
            closed,
        });
        let mut pong = connection
            .request(serde_json::json!({"op": "ping"}))
            .await
            .map_err(|err| format!("ping: {err}"))?;
        match tokio::time::timeout(Duration::from_secs(5), pong.recv()).await {
            Ok(Some(reply)) if reply.pong == Some(true) => Ok(connection),
            _ => Err("the agent did not answer a ping".to_string()),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sends one request; its replies arrive on the returned channel, which
    /// closes after the last one (or when the connection is lost).
    pub(super) async fn request(
        &self,
        mut message: serde_json::Value,
    ) -> std::io::Result<mpsc::Receiver<Reply>> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        message["id"] = id.into();
        let mut line = serde_json::to_vec(&message)?;
        line.push(b'\n');
        let (sender, receiver) = mpsc::channel(REPLIES_BUFFERED);
        self.pending.lock().insert(id, sender);
        let mut input = self.input.lock().await;
        let written = match input.write_all(&line).await {
            Ok(()) => input.flush().await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            self.pending.lock().remove(&id);
            self.closed.store(true, Ordering::Relaxed);
            return Err(err);
        }
        Ok(receiver)
    }
}

/// Splits the agent's stdout into lines and hands each reply to its request.
async fn read_replies(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    container: String,
) {
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = output.next().await {
        let message = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => message,
            LogOutput::StdErr { message } => {
                tracing::warn!(container, agent = %String::from_utf8_lossy(&message).trim(), "sandbox exec agent");
                continue;
            }
            LogOutput::StdIn { .. } => continue,
        };
        let searched = buffer.len();
        buffer.extend_from_slice(&message);
        let Some(last_newline) = buffer[searched..]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|pos| searched + pos)
        else {
            continue;
        };
        let complete: Vec<u8> = buffer.drain(..=last_newline).collect();
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(reply) = serde_json::from_slice::<Reply>(line) else {
                continue;
            };
            let Some(id) = reply.id else { continue };
            let last = reply.is_last();
            let sender = {
                let mut pending = pending.lock();
                let sender = pending.get(&id).cloned();
                if last {
                    pending.remove(&id);
                }
                sender
            };
            if let Some(sender) = sender {
                let _ = sender.send(reply).await;
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    pending.lock().clear();
}

/// What is known of one sandbox's agent.
#[derive(Default)]
enum Slot {
    #[default]
    Unknown,
    /// The image has no python3: execs use `docker exec`.
    Absent,
    Ready(Arc<AgentConnection>),
}

/// The agent connections of a driver's sandboxes, made on first use.
#[derive(Default)]
pub(super) struct Agents {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Agents {
    /// The sandbox's agent connection; `None` when its container has no
    /// agent (or it cannot be reached now), so the caller uses `docker exec`.
    pub(super) async fn get(
        &self,
        docker: &Docker,
        sandbox_id: &str,
        container: &str,
    ) -> Option<Arc<AgentConnection>> {
        let slot = self
            .slots
            .lock()
            .entry(sandbox_id.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Ready(connection) if !connection.is_closed() => {
                return Some(connection.clone());
            }
            Slot::Absent => return None,
            _ => {}
        }
        match find_agent(docker, container).await {
            Ok(true) => match AgentConnection::connect(docker, container).await {
                Ok(connection) => {
                    *slot = Slot::Ready(connection.clone());
                    Some(connection)
                }
                Err(why) => {
                    tracing::warn!(sandbox_id, %why, "exec agent unreachable; using docker exec");
                    *slot = Slot::Unknown;
                    None
                }
            },
            Ok(false) => {
                *slot = Slot::Absent;
                None
            }
            Err(why) => {
                tracing::debug!(sandbox_id, %why, "exec agent not found yet; using docker exec");
                *slot = Slot::Unknown;
                None
            }
        }
    }

    /// Forgets the sandbox's connection (its container stopped, restarted or
    /// went away).
    pub(super) fn forget(&self, sandbox_id: &str) {
        self.slots.lock().remove(sandbox_id);
    }
}

/// Whether the container's main process is the agent (true) or the sleep
/// of an image without python3 (false), from the engine's process list.
async fn find_agent(docker: &Docker, container: &str) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let top = docker
            .top_processes(container, None)
            .await
            .map_err(|err| format!("top: {err}"))?;
        let column = top
            .titles
            .unwrap_or_default()
            .iter()
            .position(|title| title == "CMD" || title == "COMMAND")
            .ok_or("top: no command column")?;
        let commands: Vec<String> = top
            .processes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|process| process.into_iter().nth(column))
            .collect();
        if commands.iter().any(|c| c.starts_with(AGENT_COMMAND)) {
            return Ok(true);
        }
        if commands.iter().any(|c| c.starts_with(FALLBACK_COMMAND)) {
            return Ok(false);
        }
        // The main process is still the `sh` that picks one of the two.
        if tokio::time::Instant::now() >= deadline {
            return Err("neither the agent nor the fallback is running".to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
