//! The plugin's own error value. It maps one to one onto the WIT `plugin-error`.

/// Error codes this plugin returns across the boundary.
pub mod code {
    /// A provider data file is malformed; the message names the file and the field.
    pub const INVALID_PACK_DATA: &str = "invalid_pack_data";
    /// The pack's data folder could not be read at all.
    pub const PACK_DATA_UNAVAILABLE: &str = "pack_data_unavailable";
    /// No provider with that id in the catalog.
    pub const UNKNOWN_PROVIDER: &str = "unknown_provider";
    /// An argument of the call is unusable (empty model name, malformed base URL, ...).
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The provider's capability profile rules out the default probe.
    pub const CAPABILITY_NOT_SUPPORTED: &str = "capability_not_supported";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub retriable: bool,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retriable: false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
