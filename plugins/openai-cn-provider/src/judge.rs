//! Judging one observation of one probe step.
//!
//! | class                   | when                                                                 | retriable |
//! |-------------------------|----------------------------------------------------------------------|-----------|
//! | `ready`                 | the step passed (models list has the model / a completion came back) | -         |
//! | `upstream_auth`         | HTTP 401 or 403 (unless the body speaks of quota or balance, see below) | no     |
//! | `upstream_rate_limited` | HTTP 429 that is not about quota (rate wording, a retry hint, or nothing at all) | yes |
//! | `upstream_quota`        | HTTP 402; HTTP 429 with quota/balance/billing wording; another 4xx with such wording (one-api/new-api `403 insufficient_user_quota` and `401 该令牌额度已用尽`, DashScope `400 Arrearage`) | no |
//! | `warming_up`            | HTTP 5xx saying "no available accounts/channels" or "warming up"     | yes       |
//! | `model_missing`         | chat 404/400/422 saying the model does not exist                     | no        |
//! | `invalid_response`      | 2xx with an error body, no/empty `choices`, unparseable JSON, an HTML page, a stream without data events | no |
//! | `network_error`         | no response (`transport_error = network_error`), or the body broke off | yes     |
//! | `timeout`               | no response in time (`transport_error = timeout`), or HTTP 408       | yes       |
//! | `upstream_error`        | any other 5xx                                                        | yes       |
//! | `upstream_rejected`     | any other 4xx (and unexpected 1xx/3xx)                               | no        |
//!
//! Two classes are warnings: the step **passes** with them, so the probe goes on and the chat
//! decides. Relays list models badly (sub2api fell back to a default set in seed 003's runs, some
//! relays have no models route at all), so a listing is evidence, not a gate:
//!
//! | class                | when (`list_models` only)                                               |
//! |----------------------|-------------------------------------------------------------------------|
//! | `models_unavailable` | HTTP 404 or 405, or a 2xx that is not a models list (error body, not JSON, no `data` array, an HTML page) |
//! | `model_unlisted`     | the list is empty, or lacks the model and all its aliases                |
//!
//! `retry_after_ms` comes from `Retry-After` (seconds or HTTP-date), `retry-after-ms`, the
//! `x-ratelimit-reset-*` headers (rate limits only), or the body (`retry_after` fields,
//! "try again in 20s", "请在 20 秒后重试"), in that order.
//!
//! `host_compatibility_gap` is not a judgement of one step: the host decides it by comparing a
//! run through the relay with a run of the same key direct to the upstream.
//!
//! Details are short, name the HTTP status and quote the upstream message (shortened, with
//! anything that looks like a key redacted).

use serde_json::Value;

use crate::manifest::ProviderManifest;
use crate::plan::{CHAT_COMPLETION, EXPECT_MODEL_HEADER, LIST_MODELS, Step};
use crate::resolve::{self, Resolution, normalize};
use crate::text::{parse_duration_ms, parse_http_date, redact, shorten};

pub mod class {
    pub const READY: &str = "ready";
    pub const UPSTREAM_AUTH: &str = "upstream_auth";
    pub const UPSTREAM_RATE_LIMITED: &str = "upstream_rate_limited";
    pub const UPSTREAM_QUOTA: &str = "upstream_quota";
    pub const WARMING_UP: &str = "warming_up";
    pub const MODEL_MISSING: &str = "model_missing";
    pub const INVALID_RESPONSE: &str = "invalid_response";
    pub const NETWORK_ERROR: &str = "network_error";
    pub const TIMEOUT: &str = "timeout";
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    pub const UPSTREAM_REJECTED: &str = "upstream_rejected";
    /// Warning (the step passes): the endpoint has no usable models list.
    pub const MODELS_UNAVAILABLE: &str = "models_unavailable";
    /// Warning (the step passes): the models list does not name the model.
    pub const MODEL_UNLISTED: &str = "model_unlisted";
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub latency_ms: u64,
    pub transport_error: Option<String>,
}

impl Observation {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub class: &'static str,
    pub retriable: bool,
    pub retry_after_ms: Option<u64>,
    pub detail: String,
}

