//! Providers: LLM provider descriptions, and the plan and judgement of access probes.
//!
//! A provider plugin implements [`Provider`] on a unit struct and exports it
//! with [`export_provider!`](crate::export_provider). The host performs all
//! network I/O: the plugin plans the probe steps ([`Provider::probe_plan`]) and
//! judges each observed response ([`Provider::judge`]).
//!
//! The pack's data folders are readable (read-only) under `/pack` with plain
//! `std::fs`, e.g. `std::fs::read_to_string("/pack/providers/kimi.json")`.
//!
//! The record and variant types here are the ones of the WIT interface
//! `wharf:plugin/provider`, with the same field names in snake_case (`stream`
//! for `%stream`).

use crate::PluginError;

pub use crate::__bindings::provider::exports::wharf::plugin::provider::{
    CapabilityProfile, Model, ModelResolution, Observation, ProbeStep, ProbeTarget, ProviderInfo,
    Verdict,
};

/// An LLM provider plugin; each function mirrors one of the WIT interface
/// `wharf:plugin/provider`. The functions take no `self`: a fresh instance
/// serves every call, so keep state in the pack's data files, not in memory.
///
/// ```
/// use wharf_plugin_sdk::PluginError;
/// use wharf_plugin_sdk::provider::*;
///
/// struct Echo;
///
/// impl Provider for Echo {
///     fn catalog() -> Result<Vec<ProviderInfo>, PluginError> {
///         Ok(vec![ProviderInfo {
///             id: "echo".into(),
///             display_name: "Echo".into(),
///             base_url: "https://api.example.com".into(),
///             auth_scheme: "bearer".into(),
///             smoke_test_model: "echo-1".into(),
///             models: vec![Model { id: "echo-1".into(), aliases: vec!["echo".into()], reasoning: false }],
///             capabilities: CapabilityProfile {
///                 chat_completions: true,
///                 responses: false,
///                 anthropic_messages: false,
///                 stream: true,
///                 tools: false,
///                 stream_only: false,
///             },
///         }])
///     }
///
///     fn resolve_model(_provider: &str, name: &str) -> Result<ModelResolution, PluginError> {
///         Ok(match name {
///             "echo" | "echo-1" => ModelResolution::Found("echo-1".into()),
///             _ => ModelResolution::Unknown(vec!["echo-1".into()]),
///         })
///     }
///
///     fn probe_plan(_provider: &str, target: ProbeTarget) -> Result<Vec<ProbeStep>, PluginError> {
///         let _model = target.model.unwrap_or_else(|| "echo-1".into());
///         Ok(vec![ProbeStep {
///             name: "list_models".into(),
///             method: "GET".into(),
///             path: "/v1/models".into(),
///             headers: vec![],
///             body: None,
///             stream: false,
///             timeout_ms: 10_000,
///         }])
///     }
///
///     fn judge(_provider: &str, _step: ProbeStep, observation: Observation) -> Verdict {
///         match observation.status {
///             Some(200) => Verdict::pass("ready", "models listed"),
///             Some(429) => Verdict::fail("upstream_rate_limited", "HTTP 429").retriable(),
///             Some(status) => Verdict::fail("invalid_response", format!("HTTP {status}")),
///             None => Verdict::fail("network_error", observation.transport_error.unwrap_or_default()).retriable(),
///         }
///     }
/// }
///
/// # #[cfg(feature = "provider")]
/// wharf_plugin_sdk::export_provider!(Echo);
/// # fn main() {}
/// ```
pub trait Provider {
    /// Every provider this plugin describes.
    fn catalog() -> Result<Vec<ProviderInfo>, PluginError>;

    /// Resolves a model name or alias of `provider` to its canonical id, or
    /// lists the nearest known ids (best first, at most three).
    fn resolve_model(provider: &str, name: &str) -> Result<ModelResolution, PluginError>;

    /// The HTTP steps that probe `target` for `provider`, in order. The host
    /// runs them, adding authentication itself.
    ///
    /// Each step's `path` is joined to the target's base URL, so it can only
    /// reach the target's origin: it must start with `/` and carry no scheme,
    /// authority (`//`), `@` (write `%40`), backslash, `#`, `.`/`..` segment,
    /// encoded `/` or `\`, control character or whitespace (also
    /// percent-encoded), and be ASCII. A plan with one such path is refused
    /// whole (`invalid_probe_step`) before any request is sent. Redirects are
    /// followed only within the target's origin.
    fn probe_plan(provider: &str, target: ProbeTarget) -> Result<Vec<ProbeStep>, PluginError>;

