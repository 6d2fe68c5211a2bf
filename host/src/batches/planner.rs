//! Plugin planners: a task whose `planner` names a planner component of a loaded pack
//! (`llm` of `llm-planner-pack`). This module finds the planner and its endpoint, offers the
//! task's tools, and makes one `next-action` call; the loop that runs the chosen calls is in
//! [`super::run`], beside the `script` planner.
//!
//! The planner's `wasi:http` reaches only hosts its pack declares (`allowed_hosts`) AND the
//! operator grants (`[packs] http_grants`), within `[packs] allow_private_http`; the
//! endpoint's key is added by the host at the endpoint's origin only
//! ([`HttpGrant::for_pack`]).

use super::Batches;
use super::export::ToolSchema;
use crate::capabilities::{OperationTool, operation_tools, scope};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::outbound::{BaseUrl, Credential};
use crate::packs::InflightGuard;
use crate::runtime::bindings::planner::exports::wharf::plugin::planner::{
    Decision, ModelEndpoint, Step, Task, Tool,
};
use crate::runtime::http::HttpGrant;
use crate::store::keys::Principal;

/// The auth scheme of an endpoint that names none.
const DEFAULT_AUTH_SCHEME: &str = "bearer";

/// The endpoint a planner asks, resolved from `[batches.planner]` (and a provider's catalog).
pub(super) struct PlannerEndpoint {
    pub base_url: BaseUrl,
    /// As configured (the planner builds `<base_url>/chat/completions` from it).
    pub base_text: String,
    pub model: String,
    /// None when no key is configured (e.g. a local model server).
    pub credential: Option<Credential>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl PlannerEndpoint {
    pub fn model_endpoint(&self) -> ModelEndpoint {
        ModelEndpoint {
            base_url: self.base_text.clone(),
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        }
    }
}

/// A planner's answer, or why there is none (the message of a `planner_error`).
pub(super) type Asked = Result<Decision, String>;

impl Batches {
    /// A task may name `planner` when a loaded pack provides it and an endpoint is
    /// configured for it.
    pub(super) fn check_planner(&self, name: &str) -> WharfResult<()> {
        let snapshot = self.packs.snapshot();
        if !snapshot.planners.contains_key(name) {
            let loaded: Vec<&str> = snapshot.planners.keys().map(String::as_str).collect();
            return Err(WharfError::validation(format!(
                "planner {name:?} is not loaded: `{}` is built in{}",
                super::spec::SCRIPT_PLANNER,
                if loaded.is_empty() {
                    "; no pack provides a planner (drop llm-planner-pack in the packs directory)"
                        .to_string()
                } else {
                    format!(", and loaded packs provide {}", loaded.join(", "))
                }
            )));
        }
        let config = &self.config.planner;
        if config.model.is_none() || (config.base_url.is_none() && config.provider.is_none()) {
            return Err(WharfError::validation(format!(
                "planner {name:?} needs an endpoint: set `model` and `base_url` (or `provider`) under [batches.planner] in wharf.toml"
            )));
        }
        Ok(())
    }

    /// The endpoint of `[batches.planner]` as it is now (a provider's catalog may change with
    /// its pack).
    pub(super) async fn planner_endpoint(&self) -> WharfResult<PlannerEndpoint> {
        let config = &self.config.planner;
        let model = config
            .model
            .clone()
            .ok_or_else(|| WharfError::validation("[batches.planner] model is not set"))?;
        let (base_text, provider_scheme) = match (&config.base_url, &config.provider) {
            (Some(base), _) => (base.clone(), None),
            (None, Some(provider)) => {
                let (base, scheme) = self.provider_endpoint(provider).await?;
                (base, Some(scheme))
            }
            (None, None) => {
                return Err(WharfError::validation(
                    "[batches.planner] sets neither base_url nor provider",
                ));
            }
        };
        let base_url = BaseUrl::parse(&base_text).map_err(|err| {
            WharfError::validation(format!("[batches.planner] base_url {base_text:?}: {err}"))
        })?;
        let scheme = config
            .auth_scheme
            .clone()
            .or(provider_scheme)
            .unwrap_or_else(|| DEFAULT_AUTH_SCHEME.to_string());
        let credential = match &config.api_key {
            Some(key) => Some(Credential::for_scheme(&scheme, key).map_err(|err| {
                WharfError::validation(format!("[batches.planner] api_key: {err}"))
            })?),
            None => None,
        };
        Ok(PlannerEndpoint {
            base_url,
            base_text,
            model,
            credential,
            max_tokens: config.max_tokens,
            temperature: config.temperature,
        })
    }