/// Longest upstream message quoted in a detail, in characters.
const QUOTE_MAX: usize = 200;
/// Retry hints longer than a day are nonsense and ignored.
const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// A passing verdict that the host reports as a warning: the next step decides.
fn warning(class: &'static str, detail: impl Into<String>) -> Verdict {
    Verdict {
        passed: true,
        class,
        retriable: false,
        retry_after_ms: None,
        detail: redact(&detail.into()),
    }
}

fn verdict(class: &'static str, detail: impl Into<String>) -> Verdict {
    let retriable = matches!(
        class,
        class::UPSTREAM_RATE_LIMITED
            | class::WARMING_UP
            | class::NETWORK_ERROR
            | class::TIMEOUT
            | class::UPSTREAM_ERROR
    );
    Verdict {
        passed: class == class::READY,
        class,
        retriable,
        retry_after_ms: None,
        detail: redact(&detail.into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    ListModels,
    Chat,
    Other,
}

fn step_kind(step: &Step) -> StepKind {
    let path = step.path.trim_end_matches('/');
    if step.name == LIST_MODELS || (step.name != CHAT_COMPLETION && path.ends_with("/models")) {
        StepKind::ListModels
    } else if step.name == CHAT_COMPLETION || path.ends_with("/chat/completions") {
        StepKind::Chat
    } else {
        StepKind::Other
    }
}

/// Judges one observation. `provider` is `None` when the catalog does not know the provider
/// (the judgement then works on names verbatim); `now_unix_secs` turns HTTP-dates into delays.
pub fn judge(
    provider: Option<&ProviderManifest>,
    step: &Step,
    obs: &Observation,
    now_unix_secs: u64,
) -> Verdict {
    let kind = step_kind(step);
    let Some(status) = obs.status else {
        return transport(obs, step, None);
    };
    if (200..300).contains(&status) {
        if obs.transport_error.is_some() {
            return transport(obs, step, Some(status));
        }
        return match kind {
            StepKind::ListModels => judge_models(provider, step, obs),
            StepKind::Chat if step.stream => judge_stream(obs),
            StepKind::Chat => judge_completion(obs),
            StepKind::Other => judge_other(obs),
        };
    }
    let up = Upstream::parse(&obs.body);
    let said = up.quote();
    let hint = retry_hint(obs, &up, now_unix_secs);
    let with_retry = |mut v: Verdict, rate_headers: bool| {
        v.retry_after_ms = hint
            .header
            .or(if rate_headers { hint.rate_reset } else { None })
            .or(hint.body);
        v
    };
    let s = status;
    match status {
        // one-api/new-api answer 403 `insufficient_user_quota` when the relay user is out of
        // quota, and 401 `该令牌额度已用尽` when the relay token is.
        401 | 403 if up.has_any(QUOTA_STRONG) => verdict(
            class::UPSTREAM_QUOTA,
            format!("HTTP {s}: the relay account or token is out of quota: {said}"),
        ),
        401 | 403 => verdict(
            class::UPSTREAM_AUTH,
            format!("HTTP {s}: the endpoint refused the credentials: {said}"),
        ),
        402 => verdict(
            class::UPSTREAM_QUOTA,
            format!("HTTP 402: payment required, the account is out of balance or quota: {said}"),
        ),
        429 => {
            let quota = up.has_any(QUOTA_STRONG)
                || (!up.has_any(RATE_WORDS) && hint.header.is_none() && up.has_any(QUOTA_WEAK));
            if quota {
                verdict(
                    class::UPSTREAM_QUOTA,
                    format!(
                        "HTTP 429: quota or balance exhausted (not a rate limit; waiting will not help): {said}"
                    ),
                )
            } else {
                let v = with_retry(verdict(class::UPSTREAM_RATE_LIMITED, String::new()), true);
                let wait = v.retry_after_ms.map_or_else(
                    || "no retry hint".to_string(),
                    |ms| format!("retry after {}", human_ms(ms)),
                );
                Verdict {
                    detail: redact(&format!("HTTP 429: rate limited ({wait}): {said}")),
                    ..v
                }
            }
        }
        408 => with_retry(
            verdict(
                class::TIMEOUT,
                format!("HTTP 408: the upstream timed out waiting for the request: {said}"),
            ),
            false,
        ),
        400 | 404 | 422 if kind == StepKind::Chat && up.model_missing() => verdict(
            class::MODEL_MISSING,
            format!("HTTP {s}: the endpoint does not serve this model: {said}"),
        ),
        404 | 405 if kind == StepKind::ListModels => warning(
            class::MODELS_UNAVAILABLE,
            format!(
                "HTTP {s}: no models list at {}, so the chat decides: {said}",
                step.path
            ),
        ),
        404 => verdict(
            class::UPSTREAM_REJECTED,
            format!(
                "HTTP 404: no such endpoint {} (is the base URL the API root?): {said}",
                step.path
            ),
        ),
        500..=599 if up.has_any(WARMING_WORDS) => with_retry(
            verdict(
                class::WARMING_UP,
                format!(
                    "HTTP {s}: the relay has no usable upstream account yet (warming up after import?): {said}"
                ),
            ),
            false,
        ),
        500..=599 => with_retry(
            verdict(
                class::UPSTREAM_ERROR,
                format!("HTTP {s}: upstream server error: {said}"),
            ),
            false,
        ),
        400..=499 if up.has_any(QUOTA_STRONG) => verdict(
            class::UPSTREAM_QUOTA,
            format!("HTTP {s}: the account is out of balance or quota: {said}"),
        ),
        400..=499 => verdict(
            class::UPSTREAM_REJECTED,
            format!("HTTP {s}: the endpoint rejected the request: {said}"),
        ),
        _ => verdict(
            class::UPSTREAM_REJECTED,
            format!(
                "HTTP {s}: unexpected status for {} {}: {said}",
                step.method, step.path
            ),
        ),
    }
}

/// No response (or a response whose body broke off).
fn transport(obs: &Observation, step: &Step, status: Option<u16>) -> Verdict {
    let raw = obs
        .transport_error
        .as_deref()
        .unwrap_or("network_error")
        .trim();
    let lower = raw.to_ascii_lowercase();
    let is_timeout = lower == "timeout" || lower.contains("timed out") || lower.contains("timeout");
    let class = if is_timeout {
        class::TIMEOUT
    } else {
        class::NETWORK_ERROR
    };
    let what = match (status, is_timeout) {
        (Some(s), true) => format!("HTTP {s} started but the body did not finish in time"),
        (Some(s), false) => format!("HTTP {s} started but the connection broke off"),
        (None, true) => "no response in time".to_string(),
        (None, false) => "no response: the connection failed".to_string(),
    };
    let extra = if lower == "timeout" || lower == "network_error" {
        String::new()
    } else {
        format!(": {}", shorten(raw, QUOTE_MAX))
    };
    verdict(
        class,
        format!(
            "{what} (gave up after {} ms; step timeout {} ms){extra}",
            obs.latency_ms, step.timeout_ms
        ),
    )
}

fn count_models(n: usize) -> String {
    if n == 1 {
        "1 model".into()
    } else {
        format!("{n} models")
    }
}

fn human_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

// ---------------------------------------------------------------------------------------------
// Wording. Matched against the lowercased body.

/// Unmistakably about money or quota, whatever the status.
const QUOTA_STRONG: &[&str] = &[
    "insufficient_quota",
    "insufficient quota",
    "insufficient balance",
    "insufficient_balance",
    "insufficient_user_quota",
    "exceeded your current quota",
    "exceeded_current_quota",
    "quota is not enough",
    "not enough quota",
    "quota exhausted",
    "quota has been exhausted",
    "quota is exhausted",
    "out of credits",
    "credit balance",
    "balance is not enough",
    "billing",
    "arrearage",
    "arrears",
    "payment required",
    "余额",
    "欠费",
    "额度不足",
    "额度已用尽",
    "用户额度",
    "资源包",
    "充值",
];
/// Rate-limit wording.
const RATE_WORDS: &[&str] = &[
    "rate limit",
    "rate_limit",
    "ratelimit",
    "ratequota",
    "throttl",
    "too many requests",
    "too_many_requests",
    "concurrency",
    "requests per",
    "tokens per",
    "rpm",
    "tpm",
    "try again",
    "slow down",
    "并发",
    "频率",
    "速率",
    "限流",
    "请求过多",
];
/// Quota wording that alone (no rate wording, no `Retry-After`) tips a 429 to quota.
const QUOTA_WEAK: &[&str] = &["quota", "额度", "limit exceeded for plan"];
/// The relay has nothing to route to yet: an account pool or channel cache still warming up.
const WARMING_WORDS: &[&str] = &[
    "no available account",
    "no available accounts",
    "no accounts available",
    "account_select_failed",
    "no available channel",
    "no available channels",
    "无可用渠道",
    "无可用账号",
    "暂无可用",
    "没有可用",
    "warming up",
    "warm up",
    "warm-up",
    "not ready yet",
    "model is loading",
    "is currently loading",
];
/// The model is not served.
const MODEL_MISSING_WORDS: &[&str] = &[
    "model_not_found",
    "model not found",
    "model_not_exist",
    "model not exist",
    "model does not exist",
    "model_does_not_exist",
    "no such model",
    "unknown model",
    "invalid model",
    "not found the model",
    "unsupported model",
    "model is not supported",
    "模型不存在",
];

/// What an upstream said in an error body: `{"error": {"message", "code"|"type"}}`,
/// `{"error": "..."}`, `{"message"|"msg"|"detail": ...}`, MiniMax `{"base_resp": {"status_code",
/// "status_msg"}}`, or plain text.
#[derive(Debug, Default)]
struct Upstream {
    json: Option<Value>,
    message: Option<String>,
    code: Option<String>,
    /// The lowercased body (first 8 KiB), for wording checks.
    text: String,
    html: bool,
    empty: bool,
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Upstream {
    fn parse(body: &str) -> Upstream {
        let trimmed = body.trim();
        let cut = trimmed
            .char_indices()
            .nth(8192)
            .map_or(trimmed.len(), |(i, _)| i);
        let mut up = Upstream {
            text: trimmed[..cut].to_lowercase(),
            html: looks_html(trimmed),
            empty: trimmed.is_empty(),
            ..Upstream::default()
        };
        let Ok(json) = serde_json::from_str::<Value>(trimmed) else {
            if !up.html && !up.empty {
                up.message = Some(trimmed.to_string());
            }
            return up;
        };
        let err = &json["error"];
        match err {
            Value::Object(e) => {
                up.message = e.get("message").or_else(|| e.get("msg")).and_then(as_text);
                up.code = e.get("code").or_else(|| e.get("type")).and_then(as_text);
            }
            Value::String(_) => up.message = as_text(err),
            _ => {}
        }
        if up.message.is_none() {
            up.message = ["message", "msg", "detail", "error_msg", "errmsg"]
                .iter()
                .find_map(|k| json.get(*k).and_then(as_text));
        }
        if let Some(br) = json.get("base_resp").filter(|b| base_resp_failed(b)) {
            up.code = up.code.or_else(|| br.get("status_code").and_then(as_text));
            up.message = up
                .message
                .or_else(|| br.get("status_msg").and_then(as_text));
        }
        if up.code.is_none() {
            up.code = json
                .get("code")
                .and_then(as_text)
                .filter(|c| c != "0" && c != "200");
        }
        up.json = Some(json);
        up
    }

    fn has_any(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.text.contains(w))
    }

    fn model_missing(&self) -> bool {
        self.has_any(MODEL_MISSING_WORDS)
            || (self.text.contains("model")
                && (self.text.contains("does not exist") || self.text.contains("not exist")))
    }

    /// The upstream's own words for a detail: `code: message`, shortened and redacted.
    fn quote(&self) -> String {
        if self.empty {
            return "empty body".into();
        }
        if self.html {
            return "an HTML page instead of JSON".into();
        }
        let msg = match (&self.code, &self.message) {
            (Some(c), Some(m)) if !m.contains(c.as_str()) => format!("{c}: {m}"),
            (_, Some(m)) => m.clone(),
            (Some(c), None) => c.clone(),
            (None, None) => self.json.as_ref().map(Value::to_string).unwrap_or_default(),
        };
        redact(&shorten(&msg, QUOTE_MAX))
    }

    /// A guess at what an error carried inside a 2xx body means, for the detail.
    fn looks_like(&self) -> Option<&'static str> {
        if self.has_any(QUOTA_STRONG) {
            Some("quota or balance exhausted")
        } else if self.has_any(RATE_WORDS) {
            Some("rate limited")
        } else if self.has_any(WARMING_WORDS) {
            Some("no usable upstream account yet")
        } else if self.model_missing() {
            Some("model not served")
        } else if [
            "unauthorized",
            "invalid api key",
            "invalid_api_key",
            "authentication",
            "令牌",
            "forbidden",
        ]
        .iter()
        .any(|w| self.text.contains(w))
        {
            Some("credentials refused")
        } else {
            None
        }
    }
}

fn looks_html(body: &str) -> bool {
    let head: String = body
        .chars()
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype")
        || head.starts_with("<html")
        || head.starts_with("<head")
        || head.starts_with("<body")
}

/// MiniMax reports failures as HTTP 200 with a non-zero `base_resp.status_code`.
fn base_resp_failed(base_resp: &Value) -> bool {
    base_resp
        .get("status_code")
        .and_then(Value::as_i64)
        .is_some_and(|c| c != 0)
}

/// Whether a JSON body of a 2xx answer is really an error.
fn error_in_body(json: &Value) -> bool {
    let error = json.get("error").is_some_and(|e| match e {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    });
    error
        || json.get("base_resp").is_some_and(base_resp_failed)
        || json.get("success") == Some(&Value::Bool(false))
}

fn error_detail(up: &Upstream, prefix: &str) -> String {
    let guess = up
        .looks_like()
        .map(|g| format!(" (looks like: {g})"))
        .unwrap_or_default();
    format!("{prefix}{guess}: {}", up.quote())
}

/// The start of a body for a detail.
fn snippet(body: &str) -> String {
    redact(&shorten(body.trim(), 80))
}

// ---------------------------------------------------------------------------------------------
// Retry hints.

struct RetryHint {
    /// `retry-after-ms` or `Retry-After`.
    header: Option<u64>,
    /// `x-ratelimit-reset-requests` / `-tokens` / `x-ratelimit-reset`: only for rate limits.
    rate_reset: Option<u64>,
    /// Fields or phrases of the body.
    body: Option<u64>,
}

fn retry_hint(obs: &Observation, up: &Upstream, now: u64) -> RetryHint {
    let header = obs
        .header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| ms.round() as u64)
        .or_else(|| {
            obs.header("retry-after")
                .and_then(|v| retry_after_value(v, now))
        });
    let rate_reset = [
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-reset",
    ]
    .iter()
    .filter_map(|h| obs.header(h))
    .filter_map(|v| match v.parse::<u64>() {
        // An epoch timestamp rather than a delay.
        Ok(epoch) if epoch > 1_000_000_000 => Some(epoch.saturating_sub(now) * 1000),
        _ => parse_duration_ms(v)
            .filter(|_| v.trim().chars().next().is_some_and(|c| c.is_ascii_digit())),
    })
    .max();
    let body = body_retry_after(up);
    let keep = |ms: Option<u64>| ms.filter(|ms| *ms <= MAX_RETRY_AFTER_MS);
    RetryHint {
        header: keep(header),
        rate_reset: keep(rate_reset),
        body: keep(body),
    }
}

