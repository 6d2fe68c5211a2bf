//! The relay-host operations as sub2api API calls (routes in `README.md`).
//!
//! Every `ensure` finds its resource by name before it creates one, so a call repeated after a
//! crash never makes a duplicate; a create that loses a race (409) finds the winner instead.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::relay_host::{ImportItem, Resource, ResourceRequest};

use crate::api::{Api, Transport, codes, invalid, query_value};
use crate::compare::{
    self, Change, DesiredAccount, FINGERPRINT_KEY, Outcome, account_change, new_account,
    user_change,
};
use crate::plan::{self, kinds};

/// What `ensure` did, with the secret of an API key.
#[derive(Debug)]
pub struct Ensured {
    pub resource: Resource,
    pub outcome: Outcome,
    pub secret: Option<String>,
}

/// The host's version (`GET /api/v1/admin/system/version`) and its gateway base URL.
pub fn detect<T: Transport>(api: &Api<'_, T>) -> Result<(String, String), PluginError> {
    let data = api.admin("GET", "/system/version", None)?;
    let version = data["version"]
        .as_str()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("GET /api/v1/admin/system/version: no `data.version`"))?;
    Ok((version.to_string(), format!("{}/v1", api.base_url())))
}

pub fn ensure<T: Transport>(
    api: &Api<'_, T>,
    item: &ImportItem,
    request: &ResourceRequest,
    done: &[Resource],
) -> Result<Ensured, PluginError> {
    plan::validate(item)?;
    match request.kind.as_str() {
        kinds::GROUP => ensure_group(api, request),
        kinds::ACCOUNT => ensure_account(api, item, request, done),
        kinds::USER => ensure_user(api, request, done),
        kinds::SUBSCRIPTION => ensure_subscription(api, request, done),
        kinds::API_KEY => ensure_api_key(api, request, done),
        other => Err(unknown_kind(other)),
    }
}

fn unknown_kind(kind: &str) -> PluginError {
    PluginError::invalid_input(format!(
        "unknown resource kind `{kind}` (sub2api adapter kinds: {})",
        kinds::ALL.join(", ")
    ))
}

fn id_of(value: &Value, what: &str) -> Result<i64, PluginError> {
    value["id"]
        .as_i64()
        .ok_or_else(|| invalid(&format!("{what} without a numeric `id`")))
}

fn parse_id(kind: &str, id: &str) -> Result<i64, PluginError> {
    id.parse::<i64>()
        .map_err(|_| PluginError::invalid_input(format!("{kind} id `{id}` is not a sub2api id")))
}

fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_string()
}

// --- resources as Wharf records them (attributes never hold a secret) ---------------------

fn group_resource(group: &Value) -> Result<Resource, PluginError> {
    Ok(Resource {
        kind: kinds::GROUP.into(),
        id: id_of(group, "group")?.to_string(),
        name: text(group, "name"),
        status: text(group, "status"),
        attributes: json!({
            "platform": group["platform"],
            "subscription_type": group["subscription_type"],
            "is_exclusive": group["is_exclusive"],
        })
        .to_string(),
    })
}

