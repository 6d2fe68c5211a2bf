//! A small OpenAI-compatible upstream for relay tests: the provider whose keys get imported.
//!
//! It follows the OpenAI API's shapes: `GET /v1/models` answers
//! `{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`
//! (<https://platform.openai.com/docs/api-reference/models/list>); `POST /v1/chat/completions`
//! answers a `chat.completion` object, or `chat.completion.chunk` events ending in `data: [DONE]` for
//! `stream: true` (<https://platform.openai.com/docs/api-reference/chat/object>); errors are
//! `{"error": {"message", "type", "param", "code"}}` with `401 invalid_api_key` for a wrong or revoked
//! key, `404 model_not_found` for an unknown model, and `404 invalid_request_error "Invalid URL (...)"`
//! for an unknown route (<https://platform.openai.com/docs/guides/error-codes>).
//!
//! Like many third-party OpenAI-compatible providers it serves no `/v1/responses`: a relay that
//! routes a chat completion there gets the 404 (seed 003's Responses case).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Default)]
struct UpstreamState {
    valid_keys: HashSet<String>,
    revoked_keys: HashSet<String>,
    /// Requests per `"METHOD /path"`, including refused ones.
    calls: BTreeMap<String, u64>,
    /// The model of every chat completion that was served.
    served_models: Vec<String>,
}

struct Shared {
    models: Vec<String>,
    state: Mutex<UpstreamState>,
}

/// The running upstream; cheap to clone, stops with the test's runtime.
#[derive(Clone)]
pub struct MockUpstream {
    origin: String,
    shared: Arc<Shared>,
}

impl MockUpstream {
    /// Serves `models` to `valid_keys`; `revoked_keys` (and any other key) get 401.
    pub async fn start(
        models: &[&str],
        valid_keys: &[&str],
        revoked_keys: &[&str],
    ) -> MockUpstream {
        let shared = Arc::new(Shared {
            models: models.iter().map(|m| m.to_string()).collect(),
            state: Mutex::new(UpstreamState {
                valid_keys: valid_keys.iter().map(|k| k.to_string()).collect(),
                revoked_keys: revoked_keys.iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the mock upstream");
        let origin = format!("http://{}", listener.local_addr().expect("local address"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("mock upstream") });
        MockUpstream { origin, shared }
    }

    /// `http://127.0.0.1:<port>`: what a sub2api account's `credentials.base_url` holds.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `http://127.0.0.1:<port>/v1`: what a direct probe uses.
    pub fn v1_url(&self) -> String {
        format!("{}/v1", self.origin)
    }

    /// Revokes a key from now on (it answers 401 like a key deleted at the provider).
    pub fn revoke(&self, key: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.valid_keys.remove(key);
        state.revoked_keys.insert(key.to_string());
    }

    /// Requests per `"METHOD /path"`.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.shared.state.lock().unwrap().calls.clone()
    }

    /// Requests to one `"METHOD /path"`.
    pub fn calls_to(&self, route: &str) -> u64 {
        self.calls().get(route).copied().unwrap_or(0)
    }

    /// The models of the chat completions served (after any relay mapping).
    pub fn served_models(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().served_models.clone()
    }
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = format!("{method} {}", uri.path());
    let authorized = {
        let mut state = shared.state.lock().unwrap();
        *state.calls.entry(route.clone()).or_default() += 1;
        bearer(&headers).is_some_and(|key| state.valid_keys.contains(key))
    };
    if !authorized {
        // OpenAI's answer for a missing, wrong or revoked key; it never echoes the key.
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    match (method.as_str(), uri.path()) {
        ("GET", "/v1/models") => {
            let data: Vec<Value> = shared
                .models
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 1_686_935_002, "owned_by": "mock-upstream"}))
                .collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        ("POST", "/v1/chat/completions") => chat_completion(&shared, &body),
        _ => openai_error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({method} {})", uri.path()),
            "invalid_request_error",
            None,
        ),
    }
}

fn chat_completion(shared: &Shared, body: &[u8]) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        );
    };
    let model = request["model"].as_str().unwrap_or_default().to_string();
    if !shared.models.contains(&model) {
        return openai_error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
        );
    }
    shared
        .state
        .lock()
        .unwrap()
        .served_models
        .push(model.clone());
    if request["stream"].as_bool() == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let events = [
            chunk(json!({"role": "assistant", "content": "OK"}), Value::Null).to_string(),
            chunk(json!({}), json!("stop")).to_string(),
            "[DONE]".to_string(),
        ];
        let text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        return Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from(text))
            .expect("SSE response");
    }
    axum::Json(json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    }))
    .into_response()
}
