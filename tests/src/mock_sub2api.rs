//! A mock sub2api relay host, in process on loopback: the admin API an importer calls and the
//! gateway a probe key goes through.
//!
//! It follows the public repository `Wei-Shaw/sub2api` (paths under `backend/internal/`), pinned at
//! commit d3e73f1260ed7460350f4fd9e02763ec4cc29bb9, plus the later behaviour that seed 003 met
//! (see `docs/relay-hosts/sub2api-admin-api.md` for each route and JSON shape):
//! - envelope, pagination, errors: `pkg/response/response.go`, `server/middleware/middleware.go`;
//! - admin auth (`x-api-key` admin key, or a Bearer JWT): `server/middleware/admin_auth.go`;
//! - routes: `server/routes/{admin,auth,user,gateway}.go`;
//! - version: `handler/admin/system_handler.go`; groups: `handler/admin/group_handler.go`;
//!   accounts: `handler/admin/account_handler.go`, `service/admin_service.go` (an update replaces
//!   `credentials`/`extra` whole); users: `handler/admin/user_handler.go`; subscriptions:
//!   `handler/admin/subscription_handler.go`, `service/subscription_service.go`; login and user keys:
//!   `handler/auth_handler.go`, `handler/api_key_handler.go`, `service/api_key_service.go`;
//!   JSON of each object: `handler/dto/types.go`;
//! - gateway key auth (401/403 bodies, subscription and balance checks):
//!   `server/middleware/api_key_auth.go`; account choice (group + platform + active + schedulable +
//!   model_mapping, lowest priority then least recently used), failover and error bodies:
//!   `service/openai_gateway_service.go`, `handler/openai_gateway_handler.go`,
//!   `service/ratelimit_service.go` (an upstream 401/403 puts the account in `status: "error"`);
//! - `/v1/models` from the `credentials.model_mapping` keys of the group's schedulable accounts, else
//!   `openai.DefaultModels` (`handler/gateway_handler.go` later versions, `pkg/openai/constants.go`);
//! - the Responses routing of OpenAI API-key accounts by `extra.openai_responses_mode` /
//!   `extra.openai_responses_supported` (missing = Responses), from later versions.
//!
//! Test knobs (seed 003's real-run failures): a warm-up after account creation during which the
//! gateway answers `503 No available accounts`, a first gateway call per key answered 403 (the key
//! auth cache still holding the state from before the import), and the Responses routing. Hand
//! operations (delete or disable an account) and request counters serve the drift tests and the
//! benchmark.
// The request helpers answer the ready axum `Response` (the real handler's error envelope) as
// their error, as axum handlers do; boxing it would only add noise to a test mock.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// What `GET /api/v1/admin/system/version` reports (the version seed 003 ran against).
pub const MOCK_VERSION: &str = "0.1.129";

/// `openai.DefaultModels` (`pkg/openai/constants.go`): what `/v1/models` falls back to when no
/// account of the group has a `model_mapping`.
pub const OPENAI_DEFAULT_MODELS: &[(&str, &str, i64)] = &[
    ("gpt-5.2", "GPT-5.2", 1_733_875_200),
    ("gpt-5.2-codex", "GPT-5.2 Codex", 1_733_011_200),
    ("gpt-5.1-codex-max", "GPT-5.1 Codex Max", 1_730_419_200),
    ("gpt-5.1-codex", "GPT-5.1 Codex", 1_730_419_200),
    ("gpt-5.1", "GPT-5.1", 1_731_456_000),
    ("gpt-5.1-codex-mini", "GPT-5.1 Codex Mini", 1_730_419_200),
    ("gpt-5", "GPT-5", 1_722_988_800),
];

/// `maxAccountSwitches` of `handler/openai_gateway_handler.go`.
const MAX_ACCOUNT_SWITCHES: usize = 3;

#[derive(Clone, Debug)]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub platform: String,
    pub rate_multiplier: f64,
    pub is_exclusive: bool,
    pub status: String,
    pub subscription_type: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub platform: String,
    /// The account `type` (`apikey`, `oauth`, ...).
    pub kind: String,
    pub credentials: Map<String, Value>,
    pub extra: Map<String, Value>,
    pub group_ids: Vec<i64>,
    pub status: String,
    pub error_message: String,
    pub schedulable: bool,
    pub priority: i64,
    pub concurrency: i64,
    pub created_at: String,
    pub updated_at: String,
    /// When the gateway may first pick it (creation + warm-up); `None` = never.
    ready_at: Option<Instant>,
    /// Order of last use (0 = never used), for the least-recently-used choice.
    last_used: u64,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub notes: String,
    pub role: String,
    pub balance: f64,
    pub concurrency: i64,
    pub status: String,
    pub allowed_groups: Vec<i64>,
    pub created_at: String,
    pub updated_at: String,
    password: String,
}

#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub key: String,
    pub name: String,
    pub group_id: Option<i64>,
    pub status: String,
    pub created_at: String,
}

#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: i64,
    pub user_id: i64,
    pub group_id: i64,
    pub status: String,
    pub starts_at: String,
    pub expires_at: String,
    expires_unix: i64,
}

#[derive(Default)]
struct Store {
    next_id: i64,
    groups: BTreeMap<i64, Group>,
    accounts: BTreeMap<i64, Account>,
    users: BTreeMap<i64, User>,
    api_keys: BTreeMap<i64, ApiKey>,
    subscriptions: BTreeMap<i64, Subscription>,
    /// Login tokens → user id.
    sessions: HashMap<String, i64>,
    use_counter: u64,
    // Knobs.
    warmup: Duration,
    forbid_first_probe: bool,
    /// Keys whose one forbidden first call was served.
    forbidden_served: HashSet<i64>,
    route_to_responses: bool,
    // Counters: "METHOD /matched/path" → requests.
    admin_calls: BTreeMap<String, u64>,
    gateway_calls: BTreeMap<String, u64>,
}

impl Store {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }
}

struct Shared {
    admin_key: String,
    store: Mutex<Store>,
    http: reqwest::Client,
    entropy: AtomicU64,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("mock sub2api store")
    }

    /// A fresh random-looking hex string (sha256 of a counter, the time and the admin key).
    fn random_hex(&self, len: usize) -> String {
        let n = self.entropy.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let digest = Sha256::digest(format!("{n}:{nanos}:{}", self.admin_key));
        let mut hex = hex::encode(digest);
        hex.truncate(len);
        hex
    }
}

/// The running mock; cheap to clone, stops with the test's runtime.
#[derive(Clone)]
pub struct MockSub2api {
    origin: String,
    shared: Arc<Shared>,
}

impl MockSub2api {
    /// Starts on `127.0.0.1:0` with `admin_key` as the admin API key (`x-api-key`).
    pub async fn start(admin_key: &str) -> MockSub2api {
        let shared = Arc::new(Shared {
            admin_key: admin_key.to_string(),
            store: Mutex::new(Store::default()),
            http: reqwest::Client::new(),
            entropy: AtomicU64::new(0),
        });
        let admin = Router::new()
            .route("/system/version", get(version))
            .route("/groups", get(list_groups).post(create_group))
            .route("/groups/all", get(all_groups))
            .route(
                "/groups/{id}",
                get(get_group).put(update_group).delete(delete_group),
            )
            .route("/accounts", get(list_accounts).post(create_account))
            .route(
                "/accounts/{id}",
                get(get_account).put(update_account).delete(delete_account),
            )
            .route("/accounts/{id}/schedulable", post(set_schedulable))
            .route("/users", get(list_users).post(create_user))
            .route(
                "/users/{id}",
                get(get_user).put(update_user).delete(delete_user),
            )
            .route("/users/{id}/api-keys", get(user_api_keys))
            .route("/subscriptions", get(list_subscriptions))
            .route("/subscriptions/assign", post(assign_subscription))
            .route("/subscriptions/{id}", delete(revoke_subscription))
            .route("/subscriptions/{id}/extend", post(extend_subscription))
            .route_layer(from_fn_with_state(shared.clone(), admin_auth));
        let app = Router::new()
            .nest("/api/v1/admin", admin)
            .route("/api/v1/auth/login", post(login))
            .route("/api/v1/keys", get(list_keys).post(create_key))
            .route("/api/v1/keys/{id}", delete(delete_key).put(update_key))
            .route("/v1/models", get(gateway_models))
            .route("/v1/chat/completions", post(gateway_chat))
            .layer(from_fn_with_state(shared.clone(), count_request))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the mock sub2api");
        let origin = format!("http://{}", listener.local_addr().expect("local address"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("mock sub2api") });
        MockSub2api { origin, shared }
    }

