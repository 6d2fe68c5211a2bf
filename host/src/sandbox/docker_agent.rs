//! The host side of a Docker sandbox's exec agent (`docker_agent.py`).
//!
//! When the image has python3, the agent is the container's PID 1 and the
//! server keeps one attached connection to the container's stdin and stdout:
//! an exec is one JSON line out and a few back, instead of the engine's
//! create/start/inspect round trips of `docker exec`. Images without python3
//! run a sleeping shell instead, and their execs use `docker exec`.
//!
//! Nothing in the sandbox can write on this connection (the agent is a
//! non-dumpable PID 1 whose stdio no command holds), and the server still
//! trusts it only so far: request ids are random (128 bits), a reply line
//! longer than [`MAX_REPLY_LINE`] drops the connection (the next exec makes a
//! new one), and each request's replies wait in a short bounded queue.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// The main process of a container without the agent: a shell that sleeps and,
/// as PID 1, reaps the orphans of engine execs (its waits take any child).
/// Also in `docker_agent.py`, which turns into it when it cannot protect itself.
const NO_AGENT_LOOP: &str = "while :; do sleep 3600; done";
/// How the no-agent main process's line starts in `docker top`.
const NO_AGENT_COMMAND: &str = "sh -c while :; do sleep 3600; done";

/// The longest reply line the server accepts. The agent's lines stay under
/// 90 KiB (64 KiB output chunks, base64-encoded); a longer one means the
/// connection is not what it should be, and it is dropped and made again.
pub(super) const MAX_REPLY_LINE: usize = 256 * 1024;
/// Replies of one request waiting for its exec to take them. The reader
/// waits when a queue is full, so the server never holds more than this many
/// lines per request.
const REPLY_QUEUE: usize = 16;
/// How much of one stderr message of the agent is logged.
const AGENT_STDERR_LOGGED: usize = 512;

