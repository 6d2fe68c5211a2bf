//! Relay host adapters: import, list, delete and repair resources on one kind of relay
//! (sub2api, one-api, new-api, ...) through its admin API.
//!
//! An adapter implements [`RelayHost`] on a unit struct and exports it with
//! [`export_relay_host!`](crate::export_relay_host). Wharf drives an import one resource at
//! a time and records each with a write-ahead intent: [`RelayHost::plan_import`] names the
//! resources a key needs, [`RelayHost::ensure`] makes one exist. `ensure` must find an
//! existing resource by its name before creating one, so a call repeated after a crash
//! never makes a duplicate.
//!
//! All HTTP ([`crate::http`], feature `http`) goes to the registered host's origin only,
//! and the host adds the admin credential itself (in the header [`HostKind::admin_auth`]
//! names): build URLs from [`HostRef::base_url`] and never set an auth header.
//!
//! The record types are those of the WIT interface `wharf:plugin/relay-host` (0.3.0).

use crate::PluginError;

pub use crate::__bindings::relay_host::exports::wharf::plugin::relay_host::{
    EnsureOutcome, Ensured, HostFacts, HostKind, HostRef, ImportItem, Resource, ResourceRequest,
};

/// A relay host adapter; each function mirrors one of the WIT interface
/// `wharf:plugin/relay-host`.
pub trait RelayHost {
    /// The kind of relay this adapter drives, and how it authenticates.
    fn describe() -> HostKind;
    /// Checks the admin token works and learns the host's version and gateway.
    fn detect(host: HostRef) -> Result<HostFacts, PluginError>;
    /// The resources one key needs, in creation order.
    fn plan_import(item: ImportItem) -> Result<Vec<ResourceRequest>, PluginError>;
    /// Makes one resource exist (find by name first); `done` holds the item's resources
    /// ensured so far.
    fn ensure(
        host: HostRef,
        item: ImportItem,
        request: ResourceRequest,
        done: Vec<Resource>,
    ) -> Result<Ensured, PluginError>;
    /// The host's resources of `kind` whose names start with `prefix`.
    fn list(host: HostRef, kind: String, prefix: String) -> Result<Vec<Resource>, PluginError>;
    /// Deletes one resource; one already gone is [`PluginError`] code `not_found`.
    fn delete(host: HostRef, kind: String, id: String) -> Result<(), PluginError>;
    /// Tries to fix what a failing access probe showed; answers what it changed.
    fn repair(
        host: HostRef,
        account: Resource,
        symptom: String,
    ) -> Result<Option<String>, PluginError>;
}

/// Glue used by [`export_relay_host!`](crate::export_relay_host); not part of the API.
#[doc(hidden)]
pub mod __export {
    pub use crate::__bindings::relay_host::wharf::plugin::types::PluginError as WitError;

    /// Maps the SDK error into the generated record.
    pub fn wit<T>(answer: Result<T, crate::PluginError>) -> Result<T, WitError> {
        answer.map_err(Into::into)
    }
}

/// Exports a type implementing [`RelayHost`](crate::relay_host::RelayHost) as the
/// `wharf:plugin/relay-host` interface of the component (SDK feature `relay-host`).
///
/// ```ignore
/// wharf_plugin_sdk::export_relay_host!(Sub2Api);
/// ```
#[macro_export]
macro_rules! export_relay_host {
    ($adapter:ty) => {
        const _: () = {
            use ::std::string::String;
            use ::std::vec::Vec;
            use $crate::relay_host::__export::{WitError, wit};
            use $crate::relay_host::RelayHost as _;
            use $crate::relay_host::*;
            struct __WharfRelayHostExport;

            impl $crate::__bindings::relay_host::exports::wharf::plugin::relay_host::Guest
                for __WharfRelayHostExport
            {
                fn describe() -> HostKind {
                    <$adapter>::describe()
                }
                fn detect(host: HostRef) -> Result<HostFacts, WitError> {
                    wit(<$adapter>::detect(host))
                }
                fn plan_import(item: ImportItem) -> Result<Vec<ResourceRequest>, WitError> {
                    wit(<$adapter>::plan_import(item))
                }
                fn ensure(
                    host: HostRef,
                    item: ImportItem,
                    request: ResourceRequest,
                    done: Vec<Resource>,
                ) -> Result<Ensured, WitError> {
                    wit(<$adapter>::ensure(host, item, request, done))
                }
                fn list(
                    host: HostRef,
                    kind: String,
                    prefix: String,
                ) -> Result<Vec<Resource>, WitError> {
                    wit(<$adapter>::list(host, kind, prefix))
                }
                fn delete(host: HostRef, kind: String, id: String) -> Result<(), WitError> {
                    wit(<$adapter>::delete(host, kind, id))
                }
                fn repair(
                    host: HostRef,
                    account: Resource,
                    symptom: String,
                ) -> Result<Option<String>, WitError> {
                    wit(<$adapter>::repair(host, account, symptom))
                }
            }

            $crate::__bindings::relay_host::__export_relay_host_adapter!(
                __WharfRelayHostExport with_types_in $crate::__bindings::relay_host
            );
        };
    };
}
