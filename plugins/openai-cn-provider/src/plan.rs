//! The default access-probe plan.
//!
//! Two steps, and the access is ready only if both pass (the host decides the overall verdict):
//!
//! 1. `list_models`: `GET {api}/models` should list the probed model or one of its aliases. It
//!    is the cheap check (no tokens spent), so it comes first; but a relay with no models route,
//!    or one whose list lacks the model, still passes it with a warning (`models_unavailable`,
//!    `model_unlisted`, see `judge`): real traffic is chat, so the chat decides;
//! 2. `chat_completion`: a minimal `POST {api}/chat/completions` must succeed. The budget is
//!    small but big enough for reasoning models (a reasoning model given `max_tokens: 1` spends
//!    it on thinking and some upstreams then answer an error), and the request streams when the
//!    provider profile or the model only answers streams, or when the target asks for a stream.
//!    It sends no `temperature` (Kimi K2.5+ and OpenAI reasoning models refuse non-default ones).
//!
//! # Path convention
//!
//! The host joins `step.path` to the target base URL's path (`/v1` + `/models`; see the host's
//! outbound rules for what a path may hold). The plan therefore looks at the target base URL:
//!
//! * if its path already contains an API version segment (`/v1`, `/v4`, `/v1beta`, ... as in
//!   `https://api.moonshot.cn/v1`, `https://open.bigmodel.cn/api/paas/v4`,
//!   `https://dashscope.aliyuncs.com/compatible-mode/v1`), the base URL is the API root and the
//!   step paths are `/models` and `/chat/completions`;
//! * otherwise (a bare relay such as `http://127.0.0.1:3000` or `http://relay/prefix`) the
//!   paths are `/v1/models` and `/v1/chat/completions`.
//!
//! # Expected model
//!
//! The `list_models` step carries the canonical id of the probed model in the request header
//! `x-wharf-probe-model` (upstreams ignore unknown headers). `judge` reads it back from the step
//! to know what the list must contain; without it the provider's smoke-test model is expected.

use serde_json::json;

use crate::error::{Failure, code};
use crate::manifest::{MaxTokensParam, ProviderManifest, check_base_url};
use crate::resolve::{self, Resolution};

pub const LIST_MODELS: &str = "list_models";
pub const CHAT_COMPLETION: &str = "chat_completion";
/// Request header of the `list_models` step naming the model the list must contain.
pub const EXPECT_MODEL_HEADER: &str = "x-wharf-probe-model";

pub const LIST_TIMEOUT_MS: u32 = 10_000;
pub const CHAT_TIMEOUT_MS: u32 = 15_000;
pub const REASONING_CHAT_TIMEOUT_MS: u32 = 30_000;
/// Completion budget of a non-reasoning model: enough for "OK" on every tokenizer.
pub const MAX_TOKENS: u32 = 16;
/// Completion budget of a reasoning model (or of a model this catalog does not know).
pub const REASONING_MAX_TOKENS: u32 = 256;
pub const PROMPT: &str = "Reply with the single word OK.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub base_url: String,
    pub model: Option<String>,
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub stream: bool,
    pub timeout_ms: u32,
}

impl Step {
    /// A request header of this step, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `""` when the base URL already names an API version, `"/v1"` otherwise.
pub fn api_prefix(base_url: &str) -> &'static str {
    let after_scheme = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let path = after_scheme.split_once('/').map_or("", |(_, p)| p);
    if path.split('/').any(is_version_segment) {
        ""
    } else {
        "/v1"
    }
}

/// `v` followed by a digit, then letters or digits: `v1`, `v4`, `v1beta`, `v2alpha1`.
fn is_version_segment(seg: &str) -> bool {
    let mut cs = seg.chars();
    matches!(cs.next(), Some('v' | 'V'))
        && matches!(cs.next(), Some(c) if c.is_ascii_digit())
        && cs.all(|c| c.is_ascii_alphanumeric())
}

/// Which model the probe targets: the canonical id when the catalog knows the name, the name
/// verbatim otherwise (relays serve models this catalog has never heard of).
pub fn probe_model(
    provider: &ProviderManifest,
    requested: Option<&str>,
) -> Result<String, Failure> {
    match requested.map(str::trim) {
        None => Ok(provider.smoke_test_model.clone()),
        Some("") => Err(Failure::new(
            code::INVALID_INPUT,
            "target model is empty; omit it to probe the smoke-test model",
        )),
        Some(name) => match resolve::resolve(&provider.models, name) {
            Resolution::Found(id) => Ok(id),
            Resolution::Unknown(_) => Ok(name.to_string()),
        },
    }
}

