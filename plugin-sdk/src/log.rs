//! Logging that reaches the host.
//!
//! Every line becomes a structured log record of the calling pack in the host
//! (`GET /v1/packs/{id}` shows the recent ones). Use the functions here, or the
//! format-style macros at the crate root: [`trace!`](crate::trace),
//! [`debug!`](crate::debug!), [`info!`](crate::info!), [`warn!`](crate::warn!),
//! [`error!`](crate::error!) and [`log!`](crate::log!).
//!
//! ```
//! use wharf_plugin_sdk::log;
//!
//! log::info("starting");
//! wharf_plugin_sdk::warn!("{} retries left", 3);
//! ```
//!
//! Outside of a WebAssembly component (native unit tests), lines go to stderr
//! as `[level] message`.

use std::fmt;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The lowercase name: `trace`, `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    emit(level, message);
}

/// Logs `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    emit(Level::Trace, message);
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    emit(Level::Debug, message);
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: &str) {
    emit(Level::Info, message);
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    emit(Level::Warn, message);
}

/// Logs `message` at [`Level::Error`].
pub fn error(message: &str) {
    emit(Level::Error, message);
}

#[cfg(all(
    target_arch = "wasm32",
    any(
        feature = "adapter",
        feature = "provider",
        feature = "planner",
        feature = "relay-host"
    )
))]
macro_rules! wit_level {
    ($wit:path, $level:expr) => {{
        use $wit as W;
        match $level {
            Level::Trace => W::Trace,
            Level::Debug => W::Debug,
            Level::Info => W::Info,
            Level::Warn => W::Warn,
            Level::Error => W::Error,
        }
    }};
}

#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
fn emit(level: Level, message: &str) {
    use crate::__bindings::adapter::wharf::plugin::log as wit;
    wit::log(wit_level!(wit::Level, level), message);
}

#[cfg(all(target_arch = "wasm32", feature = "provider", not(feature = "adapter")))]
fn emit(level: Level, message: &str) {
    use crate::__bindings::provider::wharf::plugin::log as wit;
    wit::log(wit_level!(wit::Level, level), message);
}

#[cfg(all(
    target_arch = "wasm32",
    feature = "planner",
    not(any(feature = "adapter", feature = "provider"))
))]
fn emit(level: Level, message: &str) {
    use crate::__bindings::planner::wharf::plugin::log as wit;
    wit::log(wit_level!(wit::Level, level), message);
}

#[cfg(all(
    target_arch = "wasm32",
    feature = "relay-host",
    not(any(feature = "adapter", feature = "provider", feature = "planner"))
))]
fn emit(level: Level, message: &str) {
    use crate::__bindings::relay_host::wharf::plugin::log as wit;
    wit::log(wit_level!(wit::Level, level), message);
}

#[cfg(not(all(
    target_arch = "wasm32",
    any(
        feature = "adapter",
        feature = "provider",
        feature = "planner",
        feature = "relay-host"
    )
)))]
fn emit(level: Level, message: &str) {
    eprintln!("[{level}] {message}");
}

/// Logs a formatted message at the given [`Level`](crate::log::Level).
///
/// ```
/// use wharf_plugin_sdk::log::Level;
/// wharf_plugin_sdk::log!(Level::Debug, "parsed {} entries", 12);
/// ```
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::log($level, &::std::format!($($arg)+))
    };
}

/// Logs a formatted message at trace level: `trace!("x = {}", x)`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::trace(&::std::format!($($arg)+))
    };
}

/// Logs a formatted message at debug level: `debug!("x = {}", x)`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::debug(&::std::format!($($arg)+))
    };
}

/// Logs a formatted message at info level: `info!("x = {}", x)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::info(&::std::format!($($arg)+))
    };
}

/// Logs a formatted message at warn level: `warn!("x = {}", x)`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::warn(&::std::format!($($arg)+))
    };
}

/// Logs a formatted message at error level: `error!("x = {}", x)`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::error(&::std::format!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_names() {
        assert!(Level::Trace < Level::Error);
        assert_eq!(Level::Warn.to_string(), "warn");
    }

    #[test]
    fn macros_expand_natively() {
        crate::info!("hello {}", 1);
        crate::log!(Level::Error, "bad {}", "thing");
        warn("plain");
    }
}