fn account_resource(account: &Value) -> Result<Resource, PluginError> {
    let models: Vec<&String> = account["credentials"]["model_mapping"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    let extra = &account["extra"];
    Ok(Resource {
        kind: kinds::ACCOUNT.into(),
        id: id_of(account, "account")?.to_string(),
        name: text(account, "name"),
        status: text(account, "status"),
        attributes: json!({
            "platform": account["platform"],
            "type": account["type"],
            "base_url": account["credentials"]["base_url"],
            "models": models,
            "group_ids": account["group_ids"],
            "schedulable": account["schedulable"],
            "error_message": account["error_message"],
            "key_fingerprint": extra[FINGERPRINT_KEY],
            "openai_responses_supported": extra["openai_responses_supported"],
            "openai_responses_mode": extra["openai_responses_mode"],
        })
        .to_string(),
    })
}

fn user_resource(user: &Value) -> Result<Resource, PluginError> {
    Ok(Resource {
        kind: kinds::USER.into(),
        id: id_of(user, "user")?.to_string(),
        name: text(user, "username"),
        status: text(user, "status"),
        attributes: json!({
            "email": user["email"],
            "balance": user["balance"],
            "allowed_groups": user["allowed_groups"],
        })
        .to_string(),
    })
}

fn subscription_resource(subscription: &Value, name: &str) -> Result<Resource, PluginError> {
    Ok(Resource {
        kind: kinds::SUBSCRIPTION.into(),
        id: id_of(subscription, "subscription")?.to_string(),
        name: name.to_string(),
        status: text(subscription, "status"),
        attributes: json!({
            "user_id": subscription["user_id"],
            "group_id": subscription["group_id"],
            "expires_at": subscription["expires_at"],
        })
        .to_string(),
    })
}

/// A user's API key. sub2api has no admin route to a key by its id alone, so the id Wharf
/// records is `<user id>:<key id>` (deleting it needs the owner's session).
fn key_resource(key: &Value) -> Result<Resource, PluginError> {
    let user_id = key["user_id"]
        .as_i64()
        .ok_or_else(|| invalid("API key without a numeric `user_id`"))?;
    Ok(Resource {
        kind: kinds::API_KEY.into(),
        id: format!("{user_id}:{}", id_of(key, "API key")?),
        name: text(key, "name"),
        status: text(key, "status"),
        attributes: json!({"user_id": user_id, "group_id": key["group_id"]}).to_string(),
    })
}

// --- lookups ----------------------------------------------------------------------------

fn find_group<T: Transport>(api: &Api<'_, T>, name: &str) -> Result<Option<Value>, PluginError> {
    Ok(api
        .admin_items("/groups")?
        .into_iter()
        .find(|g| g["name"] == name))
}

fn find_account<T: Transport>(api: &Api<'_, T>, name: &str) -> Result<Option<Value>, PluginError> {
    Ok(api
        .admin_items(&format!("/accounts?search={}", query_value(name)))?
        .into_iter()
        .find(|a| a["name"] == name))
}

fn find_user<T: Transport>(api: &Api<'_, T>, email: &str) -> Result<Option<Value>, PluginError> {
    Ok(api
        .admin_items(&format!("/users?search={}", query_value(email)))?
        .into_iter()
        .find(|u| u["email"] == email))
}

/// The id of the group or user that `request` names (its spec field of that `kind`): from
/// the item's resources ensured so far, else from the host.
fn resolve<T: Transport>(
    api: &Api<'_, T>,
    done: &[Resource],
    request: &ResourceRequest,
    kind: &str,
) -> Result<i64, PluginError> {
    // A request names the group or user it needs in the spec field of that kind.
    let name = plan::spec_str(request, kind)?;
    if let Some(found) = done.iter().find(|r| r.kind == kind && r.name == name) {
        return parse_id(kind, &found.id);
    }
    let found = match kind {
        kinds::GROUP => find_group(api, &name)?,
        _ => find_user(api, &plan::user_email(&name))?,
    };
    match found {
        Some(value) => id_of(&value, kind),
        None => Err(PluginError::new(
            codes::NOT_FOUND,
            format!(
                "the {kind} `{name}` this resource needs does not exist on the host (ensure it first)"
            ),
        )),
    }
}

// --- ensure, by kind --------------------------------------------------------------------

fn ensure_group<T: Transport>(
    api: &Api<'_, T>,
    request: &ResourceRequest,
) -> Result<Ensured, PluginError> {
    let subscription_type = plan::spec_str(request, "subscription_type")?;
    let existing = match find_group(api, &request.name)? {
        Some(group) => group,
        None => {
            let body = json!({
                "name": request.name,
                "description": plan::spec_str(request, "description")?,
                "platform": plan::spec_str(request, "platform")?,
                "subscription_type": subscription_type,
                "is_exclusive": plan::spec_field(request, "is_exclusive")?,
            });
            match api.admin("POST", "/groups", Some(&body)) {
                Ok(group) => return done(group_resource(&group)?, Outcome::Created, None),
                // Another item created it meanwhile.
                Err(e) if e.is(codes::CONFLICT) => find_group(api, &request.name)?.ok_or(e)?,
                Err(e) => return Err(e),
            }
        }
    };
    if existing["subscription_type"] != subscription_type.as_str() {
        return Err(PluginError::new(
            codes::CONFLICT,
            format!(
                "group `{}` exists with subscription_type {}, this import needs {subscription_type}",
                request.name, existing["subscription_type"]
            ),
        ));
    }
    if existing["status"] != "active" {
        let id = id_of(&existing, "group")?;
        let group = api.admin(
            "PUT",
            &format!("/groups/{id}"),
            Some(&json!({"status": "active"})),
        )?;
        return done(group_resource(&group)?, Outcome::Reactivated, None);
    }
    done(group_resource(&existing)?, Outcome::Reused, None)
}

fn done(
    resource: Resource,
    outcome: Outcome,
    secret: Option<String>,
) -> Result<Ensured, PluginError> {
    Ok(Ensured {
        resource,
        outcome,
        secret,
    })
}

fn ensure_account<T: Transport>(
    api: &Api<'_, T>,
    item: &ImportItem,
    request: &ResourceRequest,
    done_so_far: &[Resource],
) -> Result<Ensured, PluginError> {
    let group_id = resolve(api, done_so_far, request, kinds::GROUP)?;
    let models = plan::models(item);
    let desired = DesiredAccount {
        api_key: &item.api_key,
        key_fingerprint: &item.key_fingerprint,
        base_url: &item.upstream_base_url,
        models: &models,
        group_id,
    };
    let Some(existing) = find_account(api, &request.name)? else {
        let account = api.admin(
            "POST",
            "/accounts",
            Some(&new_account(&request.name, &desired)),
        )?;
        return done(account_resource(&account)?, Outcome::Created, None);
    };
    apply(
        api,
        "/accounts",
        &existing,
        account_change(&existing, &desired),
        account_resource,
    )
}

/// Sends a [`Change`]'s update, if any, and records the resource as the host answers it.
fn apply<T: Transport>(
    api: &Api<'_, T>,
    collection: &str,
    existing: &Value,
    change: Change,
    resource: fn(&Value) -> Result<Resource, PluginError>,
) -> Result<Ensured, PluginError> {
    let current = match &change.update {
        Some(update) => {
            let id = id_of(existing, collection)?;
            api.admin("PUT", &format!("{collection}/{id}"), Some(update))?
        }
        None => existing.clone(),
    };
    done(resource(&current)?, change.outcome, None)
}

fn ensure_user<T: Transport>(
    api: &Api<'_, T>,
    request: &ResourceRequest,
    done_so_far: &[Resource],
) -> Result<Ensured, PluginError> {
    let group_id = resolve(api, done_so_far, request, kinds::GROUP)?;
    let email = plan::spec_str(request, "email")?;
    let balance = plan::spec_field(request, "balance")?
        .as_f64()
        .unwrap_or(0.0);
    let existing = match find_user(api, &email)? {
        Some(user) => user,
        None => {
            let body = json!({
                "email": email,
                // Never used as such: every login first sets a fresh one (see `session`).
                "password": fresh_password(&request.name),
                "username": request.name,
                "notes": "Managed by Wharf: owns the API key that probes this import through the gateway",
                "balance": balance,
                "concurrency": 5,
                "allowed_groups": [group_id],
            });
            match api.admin("POST", "/users", Some(&body)) {
                Ok(user) => return done(user_resource(&user)?, Outcome::Created, None),
                Err(e) if e.is(codes::CONFLICT) => find_user(api, &email)?.ok_or(e)?,
                Err(e) => return Err(e),
            }
        }
    };
    apply(
        api,
        "/users",
        &existing,
        user_change(&existing, group_id, balance),
        user_resource,
    )
}

fn ensure_subscription<T: Transport>(
    api: &Api<'_, T>,
    request: &ResourceRequest,
    done_so_far: &[Resource],
) -> Result<Ensured, PluginError> {
    let group_id = resolve(api, done_so_far, request, kinds::GROUP)?;
    let user_id = resolve(api, done_so_far, request, kinds::USER)?;
    let days = plan::spec_field(request, "validity_days")?
        .as_i64()
        .unwrap_or(plan::SUBSCRIPTION_DAYS);
    let find = || -> Result<Option<Value>, PluginError> {
        Ok(api
            .admin_items(&format!(
                "/subscriptions?user_id={user_id}&group_id={group_id}"
            ))?
            .into_iter()
            .find(|s| s["user_id"] == user_id && s["group_id"] == group_id))
    };
    let existing = match find()? {
        Some(subscription) => subscription,
        None => {
            let body = json!({
                "user_id": user_id, "group_id": group_id, "validity_days": days,
                "notes": format!("Managed by Wharf: {}", request.name),
            });
            match api.admin("POST", "/subscriptions/assign", Some(&body)) {
                Ok(created) => {
                    return done(
                        subscription_resource(&created, &request.name)?,
                        Outcome::Created,
                        None,
                    );
                }
                Err(e) if e.is(codes::CONFLICT) => find()?.ok_or(e)?,
                Err(e) => return Err(e),
            }
        }
    };
    if existing["status"] == "active" {
        return done(
            subscription_resource(&existing, &request.name)?,
            Outcome::Reused,
            None,
        );
    }
    // Expired: `extend` makes it active again (`service/subscription_service.go`).
    let id = id_of(&existing, "subscription")?;
    let extended = api.admin(
        "POST",
        &format!("/subscriptions/{id}/extend"),
        Some(&json!({"days": days})),
    )?;
    done(
        subscription_resource(&extended, &request.name)?,
        Outcome::Reactivated,
        None,
    )
}

/// A fresh password: sha256 of the clock, a counter-free seed and the name; never stored.
fn fresh_password(seed: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let digest = Sha256::digest(format!("wharf sub2api managed user\0{seed}\0{nanos}"));
    hex::encode(&digest[..16])
}

/// A login token of a managed user: the admin sets a fresh password, then the adapter logs in
/// (`POST /api/v1/auth/login`). sub2api's user routes (`/api/v1/keys`) take only a user's JWT.
fn session<T: Transport>(api: &Api<'_, T>, user_id: i64) -> Result<String, PluginError> {
    let user = api.admin("GET", &format!("/users/{user_id}"), None)?;
    let email = text(&user, "email");
    let password = fresh_password(&email);
    api.admin(
        "PUT",
        &format!("/users/{user_id}"),
        Some(&json!({"password": password})),
    )?;
    let login = api.call(
        "POST",
        "/api/v1/auth/login",
        Some(&json!({"email": email, "password": password})),
        None,
    )?;
    login["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid("POST /api/v1/auth/login: no `data.access_token`"))
}

fn ensure_api_key<T: Transport>(
    api: &Api<'_, T>,
    request: &ResourceRequest,
    done_so_far: &[Resource],
) -> Result<Ensured, PluginError> {
    let group_id = resolve(api, done_so_far, request, kinds::GROUP)?;
    let user_id = resolve(api, done_so_far, request, kinds::USER)?;
    let existing = api
        .admin_items(&format!("/users/{user_id}/api-keys"))?
        .into_iter()
        .find(|k| k["name"] == request.name.as_str());
    let (key, outcome) = match existing {
        Some(key) if key["status"] == "active" && key["group_id"] == group_id => {
            (key, Outcome::Reused)
        }
        Some(key) => {
            let outcome = if key["status"] == "active" {
                Outcome::PatchOnly
            } else {
                Outcome::Reactivated
            };
            let token = session(api, user_id)?;
            let id = id_of(&key, "API key")?;
            let body = json!({"group_id": group_id, "status": "active"});
            (
                api.call(
                    "PUT",
                    &format!("/api/v1/keys/{id}"),
                    Some(&body),
                    Some(&token),
                )?,
                outcome,
            )
        }
        None => {
            let token = session(api, user_id)?;
            let body = json!({"name": request.name, "group_id": group_id});
            (
                api.call("POST", "/api/v1/keys", Some(&body), Some(&token))?,
                Outcome::Created,
            )
        }
    };
    let secret = key["key"]
        .as_str()
        .filter(|k| !k.is_empty() && !k.contains('*'))
        .ok_or_else(|| invalid("the host did not answer the API key's secret"))?
        .to_string();
    done(key_resource(&key)?, outcome, Some(secret))
}

// --- list, delete, repair --------------------------------------------------------------

fn managed_users<T: Transport>(api: &Api<'_, T>, prefix: &str) -> Result<Vec<Value>, PluginError> {
    Ok(api
        .admin_items(&format!("/users?search={}", query_value(prefix)))?
        .into_iter()
        .filter(|u| text(u, "username").starts_with(prefix) || text(u, "email").starts_with(prefix))
        .collect())
}

pub fn list<T: Transport>(
    api: &Api<'_, T>,
    kind: &str,
    prefix: &str,
) -> Result<Vec<Resource>, PluginError> {
    let named = |v: &Value| text(v, "name").starts_with(prefix);
    match kind {
        kinds::GROUP => api
            .admin_items("/groups")?
            .iter()
            .filter(|g| named(g))
            .map(group_resource)
            .collect(),
        kinds::ACCOUNT => api
            .admin_items(&format!("/accounts?search={}", query_value(prefix)))?
            .iter()
            .filter(|a| named(a))
            .map(account_resource)
            .collect(),
        kinds::USER => managed_users(api, prefix)?
            .iter()
            .map(user_resource)
            .collect(),
        kinds::SUBSCRIPTION => {
            let mut out = Vec::new();
            for user in managed_users(api, prefix)? {
                let user_id = id_of(&user, "user")?;
                for subscription in api.admin_items(&format!("/subscriptions?user_id={user_id}"))? {
                    out.push(subscription_resource(
                        &subscription,
                        &text(&user, "username"),
                    )?);
                }
            }
            Ok(out)
        }
        kinds::API_KEY => {
            let mut out = Vec::new();
            for user in managed_users(api, prefix)? {
                let user_id = id_of(&user, "user")?;
                for key in api.admin_items(&format!("/users/{user_id}/api-keys"))? {
                    if named(&key) {
                        out.push(key_resource(&key)?);
                    }
                }
            }
            Ok(out)
        }
        other => Err(unknown_kind(other)),
    }
}

pub fn delete<T: Transport>(api: &Api<'_, T>, kind: &str, id: &str) -> Result<(), PluginError> {
    let collection = match kind {
        kinds::GROUP => "/groups",
        kinds::ACCOUNT => "/accounts",
        kinds::USER => "/users",
        kinds::SUBSCRIPTION => "/subscriptions",
        kinds::API_KEY => {
            let (user_id, key_id) = id.split_once(':').ok_or_else(|| {
                PluginError::invalid_input(format!("API key id `{id}` is not `<user id>:<key id>`"))
            })?;
            let (user_id, key_id) = (parse_id(kind, user_id)?, parse_id(kind, key_id)?);
            // A deleted user took its keys with it: `session` answers `not_found`.
            let token = session(api, user_id)?;
            api.call(
                "DELETE",
                &format!("/api/v1/keys/{key_id}"),
                None,
                Some(&token),
            )?;
            return Ok(());
        }
        other => return Err(unknown_kind(other)),
    };
    let id = parse_id(kind, id)?;
    api.admin("DELETE", &format!("{collection}/{id}"), None)?;
    Ok(())
}

/// Fixes the Responses routing symptom of seed 003: the gateway sent this OpenAI API-key
/// account's chat completions to `/v1/responses`, which the upstream lacks (`502
/// upstream_error`). Forces chat completions through `extra`; `None` for any other symptom or
/// when the account already goes to chat completions.
pub fn repair<T: Transport>(
    api: &Api<'_, T>,
    account: &Resource,
    symptom: &str,
) -> Result<Option<String>, PluginError> {
    if account.kind != kinds::ACCOUNT || !compare::symptom_is_responses_routing(symptom) {
        return Ok(None);
    }
    let id = parse_id(kinds::ACCOUNT, &account.id)?;
    let current = api.admin("GET", &format!("/accounts/{id}"), None)?;
    if current["platform"] != "openai" || current["type"] != "apikey" {
        return Ok(None);
    }
    let Some((extra, before)) = compare::force_chat_completions(&current["extra"]) else {
        return Ok(None);
    };
    api.admin(
        "PUT",
        &format!("/accounts/{id}"),
        Some(&json!({"extra": extra})),
    )?;
    Ok(Some(format!(
        "account {id} ({}): set extra.openai_responses_supported=false and \
         openai_responses_mode=force_chat_completions ({before}); the gateway now sends its chat \
         completions upstream to /chat/completions instead of /responses",
        text(&current, "name")
    )))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use wharf_plugin_sdk::http::{Request, Response};

    use super::*;
    use crate::plan::tests::item;

    /// Answers scripted per `"METHOD path"` (query included) and records every request.
    #[derive(Default)]
    struct Script {
        answers: RefCell<Vec<(String, u16, Value)>>,
        sent: RefCell<Vec<(String, Option<Value>, bool)>>,
    }

    impl Script {
        fn on(&self, route: &str, status: u16, data: Value) -> &Self {
            let body = if status < 300 {
                json!({"code": 0, "message": "success", "data": data})
            } else {
                data
            };
            self.answers
                .borrow_mut()
                .push((route.to_string(), status, body));
            self
        }
        fn routes(&self) -> Vec<String> {
            self.sent
                .borrow()
                .iter()
                .map(|(r, _, _)| r.clone())
                .collect()
        }
    }

    impl Transport for Script {
        fn send(&self, request: &Request) -> Result<Response, PluginError> {
            let path = request.url.trim_start_matches("http://relay.test");
            let route = format!("{} {path}", request.method);
            let body = request
                .body
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap());
            let session = request.headers.iter().any(|(k, _)| k == "authorization");
            self.sent.borrow_mut().push((route.clone(), body, session));
            let answers = self.answers.borrow();
            let (_, status, body) = answers
                .iter()
                .find(|(r, _, _)| *r == route)
                .unwrap_or_else(|| panic!("unscripted request {route}"));
            Ok(Response {
                status: *status,
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            })
        }
    }

    fn page(items: Value) -> Value {
        json!({"items": items, "total": items.as_array().unwrap().len(), "page": 1, "page_size": 100, "pages": 1})
    }

    fn group_done() -> Resource {
        Resource {
            kind: "group".into(),
            id: "3".into(),
            name: "wharf-kimi-kimi-ab12cd34".into(),
            status: "active".into(),
            attributes: "{}".into(),
        }
    }

    #[test]
    fn detect_reads_the_version_and_names_the_gateway() {
        let script = Script::default();
        script.on(
            "GET /api/v1/admin/system/version",
            200,
            json!({"version": "0.1.129"}),
        );
        let api = Api::new(&script, "http://relay.test/");
        assert_eq!(
            detect(&api).unwrap(),
            ("0.1.129".into(), "http://relay.test/v1".into())
        );
    }

    #[test]
    fn a_missing_account_is_created_with_its_model_mapping_and_group() {
        let item = item(plan::MODE_SUBSCRIPTION);
        let request = &plan::plan_import(&item).unwrap()[1];
        let script = Script::default();
        script
            .on("GET /api/v1/admin/accounts?search=wharf-kimi-kimi-ab12cd34&page=1&page_size=100", 200, page(json!([{"id": 1, "name": "wharf-kimi-kimi-ab12cd34-old"}])))
            .on("POST /api/v1/admin/accounts", 200, json!({"id": 8, "name": item.name, "status": "active", "credentials": {"base_url": "https://api.moonshot.cn/v1", "model_mapping": {"kimi-k2.6": "kimi-k2.6"}}}));
        let api = Api::new(&script, "http://relay.test");
        let ensured = ensure(&api, &item, request, &[group_done()]).unwrap();
        assert_eq!(ensured.outcome, Outcome::Created);
        assert_eq!(ensured.resource.id, "8");
        assert!(!ensured.resource.attributes.contains(&item.api_key));
        let sent = script.sent.borrow();
        let created = sent[1].1.as_ref().unwrap();
        assert_eq!(created["group_ids"], json!([3]));
        assert_eq!(
            created["credentials"]["model_mapping"],
            json!({"kimi-k2.6": "kimi-k2.6", "kimi-k2.5": "kimi-k2.5"})
        );
        assert_eq!(created["credentials"]["api_key"], item.api_key.as_str());
    }

    #[test]
    fn an_api_key_is_created_through_the_users_session_and_its_secret_returned() {
        let item = item(plan::MODE_SUBSCRIPTION);
        let request = plan::plan_import(&item).unwrap().pop().unwrap();
        let user = Resource {
            kind: "user".into(),
            id: "5".into(),
            name: item.name.clone(),
            status: "active".into(),
            attributes: "{}".into(),
        };
        let script = Script::default();
        script
            .on("GET /api/v1/admin/users/5/api-keys?page=1&page_size=100", 200, page(json!([])))
            .on("GET /api/v1/admin/users/5", 200, json!({"id": 5, "email": "wharf-kimi-kimi-ab12cd34@wharf.local"}))
            .on("PUT /api/v1/admin/users/5", 200, json!({"id": 5}))
            .on("POST /api/v1/auth/login", 200, json!({"access_token": "jwt-1", "token_type": "Bearer"}))
            .on("POST /api/v1/keys", 200, json!({"id": 12, "user_id": 5, "key": "sk-relay-1", "name": item.name, "group_id": 3, "status": "active"}));
        let api = Api::new(&script, "http://relay.test");
        let ensured = ensure(&api, &item, &request, &[group_done(), user]).unwrap();
        assert_eq!(
            (ensured.outcome, ensured.secret.as_deref()),
            (Outcome::Created, Some("sk-relay-1"))
        );
        assert_eq!(ensured.resource.id, "5:12");
        let sent = script.sent.borrow();
        let (route, body, with_session) = sent.last().unwrap();
        assert_eq!((route.as_str(), *with_session), ("POST /api/v1/keys", true));
        assert_eq!(body.as_ref().unwrap()["group_id"], 3);
        // The same key again: reused, no session, nothing written.
        let again = Script::default();
        again.on("GET /api/v1/admin/users/5/api-keys?page=1&page_size=100", 200, page(json!([{"id": 12, "user_id": 5, "key": "sk-relay-1", "name": item.name, "group_id": 3, "status": "active"}])));
        let user = Resource {
            kind: "user".into(),
            id: "5".into(),
            name: item.name.clone(),
            status: "active".into(),
            attributes: "{}".into(),
        };
        let ensured = ensure(
            &Api::new(&again, "http://relay.test"),
            &item,
            &request,
            &[group_done(), user],
        )
        .unwrap();
        assert_eq!(ensured.outcome, Outcome::Reused);
        assert_eq!(again.routes().len(), 1);
    }

    #[test]
    fn deleting_what_is_gone_is_not_found() {
        let script = Script::default();
        script.on(
            "DELETE /api/v1/admin/accounts/7",
            404,
            json!({"code": 404, "message": "account not found", "reason": "ACCOUNT_NOT_FOUND"}),
        );
        let api = Api::new(&script, "http://relay.test");
        assert_eq!(
            delete(&api, "account", "7").unwrap_err().code,
            codes::NOT_FOUND
        );
        assert_eq!(
            delete(&api, "api-key", "7").unwrap_err().code,
            "invalid_input"
        );
    }

    #[test]
    fn repair_forces_chat_completions_once() {
        let account = Resource {
            kind: "account".into(),
            id: "9".into(),
            name: "a".into(),
            status: "active".into(),
            attributes: "{}".into(),
        };
        let script = Script::default();
        script
            .on("GET /api/v1/admin/accounts/9", 200, json!({"id": 9, "name": "a", "platform": "openai", "type": "apikey", "extra": {"openai_responses_supported": true, FINGERPRINT_KEY: "fp"}}))
            .on("PUT /api/v1/admin/accounts/9", 200, json!({"id": 9}));
        let api = Api::new(&script, "http://relay.test");
        let changed = repair(
            &api,
            &account,
            "host_compatibility_gap: 502 upstream_error Upstream request failed",
        )
        .unwrap();
        assert!(
            changed
                .unwrap()
                .contains("openai_responses_supported=false")
        );
        let sent = script.sent.borrow();
        let extra = &sent[1].1.as_ref().unwrap()["extra"];
        assert_eq!(
            (
                extra["openai_responses_supported"].clone(),
                extra[FINGERPRINT_KEY].clone()
            ),
            (json!(false), json!("fp"))
        );
        drop(sent);
        assert_eq!(repair(&api, &account, "upstream_auth: 401").unwrap(), None);
    }
}
