//! Per-run append-only logs: lines `{offset, ts, stream, level, line}` stored first, then
//! sent to live followers.
//!
//! Offsets count a run's lines from 0 with no gap; one writer lock per run assigns them.
//! A follower subscribes to the live channel **before** it reads the store, then skips any
//! live line below the offset it expects: every line is either in the store when read or
//! arrives live, so a late or reconnecting follower misses nothing and sees nothing twice.
//! A follower that falls behind the live channel (lagged) simply reads the store again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::RunState;
use crate::error::WharfResult;
use crate::store::{Db, jobs as store};

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    System,
    Clone,
    Patch,
    Build,
    Run,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::System => "system",
            Stream::Clone => "clone",
            Stream::Patch => "patch",
            Stream::Build => "build",
            Stream::Run => "run",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log line as stored and sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub offset: i64,
    /// Unix seconds with fractions.
    pub ts: f64,
    pub stream: String,
    pub level: String,
    pub line: String,
}

impl From<store::LogRow> for LogLine {
    fn from(row: store::LogRow) -> Self {
        LogLine {
            offset: row.offset,
            ts: row.ts,
            stream: row.stream,
            level: row.level,
            line: row.line,
        }
    }
}

/// A page of a run's log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// The offset to ask for next.
    pub next_offset: i64,
    /// The log reached its cap; later lines were dropped (a marker line says so).
    pub truncated: bool,
    /// The run has ended: no line will be added.
    pub complete: bool,
}

/// Where the next line goes.
struct Cursor {
    next: i64,
    bytes: u64,
    truncated: bool,
}

struct RunLog {
    cursor: tokio::sync::Mutex<Option<Cursor>>,
    live: broadcast::Sender<LogLine>,
}

/// Live lines buffered per run for followers; one that falls further behind re-reads the store.
const LIVE_BUFFER: usize = 1024;
/// Lines read from the store at once by a follower.
const REPLAY_PAGE: i64 = 256;
/// How often an idle follower checks that its run has not ended unseen.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(super) struct Logs {
    db: Db,
    cap_bytes: u64,
    max_line_bytes: usize,
    live: Mutex<HashMap<String, Arc<RunLog>>>,
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `line` cut to at most `max` bytes (at a character boundary), marked with `…` when cut.
fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

impl Logs {
    pub(super) fn new(db: Db, cap_bytes: u64, max_line_bytes: usize) -> Self {
        Self {
            db,
            cap_bytes,
            max_line_bytes: max_line_bytes.max(16),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, id: &str) -> Arc<RunLog> {
        self.live
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(RunLog {
                    cursor: tokio::sync::Mutex::new(None),
                    live: broadcast::channel(LIVE_BUFFER).0,
                })
            })
            .clone()
    }

    /// Drops the run's live channel: its followers drain the store and end.
    pub(super) fn close(&self, id: &str) {
        self.live.lock().remove(id);
    }

    pub(super) async fn append(
        &self,
        id: &str,
        stream: Stream,
        level: Level,
        line: &str,
        ts: Option<f64>,
    ) -> WharfResult<()> {
        let log = self.entry(id);
        let mut cursor = log.cursor.lock().await;
        if cursor.is_none() {
            let Some(run) = store::get_run(&self.db, id).await? else {
                drop(cursor);
                self.close(id);
                return Ok(());
            };
            if RunState::parse(&run.state).is_some_and(RunState::is_terminal) {
                // A line after the end (e.g. a container's last words) is kept, but the
                // run keeps no live channel.
                self.close(id);
            }
            *cursor = Some(Cursor {
                next: run.log_lines,
                bytes: run.log_bytes.max(0) as u64,
                truncated: run.log_truncated,
            });
        }
        let cursor = cursor.as_mut().expect("loaded above");
        if cursor.truncated {
            return Ok(());
        }
        let text = cut(line, self.max_line_bytes);
        let (row, truncated) = if cursor.bytes + text.len() as u64 > self.cap_bytes {
            let marker = format!(
                "log truncated: this run's log reached its cap of {} bytes ([runs] log_cap_bytes); later lines are dropped",
                self.cap_bytes
            );
            (
                store::LogRow {
                    offset: cursor.next,
                    ts: unix_now(),
                    stream: Stream::System.as_str().into(),
                    level: Level::Warn.as_str().into(),
                    line: marker,
                },
                true,
            )
        } else {
            (
                store::LogRow {
                    offset: cursor.next,
                    ts: ts.unwrap_or_else(unix_now),
                    stream: stream.as_str().into(),
                    level: level.as_str().into(),
                    line: text,
                },
                false,
            )
        };
        let bytes = row.line.len() as u64;
        store::append_log(&self.db, id, &row, bytes as i64, truncated).await?;
        cursor.next += 1;
        cursor.bytes += bytes;
        cursor.truncated = truncated;
        // No follower is fine: the line is in the store.
        let _ = log.live.send(row.into());
        Ok(())
    }

    pub(super) async fn page(&self, id: &str, offset: i64, limit: i64) -> WharfResult<LogPage> {
        let run = store::get_run(&self.db, id)
            .await?
            .ok_or_else(|| crate::error::WharfError::not_found("run"))?;
        let lines: Vec<LogLine> = store::read_log(&self.db, id, offset.max(0), limit)
            .await?
            .into_iter()
            .map(LogLine::from)
            .collect();
        let next_offset = lines.last().map(|l| l.offset + 1).unwrap_or(offset.max(0));
        Ok(LogPage {
            complete: RunState::parse(&run.state).is_some_and(RunState::is_terminal)
                && next_offset >= run.log_lines,
            truncated: run.log_truncated,
            next_offset,
            lines,
        })
    }

    pub(super) async fn follow(&self, id: &str, offset: i64) -> WharfResult<LogFollower> {
        let existing = self.live.lock().get(id).cloned();
        let live = match existing {
            Some(log) => Some(log.live.subscribe()),
            None => {
                let run = store::get_run(&self.db, id)
                    .await?
                    .ok_or_else(|| crate::error::WharfError::not_found("run"))?;
                if RunState::parse(&run.state).is_some_and(RunState::is_terminal) {
                    None
                } else {
                    Some(self.entry(id).live.subscribe())
                }
            }
        };
        Ok(LogFollower {
            db: self.db.clone(),
            id: id.to_string(),
            next: offset.max(0),
            live,
            buffer: VecDeque::new(),
            done: false,
        })
    }
}

