//! Table tests of `judge`: every class, with bodies modelled on what real upstreams and relays
//! (OpenAI, Moonshot, DeepSeek, DashScope, Zhipu, MiniMax, one-api/new-api, sub2api) answer.

use std::path::Path;

use super::*;
use crate::manifest::Catalog;
use crate::plan::{self, Target};

/// `Wed, 21 Oct 2015 07:28:00 GMT` is 30 s after NOW.
const NOW: u64 = 1_445_412_480 - 30;

fn catalog() -> Catalog {
    Catalog::load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/openai-cn-pack/providers"),
    )
    .unwrap()
}

fn list_step(expect: Option<&str>) -> Step {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if let Some(m) = expect {
        headers.push((EXPECT_MODEL_HEADER.to_string(), m.to_string()));
    }
    Step {
        name: LIST_MODELS.into(),
        method: "GET".into(),
        path: "/v1/models".into(),
        headers,
        body: None,
        stream: false,
        timeout_ms: 10_000,
    }
}

fn chat_step(stream: bool) -> Step {
    Step {
        name: CHAT_COMPLETION.into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![],
        body: Some("{}".into()),
        stream,
        timeout_ms: 30_000,
    }
}

fn obs(status: u16, headers: &[(&str, &str)], body: &str) -> Observation {
    Observation {
        status: Some(status),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
        latency_ms: 321,
        transport_error: None,
    }
}

fn no_response(transport_error: Option<&str>) -> Observation {
    Observation {
        status: None,
        headers: vec![],
        body: String::new(),
        latency_ms: 10_004,
        transport_error: transport_error.map(Into::into),
    }
}

struct Case {
    label: &'static str,
    provider: Option<&'static str>,
    step: Step,
    obs: Observation,
    class: &'static str,
    retry_after_ms: Option<u64>,
    /// Fragments the detail must contain.
    detail: &'static [&'static str],
}

fn case(label: &'static str, step: Step, obs: Observation, class: &'static str) -> Case {
    Case {
        label,
        provider: Some("kimi"),
        step,
        obs,
        class,
        retry_after_ms: None,
        detail: &[],
    }
}