    /// `http://127.0.0.1:<port>`: the host's base URL (admin API under `/api/v1/admin`).
    pub fn base_url(&self) -> &str {
        &self.origin
    }

    /// `<base>/v1`: the OpenAI-compatible gateway.
    pub fn gateway_url(&self) -> String {
        format!("{}/v1", self.origin)
    }

    pub fn admin_key(&self) -> &str {
        &self.shared.admin_key
    }

    /// Accounts created from now on are not picked by the gateway for `period` (it answers 503
    /// "No available accounts"); `Duration::MAX` = never.
    pub fn warmup(&self, period: Duration) {
        self.shared.store().warmup = period;
    }

    /// The first gateway call with each key answers 403, as sub2api's key-auth cache does while it
    /// still holds the key's state from before the subscription or balance was written.
    pub fn forbid_first_probe(&self, on: bool) {
        self.shared.store().forbid_first_probe = on;
    }

    /// When on, a chat completion for an OpenAI API-key account whose Responses flag is not
    /// explicitly false goes upstream to `/v1/responses` (sub2api's routing after its capability
    /// probe said `true`).
    pub fn route_openai_to_responses(&self, on: bool) {
        self.shared.store().route_to_responses = on;
    }

    /// Deletes an account by hand, as an operator in the sub2api UI would. False if unknown.
    pub fn delete_account(&self, id: i64) -> bool {
        self.shared.store().accounts.remove(&id).is_some()
    }

    /// Disables an account by hand (`status: "inactive"`). False if unknown.
    pub fn disable_account(&self, id: i64) -> bool {
        let mut store = self.shared.store();
        match store.accounts.get_mut(&id) {
            Some(account) => {
                account.status = "inactive".into();
                account.updated_at = now_rfc3339();
                true
            }
            None => false,
        }
    }

    pub fn accounts(&self) -> Vec<Account> {
        self.shared.store().accounts.values().cloned().collect()
    }

    pub fn groups(&self) -> Vec<Group> {
        self.shared.store().groups.values().cloned().collect()
    }

    pub fn users(&self) -> Vec<User> {
        self.shared.store().users.values().cloned().collect()
    }

    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.shared.store().api_keys.values().cloned().collect()
    }

    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.shared
            .store()
            .subscriptions
            .values()
            .cloned()
            .collect()
    }

    /// Admin-side requests (admin API, login, user keys) per `"METHOD /route"`.
    pub fn admin_calls(&self) -> BTreeMap<String, u64> {
        self.shared.store().admin_calls.clone()
    }

    pub fn admin_call_count(&self) -> u64 {
        self.shared.store().admin_calls.values().sum()
    }

    /// Gateway requests (`/v1/...`) per `"METHOD /route"`.
    pub fn gateway_calls(&self) -> BTreeMap<String, u64> {
        self.shared.store().gateway_calls.clone()
    }

    pub fn gateway_call_count(&self) -> u64 {
        self.shared.store().gateway_calls.values().sum()
    }

    pub fn reset_counters(&self) {
        let mut store = self.shared.store();
        store.admin_calls.clear();
        store.gateway_calls.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope and errors (`pkg/response/response.go`, `server/middleware/middleware.go`)

fn respond(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).expect("status"),
        axum::Json(body),
    )
        .into_response()
}

fn success(data: Value) -> Response {
    respond(200, json!({"code": 0, "message": "success", "data": data}))
}

/// `response.Paginated`.
fn paginated(items: Vec<Value>, page: usize, page_size: usize) -> Response {
    let total = items.len();
    let pages = total.div_ceil(page_size).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    success(
        json!({"items": slice, "total": total, "page": page, "page_size": page_size, "pages": pages}),
    )
}

/// `response.Error` (e.g. `BadRequest`).
fn error(status: u16, message: &str) -> Response {
    respond(status, json!({"code": status, "message": message}))
}

/// `response.ErrorFrom` of a service error (`infrastructure/errors`).
fn service_error(status: u16, reason: &str, message: &str) -> Response {
    respond(
        status,
        json!({"code": status, "message": message, "reason": reason}),
    )
}

/// `middleware.AbortWithError`.
fn abort(status: u16, code: &str, message: &str) -> Response {
    respond(status, json!({"code": code, "message": message}))
}

/// gin's `ShouldBindJSON` validation failure for one field.
fn bind_error(request: &str, field: &str, tag: &str) -> Response {
    error(
        400,
        &format!(
            "Invalid request: Key: '{request}.{field}' Error:Field validation for '{field}' failed on the '{tag}' tag"
        ),
    )
}

fn not_found(kind: &str) -> Response {
    let (reason, message) = match kind {
        "account" => ("ACCOUNT_NOT_FOUND", "account not found"),
        "group" => ("GROUP_NOT_FOUND", "group not found"),
        "user" => ("USER_NOT_FOUND", "user not found"),
        "subscription" => ("SUBSCRIPTION_NOT_FOUND", "subscription not found"),
        _ => ("API_KEY_NOT_FOUND", "api key not found"),
    };
    service_error(404, reason, message)
}

/// OpenAI-format gateway error (`errorResponse` of `handler/openai_gateway_handler.go`).
fn gateway_error(status: u16, kind: &str, message: &str) -> Response {
    respond(status, json!({"error": {"type": kind, "message": message}}))
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/// A JSON object body, or gin's 400.
fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(error(
            400,
            "Invalid request: json: cannot unmarshal non-object into Go value",
        )),
        Err(e) => Err(error(400, &format!("Invalid request: {e}"))),
    }
}

/// A typed view of one request body, with gin's error messages for wrong types.
struct Fields<'a> {
    request: &'a str,
    map: Map<String, Value>,
}

impl Fields<'_> {
    fn type_error(&self, field: &str, go_type: &str) -> Response {
        error(
            400,
            &format!(
                "Invalid request: json: cannot unmarshal {} into Go struct field {}.{field} of type {go_type}",
                json_kind(&self.map[field]),
                self.request
            ),
        )
    }

    fn present(&self, field: &str) -> bool {
        self.map.get(field).is_some_and(|v| !v.is_null())
    }

    fn string(&self, field: &str) -> Result<Option<String>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        match &self.map[field] {
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.type_error(field, "string")),
        }
    }

    /// A `binding:"required"` string: present and non-empty.
    fn required_string(&self, field: &str, go_field: &str) -> Result<String, Response> {
        match self.string(field)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(bind_error(self.request, go_field, "required")),
        }
    }

    fn one_of(
        &self,
        field: &str,
        go_field: &str,
        allowed: &[&str],
    ) -> Result<Option<String>, Response> {
        match self.string(field)? {
            Some(s) if s.is_empty() => Ok(None),
            Some(s) if allowed.contains(&s.as_str()) => Ok(Some(s)),
            Some(_) => Err(bind_error(self.request, go_field, "oneof")),
            None => Ok(None),
        }
    }

    fn int(&self, field: &str) -> Result<Option<i64>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        self.map[field]
            .as_i64()
            .map(Some)
            .ok_or_else(|| self.type_error(field, "int64"))
    }

    fn float(&self, field: &str) -> Result<Option<f64>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        self.map[field]
            .as_f64()
            .map(Some)
            .ok_or_else(|| self.type_error(field, "float64"))
    }

    fn boolean(&self, field: &str) -> Result<Option<bool>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        self.map[field]
            .as_bool()
            .map(Some)
            .ok_or_else(|| self.type_error(field, "bool"))
    }

    fn object(&self, field: &str) -> Result<Option<Map<String, Value>>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        match &self.map[field] {
            Value::Object(map) => Ok(Some(map.clone())),
            _ => Err(self.type_error(field, "map[string]interface {}")),
        }
    }

    fn ids(&self, field: &str) -> Result<Option<Vec<i64>>, Response> {
        if !self.present(field) {
            return Ok(None);
        }
        let Some(items) = self.map[field].as_array() else {
            return Err(self.type_error(field, "[]int64"));
        };
        items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| self.type_error(field, "[]int64")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn fields<'a>(request: &'a str, body: &Bytes) -> Result<Fields<'a>, Response> {
    Ok(Fields {
        request,
        map: parse_object(body)?,
    })
}