/// The container's main command: the agent as PID 1 where the image has
/// python3, else the no-agent loop (also PID 1, with no stdio).
pub(super) fn container_command() -> Vec<String> {
    let script = format!(
        "if command -v python3 >/dev/null 2>&1; then exec python3 -u -c 'import os; exec(os.environ.pop(\"{SOURCE_VARIABLE}\"))'; fi\n\
         exec sh -c '{NO_AGENT_LOOP}' wharf-no-agent </dev/null >/dev/null 2>&1"
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
    id: Option<String>,
    /// `out` or `err`, with base64 `data`.
    pub stream: Option<String>,
    pub data: Option<String>,
    pub exit: Option<i64>,
    pub timed_out: Option<bool>,
    pub error: Option<String>,
    pub message: Option<String>,
    pong: Option<bool>,
    /// A file request's size (`read`, first reply) and bytes written (`write_commit`).
    pub size: Option<u64>,
    pub written: Option<u64>,
    /// A batch of directory entries: name, kind (`f`, `d`, `l`, `o`) and size.
    pub entries: Option<Vec<(String, String, u64)>>,
    /// The last reply of a file request that went well.
    pub done: Option<bool>,
}

impl Reply {
    fn is_last(&self) -> bool {
        self.exit.is_some() || self.error.is_some() || self.pong.is_some() || self.done.is_some()
    }
}

type Pending = Arc<Mutex<HashMap<String, mpsc::Sender<Reply>>>>;

/// The agent's output as the engine delivers it.
pub(super) type AgentOutput =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
/// The agent's input.
pub(super) type AgentInput = Pin<Box<dyn AsyncWrite + Send>>;

/// A request id nobody can guess: 128 random bits from the thread's CSPRNG.
pub(super) fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An attached connection to one container's agent.
pub(super) struct AgentConnection {
    input: tokio::sync::Mutex<AgentInput>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

impl AgentConnection {
    /// Attaches to the container's stdio and checks that the agent answers.
    async fn attach(docker: &Docker, container: &str) -> Result<Arc<Self>, String> {
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
        Self::open(attached.input, attached.output, container).await
    }

    /// Starts reading replies from `output` and pings the agent on `input`.
    pub(super) async fn open(
        input: AgentInput,
        output: AgentOutput,
        container: &str,
    ) -> Result<Arc<Self>, String> {
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_replies(
            output,
            pending.clone(),
            closed.clone(),
            container.to_string(),
        ));
        let connection = Arc::new(Self {
            input: tokio::sync::Mutex::new(input),
            pending,
            closed,
        });
        let mut pong = connection
            .request(serde_json::json!({"op": "ping"}))
            .await
            .map_err(|err| format!("ping: {err}"))?;
        match tokio::time::timeout(Duration::from_secs(5), pong.recv()).await {
            Ok(Some(reply)) if reply.pong == Some(true) => Ok(connection),
            _ => {
                connection.close();
                Err("the agent did not answer a ping".to_string())
            }
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.pending.lock().clear();
    }

    /// Sends one request; its replies arrive on the returned channel, which
    /// closes after the last one (or when the connection is lost).
    pub(super) async fn request(
        &self,
        message: serde_json::Value,
    ) -> std::io::Result<mpsc::Receiver<Reply>> {
        Ok(self.tracked_request(message).await?.1)
    }

    /// [`Self::request`], also giving the request's id (to cancel it).
    pub(super) async fn tracked_request(
        &self,
        mut message: serde_json::Value,
    ) -> std::io::Result<(String, mpsc::Receiver<Reply>)> {
        let id = request_id();
        message["id"] = id.clone().into();
        let (sender, receiver) = mpsc::channel(REPLY_QUEUE);
        self.pending.lock().insert(id.clone(), sender);
        if let Err(err) = self.send_line(&message).await {
            self.pending.lock().remove(&id);
            return Err(err);
        }
        Ok((id, receiver))
    }

    /// Sends a request that gets no reply (an upload's chunk, a cancel).
    pub(super) async fn notify(&self, message: &serde_json::Value) -> std::io::Result<()> {
        self.send_line(message).await
    }

    async fn send_line(&self, message: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        let mut input = self.input.lock().await;
        let written = match input.write_all(&line).await {
            Ok(()) => input.flush().await,
            Err(err) => Err(err),
        };
        if written.is_err() {
            self.close();
        }
        written
    }
}

/// Splits a byte stream into lines, refusing any line longer than a cap: at
/// most one cap's worth of bytes is ever held.
#[derive(Debug)]
pub(super) struct CappedLines {
    partial: Vec<u8>,
    cap: usize,
    complete: VecDeque<Vec<u8>>,
}

/// A line went past [`CappedLines`]'s cap.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LineTooLong;

impl CappedLines {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            partial: Vec::new(),
            cap,
            complete: VecDeque::new(),
        }
    }

    /// Takes `bytes` in; complete lines (without their newline) wait in
    /// [`Self::next_line`].
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), LineTooLong> {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            if self.partial.len() + newline > self.cap {
                return Err(LineTooLong);
            }
            self.partial.extend_from_slice(&bytes[..newline]);
            self.complete.push_back(std::mem::take(&mut self.partial));
            bytes = &bytes[newline + 1..];
        }
        if self.partial.len() + bytes.len() > self.cap {
            return Err(LineTooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    pub(super) fn next_line(&mut self) -> Option<Vec<u8>> {
        self.complete.pop_front()
    }
}

/// Splits the agent's stdout into lines and hands each reply to its request.
/// Ends (and closes the connection) when the stream ends or a line is too long.
async fn read_replies(
    mut output: AgentOutput,
    pending: Pending,
    closed: Arc<AtomicBool>,
    container: String,
) {
    let mut lines = CappedLines::new(MAX_REPLY_LINE);
    'read: while let Some(Ok(chunk)) = output.next().await {
        let message = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => message,
            LogOutput::StdErr { message } => {
                let shown = &message[..message.len().min(AGENT_STDERR_LOGGED)];
                tracing::warn!(container, agent = %String::from_utf8_lossy(shown).trim(), "sandbox exec agent");
                continue;
            }
            LogOutput::StdIn { .. } => continue,
        };
        if lines.feed(&message).is_err() {
            tracing::warn!(
                container,
                max_bytes = MAX_REPLY_LINE,
                "exec agent sent a reply line past the cap: connection dropped"
            );
            break 'read;
        }
        while let Some(line) = lines.next_line() {
            let Ok(reply) = serde_json::from_slice::<Reply>(&line) else {
                continue;
            };
            let Some(id) = reply.id.clone() else { continue };
            let last = reply.is_last();
            let sender = if last {
                pending.lock().remove(&id)
            } else {
                pending.lock().get(&id).cloned()
            };
            if let Some(sender) = sender {
                // A request whose exec went away drops its receiver: the send fails at once.
                let _ = sender.send(reply).await;
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    pending.lock().clear();
}

/// What a container runs as its main process.
pub(super) enum Probe {
    /// The agent, with a connection to it.
    Agent(Arc<AgentConnection>),
    /// No agent (no python3 in the image): execs use `docker exec`.
    NoAgent,
}

/// What is known of one sandbox's agent.
#[derive(Default)]
enum Slot {
    #[default]
    Unknown,
    NoAgent,
    Ready(Arc<AgentConnection>),
}

/// The agent connections of a driver's sandboxes, made on first use.
#[derive(Default)]
pub(super) struct Agents {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Agents {
    /// The sandbox's agent connection, made with `probe` when there is none
    /// (or the last one closed): `Ok(None)` when its container has no agent;
    /// `Err` with the reason when it cannot be told or reached now.
    pub(super) async fn get<F, Fut>(
        &self,
        sandbox_id: &str,
        probe: F,
    ) -> Result<Option<Arc<AgentConnection>>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Probe, String>>,
    {
        let slot = self
            .slots
            .lock()
            .entry(sandbox_id.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Ready(connection) if !connection.is_closed() => {
                return Ok(Some(connection.clone()));
            }
            Slot::NoAgent => return Ok(None),
            _ => {}
        }
        *slot = Slot::Unknown;
        match probe().await? {
            Probe::Agent(connection) => {
                *slot = Slot::Ready(connection.clone());
                Ok(Some(connection))
            }
            Probe::NoAgent => {
                *slot = Slot::NoAgent;
                Ok(None)
            }
        }
    }

    /// Forgets the sandbox's connection (its container stopped, restarted or
    /// went away).
    pub(super) fn forget(&self, sandbox_id: &str) {
        self.slots.lock().remove(sandbox_id);
    }
}

/// Finds out what the container's PID 1 is, and attaches to it if it is the
/// agent.
pub(super) async fn probe(docker: &Docker, container: &str) -> Result<Probe, String> {
    if main_process_is_agent(docker, container).await? {
        Ok(Probe::Agent(
            AgentConnection::attach(docker, container).await?,
        ))
    } else {
        Ok(Probe::NoAgent)
    }
}

/// Whether the container's PID 1 is the agent (true) or the no-agent loop
/// (false). Only PID 1 counts, found by its host pid in the engine's process
/// list: any command can take a name that looks like the agent's.
async fn main_process_is_agent(docker: &Docker, container: &str) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = docker
            .inspect_container(container, None)
            .await
            .map_err(|err| format!("inspect: {err}"))?
            .state
            .unwrap_or_default();
        if state.running != Some(true) {
            return Err("the container is not running".to_string());
        }
        let main_pid = state.pid.unwrap_or_default().to_string();
        let top = docker
            .top_processes(container, None)
            .await
            .map_err(|err| format!("top: {err}"))?;
        let titles = top.titles.unwrap_or_default();
        let column = |name: &str| titles.iter().position(|title| title == name);
        let pid_column = column("PID").ok_or("top: no PID column")?;
        let command_column = column("CMD")
            .or_else(|| column("COMMAND"))
            .ok_or("top: no command column")?;
        let command = top
            .processes
            .unwrap_or_default()
            .into_iter()
            .find(|process| process.get(pid_column) == Some(&main_pid))
            .and_then(|process| process.into_iter().nth(command_column))
            .unwrap_or_default();
        if command.starts_with(AGENT_COMMAND) {
            return Ok(true);
        }
        if command.starts_with(NO_AGENT_COMMAND) {
            return Ok(false);
        }
        // PID 1 is still the `sh` that picks one of the two.
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the main process is neither the agent nor the no-agent loop: {command:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines_split_lines_and_refuse_long_ones() {
        let mut lines = CappedLines::new(8);
        lines.feed(b"one\ntw").unwrap();
        lines.feed(b"o\n\nthree").unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| lines.next_line()).collect();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), Vec::new()]);
        // "three" waits; three more bytes without a newline fit, a fourth does not.
        lines.feed(b"abc").unwrap();
        assert_eq!(lines.feed(b"d"), Err(LineTooLong));
        // A long line inside one chunk, newline and all, is refused too.
        let mut lines = CappedLines::new(8);
        assert_eq!(lines.feed(b"123456789\nok\n"), Err(LineTooLong));
        let mut lines = CappedLines::new(8);
        lines.feed(b"12345678\n").unwrap();
        assert_eq!(lines.next_line(), Some(b"12345678".to_vec()));
    }

    #[test]
    fn request_ids_are_128_random_bits() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn the_agent_and_the_driver_agree_on_the_no_agent_loop() {
        assert!(SOURCE.contains(&format!("NO_AGENT_LOOP = \"{NO_AGENT_LOOP}\"")));
        assert!(NO_AGENT_COMMAND.ends_with(NO_AGENT_LOOP));
    }
}
