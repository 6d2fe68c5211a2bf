//! Binding of [`crate::ops`] to the WIT interface `relay-host` through the SDK.

use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::relay_host::{
    EnsureOutcome, Ensured, HostFacts, HostKind, HostRef, ImportItem, RelayHost, Resource,
    ResourceRequest,
};

use crate::api::{Api, SdkHttp};
use crate::compare::Outcome;
use crate::{ops, plan};

/// The sub2api sources this adapter follows (repository `Wei-Shaw/sub2api`, under
/// `backend/internal/`); `README.md` lists each call.
pub const REFERENCE: &str = "Wei-Shaw/sub2api@d3e73f1260ed7460350f4fd9e02763ec4cc29bb9 backend/internal/: \
server/middleware/admin_auth.go, server/routes/{admin,auth,user,gateway}.go, pkg/response/response.go, \
handler/admin/{system,group,account,user,subscription}_handler.go, handler/{auth,api_key}_handler.go, \
handler/dto/types.go, service/{admin,api_key,subscription}_service.go; later versions for \
extra.openai_responses_supported / openai_responses_mode and /v1/models from credentials.model_mapping";

struct Sub2Api;

fn outcome(outcome: Outcome) -> EnsureOutcome {
    match outcome {
        Outcome::Created => EnsureOutcome::Created,
        Outcome::Reused => EnsureOutcome::Reused,
        Outcome::PatchOnly => EnsureOutcome::PatchOnly,
        Outcome::Replace => EnsureOutcome::Replace,
        Outcome::Reactivated => EnsureOutcome::Reactivated,
    }
}

impl RelayHost for Sub2Api {
    fn describe() -> HostKind {
        HostKind {
            kind: "sub2api".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "sub2api (Wei-Shaw/sub2api): imports each provider key as an OpenAI API-key \
                          account in a per-provider group, with a managed user, its subscription \
                          (mode `subscription`) and its API key for probing the gateway"
                    .into(),
            // `server/middleware/admin_auth.go`: the admin API key goes in `x-api-key`.
            admin_auth: "x-api-key".into(),
            reference: REFERENCE.into(),
        }
    }

    fn detect(host: HostRef) -> Result<HostFacts, PluginError> {
        let (version, gateway_base_url) = ops::detect(&Api::new(&SdkHttp, &host.base_url))?;
        Ok(HostFacts {
            version,
            gateway_base_url,
        })
    }

    fn plan_import(item: ImportItem) -> Result<Vec<ResourceRequest>, PluginError> {
        plan::plan_import(&item)
    }

    fn ensure(
        host: HostRef,
        item: ImportItem,
        request: ResourceRequest,
        done: Vec<Resource>,
    ) -> Result<Ensured, PluginError> {
        let ensured = ops::ensure(&Api::new(&SdkHttp, &host.base_url), &item, &request, &done)?;
        Ok(Ensured {
            resource: ensured.resource,
            outcome: outcome(ensured.outcome),
            secret: ensured.secret,
        })
    }

    fn list(host: HostRef, kind: String, prefix: String) -> Result<Vec<Resource>, PluginError> {
        ops::list(&Api::new(&SdkHttp, &host.base_url), &kind, &prefix)
    }

    fn delete(host: HostRef, kind: String, id: String) -> Result<(), PluginError> {
        ops::delete(&Api::new(&SdkHttp, &host.base_url), &kind, &id)
    }

    fn repair(
        host: HostRef,
        account: Resource,
        symptom: String,
    ) -> Result<Option<String>, PluginError> {
        ops::repair(&Api::new(&SdkHttp, &host.base_url), &account, &symptom)
    }
}

wharf_plugin_sdk::export_relay_host!(Sub2Api);
