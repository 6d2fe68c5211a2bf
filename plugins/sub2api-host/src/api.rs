//! Calls to sub2api's HTTP API and the reading of its answers.
//!
//! sub2api wraps every answer (`backend/internal/pkg/response/response.go`): success is
//! `{"code": 0, "message": "success", "data": …}`, a list is `data = {"items", "total", "page",
//! "page_size", "pages"}`, a handler error is `{"code": <status>, "message", "reason"?}`, and a
//! middleware error is `{"code": "<NAME>", "message"}` (`server/middleware/middleware.go`).

use serde_json::Value;
use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::http::{Request, Response};

/// Error codes of this adapter (besides the SDK's `http_refused` / `http_error`).
pub mod codes {
    /// The host refused the admin token (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The token is valid but may not do this (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// The resource does not exist (404, or gone from a listing).
    pub const NOT_FOUND: &str = "not_found";
    /// A resource with that name or pair already exists and is not ours to change (409).
    pub const CONFLICT: &str = "conflict";
    /// 429 from the host (retriable).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 5xx from the host (retriable).
    pub const HOST_ERROR: &str = "host_error";
    /// Any other 4xx: the host refused the request as sent.
    pub const HOST_REJECTED: &str = "host_rejected";
    /// The host refused to send a managed user's login token (`Authorization`) to the relay.
    pub const SESSION_REFUSED: &str = "session_refused";
    /// An answer that is not sub2api's envelope or lacks a field this adapter needs.
    pub const INVALID_RESPONSE: &str = "invalid_response";
}

/// Sends one request. The component uses the host's `wasi:http`; unit tests script answers.
pub trait Transport {
    fn send(&self, request: &Request) -> Result<Response, PluginError>;
}

/// The host's outbound HTTP (`wasi:http`, limited to the registered host's origin).
pub struct SdkHttp;

impl Transport for SdkHttp {
    fn send(&self, request: &Request) -> Result<Response, PluginError> {
        wharf_plugin_sdk::http::send(request)
    }
}

/// Per-request timeout (to the first byte of the answer).
const TIMEOUT_MS: u32 = 15_000;
/// The largest page sub2api serves (`response.ParsePagination` caps `page_size` at 100).
pub const PAGE_SIZE: usize = 100;
/// Listings stop after this many pages (10 000 resources): a bound, not an expected size.
const MAX_PAGES: usize = 100;

/// One sub2api host.
pub struct Api<'a, T: Transport> {
    transport: &'a T,
    base: String,
}

