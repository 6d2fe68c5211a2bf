//! Binding of the logic modules to the WIT `provider` interface through the SDK.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::provider::{
    CapabilityProfile, Model, ModelResolution, Observation, ProbeStep, ProbeTarget, Provider,
    ProviderInfo, Verdict,
};

use crate::error::Failure;
use crate::judge;
use crate::manifest::{Catalog, PROVIDERS_DIR, ProviderManifest};
use crate::plan::{self, Step, Target};
use crate::resolve::{self, Resolution};

/// Where the host preopens the pack's data folders (read-only).
pub const PACK_ROOT: &str = "/pack";

struct OpenAiCn;

fn to_error(f: &Failure) -> PluginError {
    PluginError::new(f.code, f.message.clone()).with_retriable(f.retriable)
}

/// The catalog of this instance. The host may serve every call from a fresh instance, so this
/// mostly saves re-reading within one call; failures are never cached.
static CATALOG: OnceLock<Catalog> = OnceLock::new();

fn catalog() -> Result<&'static Catalog, PluginError> {
    if let Some(c) = CATALOG.get() {
        return Ok(c);
    }
    let loaded =
        Catalog::load_dir(&Path::new(PACK_ROOT).join(PROVIDERS_DIR)).map_err(|f| to_error(&f))?;
    Ok(CATALOG.get_or_init(|| loaded))
}

/// One provider's file alone. `probe-plan`, `judge` and `resolve-model` need only the provider
/// they name, and reading one file instead of the whole folder is most of what a call on a
/// fresh instance costs (an access probe makes three calls). The whole folder is still checked
/// by `catalog()`, which the host calls before a generation may serve.
static SINGLE: OnceLock<Catalog> = OnceLock::new();

fn provider(id: &str) -> Result<&'static ProviderManifest, PluginError> {
    if let Some(c) = CATALOG.get() {
        return c.provider(id).map_err(|f| to_error(&f));
    }
    if let Some(p) = SINGLE.get().and_then(|c| c.provider(id).ok()) {
        return Ok(p);
    }
    // The id becomes a file name: only well-formed ids are looked up directly.
    if SINGLE.get().is_none() && crate::manifest::valid_provider_id(id) {
        let name = format!("{id}.json");
        let path = Path::new(PACK_ROOT).join(PROVIDERS_DIR).join(&name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let one = Catalog::from_files(vec![(name, text)]).map_err(|f| to_error(&f))?;
            return SINGLE
                .get_or_init(|| one)
                .provider(id)
                .map_err(|f| to_error(&f));
        }
    }
    // Unknown ids (or a second provider on one instance) read the whole folder, which also
    // gives the error its list of known ids.
    catalog()?.provider(id).map_err(|f| to_error(&f))
}

fn info(p: &ProviderManifest) -> ProviderInfo {
    let c = p.capabilities;
    ProviderInfo {
        id: p.id.clone(),
        display_name: p.display_name.clone(),
        base_url: p.base_url.clone(),
        auth_scheme: p.auth_scheme.clone(),
        smoke_test_model: p.smoke_test_model.clone(),
        models: p
            .models
            .iter()
            .map(|m| Model {
                id: m.id.clone(),
                aliases: m.aliases.clone(),
                reasoning: m.reasoning,
            })
            .collect(),
        capabilities: CapabilityProfile {
            chat_completions: c.chat_completions,
            responses: c.responses,
            anthropic_messages: c.anthropic_messages,
            stream: c.stream,
            tools: c.tools,
            stream_only: c.stream_only,
        },
    }
}

fn step_from_wit(s: ProbeStep) -> Step {
    Step {
        name: s.name,
        method: s.method,
        path: s.path,
        headers: s.headers,
        body: s.body,
        stream: s.stream,
        timeout_ms: s.timeout_ms,
    }
}

fn step_to_wit(s: Step) -> ProbeStep {
    ProbeStep {
        name: s.name,
        method: s.method,
        path: s.path,
        headers: s.headers,
        body: s.body,
        stream: s.stream,
        timeout_ms: s.timeout_ms,
    }
}

impl Provider for OpenAiCn {
    fn catalog() -> Result<Vec<ProviderInfo>, PluginError> {
        Ok(catalog()?.providers.iter().map(info).collect())
    }

    fn resolve_model(provider_id: &str, name: &str) -> Result<ModelResolution, PluginError> {
        let p = provider(provider_id)?;
        if resolve::normalize(name).is_empty() {
            return Err(PluginError::invalid_input("model name is empty"));
        }
        Ok(match resolve::resolve(&p.models, name) {
            Resolution::Found(id) => ModelResolution::Found(id),
            Resolution::Unknown(near) => ModelResolution::Unknown(near),
        })
    }

