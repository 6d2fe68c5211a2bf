//! Plugin log lines, kept per pack across generations and per owner: a line belongs to the
//! owner of the call that produced it, and only that owner (or an admin) reads it back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

use crate::store::now_rfc3339;

/// Longest message kept per line; a plugin cannot fill host memory through logs.
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub ts: String,
    pub level: String,
    pub component: String,
    pub generation: u64,
    /// The owner of the call that logged the line; null for the host's own calls
    /// (self-tests at load), which only admins see.
    pub owner: Option<String>,
    pub message: String,
}

/// Who is reading plugin logs.
#[derive(Debug, Clone, Copy)]
pub enum LogViewer<'a> {
    /// Sees every owner's lines and the host's own.
    Admin,
    /// Sees only the lines of its own calls.
    Owner(&'a str),
}

impl<'a> LogViewer<'a> {
    pub fn new(owner: &'a str, admin: bool) -> Self {
        if admin {
            LogViewer::Admin
        } else {
            LogViewer::Owner(owner)
        }
    }

    fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            LogViewer::Admin => true,
            LogViewer::Owner(viewer) => owner == Some(*viewer),
        }
    }
}

/// The recent lines of one owner, with the sequence number of each (for a merged view).
#[derive(Default)]
struct OwnerLines {
    lines: VecDeque<(u64, LogLine)>,
    last_seq: u64,
}

/// Bounded rings of recent lines for one pack id: `lines_per_owner` lines for each of at
/// most `max_owners` owners (the owner written to least recently is dropped first).
pub struct PackLog {
    lines_per_owner: usize,
    max_owners: usize,
    seq: AtomicU64,
    owners: Mutex<HashMap<Option<String>, OwnerLines>>,
}

impl PackLog {
    pub fn push(
        &self,
        owner: Option<&str>,
        pack: &str,
        component: &str,
        generation: u64,
        level: &str,
        message: &str,
    ) {
        let mut message = message.to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let who = owner.unwrap_or("-");
        match level {
            "error" => {
                tracing::error!(target: "plugin", pack, component, generation, owner = who, "{message}")
            }
            "warn" => {
                tracing::warn!(target: "plugin", pack, component, generation, owner = who, "{message}")
            }
            "info" => {
                tracing::info!(target: "plugin", pack, component, generation, owner = who, "{message}")
            }
            _ => {
                tracing::debug!(target: "plugin", pack, component, generation, owner = who, level, "{message}")
            }
        }
        let line = LogLine {
            ts: now_rfc3339(),
            level: level.to_string(),
            component: component.to_string(),
            generation,
            owner: owner.map(str::to_string),
            message,
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = owner.map(str::to_string);
        let mut owners = self.owners.lock();
        if !owners.contains_key(&key) && owners.len() >= self.max_owners {
            let stalest = owners
                .iter()
                .min_by_key(|(_, lines)| lines.last_seq)
                .map(|(owner, _)| owner.clone());
            if let Some(stalest) = stalest {
                owners.remove(&stalest);
            }
        }
        let lines = owners.entry(key).or_default();
        if lines.lines.len() >= self.lines_per_owner {
            lines.lines.pop_front();
        }
        lines.lines.push_back((seq, line));
        lines.last_seq = seq;
    }

    /// The lines `viewer` may see, oldest first.
    pub fn recent(&self, viewer: LogViewer<'_>) -> Vec<LogLine> {
        let owners = self.owners.lock();
        let mut seen: Vec<&(u64, LogLine)> = owners
            .iter()
            .filter(|(owner, _)| viewer.sees(owner.as_deref()))
            .flat_map(|(_, lines)| lines.lines.iter())
            .collect();
        seen.sort_by_key(|(seq, _)| *seq);
        seen.into_iter().map(|(_, line)| line.clone()).collect()
    }
}

/// All pack logs, keyed by pack id, so a hot swap keeps the history.
pub struct PluginLogs {
    lines_per_owner: usize,
    max_owners: usize,
    packs: Mutex<HashMap<String, Arc<PackLog>>>,
}

impl PluginLogs {
    pub fn new(lines_per_owner: usize, max_owners: usize) -> Self {
        Self {
            lines_per_owner: lines_per_owner.max(1),
            max_owners: max_owners.max(1),
            packs: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_pack(&self, pack_id: &str) -> Arc<PackLog> {
        self.packs
            .lock()
            .entry(pack_id.to_string())
            .or_insert_with(|| {
                Arc::new(PackLog {
                    lines_per_owner: self.lines_per_owner,
                    max_owners: self.max_owners,
                    seq: AtomicU64::new(0),
                    owners: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn each_owner_reads_only_its_own_lines_and_admins_read_all() {
        let logs = PluginLogs::new(10, 10);
        let log = logs.for_pack("p");
        log.push(Some("alice"), "p", "c", 1, "info", "a1");
        log.push(Some("bob"), "p", "c", 1, "info", "b1");
        log.push(None, "p", "c", 1, "info", "host");
        log.push(Some("alice"), "p", "c", 1, "info", "a2");
        assert_eq!(
            messages(&log.recent(LogViewer::Owner("alice"))),
            ["a1", "a2"]
        );
        assert_eq!(messages(&log.recent(LogViewer::Owner("bob"))), ["b1"]);
        assert!(log.recent(LogViewer::Owner("carol")).is_empty());
        assert_eq!(
            messages(&log.recent(LogViewer::Admin)),
            ["a1", "b1", "host", "a2"]
        );
    }

    #[test]
    fn lines_and_owners_are_bounded() {
        let logs = PluginLogs::new(2, 2);
        let log = logs.for_pack("p");
        for i in 0..5 {
            log.push(Some("alice"), "p", "c", 1, "info", &format!("a{i}"));
        }
        assert_eq!(
            messages(&log.recent(LogViewer::Owner("alice"))),
            ["a3", "a4"]
        );
        // A flood from one owner never pushes out another owner's lines.
        log.push(Some("bob"), "p", "c", 1, "info", "b0");
        for i in 5..50 {
            log.push(Some("alice"), "p", "c", 1, "info", &format!("a{i}"));
        }
        assert_eq!(messages(&log.recent(LogViewer::Owner("bob"))), ["b0"]);
        // A third owner drops the one written to least recently (bob).
        log.push(Some("carol"), "p", "c", 1, "info", "c0");
        assert!(log.recent(LogViewer::Owner("bob")).is_empty());
        assert_eq!(log.recent(LogViewer::Admin).len(), 3);
        let long = "x".repeat(MAX_MESSAGE_BYTES * 2);
        log.push(Some("carol"), "p", "c", 1, "info", &long);
        let kept = log.recent(LogViewer::Owner("carol"));
        assert!(kept.last().unwrap().message.len() <= MAX_MESSAGE_BYTES + 3);
    }
}