/// `Retry-After: 20` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
fn retry_after_value(v: &str, now: u64) -> Option<u64> {
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64);
    }
    parse_http_date(v).map(|at| at.saturating_sub(now) * 1000)
}

fn body_retry_after(up: &Upstream) -> Option<u64> {
    if let Some(json) = &up.json {
        for scope in [json, &json["error"]] {
            if let Some(ms) = scope.get("retry_after_ms").and_then(Value::as_f64) {
                return Some(ms.max(0.0).round() as u64);
            }
            if let Some(secs) = scope.get("retry_after").and_then(Value::as_f64) {
                return Some((secs.max(0.0) * 1000.0).round() as u64);
            }
        }
    }
    const TRIGGERS: &[&str] = &[
        "try again in",
        "try again after",
        "retry after",
        "retry in",
        "retry-after:",
        "retry_after:",
        "reset in",
        "resets in",
        "wait",
        "请在",
        "请于",
        "等待",
    ];
    for trigger in TRIGGERS {
        let mut from = 0;
        while let Some(pos) = up.text[from..].find(trigger) {
            let after = &up.text[from + pos + trigger.len()..];
            let after = after
                .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '"' | '='));
            if let Some(ms) = parse_duration_ms(after) {
                return Some(ms);
            }
            from += pos + trigger.len();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// 2xx answers.

fn parse_json_2xx(obs: &Observation, what: &str) -> Result<Value, Verdict> {
    let body = obs.body.trim();
    if body.is_empty() {
        return Err(verdict(
            class::INVALID_RESPONSE,
            format!("HTTP {}: empty body where {what} was expected", status(obs)),
        ));
    }
    if looks_html(body) {
        return Err(verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {}: an HTML page instead of {what}; the base URL probably points at a web UI, not the API root",
                status(obs)
            ),
        ));
    }
    let json: Value = serde_json::from_str(body).map_err(|_| {
        verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {}: {what} is not JSON: {}",
                status(obs),
                snippet(body)
            ),
        )
    })?;
    if error_in_body(&json) {
        let up = Upstream::parse(body);
        return Err(verdict(
            class::INVALID_RESPONSE,
            error_detail(
                &up,
                &format!("HTTP {} carrying an error instead of {what}", status(obs)),
            ),
        ));
    }
    Ok(json)
}

