//! Which API key opened each MCP session, and the session limits.
//!
//! rmcp's session manager knows sessions by id only. Here each id is bound to the key that
//! opened it: a request carrying the id under another key is refused, so a leaked session
//! id is worth nothing without its key. Opening a session reserves a slot first, so
//! concurrent opens cannot pass `[mcp] max_sessions` or `max_sessions_per_key`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::config::McpConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};

#[derive(Default)]
struct Slots {
    /// Live session id -> the key id that opened it.
    bound: HashMap<String, String>,
    /// Opens in flight, per key id: counted against the limits until they bind or fail.
    opening: HashMap<String, usize>,
}

impl Slots {
    fn held_by(&self, key_id: &str) -> usize {
        self.bound.values().filter(|key| *key == key_id).count()
            + self.opening.get(key_id).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.bound.len() + self.opening.values().sum::<usize>()
    }
}

pub struct SessionKeys {
    manager: Arc<LocalSessionManager>,
    max_sessions: usize,
    max_per_key: usize,
    slots: Mutex<Slots>,
}

/// A slot taken for a session being opened; released on drop unless bound.
pub struct Reservation<'a> {
    keys: &'a SessionKeys,
    key_id: String,
}

impl SessionKeys {
    pub fn new(manager: Arc<LocalSessionManager>, config: &McpConfig) -> Self {
        Self {
            manager,
            max_sessions: config.max_sessions,
            max_per_key: config.max_sessions_per_key,
            slots: Mutex::new(Slots::default()),
        }
    }

    /// The key that opened session `id`, while the session lives.
    pub fn key_of(&self, id: &str) -> Option<String> {
        self.slots.lock().bound.get(id).cloned()
    }

    /// A slot for a new session of `key_id`, or `mcp_session_limit`.
    pub async fn reserve(&self, key_id: &str) -> WharfResult<Reservation<'_>> {
        self.forget_closed().await;
        let mut slots = self.slots.lock();
        if slots.total() >= self.max_sessions {
            return Err(limit_error(format!(
                "the server holds {} MCP sessions, its limit ([mcp] max_sessions); close one (DELETE /mcp) or wait for one to idle out",
                self.max_sessions
            )));
        }
        if slots.held_by(key_id) >= self.max_per_key {
            return Err(limit_error(format!(
                "this API key holds {} MCP sessions, its limit ([mcp] max_sessions_per_key); close one (DELETE /mcp) or wait for one to idle out",
                self.max_per_key
            )));
        }
        *slots.opening.entry(key_id.to_string()).or_default() += 1;
        Ok(Reservation {
            keys: self,
            key_id: key_id.to_string(),
        })
    }

    /// Drops the bindings of sessions that rmcp closed (DELETE, idle timeout, a failed
    /// handshake), so their slots free up.
    async fn forget_closed(&self) {
        let live = self.manager.sessions.read().await;
        self.slots
            .lock()
            .bound
            .retain(|id, _| live.contains_key(id.as_str()));
    }

    fn release(&self, key_id: &str) {
        let mut slots = self.slots.lock();
        if let Some(count) = slots.opening.get_mut(key_id) {
            *count -= 1;
            if *count == 0 {
                slots.opening.remove(key_id);
            }
        }
    }
}

impl Reservation<'_> {
    /// The session opened: its id is bound to the key from now on.
    pub fn bind(self, session_id: &str) {
        self.keys
            .slots
            .lock()
            .bound
            .insert(session_id.to_string(), self.key_id.clone());
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.keys.release(&self.key_id);
    }
}

fn limit_error(message: String) -> WharfError {
    WharfError::new(ErrorCode::McpSessionLimit, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(max_sessions: usize, max_per_key: usize) -> SessionKeys {
        let config = McpConfig {
            max_sessions,
            max_sessions_per_key: max_per_key,
            ..McpConfig::default()
        };
        SessionKeys::new(Arc::new(LocalSessionManager::default()), &config)
    }

    #[tokio::test]
    async fn opens_in_flight_count_against_both_limits() {
        let keys = keys(3, 2);
        let first = keys.reserve("key_a").await.unwrap();
        let second = keys.reserve("key_a").await.unwrap();
        let refused = keys.reserve("key_a").await.err().unwrap();
        assert_eq!(refused.code, ErrorCode::McpSessionLimit);
        assert!(refused.message.contains("max_sessions_per_key"));
        let other = keys.reserve("key_b").await.unwrap();
        let refused = keys.reserve("key_c").await.err().unwrap();
        assert!(refused.message.contains("[mcp] max_sessions)"));
        // A failed open gives its slot back.
        drop(second);
        drop(other);
        keys.reserve("key_c").await.unwrap();
        drop(first);
    }

    #[tokio::test]
    async fn a_bound_session_that_rmcp_no_longer_holds_frees_its_slot() {
        let keys = keys(1, 1);
        keys.reserve("key_a").await.unwrap().bind("session-1");
        assert_eq!(keys.key_of("session-1").as_deref(), Some("key_a"));
        // The manager holds no session-1 (closed): the next open prunes it.
        keys.reserve("key_b").await.unwrap();
        assert_eq!(keys.key_of("session-1"), None);
    }
}
