//! Access probes through the real binary: a mock OpenAI-compatible upstream on loopback plays
//! each behaviour of seed 003, and each must come out as exactly its verdict class.
//!
//! The mock follows the OpenAI API's shapes: `GET /v1/models` answers
//! `{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`
//! (<https://platform.openai.com/docs/api-reference/models/list>); `POST /v1/chat/completions`
//! answers a `chat.completion` object, or `chat.completion.chunk` events for `stream: true`
//! (<https://platform.openai.com/docs/api-reference/chat/object>); errors are
//! `{"error": {"message", "type", "param", "code"}}`, an unknown route is
//! `404 {"error": {"message": "Invalid URL (GET /v1/models)", "type": "invalid_request_error"}}`
//! (<https://platform.openai.com/docs/guides/error-codes>); rate limits are 429 with
//! `x-ratelimit-reset-requests: 2s`-style headers or `Retry-After`
//! (<https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers>). The relay
//! answers are seed 003's: sub2api's `503` with "no available accounts" while its account pool
//! is empty (its models list still answers 200), and `502 upstream_error` when it routes a
//! provider to an API the upstream does not serve.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wharf_e2e::{
    ADMIN_KEY, Client, WharfProcess, build_pack, install_pack, openai_cn_version, wharf_bin,
};

/// The upstream key of these tests: it must never show up in an answer, a log or the DB.
const UPSTREAM_KEY: &str = "sk-wharf-e2e-UPSTREAM-9f8e7d6c5b4a";
/// How long the `warm` behaviour answers 503 "no available accounts" before it serves.
const WARM_FOR: Duration = Duration::from_millis(1500);

#[derive(Default)]
struct MockState {
    started: HashMap<String, Instant>,
    /// Every request: (behaviour, whether it was the models list, when).
    calls: Vec<(String, bool, Instant)>,
    /// The `switch` behaviour fails (502) while this is set.
    failing: bool,
}

/// A mock upstream. The first path segment picks the behaviour:
/// `http://127.0.0.1:<port>/<behaviour>/v1/...`.
struct Mock {
    base: String,
    /// Requests that carried a `x-wharf-*` header or a wrong key (both must never happen).
    violations: Arc<AtomicUsize>,
    /// The models the chat step asked for, in order.
    chat_models: Arc<std::sync::Mutex<Vec<String>>>,
    state: Arc<std::sync::Mutex<MockState>>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<std::sync::Mutex<MockState>>,
    violations: Arc<AtomicUsize>,
    chat_models: Arc<std::sync::Mutex<Vec<String>>>,
}

const MODELS: &[&str] = &["kimi-k2.6", "kimi-k2.5", "moonshot-v1-8k"];

fn json_response(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    })
}