/// `response.ParsePagination`: `page` (default 1), `page_size` or `limit` (default 20, ≤ 100).
fn pagination(query: &HashMap<String, String>) -> (usize, usize) {
    let positive = |key: &str| {
        query
            .get(key)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|v| *v > 0)
    };
    let page = positive("page").unwrap_or(1);
    let size = if query.contains_key("page_size") {
        positive("page_size")
    } else {
        positive("limit")
    };
    (page, size.filter(|s| *s <= 100).unwrap_or(20))
}

fn parse_id(raw: &str, what: &str) -> Result<i64, Response> {
    raw.parse::<i64>()
        .map_err(|_| error(400, &format!("Invalid {what} ID")))
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// RFC 3339 UTC with seconds, like Go's `time.Time` JSON for the mock's purposes.
fn now_rfc3339() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64,
    )
}

fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------------------------------
// JSON of each object (`handler/dto/types.go`)

fn group_json(group: &Group, store: &Store) -> Value {
    let account_count = store
        .accounts
        .values()
        .filter(|a| a.group_ids.contains(&group.id))
        .count();
    json!({
        "id": group.id, "name": group.name, "description": group.description,
        "platform": group.platform, "rate_multiplier": group.rate_multiplier,
        "is_exclusive": group.is_exclusive, "status": group.status,
        "subscription_type": group.subscription_type,
        "daily_limit_usd": null, "weekly_limit_usd": null, "monthly_limit_usd": null,
        "created_at": group.created_at, "updated_at": group.updated_at,
        "account_count": account_count,
    })
}

fn account_json(account: &Account) -> Value {
    json!({
        "id": account.id, "name": account.name, "platform": account.platform,
        "type": account.kind, "credentials": account.credentials, "extra": account.extra,
        "proxy_id": null, "concurrency": account.concurrency, "priority": account.priority,
        "status": account.status, "error_message": account.error_message,
        "last_used_at": null, "created_at": account.created_at, "updated_at": account.updated_at,
        "schedulable": account.schedulable, "rate_limited_at": null, "rate_limit_reset_at": null,
        "overload_until": null, "session_window_start": null, "session_window_end": null,
        "session_window_status": "", "group_ids": account.group_ids,
    })
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id, "email": user.email, "username": user.username, "wechat": "",
        "notes": user.notes, "role": user.role, "balance": user.balance,
        "concurrency": user.concurrency, "status": user.status,
        "allowed_groups": user.allowed_groups, "created_at": user.created_at,
        "updated_at": user.updated_at,
    })
}

fn api_key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id, "user_id": key.user_id, "key": key.key, "name": key.name,
        "group_id": key.group_id, "status": key.status, "created_at": key.created_at,
        "updated_at": key.created_at,
    })
}

fn subscription_json(sub: &Subscription) -> Value {
    json!({
        "id": sub.id, "user_id": sub.user_id, "group_id": sub.group_id,
        "starts_at": sub.starts_at, "expires_at": sub.expires_at, "status": sub.status,
        "daily_window_start": null, "weekly_window_start": null, "monthly_window_start": null,
        "daily_usage_usd": 0.0, "weekly_usage_usd": 0.0, "monthly_usage_usd": 0.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Middleware

async fn count_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let route = format!("{} {path}", request.method());
    {
        let mut store = shared.store();
        let counters = if path.starts_with("/v1/") {
            &mut store.gateway_calls
        } else {
            &mut store.admin_calls
        };
        *counters.entry(route).or_default() += 1;
    }
    next.run(request).await
}

/// `server/middleware/admin_auth.go`: `x-api-key` first, then `Authorization: Bearer <JWT>`.
async fn admin_auth(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok())
        && !key.is_empty()
    {
        let matches = key.len() == shared.admin_key.len()
            && key
                .bytes()
                .zip(shared.admin_key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return abort(401, "INVALID_ADMIN_KEY", "Invalid admin API key");
        }
        return next.run(request).await;
    }
    if let Some(token) = bearer_token(headers) {
        if token.is_empty() {
            return abort(401, "UNAUTHORIZED", "Authorization required");
        }
        // The mock issues JWTs only to ordinary users (login below): never admin access.
        return if shared.store().sessions.contains_key(&token) {
            abort(403, "FORBIDDEN", "Admin access required")
        } else {
            abort(401, "INVALID_TOKEN", "Invalid token")
        };
    }
    abort(401, "UNAUTHORIZED", "Authorization required")
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// `server/middleware/jwt_auth.go` for the user routes.
fn session_user(shared: &Shared, headers: &HeaderMap) -> Result<i64, Response> {
    let Some(header) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(abort(
            401,
            "UNAUTHORIZED",
            "Authorization header is required",
        ));
    };
    let Some(token) = header.strip_prefix("Bearer ") else {
        return Err(abort(
            401,
            "INVALID_AUTH_HEADER",
            "Authorization header format must be 'Bearer {token}'",
        ));
    };
    let store = shared.store();
    let Some(&user_id) = store.sessions.get(token) else {
        return Err(abort(401, "INVALID_TOKEN", "Invalid token"));
    };
    match store.users.get(&user_id) {
        None => Err(abort(401, "USER_NOT_FOUND", "User not found")),
        Some(user) if user.status != "active" => {
            Err(abort(401, "USER_INACTIVE", "User account is not active"))
        }
        Some(_) => Ok(user_id),
    }
}

// ---------------------------------------------------------------------------------------------
// Admin: version, groups

async fn version() -> Response {
    success(json!({"version": MOCK_VERSION}))
}

async fn list_groups(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (page, size) = pagination(&query);
    let store = shared.store();
    let exclusive = query.get("is_exclusive").map(|v| v == "true");
    let items = store
        .groups
        .values()
        .filter(|g| {
            query
                .get("platform")
                .is_none_or(|p| p.is_empty() || *p == g.platform)
        })
        .filter(|g| {
            query
                .get("status")
                .is_none_or(|s| s.is_empty() || *s == g.status)
        })
        .filter(|g| exclusive.is_none_or(|e| e == g.is_exclusive))
        .map(|g| group_json(g, &store))
        .collect();
    paginated(items, page, size)
}

async fn all_groups(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = shared.store();
    let items: Vec<Value> = store
        .groups
        .values()
        .filter(|g| g.status == "active")
        .filter(|g| {
            query
                .get("platform")
                .is_none_or(|p| p.is_empty() || *p == g.platform)
        })
        .map(|g| group_json(g, &store))
        .collect();
    success(Value::Array(items))
}

async fn get_group(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "group") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let store = shared.store();
    match store.groups.get(&id) {
        Some(group) => success(group_json(group, &store)),
        None => not_found("group"),
    }
}