    /// `base_url` and auth scheme of a provider of a loaded provider pack, from its catalog.
    async fn provider_endpoint(&self, provider: &str) -> WharfResult<(String, String)> {
        let route = self
            .packs
            .snapshot()
            .providers
            .get(provider)
            .cloned()
            .ok_or_else(|| {
                WharfError::validation(format!(
                    "[batches.planner] provider {provider:?}: no loaded pack provides it"
                ))
            })?;
        let guard = InflightGuard::new(route.pack.clone());
        let component = route.component().runtime.clone();
        let catalog = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            component.provider_call(None, |store, p| {
                p.wharf_plugin_provider().call_catalog(store)
            })
        })
        .await
        .map_err(|err| WharfError::internal(format!("the catalog call's task failed: {err}")))??
        .map_err(|err| {
            WharfError::new(
                ErrorCode::PluginError,
                format!(
                    "provider {provider:?}: catalog() answered {}: {}",
                    err.code, err.message
                ),
            )
        })?;
        let info = catalog
            .into_iter()
            .find(|p| p.id == provider)
            .ok_or_else(|| {
                WharfError::validation(format!(
                    "[batches.planner] provider {provider:?} is not in its pack's catalog"
                ))
            })?;
        Ok((info.base_url, info.auth_scheme))
    }

    /// The operations the key may call and the task's profile allows, as tools named
    /// `<capability>_<operation>`.
    pub(super) fn offered_tools(&self, principal: &Principal, profile: &str) -> Vec<OperationTool> {
        let profile = self.sandboxes.profiles().get(profile).ok();
        operation_tools(&self.packs, &[])
            .into_iter()
            .filter(|tool| {
                let entry = tool.scope_entry();
                scope::require(principal, &entry).is_ok()
                    && profile.as_ref().is_some_and(|p| p.allows(&entry))
            })
            .collect()
    }

    /// Asks planner `name` for the task's next action, on behalf of `owner`. Errors and traps
    /// are the planner's (`planner_error`).
    pub(super) async fn ask_planner(
        &self,
        name: &str,
        owner: &str,
        task: Task,
        history: Vec<Step>,
        endpoint: &PlannerEndpoint,
        pack_versions: &mut std::collections::BTreeMap<String, String>,
    ) -> Asked {
        let Some(route) = self.packs.snapshot().planners.get(name).cloned() else {
            return Err(format!("planner {name:?} is no longer loaded"));
        };
        let pack = route.pack.clone();
        pack_versions.insert(pack.id.clone(), pack.version.to_string());
        let who = format!("planner {name:?} ({} {})", pack.id, pack.version);
        let granted = self.http_grants.get(&pack.id).cloned().unwrap_or_default();
        let grant = HttpGrant::for_pack(
            self.outbound.clone(),
            self.http_reach,
            &pack.manifest.permissions.allowed_hosts,
            &granted,
            endpoint
                .credential
                .clone()
                .map(|credential| (&endpoint.base_url, credential)),
        );
        let guard = InflightGuard::new(pack);
        let component = route.component().runtime.clone();
        let owner = owner.to_string();
        let answer = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            component.planner_call(Some(&owner), Some(grant), |store, planner| {
                planner
                    .wharf_plugin_planner()
                    .call_next_action(store, &task, &history)
            })
        })
        .await;
        match answer {
            Ok(Ok(Ok(decision))) => Ok(decision),
            Ok(Ok(Err(err))) => Err(format!("{who} answered {}: {}", err.code, err.message)),
            Ok(Err(err)) => Err(format!("{who}: {}: {}", err.code.as_str(), err.message)),
            Err(join) => Err(format!("{who}: its call's task failed: {join}")),
        }
    }
}

/// The tools offered to a planner, in the form the plugin takes.
pub(super) fn wit_tools(tools: &[OperationTool]) -> Vec<Tool> {
    tools
        .iter()
        .map(|tool| Tool {
            name: tool.name.clone(),
            description: tool.operation.description.clone(),
            input_schema: tool.operation.input_schema.to_string(),
        })
        .collect()
}

/// The tools offered to a planner, as a trajectory records them.
pub(super) fn tool_schemas(tools: &[OperationTool]) -> Vec<ToolSchema> {
    tools
        .iter()
        .map(|tool| ToolSchema {
            name: tool.scope_entry(),
            description: tool.operation.description.clone(),
            input_schema: tool.operation.input_schema.clone(),
            pack: tool.route.pack.id.clone(),
            version: tool.route.pack.version.to_string(),
        })
        .collect()
}