fn sse(events: &[String]) -> Response {
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

fn models_list(ids: &[&str]) -> Response {
    let data: Vec<Value> = ids
        .iter()
        .map(
            |id| json!({"id": id, "object": "model", "created": 1_686_935_002, "owned_by": "mock"}),
        )
        .collect();
    json_response(200, json!({"object": "list", "data": data}))
}

async fn handle(
    State(shared): State<Shared>,
    UrlPath((behaviour, rest)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let key_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {UPSTREAM_KEY}"));
    let leaked = headers.keys().any(|k| k.as_str().starts_with("x-wharf-"));
    if leaked || (!key_ok && behaviour != "auth") {
        shared.violations.fetch_add(1, Ordering::SeqCst);
        return json_response(
            400,
            error_body("mock: bad request headers", "mock_violation"),
        );
    }
    let models = rest.ends_with("models");
    shared
        .state
        .lock()
        .unwrap()
        .calls
        .push((behaviour.clone(), models, Instant::now()));
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or_default().to_string();
    if !models {
        shared.chat_models.lock().unwrap().push(model.clone());
    }
    let stream = request["stream"].as_bool().unwrap_or(false);
    match behaviour.as_str() {
        "auth" => json_response(
            401,
            error_body("Incorrect API key provided", "invalid_request_error"),
        ),
        "ratelimit" => {
            let mut r = json_response(
                429,
                error_body("Rate limit reached for requests", "rate_limit_exceeded"),
            );
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        "quota" => json_response(
            429,
            error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
            ),
        ),
        "warm" | "warmforever" => {
            let first = *shared
                .state
                .lock()
                .unwrap()
                .started
                .entry(behaviour.clone())
                .or_insert_with(Instant::now);
            if behaviour == "warmforever" || first.elapsed() < WARM_FOR {
                return json_response(503, error_body("no available accounts", "new_api_error"));
            }
            healthy(models, &model, stream)
        }
        // sub2api after an import: the models list answers, the chat finds no account.
        "warmchat" if !models => {
            json_response(503, error_body("no available accounts", "api_error"))
        }
        "nomodel" if models => models_list(&["moonshot-v1-8k", "moonshot-v1-32k"]),
        "nomodelsroute" if models => json_response(
            404,
            json!({"error": {"message": "Invalid URL (GET /v1/models)", "type": "invalid_request_error", "param": null, "code": null}}),
        ),
        "ratereset" => {
            let mut r = json_response(
                429,
                error_body(
                    "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
                    "requests",
                ),
            );
            r.headers_mut()
                .insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
            r
        }
        "retryafter3" => {
            let mut r = json_response(
                429,
                error_body("Rate limit reached for requests", "rate_limit_exceeded"),
            );
            r.headers_mut().insert("retry-after", "3".parse().unwrap());
            r
        }
        "overloaded" if !models => {
            let mut r = json_response(
                503,
                error_body(
                    "The engine is currently overloaded, please try again later",
                    "server_error",
                ),
            );
            r.headers_mut().insert("retry-after", "2".parse().unwrap());
            r
        }
        "switch" if shared.state.lock().unwrap().failing => {
            json_response(502, error_body("Upstream request failed", "upstream_error"))
        }
        "errorbody" if !models => json_response(
            200,
            error_body("upstream failed: context canceled", "upstream_error"),
        ),
        "emptystream" if !models => sse(&["[DONE]".to_string()]),
        "relay502" if !models => json_response(
            502,
            error_body("bad gateway: upstream protocol error", "bad_gateway"),
        ),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            healthy(models, &model, stream)
        }
        _ => healthy(models, &model, stream),
    }
}

fn healthy(models: bool, model: &str, stream: bool) -> Response {
    if models {
        return models_list(MODELS);
    }
    if !MODELS.contains(&model) {
        return json_response(
            404,
            error_body(
                &format!("The model `{model}` does not exist"),
                "model_not_found",
            ),
        );
    }
    if stream {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "OK"}, "finish_reason": null}]});
        return sse(&[chunk.to_string(), "[DONE]".to_string()]);
    }
    json_response(200, completion(model))
}

async fn start_mock() -> Mock {
    let shared = Shared {
        state: Default::default(),
        violations: Arc::new(AtomicUsize::new(0)),
        chat_models: Default::default(),
    };
    let app = Router::new()
        .route("/{behaviour}/{*rest}", axum::routing::any(handle))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Mock {
        base,
        violations: shared.violations,
        chat_models: shared.chat_models,
        state: shared.state,
    }
}

impl Mock {
    fn url(&self, behaviour: &str) -> String {
        format!("{}/{behaviour}", self.base)
    }

    /// When a behaviour was asked for its models list (`models`) or a chat completion.
    fn calls(&self, behaviour: &str, models: bool) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(b, m, _)| b == behaviour && *m == models)
            .map(|(_, _, at)| *at)
            .collect()
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
}

async fn start_with_openai_cn(root: &Path, env: &[(&str, &str)]) -> (WharfProcess, Client) {
    let server = WharfProcess::start(root, env);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let built = root.join("built/openai-cn-pack");
    build_pack("packs/openai-cn-pack", &built);
    install_pack(&built, &server.packs_dir, "openai-cn-pack");
    admin.wait_for_provider("kimi").await;
    (server, admin)
}

fn probe_body(mock: &Mock, behaviour: &str) -> Value {
    json!({"provider": "kimi", "base_url": mock.url(behaviour), "api_key": UPSTREAM_KEY})
}

/// Every byte the server wrote to disk in its data dir (DB, WAL, logs, keys).
fn data_dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

/// A relay that never warmed up is reported with what it said.
fn assert_upstream_message(result: &Value) {
    let detail = result["detail"].as_str().unwrap();
    assert!(
        detail.contains("no available accounts") && detail.contains("warm-up window"),
        "{result:#}"
    );
}