async fn create_group(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result: Result<Value, Response> = (|| {
        let f = fields("CreateGroupRequest", &body)?;
        let name = f.required_string("name", "Name")?;
        let platform = f
            .one_of("platform", "Platform", &["anthropic", "openai", "gemini"])?
            .unwrap_or_else(|| "anthropic".into());
        let subscription_type = f
            .one_of(
                "subscription_type",
                "SubscriptionType",
                &["standard", "subscription"],
            )?
            .unwrap_or_else(|| "standard".into());
        let mut store = shared.store();
        if store.groups.values().any(|g| g.name == name) {
            return Err(service_error(
                409,
                "GROUP_EXISTS",
                "group name already exists",
            ));
        }
        let now = now_rfc3339();
        let group = Group {
            id: store.id(),
            name,
            description: f.string("description")?.unwrap_or_default(),
            platform,
            rate_multiplier: f.float("rate_multiplier")?.unwrap_or(0.0),
            is_exclusive: f.boolean("is_exclusive")?.unwrap_or(false),
            status: "active".into(),
            subscription_type,
            created_at: now.clone(),
            updated_at: now,
        };
        let out = group_json(&group, &store);
        store.groups.insert(group.id, group);
        Ok(out)
    })();
    result.map_or_else(|r| r, success)
}

async fn update_group(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let id = parse_id(&id, "group")?;
        let f = fields("UpdateGroupRequest", &body)?;
        let platform = f.one_of("platform", "Platform", &["anthropic", "openai", "gemini"])?;
        let status = f.one_of("status", "Status", &["active", "inactive"])?;
        let subscription_type = f.one_of(
            "subscription_type",
            "SubscriptionType",
            &["standard", "subscription"],
        )?;
        let mut store = shared.store();
        let Some(group) = store.groups.get_mut(&id) else {
            return Err(not_found("group"));
        };
        if let Some(name) = f.string("name")?.filter(|n| !n.is_empty()) {
            group.name = name;
        }
        if let Some(description) = f.string("description")?.filter(|d| !d.is_empty()) {
            group.description = description;
        }
        if let Some(platform) = platform {
            group.platform = platform;
        }
        if let Some(rate) = f.float("rate_multiplier")? {
            group.rate_multiplier = rate;
        }
        if let Some(exclusive) = f.boolean("is_exclusive")? {
            group.is_exclusive = exclusive;
        }
        if let Some(status) = status {
            group.status = status;
        }
        if let Some(kind) = subscription_type {
            group.subscription_type = kind;
        }
        group.updated_at = now_rfc3339();
        let group = group.clone();
        Ok(group_json(&group, &store))
    })();
    result.map_or_else(|r| r, success)
}

async fn delete_group(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "group") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut store = shared.store();
    if store.groups.remove(&id).is_none() {
        return not_found("group");
    }
    // The account bindings go with the group; keys lose their group.
    for account in store.accounts.values_mut() {
        account.group_ids.retain(|g| *g != id);
    }
    for key in store.api_keys.values_mut() {
        if key.group_id == Some(id) {
            key.group_id = None;
        }
    }
    store.subscriptions.retain(|_, s| s.group_id != id);
    success(json!({"message": "Group deleted successfully"}))
}

// ---------------------------------------------------------------------------------------------
// Admin: accounts

async fn list_accounts(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (page, size) = pagination(&query);
    let filter = |key: &str, value: &str| {
        query
            .get(key)
            .is_none_or(|wanted| wanted.is_empty() || wanted == value)
    };
    let store = shared.store();
    let items = store
        .accounts
        .values()
        .filter(|a| filter("platform", &a.platform) && filter("type", &a.kind))
        .filter(|a| filter("status", &a.status))
        .filter(|a| query.get("search").is_none_or(|s| contains_ci(&a.name, s)))
        .map(|a| {
            let mut item = account_json(a);
            item["current_concurrency"] = json!(0);
            item
        })
        .collect();
    paginated(items, page, size)
}

async fn get_account(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "account") {
        Ok(id) => id,
        Err(r) => return r,
    };
    match shared.store().accounts.get(&id) {
        Some(account) => success(account_json(account)),
        None => not_found("account"),
    }
}

async fn create_account(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result: Result<Value, Response> = (|| {
        let f = fields("CreateAccountRequest", &body)?;
        let name = f.required_string("name", "Name")?;
        let platform = f.required_string("platform", "Platform")?;
        let kind = f.required_string("type", "Type")?;
        if !["oauth", "setup-token", "apikey"].contains(&kind.as_str()) {
            return Err(bind_error("CreateAccountRequest", "Type", "oneof"));
        }
        let Some(credentials) = f.object("credentials")? else {
            return Err(bind_error(
                "CreateAccountRequest",
                "Credentials",
                "required",
            ));
        };
        let extra = f.object("extra")?.unwrap_or_default();
        let group_ids = f.ids("group_ids")?.unwrap_or_default();
        let mut store = shared.store();
        let now = now_rfc3339();
        let ready_at = Instant::now().checked_add(store.warmup);
        let account = Account {
            id: store.id(),
            name,
            platform,
            kind,
            credentials,
            extra,
            group_ids,
            status: "active".into(),
            error_message: String::new(),
            schedulable: true,
            priority: f.int("priority")?.unwrap_or(0),
            concurrency: f.int("concurrency")?.unwrap_or(0),
            created_at: now.clone(),
            updated_at: now,
            ready_at,
            last_used: 0,
        };
        let out = account_json(&account);
        store.accounts.insert(account.id, account);
        Ok(out)
    })();
    result.map_or_else(|r| r, success)
}

async fn update_account(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let id = parse_id(&id, "account")?;
        let f = fields("UpdateAccountRequest", &body)?;
        let kind = f.one_of("type", "Type", &["oauth", "setup-token", "apikey"])?;
        let status = f.one_of("status", "Status", &["active", "inactive", "error"])?;
        let mut store = shared.store();
        let Some(account) = store.accounts.get_mut(&id) else {
            return Err(not_found("account"));
        };
        if let Some(name) = f.string("name")?.filter(|n| !n.is_empty()) {
            account.name = name;
        }
        if let Some(kind) = kind {
            account.kind = kind;
        }
        // `service/admin_service.go` UpdateAccount: a non-empty map replaces the stored one.
        if let Some(credentials) = f.object("credentials")?.filter(|c| !c.is_empty()) {
            account.credentials = credentials;
        }
        if let Some(extra) = f.object("extra")?.filter(|e| !e.is_empty()) {
            account.extra = extra;
        }
        if let Some(concurrency) = f.int("concurrency")? {
            account.concurrency = concurrency;
        }
        if let Some(priority) = f.int("priority")? {
            account.priority = priority;
        }
        if let Some(status) = status {
            account.status = status;
        }
        if let Some(group_ids) = f.ids("group_ids")? {
            account.group_ids = group_ids;
        }
        account.updated_at = now_rfc3339();
        Ok(account_json(account))
    })();
    result.map_or_else(|r| r, success)
}

async fn delete_account(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "account") {
        Ok(id) => id,
        Err(r) => return r,
    };
    if shared.store().accounts.remove(&id).is_none() {
        return not_found("account");
    }
    success(json!({"message": "Account deleted successfully"}))
}

async fn set_schedulable(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let id = parse_id(&id, "account")?;
        let f = fields("SetSchedulableRequest", &body)?;
        let schedulable = f.boolean("schedulable")?.unwrap_or(false);
        let mut store = shared.store();
        let Some(account) = store.accounts.get_mut(&id) else {
            return Err(not_found("account"));
        };
        account.schedulable = schedulable;
        account.updated_at = now_rfc3339();
        Ok(account_json(account))
    })();
    result.map_or_else(|r| r, success)
}

// ---------------------------------------------------------------------------------------------
// Admin: users and their keys, subscriptions

