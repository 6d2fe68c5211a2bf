//! Calls into a relay host adapter plugin (`wharf:plugin@0.3.0`, world `relay-host-adapter`).
//!
//! An [`Adapter`] is bound to the pack generation active when it was made and holds it (in-flight
//! guard) while it lives, so a pack swap never changes the adapter in the middle of an item.
//! Every call gets an HTTP grant for exactly one origin, the registered host's base URL, with the
//! admin token as the credential the host adds there: the plugin never sees the token and can
//! reach nothing else (see [`crate::runtime::http`]).

use std::sync::Arc;

use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::outbound::{BaseUrl, Credential, OutboundClient, Reach};
use crate::packs::{InflightGuard, Packs};
use crate::probes::runner::nearest;
use crate::runtime::LoadedComponent;
use crate::runtime::bindings::relay_host::exports::wharf::plugin::relay_host as wit;
use crate::runtime::http::{GrantedOrigin, HttpGrant};

pub use wit::{EnsureOutcome, Ensured, HostFacts, HostRef, ImportItem, Resource, ResourceRequest};

/// The `plugin-error` of an adapter call, as a [`PluginFailure`] (the binding's error type is
/// the shared `types` one; the closure lets inference name it).
macro_rules! failure {
    () => {
        |err| PluginFailure {
            code: err.code,
            message: err.message,
            retriable: err.retriable,
        }
    };
}

/// One registered host as the adapter is called for it: where, and with which token.
pub struct HostAccess {
    pub base_url: String,
    /// The admin token (opened from its seal for the call; never logged).
    pub token: String,
    pub reach: Reach,
}

/// The adapter of one kind, on the generation active when it was bound.
pub struct Adapter {
    _guard: InflightGuard,
    component: Arc<LoadedComponent>,
    pub kind: String,
    pub admin_auth: String,
    /// `<pack id>@<version>` serving this kind.
    pub pack: String,
    outbound: Arc<OutboundClient>,
}

impl Adapter {
    /// The active adapter of `kind`; an unknown kind is `validation_error` naming the nearest.
    pub fn bind(packs: &Packs, kind: &str, outbound: Arc<OutboundClient>) -> WharfResult<Adapter> {
        let snapshot = packs.snapshot();
        let Some(route) = snapshot.relay_hosts.get(kind).cloned() else {
            let known: Vec<&str> = snapshot.relay_hosts.keys().map(String::as_str).collect();
            let message = if known.is_empty() {
                format!(
                    "no active pack provides a relay host adapter of kind {kind:?}; none is loaded"
                )
            } else {
                format!(
                    "no active pack provides a relay host adapter of kind {kind:?}; known: {}",
                    nearest(kind, &known, 3).join(", ")
                )
            };
            return Err(WharfError::validation(message));
        };
        drop(snapshot);
        let component = route.component();
        let info = component.relay_host.clone().ok_or_else(|| {
            WharfError::internal(format!(
                "pack component for relay kind {kind:?} is not a relay host"
            ))
        })?;
        Ok(Adapter {
            component: component.runtime.clone(),
            kind: info.kind.clone(),
            admin_auth: info.admin_auth.clone(),
            pack: format!("{}@{}", route.pack.id, route.pack.version),
            _guard: InflightGuard::new(route.pack.clone()),
            outbound,
        })
    }

    /// The grant of one call: the host's origin only, with its admin token.
    fn grant(&self, host: &HostAccess) -> WharfResult<HttpGrant> {
        let base = BaseUrl::parse(&host.base_url)
            .map_err(|err| WharfError::validation(format!("`base_url`: {err}")))?;
        let credential = Credential::for_scheme(&self.admin_auth, &host.token).map_err(|_| {
            WharfError::validation("`admin_token` cannot be sent in an HTTP header")
        })?;
        let grant = HttpGrant::new(
            self.outbound.clone(),
            host.reach,
            vec![GrantedOrigin {
                base,
                credential: Some(credential),
            }],
        );
        // With the admin token in `x-api-key`, `Authorization` is free for a session the
        // adapter obtains from the same origin (sub2api creates a user's key only in the
        // user's session); with a bearer admin token it stays the host's.
        Ok(if self.admin_auth == "x-api-key" {
            grant.allow_plugin_header("authorization")
        } else {
            grant
        })
    }

