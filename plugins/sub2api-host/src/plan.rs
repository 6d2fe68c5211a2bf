//! The resources one provider key needs on sub2api, by mode, and their names.
//!
//! Per key (`item.name` = `wharf-<provider>-<family>-<fingerprint>`):
//!
//! | order | kind           | name                      | why |
//! |-------|----------------|---------------------------|-----|
//! | 1     | `group`        | `item.name`               | the gateway routes a key to the accounts of its group, and fails over between them: a group of its own makes a probe through the key's managed key prove this provider key alone; `subscription` mode needs `subscription_type: subscription` |
//! | 2     | `account`      | `item.name`               | holds the provider key, `base_url` and `model_mapping` (without it `/v1/models` falls back to sub2api's default GPT list) |
//! | 3     | `user`         | `item.name` (email `item.name@wharf.local`) | a managed ordinary user to own the probe key (sub2api's admin never owns gateway keys) |
//! | 4     | `subscription` | `item.name` (mode `subscription` only) | the user's subscription to the group; it must exist before the key may bind the group |
//! | 5     | `api-key`      | `item.name`               | the user's key bound to the group: the secret Wharf probes the gateway with |
//!
//! A `self_service` group is exclusive and the user holds it in `allowed_groups` with a balance,
//! as sub2api's key auth requires (`server/middleware/api_key_auth.go`,
//! `service/api_key_service.go` `canUserBindGroup`).

use serde_json::{Value, json};
use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::relay_host::{ImportItem, ResourceRequest};

pub mod kinds {
    pub const GROUP: &str = "group";
    pub const ACCOUNT: &str = "account";
    pub const USER: &str = "user";
    pub const SUBSCRIPTION: &str = "subscription";
    pub const API_KEY: &str = "api-key";
    pub const ALL: &[&str] = &[GROUP, ACCOUNT, USER, SUBSCRIPTION, API_KEY];
}

pub const MODE_SUBSCRIPTION: &str = "subscription";
pub const MODE_SELF_SERVICE: &str = "self_service";

/// The balance a `self_service` probe user gets (sub2api refuses a key whose user has none).
pub const SELF_SERVICE_BALANCE: f64 = 100.0;
/// How long a managed subscription lasts; re-importing extends an expired one.
pub const SUBSCRIPTION_DAYS: i64 = 365;
/// The domain of managed users' e-mail addresses (never delivered: `.local`).
pub const EMAIL_DOMAIN: &str = "wharf.local";

pub fn user_email(item_name: &str) -> String {
    format!("{item_name}@{EMAIL_DOMAIN}")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// Checks what sub2api would refuse later, so a bad item fails before any write.
pub fn validate(item: &ImportItem) -> Result<(), PluginError> {
    if !valid_name(&item.name) {
        return Err(PluginError::invalid_input(format!(
            "item name `{}`: use 1-100 characters of a-z, 0-9, `-`, `.`, `_` (it also names a user's e-mail)",
            item.name
        )));
    }
    if !valid_name(&item.provider) {
        return Err(PluginError::invalid_input(format!(
            "provider `{}`: use a-z, 0-9, `-`, `.`, `_`",
            item.provider
        )));
    }
    if item.mode != MODE_SUBSCRIPTION && item.mode != MODE_SELF_SERVICE {
        return Err(PluginError::invalid_input(format!(
            "mode `{}`: sub2api imports support `subscription` or `self_service`",
            item.mode
        )));
    }
    if !(item.upstream_base_url.starts_with("https://")
        || item.upstream_base_url.starts_with("http://"))
    {
        return Err(PluginError::invalid_input(
            "upstream base URL: an http(s) URL is needed for the account's `credentials.base_url`",
        ));
    }
    if item.api_key.trim().is_empty() {
        return Err(PluginError::invalid_input("the provider key is empty"));
    }
    if item.models.iter().all(|m| m.trim().is_empty()) {
        return Err(PluginError::invalid_input(
            "no models: without `credentials.model_mapping` sub2api's /v1/models lists its default GPT models instead of the provider's",
        ));
    }
    Ok(())
}

/// The resources `item` needs, in creation order (module table).
pub fn plan_import(item: &ImportItem) -> Result<Vec<ResourceRequest>, PluginError> {
    validate(item)?;
    // A group per key: sub2api fails over between the accounts of a group, so with a shared
    // group a probe could pass through another key's account and prove nothing of this one.
    let group = item.name.clone();
    let subscription = item.mode == MODE_SUBSCRIPTION;
    let request = |kind: &str, name: &str, spec: Value, shared: bool| ResourceRequest {
        kind: kind.to_string(),
        name: name.to_string(),
        spec: spec.to_string(),
        shared,
    };
    let mut plan = vec![
        request(
            kinds::GROUP,
            &group,
            json!({
                "platform": "openai",
                "subscription_type": if subscription { "subscription" } else { "standard" },
                "is_exclusive": true,
                "description": format!("Managed by Wharf: one {} key ({})", item.provider, item.mode),
            }),
            false,
        ),
        request(
            kinds::ACCOUNT,
            &item.name,
            json!({
                "platform": "openai",
                "type": "apikey",
                "base_url": item.upstream_base_url,
                "models": models(item),
                "group": group,
                "key_fingerprint": item.key_fingerprint,
            }),
            false,
        ),
        request(
            kinds::USER,
            &item.name,
            json!({
                "email": user_email(&item.name),
                "group": group,
                "balance": if subscription { 0.0 } else { SELF_SERVICE_BALANCE },
            }),
            false,
        ),
    ];
    if subscription {
        plan.push(request(
            kinds::SUBSCRIPTION,
            &item.name,
            json!({"user": item.name, "group": group, "validity_days": SUBSCRIPTION_DAYS}),
            false,
        ));
    }
    plan.push(request(
        kinds::API_KEY,
        &item.name,
        json!({"user": item.name, "group": group}),
        false,
    ));
    Ok(plan)
}

/// The item's models, trimmed, deduplicated, in their order.
pub fn models(item: &ImportItem) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for model in &item.models {
        let model = model.trim();
        if !model.is_empty() && !out.iter().any(|m| m == model) {
            out.push(model.to_string());
        }
    }
    out
}

