//! Plugin log lines, kept per pack across generations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
    pub message: String,
}

/// A bounded ring of recent lines for one pack id.
pub struct PackLog {
    capacity: usize,
    lines: Mutex<VecDeque<LogLine>>,
}

impl PackLog {
    pub fn push(&self, pack: &str, component: &str, generation: u64, level: &str, message: &str) {
        let mut message = message.to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        match level {
            "error" => tracing::error!(target: "plugin", pack, component, generation, "{message}"),
            "warn" => tracing::warn!(target: "plugin", pack, component, generation, "{message}"),
            "info" => tracing::info!(target: "plugin", pack, component, generation, "{message}"),
            _ => tracing::debug!(target: "plugin", pack, component, generation, level, "{message}"),
        }
        let line = LogLine {
            ts: now_rfc3339(),
            level: level.to_string(),
            component: component.to_string(),
            generation,
            message,
        };
        let mut lines = self.lines.lock();
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn recent(&self) -> Vec<LogLine> {
        self.lines.lock().iter().cloned().collect()
    }
}

/// All pack logs, keyed by pack id, so a hot swap keeps the history.
pub struct PluginLogs {
    capacity: usize,
    packs: Mutex<HashMap<String, Arc<PackLog>>>,
}

impl PluginLogs {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            packs: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_pack(&self, pack_id: &str) -> Arc<PackLog> {
        self.packs
            .lock()
            .entry(pack_id.to_string())
            .or_insert_with(|| {
                Arc::new(PackLog {
                    capacity: self.capacity,
                    lines: Mutex::new(VecDeque::new()),
                })
            })
            .clone()
    }
}