impl Case {
    fn retry(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
    fn detail(mut self, fragments: &'static [&'static str]) -> Self {
        self.detail = fragments;
        self
    }
    fn provider(mut self, provider: Option<&'static str>) -> Self {
        self.provider = provider;
        self
    }
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"kimi-k2.6",
  "choices":[{"index":0,"message":{"role":"assistant","content":"OK"},"finish_reason":"stop"}],
  "usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

const STREAM: &str = "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\
{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"OK\"},\"finish_reason\":\"stop\"}]}\n\
[DONE]";

/// Classes with which a step passes: `ready`, and the warnings that let the chat decide.
const PASSING: &[&str] = &[
    class::READY,
    class::MODELS_UNAVAILABLE,
    class::MODEL_UNLISTED,
];

fn cases() -> Vec<Case> {
    use class::*;
    let models = |ids: &[&str]| {
        let data: Vec<Value> = ids
            .iter()
            .map(|id| serde_json::json!({"id": id, "object": "model", "owned_by": "x"}))
            .collect();
        serde_json::json!({"object": "list", "data": data}).to_string()
    };
    vec![
        // ----- ready
        case("models list has the smoke model", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["gpt-4o", "kimi-k2.6"])), READY)
            .detail(&["has kimi-k2.6 (2 models)"]),
        case("models list has an alias", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["moonshotai/Kimi-K2.6"])), READY)
            .detail(&["as `moonshotai/Kimi-K2.6` (1 model)"]),
        case("models list has another spelling", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["Kimi-K2.6"])), READY),
        case("models list has a family spelling", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["kimi-2.6"])), READY),
        case("no expectation header: the smoke model", list_step(None), obs(200, &[], &models(&["kimi-k2.6"])), READY),
        case("unknown provider: verbatim, normalised", list_step(Some("my-model")), obs(200, &[], &models(&["My_Model"])), READY)
            .provider(None),
        case("models list as a bare array of strings", list_step(Some("kimi-k2.6")), obs(200, &[], r#"["kimi-k2.6"]"#), READY),
        case("chat completion", chat_step(false), obs(200, &[], COMPLETION), READY)
            .detail(&["321 ms", "model kimi-k2.6", "finish_reason stop"]),
        case(
            "reasoning model ran out of budget but answered",
            chat_step(false),
            obs(200, &[], r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning_content":"Hmm"},"finish_reason":"length"}]}"#),
            READY,
        )
        .detail(&["finish_reason length"]),
        case("stream", chat_step(true), obs(200, &[], STREAM), READY).detail(&["2 chunks"]),
        case("stream with data: prefixes left in", chat_step(true), obs(200, &[], &STREAM.lines().map(|l| format!("data: {l}\n\n")).collect::<String>()), READY),
        case("stream without [DONE]", chat_step(true), obs(200, &[], STREAM.trim_end_matches("[DONE]")), READY).detail(&["no [DONE]"]),
        // ----- upstream_auth
        case(
            "401 invalid key, echoed partially",
            chat_step(false),
            obs(401, &[], r#"{"error":{"message":"Incorrect API key provided: sk-proj-abc*************************xyz9. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","code":"invalid_api_key"}}"#),
            UPSTREAM_AUTH,
        )
        .detail(&["HTTP 401", "invalid_api_key: Incorrect API key provided: [redacted]"]),
        case(
            "403 sub2api key not in a group",
            chat_step(false),
            obs(403, &[], r#"{"error":{"type":"permission_error","message":"API key is not assigned to any group"}}"#),
            UPSTREAM_AUTH,
        )
        .detail(&["not assigned to any group"]),
        case("401 on the models list", list_step(Some("kimi-k2.6")), obs(401, &[], r#"{"error":{"message":"Invalid Authentication","type":"invalid_authentication_error"}}"#), UPSTREAM_AUTH),
        case("401 one-api expired token", chat_step(false), obs(401, &[], r#"{"error":{"message":"该令牌已过期","type":"new_api_error"}}"#), UPSTREAM_AUTH),
        // ----- upstream_rate_limited
        case("429 Retry-After seconds", chat_step(false), obs(429, &[("Retry-After", "20")], r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#), UPSTREAM_RATE_LIMITED)
            .retry(20_000)
            .detail(&["retry after 20 s"]),
        case("429 Retry-After HTTP-date", chat_step(false), obs(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], ""), UPSTREAM_RATE_LIMITED).retry(30_000),
        case("429 retry-after-ms", chat_step(false), obs(429, &[("retry-after-ms", "1500"), ("retry-after", "2")], ""), UPSTREAM_RATE_LIMITED).retry(1_500),
        case(
            "429 Moonshot RPM, hint in the body",
            chat_step(false),
            obs(429, &[], r#"{"error":{"message":"Your account org-x request reached organization max RPM: 3, please try again after 20 seconds","type":"rate_limit_reached_error"}}"#),
            UPSTREAM_RATE_LIMITED,
        )
        .retry(20_000),
        case(
            "429 OpenAI style, Go duration in the body",
            chat_step(false),
            obs(429, &[], r#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per day (RPD): Limit 200, Used 200. Please try again in 6m0s.","type":"requests","code":"rate_limit_exceeded"}}"#),
            UPSTREAM_RATE_LIMITED,
        )
        .retry(360_000),
        case("429 retry_after field", chat_step(false), obs(429, &[], r#"{"error":{"message":"slow down","retry_after":7}}"#), UPSTREAM_RATE_LIMITED).retry(7_000),
        case("429 x-ratelimit-reset header", chat_step(false), obs(429, &[("x-ratelimit-reset-requests", "2s"), ("x-ratelimit-reset-tokens", "1m0s")], "{}"), UPSTREAM_RATE_LIMITED).retry(60_000),
        case(
            "429 DashScope throttling",
            chat_step(false),
            obs(429, &[], r#"{"error":{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","type":"Throttling.RateQuota"}}"#),
            UPSTREAM_RATE_LIMITED,
        )
        .detail(&["no retry hint", "Throttling.RateQuota: Requests rate limit exceeded"]),
        case("429 Zhipu concurrency", chat_step(false), obs(429, &[], r#"{"error":{"code":"1302","message":"您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。"}}"#), UPSTREAM_RATE_LIMITED),
        case("429 Chinese hint", chat_step(false), obs(429, &[], r#"{"error":{"message":"请求过于频繁，请在 20 秒后重试"}}"#), UPSTREAM_RATE_LIMITED).retry(20_000),
        case("429 Gemini per-minute quota is a rate", chat_step(false), obs(429, &[], r#"{"error":{"message":"Quota exceeded for quota metric 'Generate Content API requests per minute'","status":"RESOURCE_EXHAUSTED"}}"#), UPSTREAM_RATE_LIMITED),
        case("429 with nothing to go on", chat_step(false), obs(429, &[], ""), UPSTREAM_RATE_LIMITED).detail(&["no retry hint", "empty body"]),
        // ----- upstream_quota
        case(
            "429 OpenAI insufficient_quota",
            chat_step(false),
            obs(429, &[], r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#),
            UPSTREAM_QUOTA,
        )
        .detail(&["not a rate limit"]),
        case("429 balance beats Retry-After", chat_step(false), obs(429, &[("Retry-After", "5")], r#"{"error":{"message":"Insufficient balance"}}"#), UPSTREAM_QUOTA),
        case("429 Zhipu arrears 1113", chat_step(false), obs(429, &[], r#"{"error":{"code":"1113","message":"您的账户已欠费，请充值后重试。"}}"#), UPSTREAM_QUOTA),
        case(
            "429 Moonshot suspended for billing",
            chat_step(false),
            obs(429, &[], r#"{"error":{"message":"Your account org-x is suspended, please check your plan and billing details","type":"exceeded_current_quota_error"}}"#),
            UPSTREAM_QUOTA,
        ),
        case("429 bare quota wording", chat_step(false), obs(429, &[], r#"{"error":{"message":"quota exceeded"}}"#), UPSTREAM_QUOTA),
        case("402 DeepSeek", chat_step(false), obs(402, &[], r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#), UPSTREAM_QUOTA)
            .detail(&["HTTP 402", "Insufficient Balance"]),
        case("400 DashScope Arrearage", chat_step(false), obs(400, &[], r#"{"error":{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing.","type":"Arrearage"}}"#), UPSTREAM_QUOTA),
        case("403 one-api user quota", chat_step(false), obs(403, &[], r#"{"error":{"message":"user quota is not enough","type":"one_api_error","code":"insufficient_user_quota"}}"#), UPSTREAM_QUOTA),
        case("401 one-api token out of quota", chat_step(false), obs(401, &[], r#"{"error":{"message":"该令牌额度已用尽","type":"one_api_error"}}"#), UPSTREAM_QUOTA),
        // ----- warming_up
        case("503 sub2api no available accounts", chat_step(false), obs(503, &[], r#"{"error":{"type":"api_error","message":"no available accounts"}}"#), WARMING_UP)
            .detail(&["HTTP 503", "no available accounts"]),
        case("503 new-api no channel yet", chat_step(false), obs(503, &[], r#"{"error":{"message":"当前分组 default 下对于模型 kimi-k2.6 无可用渠道","type":"new_api_error"}}"#), WARMING_UP),
        case("503 warming up with Retry-After", chat_step(false), obs(503, &[("Retry-After", "5")], "No available account for this model, warming up"), WARMING_UP).retry(5_000),
        case("502 no available channel", list_step(Some("kimi-k2.6")), obs(502, &[], r#"{"error":{"message":"no available channel for model kimi-k2.6"}}"#), WARMING_UP),
        // ----- model_missing
        case("models list lacks the model", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["gpt-4o", "gpt-4o-mini", "kimi-k2.5"])), MODEL_UNLISTED)
            .detail(&["(3 models) lacks kimi-k2.6", "nearest listed: kimi-k2.5"]),
        case("models list has only a sibling", list_step(Some("kimi-k2.6")), obs(200, &[], &models(&["kimi-k2", "kimi-k2-turbo-preview"])), MODEL_UNLISTED),
        case("models list is empty", list_step(Some("kimi-k2.6")), obs(200, &[], r#"{"object":"list","data":[]}"#), MODEL_UNLISTED).detail(&["empty"]),
        case("no expectation and nothing listed", list_step(None), obs(200, &[], r#"{"data":[]}"#), MODEL_UNLISTED).provider(None),
        case(
            "404 OpenAI model_not_found",
            chat_step(false),
            obs(404, &[], r#"{"error":{"message":"The model `kimi-k2.6` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#),
            MODEL_MISSING,
        )
        .detail(&["HTTP 404", "model_not_found"]),
        case("400 DeepSeek Model Not Exist", chat_step(false), obs(400, &[], r#"{"error":{"message":"Model Not Exist","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#), MODEL_MISSING),
        case("404 Moonshot not found the model", chat_step(false), obs(404, &[], r#"{"error":{"message":"Not found the model kimi-k9 or Permission denied","type":"resource_not_found_error"}}"#), MODEL_MISSING),
        case("400 Zhipu 1211", chat_step(false), obs(400, &[], r#"{"error":{"code":"1211","message":"模型不存在，请检查模型代码。"}}"#), MODEL_MISSING),
        // ----- invalid_response
        case("200 with an error body", chat_step(false), obs(200, &[], r#"{"error":{"message":"upstream returned nothing","type":"server_error"}}"#), INVALID_RESPONSE)
            .detail(&["HTTP 200 carrying an error instead of a chat completion", "upstream returned nothing"]),
        case("200 with a quota error body", chat_step(false), obs(200, &[], r#"{"error":{"message":"insufficient_user_quota"}}"#), INVALID_RESPONSE)
            .detail(&["looks like: quota or balance exhausted"]),
        case(
            "200 MiniMax base_resp failure",
            chat_step(false),
            obs(200, &[], r#"{"id":"","choices":null,"base_resp":{"status_code":1008,"status_msg":"insufficient balance"}}"#),
            INVALID_RESPONSE,
        )
        .detail(&["1008: insufficient balance", "looks like: quota"]),
        case("200 success=false", chat_step(false), obs(200, &[], r#"{"success":false,"message":"无效的令牌"}"#), INVALID_RESPONSE).detail(&["looks like: credentials refused"]),
        case("200 empty choices", chat_step(false), obs(200, &[], r#"{"id":"x","object":"chat.completion","choices":[]}"#), INVALID_RESPONSE).detail(&["empty `choices`"]),
        case("200 no choices", chat_step(false), obs(200, &[], r#"{"id":"x","object":"chat.completion"}"#), INVALID_RESPONSE).detail(&["no `choices`"]),
        case("200 choices not a list", chat_step(false), obs(200, &[], r#"{"choices":{}}"#), INVALID_RESPONSE),
        case("200 choice without message", chat_step(false), obs(200, &[], r#"{"choices":[{"index":0}]}"#), INVALID_RESPONSE).detail(&["no `message`"]),
        case("200 not JSON", chat_step(false), obs(200, &[], "OK"), INVALID_RESPONSE).detail(&["not JSON: OK"]),
        case("200 empty body", chat_step(false), obs(200, &[], "  "), INVALID_RESPONSE).detail(&["empty body"]),
        case("200 HTML web UI", chat_step(false), obs(200, &[], "<!DOCTYPE html><html><head><title>New API</title>"), INVALID_RESPONSE).detail(&["web UI"]),
        case("200 stream for a non-stream request", chat_step(false), obs(200, &[], "data: {\"choices\":[]}\n\n"), INVALID_RESPONSE).detail(&["event stream"]),
        case("stream of only [DONE]", chat_step(true), obs(200, &[], "[DONE]\n"), INVALID_RESPONSE).detail(&["no data events (only [DONE])"]),
        case("empty stream", chat_step(true), obs(200, &[], ""), INVALID_RESPONSE).detail(&["no data events (nothing)"]),
        case("stream event not JSON", chat_step(true), obs(200, &[], "{\"choices\":[{\"delta\":{}}]}\n{oops\n[DONE]"), INVALID_RESPONSE).detail(&["stream event 2 is not JSON"]),
        case("stream error event", chat_step(true), obs(200, &[], "{\"error\":{\"message\":\"Rate limit reached\"}}\n[DONE]"), INVALID_RESPONSE)
            .detail(&["stream event 1 is an error", "looks like: rate limited"]),
        case("stream answered as one JSON", chat_step(true), obs(200, &[], COMPLETION), INVALID_RESPONSE).detail(&["non-streaming completion"]),
        case("stream without choices", chat_step(true), obs(200, &[], "{\"usage\":{\"total_tokens\":3},\"choices\":[]}\n[DONE]"), INVALID_RESPONSE)
            .detail(&["1 event but none"]),
        case("stream of an HTML page", chat_step(true), obs(200, &[], "<html><body>login</body></html>"), INVALID_RESPONSE),
        case("models list with an error body", list_step(Some("kimi-k2.6")), obs(200, &[], r#"{"error":"invalid token"}"#), MODELS_UNAVAILABLE)
            .detail(&["instead of a models list", "invalid token"]),
        case("models list not JSON", list_step(Some("kimi-k2.6")), obs(200, &[], "models: kimi-k2.6"), MODELS_UNAVAILABLE),
        case("models list without data", list_step(Some("kimi-k2.6")), obs(200, &[], r#"{"object":"list"}"#), MODELS_UNAVAILABLE).detail(&["no `data` array"]),
        case("models list is a web UI", list_step(Some("kimi-k2.6")), obs(200, &[], "<!doctype html>\n<html>"), MODELS_UNAVAILABLE).detail(&["web UI"]),
        // ----- network_error
        case("connection failed", chat_step(false), no_response(Some("network_error")), NETWORK_ERROR).detail(&["connection failed (gave up after 10004 ms; step timeout 30000 ms)"]),
        case("no response, no class", list_step(None), no_response(None), NETWORK_ERROR),
        case("free-form transport error", chat_step(false), no_response(Some("connection refused (os error 111)")), NETWORK_ERROR).detail(&["connection refused"]),
        case("body broke off", chat_step(true), Observation { transport_error: Some("network_error".into()), ..obs(200, &[], "{\"choices\":[{\"delta\":{}}]}") }, NETWORK_ERROR)
            .detail(&["HTTP 200 started but the connection broke off"]),
        // ----- timeout
        case("no response in time", chat_step(false), no_response(Some("timeout")), TIMEOUT).detail(&["no response in time (gave up after 10004 ms; step timeout 30000 ms)"]),
        case("stream stalled", chat_step(true), Observation { transport_error: Some("timeout".into()), ..obs(200, &[], "") }, TIMEOUT).detail(&["HTTP 200 started but the body did not finish in time"]),
        case("HTTP 408", chat_step(false), obs(408, &[], ""), TIMEOUT),
        // ----- upstream_error
        case("500", chat_step(false), obs(500, &[], r#"{"error":{"message":"internal error","type":"server_error"}}"#), UPSTREAM_ERROR).detail(&["HTTP 500", "internal error"]),
        case("502 sub2api upstream_error", chat_step(false), obs(502, &[], r#"{"error":{"type":"upstream_error","message":"Upstream request failed"}}"#), UPSTREAM_ERROR),
        case("503 temporarily unavailable", chat_step(false), obs(503, &[], r#"{"error":{"message":"Service temporarily unavailable"}}"#), UPSTREAM_ERROR),
        case("504 with Retry-After", list_step(None), obs(504, &[("Retry-After", "3")], "<html>Gateway Time-out</html>"), UPSTREAM_ERROR).retry(3_000).detail(&["HTML page"]),
        // ----- upstream_rejected
        case("400 bad parameter", chat_step(false), obs(400, &[], r#"{"error":{"message":"max_tokens must be at least 1","type":"invalid_request_error"}}"#), UPSTREAM_REJECTED)
            .detail(&["HTTP 400", "max_tokens must be at least 1"]),
        case("404 models path", list_step(Some("kimi-k2.6")), obs(404, &[], "404 page not found"), MODELS_UNAVAILABLE).detail(&["no models list at /v1/models", "the chat decides", "404 page not found"]),
        case("405 models path", list_step(Some("kimi-k2.6")), obs(405, &[], r#"{"error":{"message":"Method Not Allowed"}}"#), MODELS_UNAVAILABLE),
        case("404 chat path", chat_step(false), obs(404, &[], "Not Found"), UPSTREAM_REJECTED).detail(&["no such endpoint /v1/chat/completions"]),
        case("413", chat_step(false), obs(413, &[], r#"{"error":{"code":"request_too_large","message":"request body too large"}}"#), UPSTREAM_REJECTED),
        case("302 redirect", list_step(None), obs(302, &[("location", "/login")], ""), UPSTREAM_REJECTED).detail(&["unexpected status for GET /v1/models"]),
    ]
}

#[test]
fn judge_table() {
    let catalog = catalog();
    let mut failures = Vec::new();
    let all = cases();
    for c in &all {
        let provider = c.provider.map(|id| catalog.provider(id).unwrap());
        let v = judge(provider, &c.step, &c.obs, NOW);
        let mut problems = Vec::new();
        if v.class != c.class {
            problems.push(format!("class {} != {}", v.class, c.class));
        }
        if v.passed != PASSING.contains(&c.class) {
            problems.push(format!("passed = {}", v.passed));
        }
        if v.retry_after_ms != c.retry_after_ms {
            problems.push(format!(
                "retry_after_ms {:?} != {:?}",
                v.retry_after_ms, c.retry_after_ms
            ));
        }
        for fragment in c.detail {
            if !v.detail.contains(fragment) {
                problems.push(format!("detail lacks `{fragment}`"));
            }
        }
        if v.detail.is_empty() || v.detail.chars().count() > 400 {
            problems.push("detail empty or too long".into());
        }
        if v.detail.contains("sk-") {
            problems.push("detail leaks a key".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} (detail: {})",
                c.label,
                problems.join("; "),
                v.detail
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn every_class_is_covered_and_retriable_follows_the_class() {
    use class::*;
    let expected = [
        (READY, false),
        (UPSTREAM_AUTH, false),
        (UPSTREAM_RATE_LIMITED, true),
        (UPSTREAM_QUOTA, false),
        (WARMING_UP, true),
        (MODEL_MISSING, false),
        (INVALID_RESPONSE, false),
        (NETWORK_ERROR, true),
        (TIMEOUT, true),
        (UPSTREAM_ERROR, true),
        (UPSTREAM_REJECTED, false),
        (MODELS_UNAVAILABLE, false),
        (MODEL_UNLISTED, false),
    ];
    let catalog = catalog();
    let all = cases();
    for (class, retriable) in expected {
        let of_class: Vec<&Case> = all.iter().filter(|c| c.class == class).collect();
        assert!(!of_class.is_empty(), "no case for {class}");
        for c in of_class {
            let v = judge(
                c.provider.map(|id| catalog.provider(id).unwrap()),
                &c.step,
                &c.obs,
                NOW,
            );
            assert_eq!(v.retriable, retriable, "{}", c.label);
        }
    }
}

#[test]
fn steps_from_the_real_plan_round_trip_through_judge() {
    let catalog = catalog();
    let kimi = catalog.provider("kimi").unwrap();
    let target = Target {
        base_url: "http://127.0.0.1:18080".into(),
        model: Some("Kimi 2.5".into()),
        stream: None,
    };
    let steps = plan::plan(kimi, &target).unwrap();
    // The list must contain the resolved target model, not the smoke model.
    let listed = r#"{"data":[{"id":"kimi-k2.6"}]}"#;
    assert_eq!(
        judge(Some(kimi), &steps[0], &obs(200, &[], listed), NOW).class,
        class::MODEL_UNLISTED
    );
    let listed = r#"{"data":[{"id":"moonshotai/Kimi-K2.5"}]}"#;
    assert_eq!(
        judge(Some(kimi), &steps[0], &obs(200, &[], listed), NOW).class,
        class::READY
    );
    assert_eq!(
        judge(Some(kimi), &steps[1], &obs(200, &[], COMPLETION), NOW).class,
        class::READY
    );
}

#[test]
fn step_kind_falls_back_to_the_path() {
    let mut step = chat_step(false);
    step.name = "custom".into();
    assert_eq!(
        judge(None, &step, &obs(200, &[], r#"{"choices":[]}"#), NOW).class,
        class::INVALID_RESPONSE
    );
    step.path = "/models".into();
    assert_eq!(
        judge(None, &step, &obs(200, &[], r#"{"data":[{"id":"a"}]}"#), NOW).class,
        class::READY
    );
    step.path = "/v1/health".into();
    assert_eq!(
        judge(None, &step, &obs(200, &[], "fine"), NOW).class,
        class::READY
    );
    assert_eq!(
        judge(None, &step, &obs(200, &[], r#"{"error":"down"}"#), NOW).class,
        class::INVALID_RESPONSE
    );
}

#[test]
fn retry_hints_in_the_past_or_absurd_are_dropped_or_clamped() {
    let step = chat_step(false);
    // A date in the past means "now".
    let v = judge(
        None,
        &step,
        &obs(429, &[("Retry-After", "Thu, 01 Jan 1970 00:00:00 GMT")], ""),
        NOW,
    );
    assert_eq!(v.retry_after_ms, Some(0));
    // Over a day is ignored.
    let v = judge(
        None,
        &step,
        &obs(429, &[("Retry-After", "999999")], ""),
        NOW,
    );
    assert_eq!(v.retry_after_ms, None);
    // Garbage is ignored.
    let v = judge(None, &step, &obs(429, &[("Retry-After", "soon")], ""), NOW);
    assert_eq!(v.retry_after_ms, None);
    // Epoch-style reset header.
    let v = judge(
        None,
        &step,
        &obs(429, &[("x-ratelimit-reset", &(NOW + 12).to_string())], ""),
        NOW,
    );
    assert_eq!(v.retry_after_ms, Some(12_000));
}

#[test]
fn details_stay_short_for_huge_bodies() {
    let huge = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(100_000));
    let v = judge(None, &chat_step(false), &obs(500, &[], &huge), NOW);
    assert!(v.detail.chars().count() < 300, "{}", v.detail.len());
    let v = judge(
        None,
        &chat_step(false),
        &obs(200, &[], &"y".repeat(100_000)),
        NOW,
    );
    assert!(v.detail.chars().count() < 300);
}
