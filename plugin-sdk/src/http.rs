//! Outbound HTTP from a plugin, over standard `wasi:http` (feature `http`).
//!
//! The host sends every request by its outbound rules: only to the hosts the plugin was
//! granted (for a planner, those its pack declares AND the operator grants; for a relay-host
//! adapter, the registered host's origin), never to private addresses unless the operator
//! allows them, with no cross-origin redirect, and with the credential of that origin added
//! by the host. A request elsewhere fails with code [`HTTP_REFUSED`]. Credential, `Host` and
//! framing headers are forbidden to the plugin (`invalid_input`): it never holds a key it
//! could send elsewhere.
//!
//! ```ignore
//! use wharf_plugin_sdk::http::{self, Request};
//!
//! let answer = http::send(&Request::post_json("https://api.example.com/v1/chat/completions", &body))?;
//! let value: serde_json::Value = answer.json()?;
//! ```

use crate::PluginError;

/// Error code of a request the host refused to send (origin not granted, private address).
pub const HTTP_REFUSED: &str = "http_refused";
/// Error code of a request that was sent but got no usable answer (DNS, connect, timeout).
pub const HTTP_ERROR: &str = "http_error";
/// A response body larger than this is cut off and fails with `payload_too_large`.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, ...
    pub method: String,
    /// Absolute `http(s)://host[:port]/path[?query]` URL.
    pub url: String,
    /// Extra headers (credential, `Host` and framing headers are the host's: refused).
    pub headers: Vec<(String, String)>,
    /// Body bytes, if any.
    pub body: Option<Vec<u8>>,
    /// Time to the first byte of the answer, in milliseconds; the host caps it.
    pub timeout_ms: Option<u32>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// A `GET`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `DELETE`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new("DELETE", url)
    }

    /// A request with a JSON body (`Content-Type: application/json`).
    pub fn json(method: &str, url: impl Into<String>, body: &serde_json::Value) -> Self {
        Self::new(method, url)
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
    }

    /// A `POST` with a JSON body.
    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> Self {
        Self::json("POST", url, body)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    /// Sets the first-byte timeout.
    #[must_use]
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; `invalid_response` when it is not.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.body).map_err(|err| {
            PluginError::new(
                "invalid_response",
                format!(
                    "HTTP {} answer is not the JSON expected: {err}",
                    self.status
                ),
            )
        })
    }
}

/// The parts of an absolute URL that `wasi:http` takes separately.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlParts<'a> {
    https: bool,
    authority: &'a str,
    path_with_query: &'a str,
}

fn split_url(url: &str) -> Result<UrlParts<'_>, PluginError> {
    let bad = |why: &str| PluginError::invalid_input(format!("URL `{url}`: {why}"));
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("only http:// and https:// URLs"));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("needs a host and no user info"));
    }
    let path_with_query = if path.is_empty() { "/" } else { path };
    if path_with_query.starts_with('?') || path_with_query.contains('#') {
        return Err(bad("needs a path and no fragment"));
    }
    Ok(UrlParts {
        https,
        authority,
        path_with_query,
    })
}

/// Sends `request` and reads the whole answer (at most [`MAX_RESPONSE_BYTES`]).
pub fn send(request: &Request) -> Result<Response, PluginError> {
    let parts = split_url(&request.url)?;
    imp::send(request, &parts)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions,
        Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn method(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }

    fn failed(code: ErrorCode, url: &str) -> PluginError {
        match code {
            ErrorCode::HttpRequestDenied => PluginError::new(
                HTTP_REFUSED,
                format!("the host refused to send the request to {url} (not a granted origin)"),
            ),
            ErrorCode::DestinationIpProhibited => PluginError::new(
                HTTP_REFUSED,
                format!("the host refused to send the request to {url} (a private address)"),
            ),
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
                PluginError::new("timeout", format!("{url}: {code:?}")).retriable()
            }
            ErrorCode::HttpResponseBodySize(_) => {
                PluginError::new("payload_too_large", format!("{url}: answer too large"))
            }
            other => PluginError::new(HTTP_ERROR, format!("{url}: {other:?}")).retriable(),
        }
    }

    fn protocol(what: &str) -> PluginError {
        PluginError::new(HTTP_ERROR, format!("wasi:http refused {what}"))
    }

    pub(super) fn send(request: &Request, parts: &UrlParts<'_>) -> Result<Response, PluginError> {
        let entries: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec()))
            .collect();
        let headers = Fields::from_list(&entries)
            .map_err(|err| PluginError::invalid_input(format!("request headers: {err:?}")))?;
        let outgoing = OutgoingRequest::new(headers);
        outgoing
            .set_method(&method(&request.method))
            .map_err(|()| protocol("the method"))?;
        let scheme = if parts.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| protocol("the scheme"))?;
        outgoing
            .set_authority(Some(parts.authority))
            .map_err(|()| protocol("the authority"))?;
        outgoing
            .set_path_with_query(Some(parts.path_with_query))
            .map_err(|()| protocol("the path"))?;
        let body = outgoing.body().map_err(|()| protocol("the body"))?;
        let options = RequestOptions::new();
        if let Some(ms) = request.timeout_ms {
            let _ = options.set_first_byte_timeout(Some(u64::from(ms) * 1_000_000));
        }
        let pending = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|code| failed(code, &request.url))?;
        {
            let stream = body.write().map_err(|()| protocol("the body stream"))?;
            for chunk in request.body.as_deref().unwrap_or_default().chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|err| {
                    PluginError::new(HTTP_ERROR, format!("request body: {err:?}"))
                })?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|code| failed(code, &request.url))?;

        pending.subscribe().block();
        let answer = match pending.get() {
            Some(Ok(Ok(answer))) => answer,
            Some(Ok(Err(code))) => return Err(failed(code, &request.url)),
            Some(Err(())) | None => return Err(protocol("the response future")),
        };
        let status = answer.status();
        let headers = answer
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let incoming = answer.consume().map_err(|()| protocol("the answer body"))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| protocol("the answer stream"))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(bytes) => {
                        body.extend_from_slice(&bytes);
                        if body.len() > MAX_RESPONSE_BYTES {
                            return Err(PluginError::new(
                                "payload_too_large",
                                format!("{}: answer over {MAX_RESPONSE_BYTES} bytes", request.url),
                            ));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(err)) => {
                        return Err(PluginError::new(
                            HTTP_ERROR,
                            format!(
                                "{}: reading the answer: {}",
                                request.url,
                                err.to_debug_string()
                            ),
                        )
                        .retriable());
                    }
                }
            }
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;

    /// Native builds (unit tests) have no `wasi:http`.
    pub(super) fn send(request: &Request, _parts: &UrlParts<'_>) -> Result<Response, PluginError> {
        Err(PluginError::new(
            HTTP_ERROR,
            format!(
                "{}: wasi:http is only available inside a WebAssembly component",
                request.url
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_the_parts_wasi_http_takes() {
        let parts = split_url("https://api.example.com:8443/v1/chat/completions?x=1").unwrap();
        assert!(parts.https);
        assert_eq!(parts.authority, "api.example.com:8443");
        assert_eq!(parts.path_with_query, "/v1/chat/completions?x=1");
        assert_eq!(split_url("http://h").unwrap().path_with_query, "/");
        for bad in [
            "ftp://h/",
            "https://user@h/",
            "https:///x",
            "https://h/#f",
            "h/x",
        ] {
            assert_eq!(split_url(bad).unwrap_err().code, "invalid_input", "{bad}");
        }
    }
}