    /// Runs one plugin call off the async runtime (wasm calls block), for the current owner.
    async fn call<T, F>(&self, operation: &'static str, host: &HostAccess, f: F) -> WharfResult<T>
    where
        T: Send + 'static,
        F: FnOnce(
                &mut wasmtime::Store<crate::runtime::CallState>,
                &crate::runtime::bindings::RelayHost,
            ) -> wasmtime::Result<Result<T, PluginFailure>>
            + Send
            + 'static,
    {
        let grant = self.grant(host)?;
        let component = self.component.clone();
        let owner = crate::runtime::call::current_owner();
        let answer = tokio::task::spawn_blocking(move || {
            component.relay_host_call(owner.as_deref(), Some(grant), f)
        })
        .await
        .map_err(|err| WharfError::internal(format!("relay adapter task failed: {err}")))??;
        answer.map_err(|failure| failure.into_error(operation))
    }

    pub async fn detect(&self, host: &HostAccess) -> WharfResult<HostFacts> {
        let reference = host_ref(host);
        self.call("detect", host, move |store, relay| {
            Ok(relay
                .wharf_plugin_relay_host()
                .call_detect(store, &reference)?
                .map_err(failure!()))
        })
        .await
    }

    pub async fn plan_import(
        &self,
        host: &HostAccess,
        item: &ImportItem,
    ) -> WharfResult<Vec<ResourceRequest>> {
        let item = item.clone();
        self.call("plan-import", host, move |store, relay| {
            Ok(relay
                .wharf_plugin_relay_host()
                .call_plan_import(store, &item)?
                .map_err(failure!()))
        })
        .await
    }

    pub async fn ensure(
        &self,
        host: &HostAccess,
        item: &ImportItem,
        request: &ResourceRequest,
        done: &[Resource],
    ) -> WharfResult<Ensured> {
        let (reference, item, request, done) =
            (host_ref(host), item.clone(), request.clone(), done.to_vec());
        self.call("ensure", host, move |store, relay| {
            Ok(relay
                .wharf_plugin_relay_host()
                .call_ensure(store, &reference, &item, &request, &done)?
                .map_err(failure!()))
        })
        .await
    }

    pub async fn list(
        &self,
        host: &HostAccess,
        kind: &str,
        prefix: &str,
    ) -> WharfResult<Vec<Resource>> {
        let (reference, kind, prefix) = (host_ref(host), kind.to_string(), prefix.to_string());
        self.call("list", host, move |store, relay| {
            Ok(relay
                .wharf_plugin_relay_host()
                .call_list(store, &reference, &kind, &prefix)?
                .map_err(failure!()))
        })
        .await
    }

    /// Deletes one resource; `Ok(false)` when the host says it is already gone.
    pub async fn delete(&self, host: &HostAccess, kind: &str, id: &str) -> WharfResult<bool> {
        let (reference, kind, id) = (host_ref(host), kind.to_string(), id.to_string());
        let answer = self
            .call("delete", host, move |store, relay| {
                Ok(relay
                    .wharf_plugin_relay_host()
                    .call_delete(store, &reference, &kind, &id)?
                    .map_err(failure!()))
            })
            .await;
        match answer {
            Ok(()) => Ok(true),
            Err(err) if err.message.starts_with("delete: not_found:") => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn repair(
        &self,
        host: &HostAccess,
        account: &Resource,
        symptom: &str,
    ) -> WharfResult<Option<String>> {
        let (reference, account, symptom) = (host_ref(host), account.clone(), symptom.to_string());
        self.call("repair", host, move |store, relay| {
            Ok(relay
                .wharf_plugin_relay_host()
                .call_repair(store, &reference, &account, &symptom)?
                .map_err(failure!()))
        })
        .await
    }
}

fn host_ref(host: &HostAccess) -> HostRef {
    HostRef {
        base_url: host.base_url.clone(),
    }
}

/// A `plugin-error` the adapter returned, carried out of the blocking call.
pub struct PluginFailure {
    code: String,
    message: String,
    retriable: bool,
}

impl PluginFailure {
    /// `relay_host_error` with the operation, the adapter's code and its message (which the
    /// adapter builds from the host's answer, never from the token it does not hold).
    fn into_error(self, operation: &str) -> WharfError {
        WharfError::new(
            ErrorCode::RelayHostError,
            format!("{operation}: {}: {}", self.code, self.message),
        )
        .with_retriable(self.retriable)
    }
}

/// The outcome's name as the API shows it.
pub fn outcome_name(outcome: EnsureOutcome) -> &'static str {
    match outcome {
        EnsureOutcome::Created => "created",
        EnsureOutcome::Reused => "reused",
        EnsureOutcome::PatchOnly => "patch_only",
        EnsureOutcome::Replace => "replace",
        EnsureOutcome::Reactivated => "reactivated",
    }
}
