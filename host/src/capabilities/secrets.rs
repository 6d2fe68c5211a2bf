//! Secret environment values and the one masker that replaces them with `***` wherever
//! text leaves the server: adapter outputs, exec output, events, plugin log lines and
//! errors.
//!
//! Secrets enter in three places: a profile's `secret_env`, the `secret_env` of a direct
//! exec request, and the `Wharf-Secret-Env` header of a capability call (a JSON object
//! of names to values, given to every exec the adapter makes during that call).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{WharfError, WharfResult};

/// What a secret value becomes.
pub const MASK: &str = "***";
/// Shortest secret value: a shorter one would mask ordinary text (and say little anyway).
pub const MIN_SECRET_BYTES: usize = 4;
/// Longest secret value.
pub const MAX_SECRET_BYTES: usize = 4096;
/// Most secrets one request may carry.
pub const MAX_REQUEST_SECRETS: usize = 32;
/// The capability-call header carrying request secrets.
pub const SECRET_ENV_HEADER: &str = "wharf-secret-env";

/// A secret value in configuration: never printed by `{:?}`, never serialised.
#[derive(Clone, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Checks a set of secret variables: valid names, values of a maskable length.
pub fn validate_secret_env<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    for (name, value) in entries {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!("invalid secret variable name {name:?}"));
        }
        if value.contains('\0') {
            return Err(format!("secret variable {name:?} contains NUL"));
        }
        if value.len() < MIN_SECRET_BYTES || value.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "secret variable {name:?} must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes long (a shorter value cannot be masked without masking ordinary text)"
            ));
        }
    }
    Ok(())
}

/// Secret variables of one request, checked and bounded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestSecrets(BTreeMap<String, String>);

impl std::fmt::Debug for RequestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl RequestSecrets {
    pub fn new(entries: BTreeMap<String, String>) -> WharfResult<Self> {
        if entries.len() > MAX_REQUEST_SECRETS {
            return Err(WharfError::validation(format!(
                "at most {MAX_REQUEST_SECRETS} secret variables per request"
            )));
        }
        validate_secret_env(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(WharfError::validation)?;
        Ok(Self(entries))
    }

    /// The `Wharf-Secret-Env` header: a JSON object of names to values.
    pub fn from_header(value: Option<&axum::http::HeaderValue>) -> WharfResult<Self> {
        let Some(value) = value else {
            return Ok(Self::default());
        };
        let text = value
            .to_str()
            .map_err(|_| WharfError::validation("Wharf-Secret-Env must be ASCII JSON"))?;
        // Never echo the header: it is made of secrets.
        let entries: BTreeMap<String, String> = serde_json::from_str(text).map_err(|_| {
            WharfError::validation(
                "Wharf-Secret-Env must be a JSON object of variable names to string values",
            )
        })?;
        Self::new(entries)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone()))
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}

/// Replaces known secret values with [`MASK`]. Cheap to clone; empty costs nothing.
#[derive(Clone, Default)]
pub struct SecretMasker {
    /// Longest first, so a secret that contains another is masked whole.
    values: Arc<Vec<String>>,
}

impl std::fmt::Debug for SecretMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretMasker({} values)", self.values.len())
    }
}

impl SecretMasker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self {
            values: Arc::new(values),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for value in self.values.iter() {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
        }
        Cow::Owned(out)
    }

    pub fn mask_string(&self, text: String) -> String {
        match self.mask(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => masked,
        }
    }

    /// Masks raw output bytes (a secret is text; its bytes are replaced wherever they occur).
    pub fn mask_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        let mut out = bytes;
        for value in self.values.iter() {
            let needle = value.as_bytes();
            if out.len() < needle.len() || !out.windows(needle.len()).any(|w| w == needle) {
                continue;
            }
            let mut replaced = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    replaced.extend_from_slice(MASK.as_bytes());
                    i += needle.len();
                } else {
                    replaced.push(out[i]);
                    i += 1;
                }
            }
            out = replaced;
        }
        out
    }

    /// Masks every string (and object key) of a JSON document.
    pub fn mask_json(&self, value: serde_json::Value) -> serde_json::Value {
        if self.is_empty() {
            return value;
        }
        use serde_json::Value;
        match value {
            Value::String(text) => Value::String(self.mask_string(text)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.mask_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.mask_string(k), self.mask_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    pub fn mask_error(&self, mut err: WharfError) -> WharfError {
        err.message = self.mask_string(err.message);
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_text_bytes_json_and_errors() {
        let masker = SecretMasker::new(["s3cr3t-token", "s3cr3t"]);
        assert_eq!(masker.mask("a s3cr3t-token b s3cr3t"), "a *** b ***");
        assert_eq!(
            masker.mask_bytes(b"xs3cr3tx\ns3cr3t-token".to_vec()),
            b"x***x\n***".to_vec()
        );
        let doc = serde_json::json!({"stdout": "s3cr3t\n", "s3cr3t": [1, "is s3cr3t-token"]});
        assert_eq!(
            masker.mask_json(doc),
            serde_json::json!({"stdout": "***\n", "***": [1, "is ***"]})
        );
        let err = masker.mask_error(WharfError::validation("bad s3cr3t"));
        assert_eq!(err.message, "bad ***");
        assert!(matches!(
            SecretMasker::default().mask("s3cr3t"),
            Cow::Borrowed("s3cr3t")
        ));
    }

    #[test]
    fn request_secrets_are_checked_and_never_printed() {
        let header = axum::http::HeaderValue::from_static(r#"{"TOKEN":"abcd1234"}"#);
        let secrets = RequestSecrets::from_header(Some(&header)).unwrap();
        assert_eq!(format!("{secrets:?}"), r#"["TOKEN"]"#);
        let short = axum::http::HeaderValue::from_static(r#"{"TOKEN":"abc"}"#);
        let err = RequestSecrets::from_header(Some(&short)).unwrap_err();
        assert!(!err.message.contains("abc\""), "{}", err.message);
        let bad = axum::http::HeaderValue::from_static(r#"{"A=B":"abcd1234"}"#);
        assert!(RequestSecrets::from_header(Some(&bad)).is_err());
        assert_eq!(format!("{:?}", SecretValue::from("x".to_string())), MASK);
    }
}