async fn list_users(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (page, size) = pagination(&query);
    let filter = |key: &str, value: &str| {
        query
            .get(key)
            .is_none_or(|wanted| wanted.is_empty() || wanted == value)
    };
    let items = shared
        .store()
        .users
        .values()
        .filter(|u| filter("status", &u.status) && filter("role", &u.role))
        .filter(|u| {
            query
                .get("search")
                .is_none_or(|s| contains_ci(&u.email, s) || contains_ci(&u.username, s))
        })
        .map(user_json)
        .collect();
    paginated(items, page, size)
}

async fn get_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "user") {
        Ok(id) => id,
        Err(r) => return r,
    };
    match shared.store().users.get(&id) {
        Some(user) => success(user_json(user)),
        None => not_found("user"),
    }
}

async fn create_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result: Result<Value, Response> = (|| {
        let f = fields("CreateUserRequest", &body)?;
        let email = f.required_string("email", "Email")?;
        if !email.contains('@') {
            return Err(bind_error("CreateUserRequest", "Email", "email"));
        }
        let password = f.required_string("password", "Password")?;
        if password.chars().count() < 6 {
            return Err(bind_error("CreateUserRequest", "Password", "min"));
        }
        let mut store = shared.store();
        if store.users.values().any(|u| u.email == email) {
            return Err(service_error(409, "EMAIL_EXISTS", "email already exists"));
        }
        let now = now_rfc3339();
        let user = User {
            id: store.id(),
            email,
            username: f.string("username")?.unwrap_or_default(),
            notes: f.string("notes")?.unwrap_or_default(),
            role: "user".into(),
            balance: f.float("balance")?.unwrap_or(0.0),
            concurrency: f.int("concurrency")?.unwrap_or(0),
            status: "active".into(),
            allowed_groups: f.ids("allowed_groups")?.unwrap_or_default(),
            created_at: now.clone(),
            updated_at: now,
            password,
        };
        let out = user_json(&user);
        store.users.insert(user.id, user);
        Ok(out)
    })();
    result.map_or_else(|r| r, success)
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let id = parse_id(&id, "user")?;
        let f = fields("UpdateUserRequest", &body)?;
        let status = f.one_of("status", "Status", &["active", "disabled"])?;
        let mut store = shared.store();
        let Some(user) = store.users.get_mut(&id) else {
            return Err(not_found("user"));
        };
        if let Some(password) = f.string("password")?.filter(|p| !p.is_empty()) {
            if password.chars().count() < 6 {
                return Err(bind_error("UpdateUserRequest", "Password", "min"));
            }
            user.password = password;
        }
        if let Some(username) = f.string("username")? {
            user.username = username;
        }
        if let Some(notes) = f.string("notes")? {
            user.notes = notes;
        }
        if let Some(balance) = f.float("balance")? {
            user.balance = balance;
        }
        if let Some(concurrency) = f.int("concurrency")? {
            user.concurrency = concurrency;
        }
        if let Some(status) = status {
            user.status = status;
        }
        if let Some(groups) = f.ids("allowed_groups")? {
            user.allowed_groups = groups;
        }
        user.updated_at = now_rfc3339();
        Ok(user_json(user))
    })();
    result.map_or_else(|r| r, success)
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id, "user") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut store = shared.store();
    if store.users.remove(&id).is_none() {
        return not_found("user");
    }
    store.api_keys.retain(|_, k| k.user_id != id);
    store.subscriptions.retain(|_, s| s.user_id != id);
    store.sessions.retain(|_, user| *user != id);
    success(json!({"message": "User deleted successfully"}))
}

async fn user_api_keys(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let id = match parse_id(&id, "user") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (page, size) = pagination(&query);
    let items = shared
        .store()
        .api_keys
        .values()
        .filter(|k| k.user_id == id)
        .map(api_key_json)
        .collect();
    paginated(items, page, size)
}

async fn list_subscriptions(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (page, size) = pagination(&query);
    let id_filter = |key: &str, value: i64| {
        query
            .get(key)
            .and_then(|v| v.parse::<i64>().ok())
            .is_none_or(|wanted| wanted == value)
    };
    let items = shared
        .store()
        .subscriptions
        .values()
        .filter(|s| id_filter("user_id", s.user_id) && id_filter("group_id", s.group_id))
        .filter(|s| {
            query
                .get("status")
                .is_none_or(|st| st.is_empty() || *st == s.status)
        })
        .map(subscription_json)
        .collect();
    paginated(items, page, size)
}

async fn assign_subscription(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result: Result<Value, Response> = (|| {
        let f = fields("AssignSubscriptionRequest", &body)?;
        let user_id = f
            .int("user_id")?
            .filter(|v| *v != 0)
            .ok_or_else(|| bind_error("AssignSubscriptionRequest", "UserID", "required"))?;
        let group_id = f
            .int("group_id")?
            .filter(|v| *v != 0)
            .ok_or_else(|| bind_error("AssignSubscriptionRequest", "GroupID", "required"))?;
        let days = f.int("validity_days")?.filter(|d| *d > 0).unwrap_or(30);
        let mut store = shared.store();
        // `service/subscription_service.go` AssignSubscription.
        let Some(group) = store.groups.get(&group_id) else {
            return Err(not_found("group"));
        };
        if group.subscription_type != "subscription" {
            return Err(service_error(
                400,
                "GROUP_NOT_SUBSCRIPTION_TYPE",
                "group is not a subscription type",
            ));
        }
        if !store.users.contains_key(&user_id) {
            return Err(not_found("user"));
        }
        if store
            .subscriptions
            .values()
            .any(|s| s.user_id == user_id && s.group_id == group_id)
        {
            return Err(service_error(
                409,
                "SUBSCRIPTION_ALREADY_EXISTS",
                "subscription already exists for this user and group",
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let sub = Subscription {
            id: store.id(),
            user_id,
            group_id,
            status: "active".into(),
            starts_at: rfc3339(now),
            expires_at: rfc3339(now + days * 86_400),
            expires_unix: now + days * 86_400,
        };
        let out = subscription_json(&sub);
        store.subscriptions.insert(sub.id, sub);
        Ok(out)
    })();
    result.map_or_else(|r| r, success)
}

async fn revoke_subscription(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&id, "subscription") {
        Ok(id) => id,
        Err(r) => return r,
    };
    if shared.store().subscriptions.remove(&id).is_none() {
        return not_found("subscription");
    }
    success(json!({"message": "Subscription revoked successfully"}))
}

/// `service/subscription_service.go` ExtendSubscription: later expiry; an expired one is active again.
async fn extend_subscription(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let id = parse_id(&id, "subscription")?;
        let f = fields("ExtendSubscriptionRequest", &body)?;
        let days = f
            .int("days")?
            .filter(|d| *d != 0)
            .ok_or_else(|| bind_error("ExtendSubscriptionRequest", "Days", "required"))?;
        if days < 1 {
            return Err(bind_error("ExtendSubscriptionRequest", "Days", "min"));
        }
        let mut store = shared.store();
        let Some(sub) = store.subscriptions.get_mut(&id) else {
            return Err(not_found("subscription"));
        };
        sub.expires_unix += days * 86_400;
        sub.expires_at = rfc3339(sub.expires_unix);
        if sub.status == "expired" {
            sub.status = "active".into();
        }
        Ok(subscription_json(sub))
    })();
    result.map_or_else(|r| r, success)
}

// ---------------------------------------------------------------------------------------------
// User side: login and the user's own keys