fn status(obs: &Observation) -> u16 {
    obs.status.unwrap_or(0)
}

fn judge_models(provider: Option<&ProviderManifest>, step: &Step, obs: &Observation) -> Verdict {
    let json = match parse_json_2xx(obs, "a models list") {
        Ok(json) => json,
        Err(v) => return warning(class::MODELS_UNAVAILABLE, unusable_listing(&v.detail)),
    };
    let items = match json.get("data").unwrap_or(&json) {
        Value::Array(items) => items,
        _ => {
            return warning(
                class::MODELS_UNAVAILABLE,
                unusable_listing(&format!(
                    "HTTP {}: the models list has no `data` array: {}",
                    status(obs),
                    snippet(&obs.body)
                )),
            );
        }
    };
    let listed: Vec<&str> = items
        .iter()
        .filter_map(|item| match item {
            Value::Object(o) => o.get("id").and_then(Value::as_str),
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let n = listed.len();
    let expected = step
        .header(EXPECT_MODEL_HEADER)
        .map(str::to_string)
        .or_else(|| provider.map(|p| p.smoke_test_model.clone()));
    let Some(expected) = expected else {
        return if listed.is_empty() {
            warning(
                class::MODEL_UNLISTED,
                format!(
                    "HTTP {}: the models list is empty, so the chat decides",
                    status(obs)
                ),
            )
        } else {
            verdict(
                class::READY,
                format!("the models list answered with {}", count_models(n)),
            )
        };
    };
    if listed.is_empty() {
        return warning(
            class::MODEL_UNLISTED,
            format!(
                "HTTP {}: the models list is empty (expected {expected}), so the chat decides",
                status(obs)
            ),
        );
    }
    // The canonical id when the catalog knows the expected model, so its aliases count too.
    let models = provider.map(|p| p.models.as_slice()).unwrap_or_default();
    let canonical = match resolve::resolve(models, &expected) {
        Resolution::Found(id) => Some(id),
        Resolution::Unknown(_) => None,
    };
    let key = normalize(&expected);
    let matches = |listed: &str| {
        normalize(listed) == key
            || canonical.as_deref().is_some_and(|c| {
                resolve::resolve(models, listed) == Resolution::Found(c.to_string())
            })
    };
    if let Some(hit) = listed
        .iter()
        .find(|l| **l == expected)
        .or_else(|| listed.iter().find(|l| matches(l)))
    {
        let how = if *hit == expected {
            String::new()
        } else {
            format!(" as `{}`", shorten(hit, 80))
        };
        return verdict(
            class::READY,
            format!("the models list has {expected}{how} ({})", count_models(n)),
        );
    }
    let near = resolve::nearest_names(&listed, &expected, 3);
    let near: Vec<String> = near.iter().map(|s| shorten(s, 64)).collect();
    warning(
        class::MODEL_UNLISTED,
        format!(
            "the models list ({}) lacks {expected} and its aliases, so the chat decides; nearest listed: {}",
            count_models(n),
            near.join(", ")
        ),
    )
}

/// The detail of a 2xx answer that is no models list.
fn unusable_listing(why: &str) -> String {
    format!("no usable models list, so the chat decides ({why})")
}

fn judge_completion(obs: &Observation) -> Verdict {
    if obs.body.trim_start().starts_with("data:") {
        return verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {}: an event stream answered a non-streaming request",
                status(obs)
            ),
        );
    }
    let json = match parse_json_2xx(obs, "a chat completion") {
        Ok(json) => json,
        Err(v) => return v,
    };
    let s = status(obs);
    let first = match json.get("choices") {
        Some(Value::Array(choices)) => match choices.first() {
            Some(first) => first,
            None => {
                return verdict(
                    class::INVALID_RESPONSE,
                    format!("HTTP {s}: the completion has an empty `choices` list"),
                );
            }
        },
        Some(_) => {
            return verdict(
                class::INVALID_RESPONSE,
                format!("HTTP {s}: the completion's `choices` is not a list"),
            );
        }
        None => {
            return verdict(
                class::INVALID_RESPONSE,
                format!(
                    "HTTP {s}: the completion has no `choices`: {}",
                    snippet(&obs.body)
                ),
            );
        }
    };
    if !first.get("message").is_some_and(Value::is_object) {
        return verdict(
            class::INVALID_RESPONSE,
            format!("HTTP {s}: `choices[0]` has no `message` object"),
        );
    }
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .map(|m| format!(", model {}", shorten(m, 64)))
        .unwrap_or_default();
    let finish = first
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(|f| format!(", finish_reason {f}"))
        .unwrap_or_default();
    verdict(
        class::READY,
        format!(
            "chat completion answered in {} ms{model}{finish}",
            obs.latency_ms
        ),
    )
}

