//! What an existing sub2api resource needs to match an import, and the account's Responses
//! routing flag.
//!
//! An account update replaces `credentials` and `extra` whole (`service/admin_service.go`
//! `UpdateAccount`), so every update built here starts from the stored maps and changes only
//! the keys this adapter owns.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// What `ensure` did, before it is mapped to the WIT enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Reused,
    PatchOnly,
    Replace,
    Reactivated,
}

/// The `extra` key where the adapter keeps the provider key's fingerprint: sub2api may mask
/// `credentials.api_key` in answers, the fingerprint still tells whether the key changed.
pub const FINGERPRINT_KEY: &str = "wharf_key_fingerprint";

/// The account an import wants.
#[derive(Debug, Clone)]
pub struct DesiredAccount<'a> {
    pub api_key: &'a str,
    pub key_fingerprint: &'a str,
    pub base_url: &'a str,
    pub models: &'a [String],
    pub group_id: i64,
}

/// The decision for an existing resource: its outcome and the `PUT` body, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub outcome: Outcome,
    pub update: Option<Value>,
}

/// `model_mapping` for the item's models: each canonical id maps to itself, so `/v1/models`
/// lists exactly them and a chat completion keeps its model name upstream.
pub fn model_mapping(models: &[String]) -> Map<String, Value> {
    models.iter().map(|m| (m.clone(), json!(m))).collect()
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// An existing account against the desired one (`existing` is sub2api's `Account` JSON).
///
/// Disabled (any status but `active`) → `reactivated`, enabled with every other difference
/// fixed; else a different key or upstream → `replace`; else different models or a missing
/// group binding → `patch-only`; else `reused` (recording the key fingerprint if it is missing).
pub fn account_change(existing: &Value, desired: &DesiredAccount<'_>) -> Change {
    let credentials = object(&existing["credentials"]);
    let extra = object(&existing["extra"]);
    let key_differs = match extra.get(FINGERPRINT_KEY).and_then(Value::as_str) {
        Some(recorded) => recorded != desired.key_fingerprint,
        None => credentials.get("api_key").and_then(Value::as_str) != Some(desired.api_key),
    };
    let base_differs = !credentials
        .get("base_url")
        .and_then(Value::as_str)
        .is_some_and(|b| same_url(b, desired.base_url));
    let stored_models: BTreeSet<&str> = credentials
        .get("model_mapping")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let wanted_models: BTreeSet<&str> = desired.models.iter().map(String::as_str).collect();
    let models_differ = stored_models != wanted_models;
    let group_ids = ids(&existing["group_ids"]);
    let group_missing = !group_ids.contains(&desired.group_id);
    let disabled = existing["status"].as_str() != Some("active");

    let fingerprint_missing =
        extra.get(FINGERPRINT_KEY).and_then(Value::as_str) != Some(desired.key_fingerprint);
    let outcome = if disabled {
        Outcome::Reactivated
    } else if key_differs || base_differs {
        Outcome::Replace
    } else if models_differ || group_missing {
        Outcome::PatchOnly
    } else if fingerprint_missing {
        // The same key, created before the fingerprint was recorded: record it, nothing else.
        Outcome::Reused
    } else {
        return Change {
            outcome: Outcome::Reused,
            update: None,
        };
    };
    let mut update = Map::new();
    if key_differs || base_differs || models_differ {
        let mut credentials = credentials;
        credentials.insert("api_key".into(), json!(desired.api_key));
        credentials.insert("base_url".into(), json!(desired.base_url));
        credentials.insert(
            "model_mapping".into(),
            Value::Object(model_mapping(desired.models)),
        );
        update.insert("credentials".into(), Value::Object(credentials));
    }
    if fingerprint_missing {
        let mut extra = extra;
        extra.insert(FINGERPRINT_KEY.into(), json!(desired.key_fingerprint));
        update.insert("extra".into(), Value::Object(extra));
    }
    if group_missing {
        let mut group_ids = group_ids;
        group_ids.push(desired.group_id);
        update.insert("group_ids".into(), json!(group_ids));
    }
    if disabled {
        update.insert("status".into(), json!("active"));
    }
    Change {
        outcome,
        update: Some(Value::Object(update)),
    }
}

/// The body of a new account.
pub fn new_account(name: &str, desired: &DesiredAccount<'_>) -> Value {
    json!({
        "name": name,
        "platform": "openai",
        "type": "apikey",
        "credentials": {
            "api_key": desired.api_key,
            "base_url": desired.base_url,
            "model_mapping": model_mapping(desired.models),
        },
        "extra": {FINGERPRINT_KEY: desired.key_fingerprint},
        "group_ids": [desired.group_id],
    })
}

/// An existing managed user: enabled again if disabled, the group allowed, funded for
/// `self_service` (`min_balance` > 0).
pub fn user_change(existing: &Value, group_id: i64, min_balance: f64) -> Change {
    let mut allowed = ids(&existing["allowed_groups"]);
    let group_missing = !allowed.contains(&group_id);
    let unfunded = min_balance > 0.0 && existing["balance"].as_f64().unwrap_or(0.0) <= 0.0;
    let disabled = existing["status"].as_str() != Some("active");
    let outcome = if disabled {
        Outcome::Reactivated
    } else if group_missing || unfunded {
        Outcome::PatchOnly
    } else {
        return Change {
            outcome: Outcome::Reused,
            update: None,
        };
    };
    let mut update = Map::new();
    if group_missing {
        allowed.push(group_id);
        update.insert("allowed_groups".into(), json!(allowed));
    }
    if unfunded {
        update.insert("balance".into(), json!(min_balance));
    }
    if disabled {
        update.insert("status".into(), json!("active"));
    }
    Change {
        outcome,
        update: Some(Value::Object(update)),
    }
}

/// Whether sub2api sends a chat completion of this OpenAI API-key account upstream to
/// `/v1/responses` (later sub2api's `shouldUseResponsesAPI`): `openai_responses_mode` wins,
/// then `openai_responses_supported`, and a missing flag means Responses.
pub fn uses_responses_api(extra: &Value) -> bool {
    match extra["openai_responses_mode"].as_str() {
        Some("force_chat_completions") => return false,
        Some("force_responses") => return true,
        _ => {}
    }
    extra["openai_responses_supported"]
        .as_bool()
        .unwrap_or(true)
}

/// Whether a failing probe's symptom is what Responses routing produces: the gateway's
/// `502 upstream_error` (the upstream has no `/v1/responses`), or Wharf's class for it.
pub fn symptom_is_responses_routing(symptom: &str) -> bool {
    let symptom = symptom.to_ascii_lowercase();
    [
        "upstream_error",
        "host_compatibility_gap",
        "/responses",
        "responses api",
    ]
    .iter()
    .any(|needle| symptom.contains(needle))
}

/// The `extra` that forces chat completions, and what changed; `None` when the account already
/// goes to chat completions (nothing this adapter knows to fix).
pub fn force_chat_completions(extra: &Value) -> Option<(Value, String)> {
    if !uses_responses_api(extra) {
        return None;
    }
    let before = format!(
        "openai_responses_supported was {}, openai_responses_mode was {}",
        extra
            .get("openai_responses_supported")
            .unwrap_or(&Value::Null),
        extra.get("openai_responses_mode").unwrap_or(&Value::Null)
    );
    let mut fixed = object(extra);
    fixed.insert("openai_responses_supported".into(), json!(false));
    fixed.insert(
        "openai_responses_mode".into(),
        json!("force_chat_completions"),
    );
    Some((Value::Object(fixed), before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["kimi-k2.6".into(), "kimi-k2.5".into()]
    }

    fn desired(models: &[String]) -> DesiredAccount<'_> {
        DesiredAccount {
            api_key: "sk-new",
            key_fingerprint: "fp-new",
            base_url: "https://api.moonshot.cn/v1",
            models,
            group_id: 3,
        }
    }

    fn stored(status: &str, fingerprint: &str, base: &str, models: &[&str]) -> Value {
        let mapping: Map<String, Value> =
            models.iter().map(|m| (m.to_string(), json!(m))).collect();
        json!({
            "id": 9, "status": status, "group_ids": [3],
            "credentials": {"api_key": "****", "base_url": base, "model_mapping": mapping, "custom": 1},
            "extra": {FINGERPRINT_KEY: fingerprint, "openai_responses_supported": true},
        })
    }

    #[test]
    fn the_same_account_is_reused_without_a_call() {
        let models = models();
        let change = account_change(
            &stored(
                "active",
                "fp-new",
                "https://api.moonshot.cn/v1/",
                &["kimi-k2.5", "kimi-k2.6"],
            ),
            &desired(&models),
        );
        assert_eq!(
            change,
            Change {
                outcome: Outcome::Reused,
                update: None
            }
        );
    }

    #[test]
    fn only_models_differ_is_a_patch_that_keeps_other_credentials() {
        let models = models();
        let change = account_change(
            &stored(
                "active",
                "fp-new",
                "https://api.moonshot.cn/v1",
                &["kimi-k2.6"],
            ),
            &desired(&models),
        );
        assert_eq!(change.outcome, Outcome::PatchOnly);
        let update = change.update.unwrap();
        assert_eq!(update["credentials"]["custom"], 1);
        assert_eq!(
            update["credentials"]["model_mapping"]["kimi-k2.5"],
            "kimi-k2.5"
        );
        assert!(update.get("extra").is_none() && update.get("status").is_none());
    }

    #[test]
    fn another_key_or_upstream_is_replaced_in_place() {
        let models = models();
        for existing in [
            stored(
                "active",
                "fp-old",
                "https://api.moonshot.cn/v1",
                &["kimi-k2.6", "kimi-k2.5"],
            ),
            stored(
                "active",
                "fp-new",
                "https://other.example/v1",
                &["kimi-k2.6", "kimi-k2.5"],
            ),
        ] {
            let change = account_change(&existing, &desired(&models));
            assert_eq!(change.outcome, Outcome::Replace);
            let update = change.update.unwrap();
            assert_eq!(update["credentials"]["api_key"], "sk-new");
            // The Responses flag the relay set stays; only the fingerprint is the adapter's.
            if let Some(extra) = update.get("extra") {
                assert_eq!(extra["openai_responses_supported"], true);
                assert_eq!(extra[FINGERPRINT_KEY], "fp-new");
            }
        }
    }

    #[test]
    fn a_disabled_account_is_reactivated() {
        let models = models();
        let change = account_change(
            &stored(
                "inactive",
                "fp-new",
                "https://api.moonshot.cn/v1",
                &["kimi-k2.6", "kimi-k2.5"],
            ),
            &desired(&models),
        );
        assert_eq!(change.outcome, Outcome::Reactivated);
        assert_eq!(change.update.unwrap(), json!({"status": "active"}));
    }

    #[test]
    fn without_a_recorded_fingerprint_the_raw_key_decides() {
        let models = models();
        let mut existing = stored(
            "active",
            "x",
            "https://api.moonshot.cn/v1",
            &["kimi-k2.6", "kimi-k2.5"],
        );
        existing["extra"] = json!({});
        existing["credentials"]["api_key"] = json!("sk-new");
        let change = account_change(&existing, &desired(&models));
        // Same key: reused, and the fingerprint is recorded for next time.
        assert_eq!(change.outcome, Outcome::Reused);
        assert_eq!(
            change.update.unwrap(),
            json!({"extra": {FINGERPRINT_KEY: "fp-new"}})
        );
    }

    #[test]
    fn users_get_the_group_and_a_balance() {
        let user = json!({"status": "active", "allowed_groups": [], "balance": 0.0});
        let change = user_change(&user, 3, 100.0);
        assert_eq!(change.outcome, Outcome::PatchOnly);
        assert_eq!(
            change.update.unwrap(),
            json!({"allowed_groups": [3], "balance": 100.0})
        );
        let ready = json!({"status": "active", "allowed_groups": [3], "balance": 0.0});
        assert_eq!(user_change(&ready, 3, 0.0).outcome, Outcome::Reused);
        let disabled = json!({"status": "disabled", "allowed_groups": [3], "balance": 5.0});
        assert_eq!(
            user_change(&disabled, 3, 100.0).outcome,
            Outcome::Reactivated
        );
    }

    #[test]
    fn responses_routing_follows_sub2api() {
        assert!(uses_responses_api(&json!({})));
        assert!(!uses_responses_api(
            &json!({"openai_responses_supported": false})
        ));
        assert!(uses_responses_api(
            &json!({"openai_responses_supported": false, "openai_responses_mode": "force_responses"})
        ));
        let (fixed, before) =
            force_chat_completions(&json!({"x": 1, "openai_responses_supported": true})).unwrap();
        assert_eq!(fixed["x"], 1);
        assert!(!uses_responses_api(&fixed));
        assert!(before.contains("was true"));
        assert!(force_chat_completions(&fixed).is_none());
        assert!(symptom_is_responses_routing(
            "host_compatibility_gap: 502 upstream_error Upstream request failed"
        ));
        assert!(!symptom_is_responses_routing("upstream_auth: 401"));
    }
}