async fn login(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result: Result<Value, Response> = (|| {
        let f = fields("LoginRequest", &body)?;
        let email = f.required_string("email", "Email")?;
        let password = f.required_string("password", "Password")?;
        let user = shared
            .store()
            .users
            .values()
            .find(|u| u.email == email && u.password == password)
            .cloned()
            .ok_or_else(|| {
                service_error(401, "INVALID_CREDENTIALS", "invalid email or password")
            })?;
        let token = format!("mockjwt.{}", shared.random_hex(40));
        shared.store().sessions.insert(token.clone(), user.id);
        Ok(json!({"access_token": token, "token_type": "Bearer", "user": user_json(&user)}))
    })();
    result.map_or_else(|r| r, success)
}

async fn list_keys(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user_id = match session_user(&shared, &headers) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (page, size) = pagination(&query);
    let items = shared
        .store()
        .api_keys
        .values()
        .filter(|k| k.user_id == user_id)
        .map(api_key_json)
        .collect();
    paginated(items, page, size)
}

async fn create_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let user_id = session_user(&shared, &headers)?;
        let f = fields("CreateAPIKeyRequest", &body)?;
        let name = f.required_string("name", "Name")?;
        let group_id = f.int("group_id")?;
        let custom = f.string("custom_key")?.filter(|k| !k.is_empty());
        let key = match custom {
            Some(key) => key,
            None => format!("sk-{}", shared.random_hex(64)),
        };
        let mut store = shared.store();
        if let Some(group_id) = group_id {
            // `service/api_key_service.go` canUserBindGroup.
            let Some(group) = store.groups.get(&group_id) else {
                return Err(not_found("group"));
            };
            let user = &store.users[&user_id];
            let allowed = if group.subscription_type == "subscription" {
                store
                    .subscriptions
                    .values()
                    .any(|s| s.user_id == user_id && s.group_id == group_id && s.status == "active")
            } else {
                !group.is_exclusive || user.allowed_groups.contains(&group_id)
            };
            if !allowed {
                return Err(service_error(
                    403,
                    "GROUP_NOT_ALLOWED",
                    "user is not allowed to bind this group",
                ));
            }
        }
        if store.api_keys.values().any(|k| k.key == key) {
            return Err(service_error(
                409,
                "API_KEY_EXISTS",
                "api key already exists",
            ));
        }
        let api_key = ApiKey {
            id: store.id(),
            user_id,
            key,
            name,
            group_id,
            status: "active".into(),
            created_at: now_rfc3339(),
        };
        let out = api_key_json(&api_key);
        store.api_keys.insert(api_key.id, api_key);
        Ok(out)
    })();
    result.map_or_else(|r| r, success)
}

/// `PUT /api/v1/keys/:id {name, group_id, status}` (`handler/api_key_handler.go` Update).
async fn update_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let user_id = session_user(&shared, &headers)?;
        let id = parse_id(&id, "API key")?;
        let f = fields("UpdateAPIKeyRequest", &body)?;
        let status = f.one_of("status", "Status", &["active", "inactive"])?;
        let group_id = f.int("group_id")?;
        let mut store = shared.store();
        if let Some(group_id) = group_id
            && !store.groups.contains_key(&group_id)
        {
            return Err(not_found("group"));
        }
        let Some(key) = store.api_keys.get_mut(&id).filter(|k| k.user_id == user_id) else {
            return Err(not_found("api_key"));
        };
        if let Some(name) = f.string("name")?.filter(|n| !n.is_empty()) {
            key.name = name;
        }
        if group_id.is_some() {
            key.group_id = group_id;
        }
        if let Some(status) = status {
            key.status = status;
        }
        Ok(api_key_json(key))
    })();
    result.map_or_else(|r| r, success)
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result: Result<Value, Response> = (|| {
        let user_id = session_user(&shared, &headers)?;
        let id = parse_id(&id, "API key")?;
        let mut store = shared.store();
        match store.api_keys.get(&id) {
            Some(key) if key.user_id == user_id => {
                store.api_keys.remove(&id);
                Ok(json!({"message": "API key deleted successfully"}))
            }
            _ => Err(not_found("api_key")),
        }
    })();
    result.map_or_else(|r| r, success)
}

// ---------------------------------------------------------------------------------------------
// Gateway

/// What the key-auth middleware resolved: the key's group (if any).
struct Caller {
    group: Option<Group>,
}

/// `server/middleware/api_key_auth.go`, plus the forbidden-first-call knob.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    let presented = bearer_token(headers).filter(|k| !k.is_empty()).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let Some(presented) = presented else {
        return Err(abort(
            401,
            "API_KEY_REQUIRED",
            "API key is required in Authorization header (Bearer scheme), x-api-key header, x-goog-api-key header, or key/api_key query parameter",
        ));
    };
    let mut store = shared.store();
    let Some(key) = store
        .api_keys
        .values()
        .find(|k| k.key == presented)
        .cloned()
    else {
        return Err(abort(401, "INVALID_API_KEY", "Invalid API key"));
    };
    if key.status != "active" {
        return Err(abort(401, "API_KEY_DISABLED", "API key is disabled"));
    }
    let Some(user) = store.users.get(&key.user_id).cloned() else {
        return Err(abort(
            401,
            "USER_NOT_FOUND",
            "User associated with API key not found",
        ));
    };
    if user.status != "active" {
        return Err(abort(401, "USER_INACTIVE", "User account is not active"));
    }
    let group = key.group_id.and_then(|g| store.groups.get(&g).cloned());
    let subscription_group = group
        .as_ref()
        .is_some_and(|g| g.subscription_type == "subscription");
    let subscription_missing = || {
        (
            403,
            "SUBSCRIPTION_NOT_FOUND",
            "No active subscription found for this group",
        )
    };
    let no_balance = || (403, "INSUFFICIENT_BALANCE", "Insufficient account balance");
    if store.forbid_first_probe && store.forbidden_served.insert(key.id) {
        let (status, code, message) = if subscription_group {
            subscription_missing()
        } else {
            no_balance()
        };
        return Err(abort(status, code, message));
    }
    if subscription_group {
        let group_id = key.group_id.unwrap_or_default();
        let active = store
            .subscriptions
            .values()
            .any(|s| s.user_id == user.id && s.group_id == group_id && s.status == "active");
        if !active {
            let (status, code, message) = subscription_missing();
            return Err(abort(status, code, message));
        }
    } else if user.balance <= 0.0 {
        let (status, code, message) = no_balance();
        return Err(abort(status, code, message));
    }
    Ok(Caller { group })
}

/// Accounts the scheduler may list for the caller's group: same platform, `status = active`,
/// `schedulable` (`ListSchedulableByGroupIDAndPlatform`).
fn schedulable<'a>(store: &'a Store, group: Option<&Group>) -> Vec<&'a Account> {
    let platform = group.map_or("openai", |g| g.platform.as_str());
    store
        .accounts
        .values()
        .filter(|a| a.platform == platform && a.status == "active" && a.schedulable)
        .filter(|a| match group {
            Some(g) => a.group_ids.contains(&g.id),
            None => true,
        })
        .collect()
}

fn model_mapping(account: &Account) -> BTreeMap<String, String> {
    account
        .credentials
        .get("model_mapping")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

async fn gateway_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&shared, &headers) {
        Ok(caller) => caller,
        Err(r) => return r,
    };
    let store = shared.store();
    let mut models: Vec<String> = schedulable(&store, caller.group.as_ref())
        .into_iter()
        .flat_map(|a| model_mapping(a).into_keys())
        .collect();
    models.sort();
    models.dedup();
    let data: Vec<Value> = if models.is_empty() {
        OPENAI_DEFAULT_MODELS
            .iter()
            .map(|(id, name, created)| {
                json!({"id": id, "object": "model", "created": created, "owned_by": "openai",
                       "type": "model", "display_name": name})
            })
            .collect()
    } else {
        models
            .iter()
            .map(|id| {
                json!({"id": id, "type": "model", "display_name": id,
                       "created_at": "2024-01-01T00:00:00Z"})
            })
            .collect()
    };
    respond(200, json!({"object": "list", "data": data}))
}

