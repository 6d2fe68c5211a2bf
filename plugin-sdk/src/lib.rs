//! # Wharf plugin SDK
//!
//! The one crate a Wharf plugin author needs. A plugin is a `cdylib` crate
//! built for `wasm32-wasip2` into a WebAssembly component that implements the
//! `wharf:plugin@0.2.0` contract (`wit/v0.2.0/plugin.wit`, shipped inside this crate).
//! This crate hides the component-model bindings: you implement a trait and call one
//! export macro. Its pack declares `requires.wharf = "^0.2"`.
//!
//! Every released contract version stays in `wit/v<version>/` and the host keeps serving
//! it: a pack built with SDK 0.1 (`wharf:plugin@0.1.0`, `requires.wharf = "^0.1"`) loads
//! and answers beside 0.2 packs. The SDK's minor version follows the contract's.
//!
//! Enable exactly one feature per plugin crate, for the kind of plugin it is:
//!
//! | feature    | world                | you implement                | export with                          | imports the component gets |
//! |------------|----------------------|------------------------------|--------------------------------------|----------------------------|
//! | `adapter`  | `capability-adapter` | [`adapter::Adapter`]         | [`export_adapter!`]                  | `log`, `sandbox`           |
//! | `provider` | `llm-provider`       | [`provider::Provider`]       | [`export_provider!`]                 | `log`                      |
//! | `planner`  | `planner-plugin` (0.3.0) | [`planner::Planner`]     | [`export_planner!`]                  | `log`, `wasi:http`         |
//! | `relay-host` | `relay-host-adapter` (0.3.0) | [`relay_host::RelayHost`] | [`export_relay_host!`]      | `log`, `wasi:http`         |
//!
//! The `planner` and `relay-host` worlds are new in `wharf:plugin@0.3.0`: those two
//! features build against `wit/v0.3.0`, and their packs declare `requires.wharf = "^0.3"`.
//! Their outbound HTTP goes through [`http`] (feature `http`, standard `wasi:http`), which
//! the host sends by its outbound rules: only to granted origins, with the credential
//! added by the host.
//!
//! (Both features may be on at once, as happens when cargo unifies features
//! across a workspace; each component still imports only what it uses and
//! exports only what its export macro names.)
//!
//! Available to every plugin: [`PluginError`] (the error value of the
//! contract) and [`log`](mod@log) with the macros [`trace!`], [`debug!`], [`info!`],
//! [`warn!`], [`error!`] and [`log!`]. Adapters also get [`sandbox`]: typed
//! access to the one sandbox that the current call targets.
//!
//! ## A complete adapter
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wharf-plugin-sdk = { version = "0.2", features = ["adapter"] }
//! serde = { version = "1", features = ["derive"] }
//! schemars = { version = "1", default-features = false, features = ["derive", "std"] }
//! ```
//!
//! `src/lib.rs`:
//!
#![cfg_attr(feature = "adapter", doc = "```")]
#![cfg_attr(not(feature = "adapter"), doc = "```ignore")]
//! use std::time::Duration;
//!
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
//! use wharf_plugin_sdk::{sandbox, PluginError};
//!
//! /// Input of `greet`.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct GreetInput {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! /// Output of `greet`.
//! #[derive(Serialize, JsonSchema)]
//! struct GreetOutput {
//!     /// What `echo` printed in the sandbox.
//!     greeting: String,
//! }
//!
//! fn greet(input: GreetInput) -> Result<GreetOutput, PluginError> {
//!     if input.name.trim().is_empty() {
//!         return Err(PluginError::invalid_input("`name` must not be empty"));
//!     }
//!     wharf_plugin_sdk::info!("greeting {}", input.name);
//!     let out = sandbox::Command::new("echo")
//!         .arg(format!("Hello, {}!", input.name))
//!         .timeout(Duration::from_secs(5))
//!         .output()?;
//!     if !out.success() {
//!         return Err(PluginError::new("command_failed", out.stderr_lossy()));
//!     }
//!     Ok(GreetOutput { greeting: out.stdout_lossy().trim_end().to_owned() })
//! }
//!
//! struct Greeter;
//!
//! impl Adapter for Greeter {
//!     fn info() -> AdapterInfo {
//!         AdapterInfo::new("greeter", env!("CARGO_PKG_VERSION"), "Greets people from the sandbox")
//!     }
//!
//!     fn operations(ops: &mut Operations) {
//!         // Hints tell the host and MCP clients what the operation does to the sandbox.
//!         ops.add("greet", "Greets `name` with `echo`", greet).read_only();
//!     }
//! }
//!
//! wharf_plugin_sdk::export_adapter!(Greeter);
//! #
//! # fn main() {
//! # use wharf_plugin_sdk::adapter::{describe, invoke};
//! # assert_eq!(describe::<Greeter>().operations[0].name, "greet");
//! # assert_eq!(invoke::<Greeter>("greet", r#"{"name": ""}"#).unwrap_err().code, "invalid_input");
//! # assert_eq!(invoke::<Greeter>("greet", r#"{}"#).unwrap_err().code, "invalid_input");
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the file
//! `target/wasm32-wasip2/release/greeter.wasm` is the component. Put it in a
//! pack (see `docs/pack-format.md`), or let `wharf pack build` do both.
//!
//! The same code runs natively, so an adapter is unit-tested with plain
//! `cargo test` through [`adapter::describe`] and [`adapter::invoke`]. Sandbox calls
//! there go to a [`testing::FakeSandbox`] installed by the test (an in-memory
//! filesystem and scripted exec results; without one they return an `unsupported`
//! error), and logs go to stderr:
//!
//! ```ignore
//! #[test]
//! fn greets() {
//!     use wharf_plugin_sdk::sandbox::ExecOutput;
//!     let _fake = wharf_plugin_sdk::testing::FakeSandbox::new()
//!         .on_exec(["echo", "Hello, Ada!"], ExecOutput::ok("Hello, Ada!\n"))
//!         .install();
//!     let out = wharf_plugin_sdk::adapter::invoke::<Greeter>("greet", r#"{"name":"Ada"}"#);
//!     assert_eq!(out.unwrap(), r#"{"greeting":"Hello, Ada!"}"#);
//! }
//! ```
//!
//! A provider plugin looks the same with [`provider::Provider`] and
//! [`export_provider!`]; see the [`provider`] module.