/// A field of a request's spec.
pub fn spec_field(request: &ResourceRequest, field: &str) -> Result<Value, PluginError> {
    let spec: Value = serde_json::from_str(&request.spec).map_err(|e| {
        PluginError::invalid_input(format!(
            "{} `{}`: spec is not JSON: {e}",
            request.kind, request.name
        ))
    })?;
    spec.get(field).cloned().ok_or_else(|| {
        PluginError::invalid_input(format!(
            "{} `{}`: spec lacks `{field}`",
            request.kind, request.name
        ))
    })
}

pub fn spec_str(request: &ResourceRequest, field: &str) -> Result<String, PluginError> {
    spec_field(request, field)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            PluginError::invalid_input(format!(
                "{} `{}`: spec field `{field}` is not text",
                request.kind, request.name
            ))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn item(mode: &str) -> ImportItem {
        ImportItem {
            name: "wharf-kimi-kimi-ab12cd34".into(),
            provider: "kimi".into(),
            family: "kimi".into(),
            upstream_base_url: "https://api.moonshot.cn/v1".into(),
            api_key: "sk-test-not-a-real-key".into(),
            key_fingerprint: "sk-t…ab12cd34".into(),
            models: vec!["kimi-k2.6".into(), " kimi-k2.6 ".into(), "kimi-k2.5".into()],
            mode: mode.into(),
        }
    }

    fn kinds_of(plan: &[ResourceRequest]) -> Vec<&str> {
        plan.iter().map(|r| r.kind.as_str()).collect()
    }

    #[test]
    fn subscription_mode_plans_a_subscription_before_the_key() {
        let plan = plan_import(&item(MODE_SUBSCRIPTION)).unwrap();
        assert_eq!(
            kinds_of(&plan),
            ["group", "account", "user", "subscription", "api-key"]
        );
        // Every resource is the key's own, its group included (a probe proves this key alone).
        assert!(plan.iter().all(|r| r.name == plan[1].name && !r.shared));
        assert_eq!(
            spec_str(&plan[0], "subscription_type").unwrap(),
            "subscription"
        );
        assert_eq!(
            spec_field(&plan[1], "models").unwrap(),
            serde_json::json!(["kimi-k2.6", "kimi-k2.5"])
        );
    }

    #[test]
    fn self_service_mode_funds_the_user_and_has_no_subscription() {
        let plan = plan_import(&item(MODE_SELF_SERVICE)).unwrap();
        assert_eq!(kinds_of(&plan), ["group", "account", "user", "api-key"]);
        assert_eq!(
            plan[0].name, "wharf-kimi-kimi-ab12cd34",
            "a group of its own"
        );
        assert_eq!(spec_str(&plan[0], "subscription_type").unwrap(), "standard");
        assert_eq!(
            spec_field(&plan[2], "balance").unwrap(),
            SELF_SERVICE_BALANCE
        );
        assert_eq!(
            spec_str(&plan[2], "email").unwrap(),
            "wharf-kimi-kimi-ab12cd34@wharf.local"
        );
    }

    #[test]
    fn no_spec_holds_the_provider_key() {
        for mode in [MODE_SUBSCRIPTION, MODE_SELF_SERVICE] {
            for request in plan_import(&item(mode)).unwrap() {
                assert!(
                    !request.spec.contains("sk-test-not-a-real-key"),
                    "{}",
                    request.kind
                );
            }
        }
    }

    #[test]
    fn bad_items_fail_before_any_write() {
        let mut bad = item("free");
        assert_eq!(plan_import(&bad).unwrap_err().code, "invalid_input");
        bad = item(MODE_SUBSCRIPTION);
        bad.models = vec![" ".into()];
        assert!(
            plan_import(&bad)
                .unwrap_err()
                .message
                .contains("default GPT")
        );
        bad = item(MODE_SUBSCRIPTION);
        bad.name = "Wharf Kimi".into();
        assert_eq!(plan_import(&bad).unwrap_err().code, "invalid_input");
    }
}