fn judge_stream(obs: &Observation) -> Verdict {
    let s = status(obs);
    let mut done = false;
    let mut payloads = Vec::new();
    let whole = obs.body.trim();
    // An upstream that ignored `stream: true` answers one (possibly pretty-printed) JSON document.
    let lines: Vec<&str> = if whole.starts_with('{') && serde_json::from_str::<Value>(whole).is_ok()
    {
        vec![whole]
    } else {
        obs.body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    };
    for line in lines {
        // The host strips `data:`; tolerate it anyway, and skip SSE comments and fields.
        let payload = line.strip_prefix("data:").map_or(line, str::trim);
        if payload.starts_with(':')
            || payload.starts_with("event:")
            || payload.starts_with("id:")
            || payload.starts_with("retry:")
        {
            continue;
        }
        if payload == "[DONE]" {
            done = true;
        } else {
            payloads.push(payload);
        }
    }
    if payloads.is_empty() {
        let what = if done { "only [DONE]" } else { "nothing" };
        return verdict(
            class::INVALID_RESPONSE,
            format!("HTTP {s}: the stream had no data events ({what})"),
        );
    }
    if looks_html(payloads[0]) {
        return verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {s}: an HTML page instead of an event stream; the base URL probably points at a web UI"
            ),
        );
    }
    let mut chunks = 0usize;
    let mut whole_completion = false;
    for (i, payload) in payloads.iter().enumerate() {
        let Ok(json) = serde_json::from_str::<Value>(payload) else {
            return verdict(
                class::INVALID_RESPONSE,
                format!(
                    "HTTP {s}: stream event {} is not JSON: {}",
                    i + 1,
                    snippet(payload)
                ),
            );
        };
        if error_in_body(&json) {
            let up = Upstream::parse(payload);
            return verdict(
                class::INVALID_RESPONSE,
                error_detail(
                    &up,
                    &format!("HTTP {s}: stream event {} is an error", i + 1),
                ),
            );
        }
        if let Some(first) = json
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            if first.get("delta").is_some_and(Value::is_object) {
                chunks += 1;
            } else if first.get("message").is_some_and(Value::is_object) {
                whole_completion = true;
            }
        }
    }
    if chunks == 0 && whole_completion {
        return verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {s}: a streaming request got a non-streaming completion; streaming clients will fail"
            ),
        );
    }
    if chunks == 0 {
        return verdict(
            class::INVALID_RESPONSE,
            format!(
                "HTTP {s}: the stream had {} but none carried `choices[0].delta`",
                if payloads.len() == 1 {
                    "1 event".to_string()
                } else {
                    format!("{} events", payloads.len())
                }
            ),
        );
    }
    let end = if done { "" } else { ", no [DONE]" };
    verdict(
        class::READY,
        format!(
            "chat completion stream answered in {} ms ({chunks} chunks{end})",
            obs.latency_ms
        ),
    )
}

fn judge_other(obs: &Observation) -> Verdict {
    let body = obs.body.trim();
    if let Ok(json) = serde_json::from_str::<Value>(body)
        && error_in_body(&json)
    {
        let up = Upstream::parse(body);
        return verdict(
            class::INVALID_RESPONSE,
            error_detail(&up, &format!("HTTP {} carrying an error", status(obs))),
        );
    }
    verdict(
        class::READY,
        format!("HTTP {} in {} ms", status(obs), obs.latency_ms),
    )
}

#[cfg(test)]
mod tests;
