//! [`PluginError`]: the error value that crosses the host/plugin boundary.

use std::fmt;

/// Stable error codes used by the SDK itself.
///
/// Plugins may use any snake_case code; these are the ones the SDK produces and
/// the host knows by name.
pub mod codes {
    /// The input document did not match the operation's input type, or failed
    /// the operation's own validation.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// `invoke` named an operation the adapter does not have.
    pub const UNKNOWN_OPERATION: &str = "unknown_operation";
    /// A bug in the plugin, for example an output that cannot be serialized.
    pub const INTERNAL: &str = "internal";
    /// Data read from the sandbox was not what the plugin expected (e.g. not UTF-8).
    pub const INVALID_DATA: &str = "invalid_data";
    /// A host facility is not available where the code runs (e.g. the sandbox
    /// outside of a WebAssembly component, in native unit tests).
    pub const UNSUPPORTED: &str = "unsupported";
    /// Something took longer than allowed.
    pub const TIMEOUT: &str = "timeout";
}

/// An error crossing the boundary in either direction: `code` (stable
/// snake_case name), `message` (for humans) and `retriable` (whether the same
/// call may succeed later).
///
/// It mirrors the WIT record `wharf:plugin/types.plugin-error` and converts to
/// and from the generated bindings; plugin code only ever sees this type.
///
/// ```
/// use wharf_plugin_sdk::PluginError;
///
/// let err = PluginError::new("upstream_busy", "try again in a minute").retriable();
/// assert_eq!(err.code, "upstream_busy");
/// assert!(err.retriable);
/// assert_eq!(err.to_string(), "upstream_busy: try again in a minute");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginError {
    /// Stable snake_case name, e.g. `invalid_input`, `file_not_found`, `timeout`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether the same call may succeed later.
    pub retriable: bool,
}

impl PluginError {
    /// A non-retriable error with the given code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retriable: false,
        }
    }

    /// Marks the error as retriable.
    #[must_use]
    pub fn retriable(mut self) -> Self {
        self.retriable = true;
        self
    }

    /// Sets whether the error is retriable.
    #[must_use]
    pub fn with_retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    /// `invalid_input` (not retriable): the input was wrong; the message says how.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_INPUT, message)
    }

    /// `unknown_operation` (not retriable) for the named operation.
    pub fn unknown_operation(operation: &str) -> Self {
        Self::new(
            codes::UNKNOWN_OPERATION,
            format!("unknown operation `{operation}`"),
        )
    }

    /// `internal` (not retriable): a bug in the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }

    /// Whether the code equals `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }

    /// Prefixes the message with context, keeping code and retriability:
    /// `err.context("reading config")` gives `reading config: <message>`.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Conversions between [`PluginError`] and the record generated for one world.
#[cfg(any(
    feature = "adapter",
    feature = "provider",
    feature = "planner",
    feature = "relay-host"
))]
macro_rules! convert_wit_error {
    ($wit:path) => {
        impl From<$wit> for $crate::PluginError {
            fn from(err: $wit) -> Self {
                Self {
                    code: err.code,
                    message: err.message,
                    retriable: err.retriable,
                }
            }
        }

        impl From<$crate::PluginError> for $wit {
            fn from(err: $crate::PluginError) -> Self {
                Self {
                    code: err.code,
                    message: err.message,
                    retriable: err.retriable,
                }
            }
        }
    };
}

#[cfg(feature = "adapter")]
convert_wit_error!(crate::__bindings::adapter::wharf::plugin::types::PluginError);
#[cfg(feature = "provider")]
convert_wit_error!(crate::__bindings::provider::wharf::plugin::types::PluginError);
#[cfg(feature = "planner")]
convert_wit_error!(crate::__bindings::planner::wharf::plugin::types::PluginError);
#[cfg(feature = "relay-host")]
convert_wit_error!(crate::__bindings::relay_host::wharf::plugin::types::PluginError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        let err = PluginError::invalid_input("command must not be empty");
        assert_eq!(err.code, "invalid_input");
        assert!(!err.retriable);
        assert!(err.is(codes::INVALID_INPUT));

        let err = PluginError::new("busy", "later").retriable();
        assert!(err.retriable);
        assert!(!err.clone().with_retriable(false).retriable);

        let err = PluginError::unknown_operation("frobnicate");
        assert_eq!(err.code, "unknown_operation");
        assert!(err.message.contains("frobnicate"));

        let err = PluginError::new("x", "boom").context("while testing");
        assert_eq!(err.message, "while testing: boom");
    }
}