/// What woke a follower waiting for live lines.
enum Wake {
    Line(LogLine),
    /// It fell behind the live channel: read the store again.
    Reread,
    /// The run ended.
    Closed,
    /// Nothing for a while: check that the run has not ended unseen.
    Idle,
}

/// A reader of one run's log from an offset on: stored lines, then live ones.
pub struct LogFollower {
    db: Db,
    id: String,
    next: i64,
    live: Option<broadcast::Receiver<LogLine>>,
    buffer: VecDeque<LogLine>,
    done: bool,
}

impl LogFollower {
    /// The offset of the next line this follower gives.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// The next line; `None` once the run has ended and every line was given.
    pub async fn next(&mut self) -> WharfResult<Option<LogLine>> {
        loop {
            if let Some(line) = self.buffer.pop_front() {
                self.next = line.offset + 1;
                return Ok(Some(line));
            }
            if self.done {
                return Ok(None);
            }
            let rows = store::read_log(&self.db, &self.id, self.next, REPLAY_PAGE).await?;
            if !rows.is_empty() {
                self.buffer.extend(rows.into_iter().map(LogLine::from));
                continue;
            }
            let Some(live) = self.live.as_mut() else {
                // The run ended and the store has nothing more.
                self.done = true;
                continue;
            };
            let wake = tokio::select! {
                received = live.recv() => match received {
                    Ok(line) => Wake::Line(line),
                    Err(broadcast::error::RecvError::Lagged(_)) => Wake::Reread,
                    Err(broadcast::error::RecvError::Closed) => Wake::Closed,
                },
                _ = tokio::time::sleep(IDLE_CHECK) => Wake::Idle,
            };
            match wake {
                Wake::Line(line) if line.offset == self.next => {
                    self.next += 1;
                    return Ok(Some(line));
                }
                // Below: already given. Above: a line was missed; the store has it.
                Wake::Line(_) | Wake::Reread => {}
                Wake::Closed => self.live = None,
                Wake::Idle => {
                    let ended = store::get_run(&self.db, &self.id).await?.is_none_or(|run| {
                        RunState::parse(&run.state).is_some_and(RunState::is_terminal)
                    });
                    if ended {
                        self.live = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 16), "short");
        let cut_line = cut(&"é".repeat(100), 21);
        assert!(cut_line.len() <= 21, "{}", cut_line.len());
        assert!(cut_line.ends_with('…'));
    }
}