    fn probe_plan(provider_id: &str, target: ProbeTarget) -> Result<Vec<ProbeStep>, PluginError> {
        let p = provider(provider_id)?;
        if let Some(name) = target.model.as_deref().filter(|n| !n.trim().is_empty())
            && let Resolution::Unknown(near) = resolve::resolve(&p.models, name)
        {
            wharf_plugin_sdk::warn!(
                "model `{name}` is not in the `{provider_id}` catalog; probing it verbatim (nearest: {})",
                near.join(", ")
            );
        }
        let target = Target {
            base_url: target.base_url,
            model: target.model,
            stream: target.stream,
        };
        let steps = plan::plan(p, &target).map_err(|f| to_error(&f))?;
        Ok(steps.into_iter().map(step_to_wit).collect())
    }

    fn judge(provider_id: &str, step: ProbeStep, observation: Observation) -> Verdict {
        // An unreadable catalog or an unknown provider still gets a judgement, on names verbatim.
        let p = provider(provider_id).ok();
        let obs = judge::Observation {
            status: observation.status,
            headers: observation.headers,
            body: observation.body,
            latency_ms: observation.latency_ms,
            transport_error: observation.transport_error,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let v = judge::judge(p, &step_from_wit(step), &obs, now);
        Verdict {
            passed: v.passed,
            class: v.class.to_string(),
            retriable: v.retriable,
            retry_after_ms: v.retry_after_ms,
            detail: v.detail,
        }
    }
}

wharf_plugin_sdk::export_provider!(OpenAiCn);

#[cfg(test)]
mod tests {
    use super::*;

    /// Natively there is no `/pack` preopen: seed the instance catalog from the pack sources.
    fn seeded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packs/openai-cn-pack")
            .join(PROVIDERS_DIR);
        let _ = CATALOG.set(Catalog::load_dir(&dir).unwrap());
    }

    #[test]
    fn catalog_maps_onto_the_wit_records() {
        seeded();
        let providers = <OpenAiCn as Provider>::catalog().unwrap();
        assert_eq!(providers.len(), 8);
        let kimi = providers.iter().find(|p| p.id == "kimi").unwrap();
        assert_eq!(kimi.display_name, "Moonshot Kimi");
        assert_eq!(kimi.smoke_test_model, "kimi-k2.6");
        assert!(kimi.capabilities.chat_completions && !kimi.capabilities.stream_only);
        let k26 = kimi.models.iter().find(|m| m.id == "kimi-k2.6").unwrap();
        assert!(k26.reasoning);
        assert_eq!(k26.aliases, ["moonshotai/Kimi-K2.6"]);
    }

    #[test]
    fn resolve_model_through_the_interface() {
        seeded();
        for name in ["kimi 2.6", "kimi-2.6", "Kimi_K2.6", "kimi-k2.6"] {
            assert_eq!(
                <OpenAiCn as Provider>::resolve_model("kimi", name).unwrap(),
                ModelResolution::Found("kimi-k2.6".into()),
                "{name}"
            );
        }
        match <OpenAiCn as Provider>::resolve_model("kimi", "kimi-k9").unwrap() {
            ModelResolution::Unknown(near) => assert_eq!(near.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            <OpenAiCn as Provider>::resolve_model("nope", "x")
                .unwrap_err()
                .code,
            "unknown_provider"
        );
        assert_eq!(
            <OpenAiCn as Provider>::resolve_model("kimi", " - ")
                .unwrap_err()
                .code,
            "invalid_input"
        );
    }

    #[test]
    fn plan_and_judge_through_the_interface() {
        seeded();
        let target = ProbeTarget {
            base_url: "http://127.0.0.1:18080/".into(),
            model: None,
            stream: None,
        };
        let steps = <OpenAiCn as Provider>::probe_plan("kimi", target).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["list_models", "chat_completion"]);
        assert_eq!(steps[0].path, "/v1/models");
        assert_eq!(steps[1].path, "/v1/chat/completions");

        let observation = Observation {
            status: Some(200),
            headers: vec![],
            body: r#"{"object":"list","data":[{"id":"kimi-k2.6"}]}"#.into(),
            latency_ms: 12,
            transport_error: None,
        };
        let v = <OpenAiCn as Provider>::judge("kimi", steps[0].clone(), observation);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.class, "ready");

        let observation = Observation {
            status: Some(429),
            headers: vec![("Retry-After".into(), "2".into())],
            body: r#"{"error":{"message":"rate limit"}}"#.into(),
            latency_ms: 12,
            transport_error: None,
        };
        let v = <OpenAiCn as Provider>::judge("unknown-provider", steps[1].clone(), observation);
        assert_eq!(
            (v.class.as_str(), v.retriable, v.retry_after_ms),
            ("upstream_rate_limited", true, Some(2000))
        );

        let bad = ProbeTarget {
            base_url: String::new(),
            model: None,
            stream: None,
        };
        assert_eq!(
            <OpenAiCn as Provider>::probe_plan("kimi", bad)
                .unwrap_err()
                .code,
            "invalid_input"
        );
        let t = ProbeTarget {
            base_url: "http://relay".into(),
            model: None,
            stream: None,
        };
        assert_eq!(
            <OpenAiCn as Provider>::probe_plan("nope", t)
                .unwrap_err()
                .code,
            "unknown_provider"
        );
    }
}