impl<'a, T: Transport> Api<'a, T> {
    pub fn new(transport: &'a T, base_url: &str) -> Self {
        Api {
            transport,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A call under `/api/v1/admin` (the host adds the admin key).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PluginError> {
        self.call(method, &format!("/api/v1/admin{path}"), body, None)
    }

    /// A call to any path; `session` is a user's login token for the user routes
    /// (`/api/v1/keys`), sent as `Authorization: Bearer`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Value, PluginError> {
        let url = format!("{}{path}", self.base);
        let mut request = match body {
            Some(body) => Request::json(method, url, body),
            None => Request::new(method, url),
        }
        .timeout_ms(TIMEOUT_MS);
        if let Some(token) = session {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let answer = self.transport.send(&request).map_err(|err| match session {
            // wasi:http refuses a forbidden header when the request is built.
            Some(_) if err.is("invalid_input") && err.message.contains("headers") => {
                PluginError::new(
                    codes::SESSION_REFUSED,
                    format!(
                        "{method} {path}: the host does not let this adapter send a user's session \
                     (`Authorization: Bearer <login token>`), which sub2api's user routes need: {}",
                        err.message
                    ),
                )
            }
            _ => err,
        })?;
        envelope(method, path, &answer)
    }

    /// Every item of a paginated admin listing (`path` may already carry a query).
    pub fn admin_items(&self, path: &str) -> Result<Vec<Value>, PluginError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        for page in 1..=MAX_PAGES {
            let data = self.admin(
                "GET",
                &format!("{path}{separator}page={page}&page_size={PAGE_SIZE}"),
                None,
            )?;
            let batch = data["items"].as_array().ok_or_else(|| {
                invalid(&format!("GET /api/v1/admin{path}: no `data.items` list"))
            })?;
            items.extend(batch.iter().cloned());
            let pages = data["pages"].as_u64().unwrap_or(1) as usize;
            if page >= pages || batch.is_empty() {
                break;
            }
        }
        Ok(items)
    }
}

pub fn invalid(message: &str) -> PluginError {
    PluginError::new(codes::INVALID_RESPONSE, message)
}

/// The `data` of a success envelope, or the host's error as a [`PluginError`].
pub fn envelope(method: &str, path: &str, answer: &Response) -> Result<Value, PluginError> {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    // Never echo a query string: it may carry a search term, never a secret, but keep it short.
    let route = path.split('?').next().unwrap_or(path);
    if !answer.is_success() {
        return Err(status_error(method, route, answer.status, &body));
    }
    match body.get("code") {
        Some(code) if code.as_i64() == Some(0) => {
            Ok(body.get("data").cloned().unwrap_or(Value::Null))
        }
        _ => Err(invalid(&format!(
            "{method} {route}: HTTP {} without sub2api's success envelope",
            answer.status
        ))),
    }
}

/// Maps an HTTP error answer to a stable code; the message keeps sub2api's own words.
pub fn status_error(method: &str, route: &str, status: u16, body: &Value) -> PluginError {
    let (code, retriable) = match status {
        401 => (codes::UNAUTHORIZED, false),
        403 => (codes::FORBIDDEN, false),
        404 => (codes::NOT_FOUND, false),
        409 => (codes::CONFLICT, false),
        429 => (codes::RATE_LIMITED, true),
        500.. => (codes::HOST_ERROR, true),
        _ => (codes::HOST_REJECTED, false),
    };
    // Middleware errors carry a string `code`, handler errors a `reason`.
    let name = body["reason"]
        .as_str()
        .or_else(|| body["code"].as_str())
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let said = body["message"]
        .as_str()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    PluginError::new(code, format!("{method} {route}: HTTP {status}{name}{said}"))
        .with_retriable(retriable)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn query_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn the_success_envelope_yields_its_data() {
        let data = envelope(
            "GET",
            "/x",
            &answer(
                200,
                json!({"code": 0, "message": "success", "data": {"version": "0.1.129"}}),
            ),
        );
        assert_eq!(data.unwrap()["version"], "0.1.129");
        let not_envelope =
            envelope("GET", "/x", &answer(200, json!({"version": "1"}))).unwrap_err();
        assert_eq!(not_envelope.code, codes::INVALID_RESPONSE);
    }

    #[test]
    fn host_errors_keep_their_names_and_a_stable_code() {
        let refused = envelope(
            "GET",
            "/api/v1/admin/system/version?x=1",
            &answer(
                401,
                json!({"code": "INVALID_ADMIN_KEY", "message": "Invalid admin API key"}),
            ),
        )
        .unwrap_err();
        assert_eq!(refused.code, codes::UNAUTHORIZED);
        assert_eq!(
            refused.message,
            "GET /api/v1/admin/system/version: HTTP 401 INVALID_ADMIN_KEY: Invalid admin API key"
        );
        let gone = envelope(
            "DELETE",
            "/api/v1/admin/accounts/7",
            &answer(
                404,
                json!({"code": 404, "message": "account not found", "reason": "ACCOUNT_NOT_FOUND"}),
            ),
        )
        .unwrap_err();
        assert_eq!(
            (gone.code.as_str(), gone.retriable),
            (codes::NOT_FOUND, false)
        );
        let busy = envelope("GET", "/x", &answer(503, Value::Null)).unwrap_err();
        assert_eq!(
            (busy.code.as_str(), busy.retriable),
            (codes::HOST_ERROR, true)
        );
    }

    /// wasi:http as the host builds it when `authorization` is a forbidden header.
    struct ForbidsAuthorization;

    impl Transport for ForbidsAuthorization {
        fn send(&self, request: &Request) -> Result<Response, PluginError> {
            if request.headers.iter().any(|(k, _)| k == "authorization") {
                return Err(PluginError::invalid_input("request headers: Forbidden"));
            }
            Ok(answer(
                200,
                json!({"code": 0, "message": "success", "data": {}}),
            ))
        }
    }

    #[test]
    fn a_refused_user_session_says_so() {
        let api = Api::new(&ForbidsAuthorization, "http://relay.test");
        assert!(api.admin("GET", "/users/1", None).is_ok());
        let refused = api
            .call("POST", "/api/v1/keys", None, Some("jwt"))
            .unwrap_err();
        assert_eq!(refused.code, codes::SESSION_REFUSED);
        assert!(!refused.message.contains("jwt"), "{}", refused.message);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("wharf-kimi k2@x"), "wharf-kimi%20k2%40x");
    }
}