    /// Judges what the host observed for one step.
    fn judge(provider: &str, step: ProbeStep, observation: Observation) -> Verdict;
}

impl Verdict {
    /// A passing verdict of class `class` (usually `ready`), not retriable.
    pub fn pass(class: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            passed: true,
            class: class.into(),
            retriable: false,
            retry_after_ms: None,
            detail: detail.into(),
        }
    }

    /// A failing verdict of class `class` (e.g. `model_missing`), not retriable.
    pub fn fail(class: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            passed: false,
            class: class.into(),
            retriable: false,
            retry_after_ms: None,
            detail: detail.into(),
        }
    }

    /// Marks the verdict as retriable.
    #[must_use]
    pub fn retriable(mut self) -> Self {
        self.retriable = true;
        self
    }

    /// Marks the verdict as retriable after `ms` milliseconds.
    #[must_use]
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retriable = true;
        self.retry_after_ms = Some(ms);
        self
    }
}

impl Observation {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Glue used by [`export_provider!`](crate::export_provider); not part of the API.
#[doc(hidden)]
pub mod __export {
    use super::*;
    use crate::__bindings::provider::wharf::plugin::types::PluginError as WitError;

    pub fn catalog<P: Provider + ?Sized>() -> Result<Vec<ProviderInfo>, WitError> {
        P::catalog().map_err(Into::into)
    }

    pub fn resolve_model<P: Provider + ?Sized>(
        provider: &str,
        name: &str,
    ) -> Result<ModelResolution, WitError> {
        P::resolve_model(provider, name).map_err(Into::into)
    }

    pub fn probe_plan<P: Provider + ?Sized>(
        provider: &str,
        target: ProbeTarget,
    ) -> Result<Vec<ProbeStep>, WitError> {
        P::probe_plan(provider, target).map_err(Into::into)
    }

    pub fn judge<P: Provider + ?Sized>(
        provider: &str,
        step: ProbeStep,
        observation: Observation,
    ) -> Verdict {
        P::judge(provider, step, observation)
    }
}

/// Exports a type implementing [`Provider`](crate::provider::Provider) as the
/// `wharf:plugin/provider` interface of the component. Use it once, in the
/// plugin crate (a `cdylib`) that enables the SDK's `provider` feature.
///
/// `MyProvider` implements [`Provider`](crate::provider::Provider); see the
/// example there.
///
/// ```ignore
/// wharf_plugin_sdk::export_provider!(MyProvider);
/// ```
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        const _: () = {
            struct __WharfProviderExport;

            impl $crate::__bindings::provider::exports::wharf::plugin::provider::Guest
                for __WharfProviderExport
            {
                fn catalog() -> ::std::result::Result<
                    ::std::vec::Vec<$crate::provider::ProviderInfo>,
                    $crate::__bindings::provider::wharf::plugin::types::PluginError,
                > {
                    $crate::provider::__export::catalog::<$provider>()
                }

                fn resolve_model(
                    provider: ::std::string::String,
                    name: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::provider::ModelResolution,
                    $crate::__bindings::provider::wharf::plugin::types::PluginError,
                > {
                    $crate::provider::__export::resolve_model::<$provider>(&provider, &name)
                }

                fn probe_plan(
                    provider: ::std::string::String,
                    target: $crate::provider::ProbeTarget,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::provider::ProbeStep>,
                    $crate::__bindings::provider::wharf::plugin::types::PluginError,
                > {
                    $crate::provider::__export::probe_plan::<$provider>(&provider, target)
                }

                fn judge(
                    provider: ::std::string::String,
                    step: $crate::provider::ProbeStep,
                    observation: $crate::provider::Observation,
                ) -> $crate::provider::Verdict {
                    $crate::provider::__export::judge::<$provider>(&provider, step, observation)
                }
            }

            $crate::__bindings::provider::__export_llm_provider!(
                __WharfProviderExport with_types_in $crate::__bindings::provider
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_helpers() {
        let v = Verdict::fail("upstream_rate_limited", "429").retry_after_ms(1500);
        assert!(!v.passed && v.retriable);
        assert_eq!(v.retry_after_ms, Some(1500));
        assert_eq!(Verdict::pass("ready", "ok"), Verdict::pass("ready", "ok"));
    }

    #[test]
    fn observation_header_is_case_insensitive() {
        let obs = Observation {
            status: Some(429),
            headers: vec![("Retry-After".into(), "3".into())],
            body: String::new(),
            latency_ms: 5,
            transport_error: None,
        };
        assert_eq!(obs.header("retry-after"), Some("3"));
        assert_eq!(obs.header("x-missing"), None);
    }
}