/// The later sub2api's `shouldUseResponsesAPI(extra)`: the mode wins, then the bool, and a missing
/// flag means Responses.
fn uses_responses_api(extra: &Map<String, Value>) -> bool {
    match extra.get("openai_responses_mode").and_then(Value::as_str) {
        Some("force_chat_completions") => return false,
        Some("force_responses") => return true,
        _ => {}
    }
    extra
        .get("openai_responses_supported")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// `buildOpenAIEndpointURL`: a base ending in `/v<N>` gets the path without `/v1`.
fn upstream_url(base: &str, endpoint: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    let last = base.rsplit('/').next().unwrap_or_default();
    let versioned =
        last.len() >= 2 && last.starts_with('v') && last[1..].chars().all(|c| c.is_ascii_digit());
    if versioned {
        format!("{base}{}", endpoint.trim_start_matches("/v1"))
    } else {
        format!("{base}{endpoint}")
    }
}

/// A Responses API result turned back into a chat completion (sub2api converts for chat clients).
fn chat_from_responses(model: &str, upstream: &Value) -> Value {
    let text: String = upstream["output"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|item| item["content"].as_array().into_iter().flatten())
        .filter_map(|part| part["text"].as_str())
        .collect();
    json!({
        "id": upstream["id"], "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    })
}

async fn gateway_chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate(&shared, &headers) {
        Ok(caller) => caller,
        Err(r) => return r,
    };
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return gateway_error(400, "invalid_request_error", "Failed to parse request body");
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut failed: HashSet<i64> = HashSet::new();
    let mut last_status: u16 = 0;
    loop {
        // `SelectAccountForModel`: lowest priority value, then least recently used.
        let chosen = {
            let mut store = shared.store();
            let now = Instant::now();
            let candidate = schedulable(&store, caller.group.as_ref())
                .into_iter()
                .filter(|a| !failed.contains(&a.id))
                .filter(|a| a.ready_at.is_some_and(|ready| ready <= now))
                .filter(|a| {
                    let mapping = model_mapping(a);
                    model.is_empty() || mapping.is_empty() || mapping.contains_key(&model)
                })
                .min_by_key(|a| (a.priority, a.last_used, a.id))
                .map(|a| a.id);
            candidate.map(|id| {
                store.use_counter += 1;
                let counter = store.use_counter;
                let route_to_responses = store.route_to_responses;
                let account = store.accounts.get_mut(&id).expect("chosen account");
                account.last_used = counter;
                let responses = route_to_responses
                    && account.kind == "apikey"
                    && uses_responses_api(&account.extra);
                (account.clone(), responses)
            })
        };
        let Some((account, responses)) = chosen else {
            if !failed.is_empty() {
                return exhausted(last_status);
            }
            let message = if model.is_empty() {
                "No available accounts: no available OpenAI accounts".to_string()
            } else {
                format!(
                    "No available accounts: no available OpenAI accounts supporting model: {model}"
                )
            };
            return gateway_error(503, "api_error", &message);
        };
        let base = account
            .credentials
            .get("base_url")
            .and_then(Value::as_str)
            .unwrap_or("https://api.openai.com");
        let api_key = account
            .credentials
            .get("api_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let upstream_model = model_mapping(&account)
            .get(&model)
            .cloned()
            .unwrap_or_else(|| model.clone());
        let (url, payload) = if responses {
            let input = request.get("messages").cloned().unwrap_or(Value::Null);
            (
                upstream_url(base, "/v1/responses"),
                json!({"model": upstream_model, "input": input}),
            )
        } else {
            let mut payload = request.clone();
            payload.insert("model".into(), json!(upstream_model));
            (
                upstream_url(base, "/v1/chat/completions"),
                Value::Object(payload),
            )
        };
        let sent = shared
            .http
            .post(&url)
            .bearer_auth(api_key)
            .json(&payload)
            .send()
            .await;
        let Ok(upstream) = sent else {
            return gateway_error(502, "upstream_error", "Upstream request failed");
        };
        let status = upstream.status().as_u16();
        let content_type = upstream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let bytes = upstream.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            if responses {
                let parsed = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
                return respond(200, chat_from_responses(&model, &parsed));
            }
            return Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(axum::body::Body::from(bytes))
                .expect("gateway response");
        }
        // `shouldFailoverUpstreamError` and `RateLimitService.HandleUpstreamError`.
        let failover = matches!(status, 401 | 403 | 429 | 529) || status >= 500;
        if !failover {
            return gateway_error(502, "upstream_error", "Upstream request failed");
        }
        if matches!(status, 401 | 403) {
            let reason = if status == 401 {
                "Authentication failed (401): invalid or expired credentials"
            } else {
                "Access forbidden (403): account may be suspended or lack permissions"
            };
            if let Some(stored) = shared.store().accounts.get_mut(&account.id) {
                stored.status = "error".into();
                stored.error_message = reason.into();
            }
        }
        last_status = status;
        failed.insert(account.id);
        if failed.len() > MAX_ACCOUNT_SWITCHES {
            return exhausted(last_status);
        }
    }
}

/// `handleFailoverExhausted` → `mapUpstreamError`.
fn exhausted(status: u16) -> Response {
    match status {
        401 => gateway_error(
            502,
            "upstream_error",
            "Upstream authentication failed, please contact administrator",
        ),
        403 => gateway_error(
            502,
            "upstream_error",
            "Upstream access forbidden, please contact administrator",
        ),
        429 => gateway_error(
            429,
            "rate_limit_error",
            "Upstream rate limit exceeded, please retry later",
        ),
        529 => gateway_error(
            503,
            "upstream_error",
            "Upstream service overloaded, please retry later",
        ),
        500 | 502 | 503 | 504 => gateway_error(
            502,
            "upstream_error",
            "Upstream service temporarily unavailable",
        ),
        _ => gateway_error(502, "upstream_error", "Upstream request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_upstream::MockUpstream;

    const ADMIN: &str = "admin-0123456789abcdef";
    const GOOD: &str = "sk-upstream-good-0001";
    const REVOKED: &str = "sk-upstream-revoked-0002";

    async fn call(
        method: reqwest::Method,
        url: String,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut builder = reqwest::Client::new().request(method, url);
        if let Some((header, value)) = auth {
            builder = builder.header(header, value);
        }
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn admin(
        host: &MockSub2api,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}/api/v1/admin{path}", host.base_url());
        call(method, url, Some(("x-api-key", ADMIN)), body).await
    }

    /// A standard openai group, an account with the key, and a funded user's key in the group.
    async fn import(host: &MockSub2api, upstream: &MockUpstream, key: &str) -> (i64, String) {
        let (_, group) = admin(
            host,
            reqwest::Method::POST,
            "/groups",
            Some(json!({"name": format!("g-{key}"), "platform": "openai"})),
        )
        .await;
        let group_id = group["data"]["id"].as_i64().unwrap();
        let (status, account) = admin(
            host,
            reqwest::Method::POST,
            "/accounts",
            Some(json!({
                "name": format!("acct-{key}"), "platform": "openai", "type": "apikey",
                "credentials": {"api_key": key, "base_url": upstream.origin(),
                                "model_mapping": {"kimi-k2.6": "kimi-k2.6"}},
                "group_ids": [group_id]
            })),
        )
        .await;
        assert_eq!(status, 200, "{account}");
        let email = format!("u-{key}@managed.local");
        let (status, _) = admin(
            host,
            reqwest::Method::POST,
            "/users",
            Some(json!({"email": email, "password": "secret-pass", "balance": 10.0})),
        )
        .await;
        assert_eq!(status, 200);
        let (_, login) = call(
            reqwest::Method::POST,
            format!("{}/api/v1/auth/login", host.base_url()),
            None,
            Some(json!({"email": email, "password": "secret-pass"})),
        )
        .await;
        let token = login["data"]["access_token"].as_str().unwrap().to_string();
        let bearer = format!("Bearer {token}");
        let (status, created) = call(
            reqwest::Method::POST,
            format!("{}/api/v1/keys", host.base_url()),
            Some(("authorization", &bearer)),
            Some(json!({"name": "probe", "group_id": group_id})),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        (
            account["data"]["id"].as_i64().unwrap(),
            created["data"]["key"].as_str().unwrap().to_string(),
        )
    }

    async fn chat(host: &MockSub2api, key: &str) -> (u16, Value) {
        let bearer = format!("Bearer {key}");
        call(
            reqwest::Method::POST,
            format!("{}/chat/completions", host.gateway_url()),
            Some(("authorization", &bearer)),
            Some(json!({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})),
        )
        .await
    }

    #[tokio::test]
    async fn mock_sub2api_refuses_missing_and_wrong_admin_keys() {
        let host = MockSub2api::start(ADMIN).await;
        let url = format!("{}/api/v1/admin/accounts", host.base_url());
        let (status, body) = call(reqwest::Method::GET, url.clone(), None, None).await;
        assert_eq!(
            (status, body),
            (
                401,
                json!({"code": "UNAUTHORIZED", "message": "Authorization required"})
            )
        );
        let (status, body) = call(
            reqwest::Method::GET,
            url,
            Some(("x-api-key", "wrong")),
            None,
        )
        .await;
        assert_eq!(
            (status, body),
            (
                401,
                json!({"code": "INVALID_ADMIN_KEY", "message": "Invalid admin API key"})
            )
        );
        let (status, body) = admin(&host, reqwest::Method::GET, "/system/version", None).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["version"], MOCK_VERSION);
    }

    #[tokio::test]
    async fn mock_sub2api_creates_searches_updates_and_deletes_accounts() {
        let host = MockSub2api::start(ADMIN).await;
        let (status, body) = admin(
            &host,
            reqwest::Method::POST,
            "/accounts",
            Some(json!({"name": "x"})),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("'Platform' failed on the 'required' tag")
        );
        for name in ["wharf-kimi-1", "wharf-kimi-2", "other"] {
            let (status, _) = admin(
                &host,
                reqwest::Method::POST,
                "/accounts",
                Some(json!({
                    "name": name, "platform": "openai", "type": "apikey",
                    "credentials": {"api_key": "k", "base_url": "http://127.0.0.1:9"},
                    "extra": {"openai_responses_supported": true}
                })),
            )
            .await;
            assert_eq!(status, 200);
        }
        let (_, page) = admin(
            &host,
            reqwest::Method::GET,
            "/accounts?search=WHARF-kimi&page_size=1",
            None,
        )
        .await;
        assert_eq!(page["data"]["total"], 2);
        assert_eq!(page["data"]["pages"], 2);
        assert_eq!(page["data"]["items"].as_array().unwrap().len(), 1);
        let id = page["data"]["items"][0]["id"].as_i64().unwrap();
        // An update replaces `extra` whole.
        let (_, updated) = admin(
            &host,
            reqwest::Method::PUT,
            &format!("/accounts/{id}"),
            Some(json!({
                "extra": {"openai_responses_mode": "force_chat_completions"}, "status": "inactive"
            })),
        )
        .await;
        assert_eq!(
            updated["data"]["extra"],
            json!({"openai_responses_mode": "force_chat_completions"})
        );
        assert_eq!(updated["data"]["status"], "inactive");
        let (status, _) = admin(
            &host,
            reqwest::Method::DELETE,
            &format!("/accounts/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = admin(
            &host,
            reqwest::Method::DELETE,
            &format!("/accounts/{id}"),
            None,
        )
        .await;
        assert_eq!(
            (status, body["reason"].clone()),
            (404, json!("ACCOUNT_NOT_FOUND"))
        );
        assert_eq!(host.accounts().len(), 2);
        assert_eq!(host.admin_calls()["DELETE /api/v1/admin/accounts/{id}"], 2);
    }

    #[tokio::test]
    async fn mock_sub2api_gateway_forwards_to_the_account_upstream() {
        let upstream = MockUpstream::start(&["kimi-k2.6"], &[GOOD], &[REVOKED]).await;
        let host = MockSub2api::start(ADMIN).await;
        let (_, key) = import(&host, &upstream, GOOD).await;
        let bearer = format!("Bearer {key}");
        let (status, models) = call(
            reqwest::Method::GET,
            format!("{}/models", host.gateway_url()),
            Some(("authorization", &bearer)),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(models["data"][0]["id"], "kimi-k2.6");
        let (status, body) = chat(&host, &key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "OK");
        assert_eq!(upstream.calls_to("POST /v1/chat/completions"), 1);

        // A revoked upstream key: 502 upstream_error, and the account goes to `error`.
        let (account_id, revoked_key) = import(&host, &upstream, REVOKED).await;
        let (status, body) = chat(&host, &revoked_key).await;
        assert_eq!(status, 502);
        assert_eq!(
            body["error"]["message"],
            "Upstream authentication failed, please contact administrator"
        );
        let account = host
            .accounts()
            .into_iter()
            .find(|a| a.id == account_id)
            .unwrap();
        assert_eq!(account.status, "error");

        // Routed to the Responses API the upstream lacks: 502 upstream_error; forcing chat
        // completions through `extra` repairs it.
        host.route_openai_to_responses(true);
        let (status, body) = chat(&host, &key).await;
        assert_eq!(
            (status, body["error"]["type"].clone()),
            (502, json!("upstream_error"))
        );
        assert_eq!(upstream.calls_to("POST /v1/responses"), 1);
        let good_id = host
            .accounts()
            .into_iter()
            .find(|a| a.name == format!("acct-{GOOD}"))
            .unwrap()
            .id;
        admin(
            &host,
            reqwest::Method::PUT,
            &format!("/accounts/{good_id}"),
            Some(json!({"extra": {"openai_responses_supported": false}})),
        )
        .await;
        assert_eq!(chat(&host, &key).await.0, 200);
    }

    #[tokio::test]
    async fn mock_sub2api_warms_up_then_serves_and_forbids_the_first_call() {
        let upstream = MockUpstream::start(&["kimi-k2.6"], &[GOOD], &[]).await;
        let host = MockSub2api::start(ADMIN).await;
        host.warmup(Duration::from_millis(300));
        host.forbid_first_probe(true);
        let (_, key) = import(&host, &upstream, GOOD).await;
        let (status, body) = chat(&host, &key).await;
        assert_eq!(
            (status, body["code"].clone()),
            (403, json!("INSUFFICIENT_BALANCE"))
        );
        let (status, body) = chat(&host, &key).await;
        assert_eq!(status, 503);
        assert_eq!(
            body["error"]["message"],
            "No available accounts: no available OpenAI accounts supporting model: kimi-k2.6"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(chat(&host, &key).await.0, 200);
        assert_eq!(host.gateway_call_count(), 3);

        // Never recovers.
        let stuck = MockSub2api::start(ADMIN).await;
        stuck.warmup(Duration::MAX);
        let (_, key) = import(&stuck, &upstream, GOOD).await;
        assert_eq!(chat(&stuck, &key).await.0, 503);
    }

    #[test]
    fn mock_sub2api_helpers_follow_sub2api() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_547_200), "2025-12-01T00:00:00Z");
        assert_eq!(
            upstream_url("http://h:1", "/v1/responses"),
            "http://h:1/v1/responses"
        );
        assert_eq!(
            upstream_url("http://h:1/v1/", "/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert!(uses_responses_api(&Map::new()));
        let mut extra = Map::new();
        extra.insert("openai_responses_supported".into(), json!(false));
        assert!(!uses_responses_api(&extra));
        extra.insert("openai_responses_mode".into(), json!("force_responses"));
        assert!(uses_responses_api(&extra));
    }
}