/// A `ready` result that carries one warning with each fragment.
fn assert_warning(result: &Value, fragments: &[&str]) {
    let warnings = result["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| {
            let w = w.as_str().unwrap();
            fragments.iter().all(|f| w.contains(f))
        }),
        "no warning with {fragments:?}: {result:#}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn each_upstream_behaviour_is_exactly_its_class() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().unwrap();
    let env = [
        ("WHARF_PROBE_MAX_STEP_TIMEOUT_MS", "1000"),
        ("WHARF_PROBE_WARMUP_RETRY_MS", "4000"),
        ("WHARF_PROBE_WARMUP_BACKOFF_MS", "300"),
    ];
    let (server, admin) = start_with_openai_cn(root.path(), &env).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let cases: Vec<(&str, Value, &str)> = vec![
        ("healthy", probe_body(&mock, "healthy"), "ready"),
        (
            "healthy stream",
            json!({"provider": "kimi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY, "stream": true}),
            "ready",
        ),
        ("401", probe_body(&mock, "auth"), "upstream_auth"),
        (
            "429 retry-after",
            probe_body(&mock, "ratelimit"),
            "upstream_rate_limited",
        ),
        ("429 quota", probe_body(&mock, "quota"), "upstream_quota"),
        ("503 then healthy", probe_body(&mock, "warm"), "ready"),
        (
            "503 for longer than the window",
            probe_body(&mock, "warmforever"),
            "relay_unavailable",
        ),
        (
            "models answer, chat 503 for longer than the window",
            probe_body(&mock, "warmchat"),
            "relay_unavailable",
        ),
        (
            "models without the smoke model, chat fine",
            probe_body(&mock, "nomodel"),
            "ready",
        ),
        (
            "models and chat both lack the model",
            json!({"provider": "kimi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY, "model": "kimi-k9"}),
            "model_missing",
        ),
        (
            "models route 404, chat fine",
            probe_body(&mock, "nomodelsroute"),
            "ready",
        ),
        (
            "models route 404, chat lacks the model",
            json!({"provider": "kimi", "base_url": mock.url("nomodelsroute"), "api_key": UPSTREAM_KEY, "model": "kimi-k9"}),
            "model_missing",
        ),
        (
            "200 with an error body",
            probe_body(&mock, "errorbody"),
            "invalid_response",
        ),
        (
            "stream with no data",
            json!({"provider": "kimi", "base_url": mock.url("emptystream"), "api_key": UPSTREAM_KEY, "stream": true}),
            "invalid_response",
        ),
        (
            "relay 502, direct fine",
            json!({"provider": "kimi", "base_url": mock.url("relay502"), "direct_base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
            "host_compatibility_gap",
        ),
        (
            "relay 429, direct fine",
            json!({"provider": "kimi", "base_url": mock.url("ratelimit"), "direct_base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
            "upstream_rate_limited",
        ),
        (
            "relay overloaded 503, direct fine",
            json!({"provider": "kimi", "base_url": mock.url("overloaded"), "direct_base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
            "upstream_error",
        ),
        (
            "relay hangs, direct fine",
            json!({"provider": "kimi", "base_url": mock.url("hang"), "direct_base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
            "timeout",
        ),
        (
            "relay never warms up, direct fine",
            json!({"provider": "kimi", "base_url": mock.url("warmforever"), "direct_base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
            "relay_unavailable",
        ),
        (
            "relay 502, direct also failing",
            json!({"provider": "kimi", "base_url": mock.url("relay502"), "direct_base_url": mock.url("auth"), "api_key": UPSTREAM_KEY}),
            "upstream_error",
        ),
        (
            "hang past the timeout",
            probe_body(&mock, "hang"),
            "timeout",
        ),
        (
            "nothing listening",
            json!({"provider": "kimi", "base_url": format!("http://127.0.0.1:{closed_port}"), "api_key": UPSTREAM_KEY}),
            "network_error",
        ),
    ];
    // All at once: the slow ones (warm-up window, hang) overlap.
    let tasks: Vec<_> = cases
        .iter()
        .map(|(name, body, _)| {
            let client = Client::new(&server, Some(ADMIN_KEY));
            let (name, body) = (name.to_string(), body.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, result) = client.post("/v1/probes", body).await;
                (name, status, result, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    // Every verdict first, so a failure names all the cases that came out wrong.
    let wrong: Vec<String> = answers
        .iter()
        .zip(&cases)
        .filter(|((_, _, result, _), (_, _, expected))| result["verdict"] != *expected)
        .map(|((name, status, result, _), (_, _, expected))| {
            format!(
                "{name}: expected {expected}, got {status} {} ({})",
                result["verdict"], result["detail"]
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} cases:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let mut texts = Vec::new();
    for ((name, status, result, took), (_, _, expected)) in answers.iter().zip(&cases) {
        assert_eq!(*status, 200, "{name}: {result}");
        assert_eq!(result["verdict"], *expected, "{name}: {result:#}");
        let steps = result["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{name}: every result keeps its steps");
        for step in steps {
            for field in ["name", "status", "latency_ms", "preview", "class", "passed"] {
                assert!(
                    step.get(field).is_some(),
                    "{name}: step lacks {field}: {step}"
                );
            }
        }
        assert!(result["id"].as_str().unwrap().starts_with("prb_"));
        assert!(result["retriable"].is_boolean());
        texts.push(result.to_string());
        match name.as_str() {
            "healthy" => {
                assert_eq!(steps.len(), 2, "ready means both steps ran: {result}");
                assert_eq!(result["model"], "kimi-k2.6");
                assert_eq!(result["pack"], "openai-cn-pack");
            }
            "429 retry-after" => {
                assert_eq!(result["retriable"], true);
                assert_eq!(result["retry_after_ms"], 7000);
            }
            "429 quota" => assert_eq!(result["retriable"], false),
            "503 then healthy" => assert!(result["attempts"].as_u64().unwrap() > 1, "{result}"),
            "503 for longer than the window" | "relay never warms up, direct fine" => {
                assert!(
                    *took >= Duration::from_millis(3500),
                    "the relay counts as unavailable only after the window: {took:?}"
                );
                assert_eq!(result["retriable"], true);
                assert_upstream_message(result);
                assert!(
                    mock.calls("warmforever", false).is_empty(),
                    "a relay whose free models check warms up is never sent a chat"
                );
            }
            "models answer, chat 503 for longer than the window" => {
                assert!(*took >= Duration::from_millis(3500), "{took:?}");
                assert_upstream_message(result);
                let attempts = result["attempts"].as_u64().unwrap();
                let chats = mock.calls("warmchat", false).len() as u64;
                let lists = mock.calls("warmchat", true).len() as u64;
                assert!(
                    attempts >= 8 && lists == attempts,
                    "every attempt starts with the free models check: {attempts} attempts, {lists} lists"
                );
                assert!(
                    chats <= 6 && chats * 2 <= attempts,
                    "warm-up retries do not each spend a chat completion: {chats} chats in {attempts} attempts"
                );
            }
            "models without the smoke model, chat fine" => {
                assert_eq!(steps.len(), 2, "the chat decided: {result}");
                assert_warning(result, &["model_unlisted", "lacks kimi-k2.6"]);
            }
            "models route 404, chat fine" => {
                assert_eq!(steps.len(), 2, "the chat decided: {result}");
                assert_eq!(steps[0]["passed"], true, "{result}");
                assert_warning(result, &["models_unavailable", "no models list"]);
            }
            "models route 404, chat lacks the model" | "models and chat both lack the model" => {
                assert_eq!(steps.len(), 2, "the chat decided: {result}");
                assert_eq!(steps[1]["class"], "model_missing", "{result}");
                assert!(
                    !result["warnings"].as_array().unwrap().is_empty(),
                    "{result}"
                );
            }
            "relay 429, direct fine" => {
                assert_eq!(
                    (&result["retriable"], &result["retry_after_ms"]),
                    (&json!(true), &json!(7000)),
                    "a rate limit keeps its retry hint: {result}"
                );
            }
            "relay overloaded 503, direct fine" => {
                assert_eq!(
                    (&result["retriable"], &result["retry_after_ms"]),
                    (&json!(true), &json!(2000)),
                    "{result}"
                );
            }
            "relay 502, direct fine" => {
                let vias: Vec<&str> = steps.iter().map(|s| s["via"].as_str().unwrap()).collect();
                assert!(
                    vias.contains(&"relay") && vias.contains(&"direct"),
                    "{vias:?}"
                );
            }
            "hang past the timeout" => assert!(*took < Duration::from_secs(10), "{took:?}"),
            _ => {}
        }
    }
    assert_eq!(
        mock.violations.load(Ordering::SeqCst),
        0,
        "the mock saw an x-wharf-* header or a wrong key"
    );

    // Model names normalise to the catalog id, through the host.
    for name in [
        "kimi 2.6",
        "kimi-2.6",
        "Kimi_K2.6",
        "kimi-k2.6",
        "moonshotai/Kimi-K2.6",
    ] {
        let encoded = name.replace(' ', "%20").replace('/', "%2F");
        let (status, answer) = admin
            .get(&format!("/v1/providers/kimi/models/{encoded}"))
            .await;
        assert_eq!(
            (status, &answer["model"]),
            (200, &json!("kimi-k2.6")),
            "{name}: {answer}"
        );
    }
    let (_, unknown) = admin.get("/v1/providers/kimi/models/kimi-k9").await;
    assert!(
        unknown["model"].is_null() && unknown["suggestions"].as_array().unwrap().len() == 3,
        "{unknown}"
    );
    mock.chat_models.lock().unwrap().clear();
    let (_, aliased) = admin.post("/v1/probes", json!({"provider": "kimi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY, "model": "Kimi_K2.6"})).await;
    assert_eq!(
        (&aliased["verdict"], &aliased["model"]),
        (&json!("ready"), &json!("kimi-k2.6")),
        "{aliased}"
    );
    assert_eq!(
        *mock.chat_models.lock().unwrap(),
        ["kimi-k2.6"],
        "the upstream is asked for the canonical id"
    );

    // Clear errors with stable codes.
    let (status, err) = admin
        .post(
            "/v1/probes",
            json!({"provider": "kimmi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY}),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (404, &json!("not_found")),
        "{err}"
    );
    assert!(
        err["error"]["message"].as_str().unwrap().contains("kimi"),
        "nearest provider suggested: {err}"
    );
    let (status, err) = admin
        .post(
            "/v1/probes",
            json!({"provider": "kimi", "base_url": "ftp://x", "api_key": UPSTREAM_KEY}),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &json!("validation_error")),
        "{err}"
    );
    texts.push(err.to_string());

    // Targets: sealed key, fingerprint only, scheduled probes, status with history.
    let (status, target) = admin
        .post("/v1/targets", json!({"provider": "kimi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY, "interval_secs": 1}))
        .await;
    assert_eq!(status, 201, "{target}");
    let id = target["id"].as_str().unwrap().to_string();
    assert!(
        target["key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sk-w"),
        "{target}"
    );
    let status_path = format!("/v1/targets/{id}/status?limit=5");
    let status_body = admin
        .wait_for(&status_path, "two scheduled probes", |s| {
            s["results"].as_array().is_some_and(|r| r.len() >= 2)
        })
        .await;
    assert_eq!(status_body["verdict"], "ready", "{status_body}");
    assert!(status_body["since"].is_string() && status_body["held_secs"].as_f64().unwrap() >= 0.0);
    texts.push(status_body.to_string());
    let (_, listed) = admin.get("/v1/targets").await;
    texts.push(listed.to_string());
    let other = {
        let (_, created) = admin
            .post("/v1/keys", json!({"owner": "someone-else"}))
            .await;
        Client::new(
            &server,
            Some(created["key"].as_str().expect("a new key's secret")),
        )
    };
    let (status, _) = other.get(&format!("/v1/targets/{id}")).await;
    assert_eq!(status, 404, "targets are owner-scoped");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "wharf_probe_up{{provider=\"kimi\",target=\"{id}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "wharf_probe_duration_seconds{{provider=\"kimi\",target=\"{id}\"}}"
    )));

    // The key appears in no answer, no log line, no file of the data dir (DB, WAL, logs).
    for text in &texts {
        assert!(
            !text.contains(UPSTREAM_KEY),
            "an answer carries the key: {text}"
        );
    }
    assert!(
        !server.logs().contains(UPSTREAM_KEY),
        "the key reached the server log"
    );
    let files = data_dir_bytes(&server.data_dir);
    assert!(files.iter().any(|(name, _)| name.ends_with("wharf.db")));
    for (name, bytes) in &files {
        assert!(
            !contains(bytes, UPSTREAM_KEY.as_bytes()),
            "{name} holds the key in clear"
        );
    }

    let openapi = server.openapi().await;
    for path in [
        "/v1/probes",
        "/v1/probes/{id}",
        "/v1/targets",
        "/v1/targets/{id}",
        "/v1/targets/{id}/status",
        "/v1/providers",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }

    let (status, _) = admin.delete(&format!("/v1/targets/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = admin.get(&status_path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn scheduled_targets_hold_their_state_until_n_failures_in_a_row() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().unwrap();
    let env = [
        ("WHARF_PROBE_TICK_MS", "100"),
        ("WHARF_PROBE_FAILURE_THRESHOLD", "3"),
    ];
    let (_server, admin) = start_with_openai_cn(root.path(), &env).await;
    let (status, target) = admin
        .post("/v1/targets", json!({"provider": "kimi", "base_url": mock.url("switch"), "api_key": UPSTREAM_KEY, "interval_secs": 1}))
        .await;
    assert_eq!(status, 201, "{target}");
    let flapping = target["id"].as_str().unwrap().to_string();
    let status_path = format!("/v1/targets/{flapping}/status?limit=1");
    let ready = admin
        .wait_for(&status_path, "a ready probe", |s| s["verdict"] == "ready")
        .await;
    assert_eq!(ready["target"]["consecutive_failures"], 0, "{ready}");

    // Failing now: the state holds `ready` through failures 1 and 2, and turns at the 3rd.
    mock.set_failing(true);
    let mut held = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let turned = loop {
        let (_, status) = admin.get(&status_path).await;
        let failures = status["target"]["consecutive_failures"].as_u64().unwrap();
        match failures {
            0 => {}
            1 | 2 => {
                assert_eq!(
                    status["verdict"], "ready",
                    "only {failures} failures: {status:#}"
                );
                held += 1;
            }
            _ => break status,
        }
        assert!(Instant::now() < deadline, "no third failure: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held > 0,
        "the state was never seen holding through a failure"
    );
    assert_eq!(turned["verdict"], "upstream_error", "{turned:#}");
    assert_eq!(turned["results"][0]["verdict"], "upstream_error");
    mock.set_failing(false);
    let recovered = admin
        .wait_for(&status_path, "recovery", |s| s["verdict"] == "ready")
        .await;
    assert_eq!(
        recovered["target"]["consecutive_failures"], 0,
        "one ready result restores the state: {recovered}"
    );
}

#[tokio::test]
async fn rate_limited_targets_are_probed_again_near_their_reset_time() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().unwrap();
    let (_server, admin) =
        start_with_openai_cn(root.path(), &[("WHARF_PROBE_TICK_MS", "100")]).await;
    // The reset (2 s) comes well before the interval (60 s), or after it (3 s against 1 s).
    // Either way the next probe lands just after the reset.
    let mut ids = Vec::new();
    for (behaviour, interval_secs) in [("ratereset", 60), ("retryafter3", 1)] {
        let (status, target) = admin
            .post("/v1/targets", json!({"provider": "kimi", "base_url": mock.url(behaviour), "api_key": UPSTREAM_KEY, "interval_secs": interval_secs}))
            .await;
        assert_eq!(status, 201, "{target}");
        ids.push(target["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.calls("ratereset", true).len() < 3 || mock.calls("retryafter3", true).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 probes each in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, behaviour, reset) in [(&ids[0], "ratereset", 2.0), (&ids[1], "retryafter3", 3.0)] {
        let calls = mock.calls(behaviour, true);
        for pair in calls.windows(2) {
            let gap = (pair[1] - pair[0]).as_secs_f64();
            assert!(
                gap >= reset && gap < reset + 2.0,
                "{behaviour}: re-probed {gap:.2} s after a {reset} s reset"
            );
        }
        let (_, status) = admin.get(&format!("/v1/targets/{id}/status")).await;
        assert_eq!(status["verdict"], "upstream_rate_limited", "{status:#}");
        assert!(status["results"][0]["retry_after_ms"].as_u64().is_some());
    }
}

#[tokio::test]
async fn pack_hot_swap_during_200_scheduled_probes_fails_none() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().unwrap();
    let (server, admin) =
        start_with_openai_cn(root.path(), &[("WHARF_PROBE_TICK_MS", "100")]).await;

    // 1.2.0: the Kimi smoke model changes from kimi-k2.6 to kimi-k2.5.
    let next = root.path().join("built/openai-cn-pack-1.2.0");
    wharf_e2e::copy_dir(&root.path().join("built/openai-cn-pack"), &next);
    let manifest = std::fs::read_to_string(next.join("pack.toml"))
        .unwrap()
        .replace(
            &format!("version = \"{}\"", openai_cn_version()),
            "version = \"1.2.0\"",
        );
    assert!(manifest.contains("1.2.0"));
    std::fs::write(next.join("pack.toml"), manifest).unwrap();
    let kimi = next.join("providers/kimi.json");
    let text = std::fs::read_to_string(&kimi).unwrap().replace(
        "\"smoke_test_model\": \"kimi-k2.6\"",
        "\"smoke_test_model\": \"kimi-k2.5\"",
    );
    std::fs::write(&kimi, text).unwrap();

    let mut ids = Vec::new();
    for _ in 0..20 {
        let (status, target) = admin
            .post("/v1/targets", json!({"provider": "kimi", "base_url": mock.url("healthy"), "api_key": UPSTREAM_KEY, "interval_secs": 1}))
            .await;
        assert_eq!(status, 201, "{target}");
        ids.push(target["id"].as_str().unwrap().to_string());
    }
    let collect = || async {
        let mut all = Vec::new();
        for id in &ids {
            let (_, status) = admin
                .get(&format!("/v1/targets/{id}/status?limit=100"))
                .await;
            all.extend(status["results"].as_array().cloned().unwrap_or_default());
        }
        all
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while collect().await.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "scheduled probes did not reach 60"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    install_pack(&next, &server.packs_dir, "openai-cn-pack-1.2.0");
    let results = loop {
        let results = collect().await;
        let after = results
            .iter()
            .filter(|r| r["pack_version"] == "1.2.0")
            .count();
        if results.len() >= 200 && after >= 40 {
            break results;
        }
        assert!(
            Instant::now() < deadline,
            "only {} results ({after} after the swap)",
            results.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let failed: Vec<&Value> = results.iter().filter(|r| r["verdict"] != "ready").collect();
    assert!(
        failed.is_empty(),
        "{} of {} probes failed, e.g. {:#}",
        failed.len(),
        results.len(),
        failed[0]
    );
    for result in &results {
        let expected = if result["pack_version"] == "1.2.0" {
            "kimi-k2.5"
        } else {
            "kimi-k2.6"
        };
        assert_eq!(
            result["model"], expected,
            "each probe uses its own generation's smoke model: {result}"
        );
    }
    let mut per_target = HashMap::new();
    for result in &results {
        *per_target
            .entry(result["target_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_target.len(), 20, "every target was probed");
    assert_eq!(mock.violations.load(Ordering::SeqCst), 0);
    println!(
        "hot swap: {} scheduled probes, {} on 1.2.0, none failed",
        results.len(),
        results
            .iter()
            .filter(|r| r["pack_version"] == "1.2.0")
            .count()
    );
}

#[tokio::test]
async fn cli_probe_prints_the_verdict_and_exits_by_it() {
    let mock = start_mock().await;
    let root = tempfile::tempdir().unwrap();
    let built = root.path().join("packs/openai-cn-pack");
    build_pack("packs/openai-cn-pack", &built);
    let run = |base_url: String| {
        let bin = wharf_bin();
        let data = root.path().join("data");
        let packs = built.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args([
                    "probe",
                    "--provider",
                    "kimi",
                    "--base-url",
                    &base_url,
                    "--api-key-env",
                    "E2E_UPSTREAM_KEY",
                    "--model",
                    "kimi 2.6",
                ])
                .arg("--packs-dir")
                .arg(packs)
                .env("E2E_UPSTREAM_KEY", UPSTREAM_KEY)
                .env("WHARF_DATA_DIR", data)
                .output()
                .unwrap()
        })
    };
    let ready = run(mock.url("healthy")).await.unwrap();
    let stdout = String::from_utf8_lossy(&ready.stdout);
    let stderr = String::from_utf8_lossy(&ready.stderr);
    assert!(ready.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("verdict: ready")
            && stdout.contains("list_models")
            && stdout.contains("chat_completion"),
        "{stdout}"
    );
    assert!(stdout.contains("model:   kimi-k2.6"), "{stdout}");
    let denied = run(mock.url("auth")).await.unwrap();
    let stdout_denied = String::from_utf8_lossy(&denied.stdout);
    assert_eq!(denied.status.code(), Some(2), "{stdout_denied}");
    assert!(
        stdout_denied.contains("verdict: upstream_auth"),
        "{stdout_denied}"
    );
    for out in [
        &stdout,
        &stderr,
        &stdout_denied,
        &String::from_utf8_lossy(&denied.stderr),
    ] {
        assert!(!out.contains(UPSTREAM_KEY), "the CLI printed the key");
    }
}