pub fn plan(provider: &ProviderManifest, target: &Target) -> Result<Vec<Step>, Failure> {
    let base_url = target.base_url.trim();
    if base_url.is_empty() {
        return Err(Failure::new(
            code::INVALID_INPUT,
            "target base_url is empty",
        ));
    }
    check_base_url(base_url)
        .map_err(|why| Failure::new(code::INVALID_INPUT, format!("target base_url {why}")))?;
    if !provider.capabilities.chat_completions {
        return Err(Failure::new(
            code::CAPABILITY_NOT_SUPPORTED,
            format!(
                "provider `{}` does not serve /chat/completions, which the default probe needs",
                provider.id
            ),
        ));
    }
    let model = probe_model(provider, target.model.as_deref())?;
    let spec = provider.model(&model);
    // Unknown models get the reasoning budget: a few extra tokens never fail a probe.
    let reasoning = spec.is_none_or(|m| m.reasoning);
    let stream = target.stream.unwrap_or(false)
        || provider.capabilities.stream_only
        || spec.is_some_and(|m| m.stream_only);
    let budget_field = spec
        .map_or(MaxTokensParam::MaxTokens, |m| m.max_tokens_param)
        .field();
    let prefix = api_prefix(base_url);

    let mut body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": PROMPT }],
    });
    body[budget_field] = json!(if reasoning {
        REASONING_MAX_TOKENS
    } else {
        MAX_TOKENS
    });
    if stream {
        body["stream"] = json!(true);
    }

    Ok(vec![
        Step {
            name: LIST_MODELS.into(),
            method: "GET".into(),
            path: format!("{prefix}/models"),
            headers: vec![
                ("accept".into(), "application/json".into()),
                (EXPECT_MODEL_HEADER.into(), model.clone()),
            ],
            body: None,
            stream: false,
            timeout_ms: LIST_TIMEOUT_MS,
        },
        Step {
            name: CHAT_COMPLETION.into(),
            method: "POST".into(),
            path: format!("{prefix}/chat/completions"),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (
                    "accept".into(),
                    if stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    }
                    .into(),
                ),
            ],
            body: Some(body.to_string()),
            stream,
            timeout_ms: if reasoning {
                REASONING_CHAT_TIMEOUT_MS
            } else {
                CHAT_TIMEOUT_MS
            },
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Catalog;
    use serde_json::Value;
    use std::path::Path;

    fn shipped() -> Catalog {
        Catalog::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/openai-cn-pack/providers"),
        )
        .unwrap()
    }

    fn target(base_url: &str, model: Option<&str>, stream: Option<bool>) -> Target {
        Target {
            base_url: base_url.into(),
            model: model.map(Into::into),
            stream,
        }
    }

    fn body(step: &Step) -> Value {
        serde_json::from_str(step.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn api_prefix_follows_the_base_url() {
        for (base, prefix) in [
            ("https://api.moonshot.cn/v1", ""),
            ("https://api.moonshot.cn/v1/", ""),
            ("https://open.bigmodel.cn/api/paas/v4", ""),
            ("https://dashscope.aliyuncs.com/compatible-mode/v1", ""),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "",
            ),
            ("http://127.0.0.1:3000", "/v1"),
            ("http://127.0.0.1:3000/", "/v1"),
            ("http://relay.internal/openai", "/v1"),
            ("http://relay.internal/video", "/v1"),
            ("http://v1.example.com", "/v1"),
            ("https://api.deepseek.com", "/v1"),
        ] {
            assert_eq!(api_prefix(base), prefix, "{base}");
        }
    }

    #[test]
    fn default_plan_for_kimi_against_a_bare_relay() {
        let catalog = shipped();
        let kimi = catalog.provider("kimi").unwrap();
        let steps = plan(kimi, &target("http://127.0.0.1:18080", None, None)).unwrap();
        assert_eq!(steps.len(), 2);

        let list = &steps[0];
        assert_eq!(
            (list.name.as_str(), list.method.as_str(), list.path.as_str()),
            (LIST_MODELS, "GET", "/v1/models")
        );
        assert_eq!(list.header(EXPECT_MODEL_HEADER), Some("kimi-k2.6"));
        assert!(list.body.is_none() && !list.stream);
        assert_eq!(list.timeout_ms, LIST_TIMEOUT_MS);

        let chat = &steps[1];
        assert_eq!(
            (chat.name.as_str(), chat.method.as_str(), chat.path.as_str()),
            (CHAT_COMPLETION, "POST", "/v1/chat/completions")
        );
        assert_eq!(chat.header("Content-Type"), Some("application/json"));
        let b = body(chat);
        assert_eq!(b["model"], "kimi-k2.6");
        assert_eq!(
            b["max_tokens"], REASONING_MAX_TOKENS,
            "kimi-k2.6 is a reasoning model"
        );
        assert_eq!(b["messages"][0]["role"], "user");
        assert!(b.get("stream").is_none() && b.get("temperature").is_none());
        assert!(!chat.stream);
        assert_eq!(chat.timeout_ms, REASONING_CHAT_TIMEOUT_MS);
    }

    #[test]
    fn versioned_base_urls_get_bare_paths() {
        let catalog = shipped();
        let glm = catalog.provider("glm").unwrap();
        let steps = plan(glm, &target(&glm.base_url, None, None)).unwrap();
        assert_eq!(steps[0].path, "/models");
        assert_eq!(steps[1].path, "/chat/completions");
        let b = body(&steps[1]);
        assert_eq!(b["model"], "glm-4-flash");
        assert_eq!(
            b["max_tokens"], MAX_TOKENS,
            "glm-4-flash is not a reasoning model"
        );
        assert_eq!(steps[1].timeout_ms, CHAT_TIMEOUT_MS);
    }

    #[test]
    fn target_model_is_resolved_to_its_canonical_id() {
        let catalog = shipped();
        let kimi = catalog.provider("kimi").unwrap();
        let steps = plan(kimi, &target("http://relay:8080", Some("Kimi 2.5"), None)).unwrap();
        assert_eq!(steps[0].header(EXPECT_MODEL_HEADER), Some("kimi-k2.5"));
        assert_eq!(body(&steps[1])["model"], "kimi-k2.5");

        let steps = plan(
            kimi,
            &target("http://relay:8080", Some("moonshot-v1-8k"), None),
        )
        .unwrap();
        assert_eq!(body(&steps[1])["max_tokens"], MAX_TOKENS);
    }

    #[test]
    fn unknown_models_are_probed_verbatim_with_the_reasoning_budget() {
        let catalog = shipped();
        let generic = catalog.provider("openai-compatible").unwrap();
        let steps = plan(
            generic,
            &target("http://relay:3000", Some(" my-private-model "), None),
        )
        .unwrap();
        assert_eq!(
            steps[0].header(EXPECT_MODEL_HEADER),
            Some("my-private-model")
        );
        let b = body(&steps[1]);
        assert_eq!(b["model"], "my-private-model");
        assert_eq!(b["max_tokens"], REASONING_MAX_TOKENS);
    }

    #[test]
    fn openai_reasoning_models_get_max_completion_tokens() {
        let catalog = shipped();
        let generic = catalog.provider("openai-compatible").unwrap();
        let b = body(
            &plan(
                generic,
                &target("https://api.openai.com/v1", Some("o4-mini"), None),
            )
            .unwrap()[1],
        );
        assert_eq!(b["max_completion_tokens"], REASONING_MAX_TOKENS);
        assert!(b.get("max_tokens").is_none());
    }

    #[test]
    fn streaming_when_asked_or_when_only_streams_work() {
        let catalog = shipped();
        let qwen = catalog.provider("qwen").unwrap();
        // Asked by the target.
        let chat = &plan(qwen, &target(&qwen.base_url, None, Some(true))).unwrap()[1];
        assert!(chat.stream);
        assert_eq!(body(chat)["stream"], true);
        assert_eq!(chat.header("accept"), Some("text/event-stream"));
        // Not asked, not needed.
        let chat = &plan(qwen, &target(&qwen.base_url, None, Some(false))).unwrap()[1];
        assert!(!chat.stream);
        // The model only streams (QwQ): the stream wins even over `stream: false`.
        let chat = &plan(qwen, &target(&qwen.base_url, Some("qwq"), Some(false))).unwrap()[1];
        assert!(chat.stream);
        assert_eq!(body(chat)["stream"], true);
        // The provider profile says stream only.
        let mut only = qwen.clone();
        only.capabilities.stream_only = true;
        assert!(plan(&only, &target(&qwen.base_url, None, None)).unwrap()[1].stream);
    }

    #[test]
    fn bad_targets_and_profiles_are_errors() {
        let catalog = shipped();
        let kimi = catalog.provider("kimi").unwrap();
        for (t, expected) in [
            (target("", None, None), code::INVALID_INPUT),
            (target("   ", None, None), code::INVALID_INPUT),
            (target("ftp://relay", None, None), code::INVALID_INPUT),
            (
                target("http://relay/v1?x=1", None, None),
                code::INVALID_INPUT,
            ),
            (
                target("http://relay", Some("  "), None),
                code::INVALID_INPUT,
            ),
        ] {
            assert_eq!(plan(kimi, &t).unwrap_err().code, expected, "{t:?}");
        }
        let mut no_chat = kimi.clone();
        no_chat.capabilities.chat_completions = false;
        let err = plan(&no_chat, &target("http://relay", None, None)).unwrap_err();
        assert_eq!(err.code, code::CAPABILITY_NOT_SUPPORTED);
    }

    #[test]
    fn every_shipped_provider_plans_against_its_own_base_url() {
        for p in &shipped().providers {
            let steps = plan(p, &target(&p.base_url, None, None)).unwrap();
            assert_eq!(steps[0].path, "/models", "{}", p.id);
            assert_eq!(body(&steps[1])["model"], p.smoke_test_model.as_str());
        }
    }
}