#![warn(missing_docs)]
// The crate docs link both worlds' items; with one feature, half of them do not exist.
#![cfg_attr(
    not(all(feature = "adapter", feature = "provider")),
    allow(rustdoc::broken_intra_doc_links)
)]

pub mod error;
pub mod log;

#[cfg(feature = "adapter")]
pub mod adapter;
#[cfg(feature = "adapter")]
pub mod sandbox;
#[cfg(all(feature = "adapter", not(target_arch = "wasm32")))]
pub mod testing;

#[cfg(feature = "provider")]
pub mod provider;

#[cfg(feature = "planner")]
pub mod planner;

#[cfg(feature = "relay-host")]
pub mod relay_host;

#[cfg(feature = "http")]
pub mod http;

pub use error::PluginError;

/// Re-exported for plugins that need JSON values (e.g. `serde_json::Value` as an operation type).
pub use serde_json;

/// Re-exported so plugins can name `schemars` items through the SDK.
pub use schemars;

/// Generated component-model bindings; used by the export macros, not part of the API.
#[doc(hidden)]
pub mod __bindings {
    /// World `capability-adapter`.
    #[cfg(feature = "adapter")]
    #[allow(missing_docs)]
    pub mod adapter {
        wit_bindgen::generate!({
            path: "wit/v0.2.0",
            world: "capability-adapter",
            pub_export_macro: true,
            export_macro_name: "__export_capability_adapter",
            default_bindings_module: "wharf_plugin_sdk::__bindings::adapter",
            additional_derives: [PartialEq, Eq],
        });
    }

    /// World `llm-provider`.
    #[cfg(feature = "provider")]
    #[allow(missing_docs)]
    pub mod provider {
        wit_bindgen::generate!({
            path: "wit/v0.2.0",
            world: "llm-provider",
            pub_export_macro: true,
            export_macro_name: "__export_llm_provider",
            default_bindings_module: "wharf_plugin_sdk::__bindings::provider",
            additional_derives: [PartialEq, Eq],
        });
    }

    /// World `planner-plugin` (0.3.0).
    #[cfg(feature = "planner")]
    #[allow(missing_docs)]
    pub mod planner {
        wit_bindgen::generate!({
            path: "wit/v0.3.0",
            world: "planner-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_planner_plugin",
            default_bindings_module: "wharf_plugin_sdk::__bindings::planner",
            additional_derives: [PartialEq],
        });
    }

    /// World `relay-host-adapter` (0.3.0).
    #[cfg(feature = "relay-host")]
    #[allow(missing_docs)]
    pub mod relay_host {
        wit_bindgen::generate!({
            path: "wit/v0.3.0",
            world: "relay-host-adapter",
            pub_export_macro: true,
            export_macro_name: "__export_relay_host_adapter",
            default_bindings_module: "wharf_plugin_sdk::__bindings::relay_host",
            additional_derives: [PartialEq, Eq],
        });
    }
}

/// Exports a provider; needs the SDK's `provider` feature.
#[cfg(not(feature = "provider"))]
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        ::std::compile_error!(
            "wharf_plugin_sdk::export_provider! needs the `provider` feature: \
             wharf-plugin-sdk = { ..., features = [\"provider\"] }"
        );
    };
}
