//! Key scopes: which capability operations, direct sandbox routes and profiles an API key
//! may use, and the roles it holds.
//!
//! A scope entry names a capability (`filesystem`: every operation), one operation
//! (`filesystem.read`), a direct route (`sandbox.exec`, `sandbox.files.read`,
//! `sandbox.files.write`, `sandbox.files` or `sandbox` for all three), `probes`, or `*`.
//! An entry covers a name when it is that name or a dotted prefix of it. The direct routes
//! have names of their own so that a key limited to `filesystem.read` cannot do through
//! `POST /v1/sandboxes/{id}/exec` or the files API what its scope refuses.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::store::keys::Principal;

/// `POST /v1/sandboxes/{id}/exec` and its WebSocket form: any program, so only keys
/// whose scope names it (or `sandbox`, or `*`) may use them.
pub const SANDBOX_EXEC: &str = "sandbox.exec";
/// `GET .../files/{path}`, `GET .../dirs[/{path}]`.
pub const SANDBOX_FILES_READ: &str = "sandbox.files.read";
/// `PUT` and `DELETE .../files/{path}`, `PUT .../dirs/{path}`.
pub const SANDBOX_FILES_WRITE: &str = "sandbox.files.write";
/// Probes and probe targets (`/v1/probes`, `/v1/targets`).
pub const PROBES: &str = "probes";

/// Most entries in each list of a scope.
pub const MAX_SCOPE_ENTRIES: usize = 64;
/// Longest scope entry.
pub const MAX_SCOPE_ENTRY_CHARS: usize = 128;

/// What a key holds besides its owner's data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, every owner (the `admin` flag of the key).
    Admin,
    /// May list and decide the approvals of its owner.
    Approver,
}

/// The limits of a key. `None` is no limit; an empty list allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyScope {
    /// Capability, operation and route names the key may call (see the module docs);
    /// null: all.
    pub capabilities: Option<Vec<String>>,
    /// Sandbox profiles whose sandboxes the key may create and use; null: all.
    pub profiles: Option<Vec<String>>,
}

/// Whether scope `entry` covers `name`: equal, `*`, or a dotted prefix.
pub fn entry_covers(entry: &str, name: &str) -> bool {
    entry == "*"
        || entry == name
        || name
            .strip_prefix(entry)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl KeyScope {
    pub fn is_unlimited(&self) -> bool {
        self.capabilities.is_none() && self.profiles.is_none()
    }

    pub fn allows(&self, name: &str) -> bool {
        self.capabilities
            .as_ref()
            .is_none_or(|entries| entries.iter().any(|entry| entry_covers(entry, name)))
    }

    pub fn allows_profile(&self, profile: &str) -> bool {
        self.profiles
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == profile))
    }

    /// `validation_error` unless every entry is a plausible name and the lists are bounded.
    pub fn validate(&self) -> WharfResult<()> {
        for (field, entries) in [
            ("capabilities", &self.capabilities),
            ("profiles", &self.profiles),
        ] {
            let Some(entries) = entries else { continue };
            if entries.len() > MAX_SCOPE_ENTRIES {
                return Err(WharfError::validation(format!(
                    "`{field}` may name at most {MAX_SCOPE_ENTRIES} entries"
                )));
            }
            for entry in entries {
                let valid = !entry.is_empty()
                    && entry.chars().count() <= MAX_SCOPE_ENTRY_CHARS
                    && entry
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'))
                    && (entry == "*" || !entry.contains('*'))
                    && !entry.starts_with('.')
                    && !entry.ends_with('.');
                if !valid {
                    return Err(WharfError::validation(format!(
                        "`{field}` entry {entry:?} is not a name (1-{MAX_SCOPE_ENTRY_CHARS} of \
                         A-Z a-z 0-9 . - _, or `*` alone)"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn listed(entries: &Option<Vec<String>>) -> String {
    match entries {
        Some(entries) if entries.is_empty() => "nothing".to_string(),
        Some(entries) => entries.join(", "),
        None => "*".to_string(),
    }
}

/// `forbidden` unless the caller's key may call `name` (`capability.operation` or a route
/// name such as [`SANDBOX_EXEC`]).
pub fn require(principal: &Principal, name: &str) -> WharfResult<()> {
    if principal.admin || principal.scope.allows(name) {
        return Ok(());
    }
    Err(WharfError::new(
        ErrorCode::Forbidden,
        format!(
            "this API key ({}) is scoped to capabilities [{}]; it may not call {name}",
            principal.key_id,
            listed(&principal.scope.capabilities)
        ),
    ))
}

/// `forbidden` unless the caller's key may use sandboxes of `profile`.
pub fn require_profile(principal: &Principal, profile: &str) -> WharfResult<()> {
    if principal.admin || principal.scope.allows_profile(profile) {
        return Ok(());
    }
    Err(WharfError::new(
        ErrorCode::Forbidden,
        format!(
            "this API key ({}) is scoped to profiles [{}]; it may not use profile {profile:?}",
            principal.key_id,
            listed(&principal.scope.profiles)
        ),
    ))
}

/// `forbidden` unless the caller holds the approver role (admin keys do).
pub fn require_approver(principal: &Principal) -> WharfResult<()> {
    if principal.admin || principal.approver {
        return Ok(());
    }
    Err(WharfError::new(
        ErrorCode::Forbidden,
        "deciding approvals needs a key with the `approver` role (or an admin key)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(entries: &[&str]) -> KeyScope {
        KeyScope {
            capabilities: Some(entries.iter().map(|e| e.to_string()).collect()),
            profiles: None,
        }
    }

    #[test]
    fn entries_cover_names_and_dotted_children_only() {
        let read_only = scope(&["filesystem.read", "sandbox.files.read"]);
        assert!(read_only.allows("filesystem.read"));
        assert!(read_only.allows(SANDBOX_FILES_READ));
        assert!(!read_only.allows("filesystem.write"));
        assert!(!read_only.allows("shell.run"));
        assert!(!read_only.allows(SANDBOX_EXEC));
        assert!(!read_only.allows(SANDBOX_FILES_WRITE));
        // A prefix must end at a dot: `file` does not cover `filesystem.read`.
        assert!(!scope(&["file"]).allows("filesystem.read"));
        assert!(scope(&["filesystem"]).allows("filesystem.write"));
        assert!(scope(&["sandbox"]).allows(SANDBOX_EXEC));
        assert!(scope(&["*"]).allows("anything.at.all"));
        assert!(!scope(&[]).allows("shell.run"));
        assert!(KeyScope::default().allows("shell.run"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["", "a b", "shell*", ".x", "x.", "é"] {
            assert!(scope(&[bad]).validate().is_err(), "{bad:?} accepted");
        }
        assert!(scope(&["*", "shell.run", "git-2.x_y"]).validate().is_ok());
        let many: Vec<String> = (0..=MAX_SCOPE_ENTRIES).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(scope(&refs).validate().is_err());
    }
}
