//! Plugins' outbound HTTP: standard `wasi:http`, sent by the host under the [`outbound`]
//! rules.
//!
//! Only the planner and relay-host worlds are linked with `wasi:http`, and each call gets an
//! [`HttpGrant`]: the origins it may reach, each with the credential the host adds there.
//! A planner's are the hosts its pack declares AND the operator grants; a relay-host
//! adapter's is the registered host's origin alone. Everything else follows from sending the
//! request with [`OutboundClient::request`]: credentials only to their origin (and never
//! from the plugin: credential, `Host` and framing headers are forbidden to it), no
//! cross-origin redirect, private addresses only where the grant's [`Reach`] allows.
//!
//! [`outbound`]: crate::outbound

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::outbound::client::is_reserved_header;
use crate::outbound::url::check_path;
use crate::outbound::{BaseUrl, Credential, OutboundClient, Reach, refusal};

/// A request body a plugin may send, and an answer it may receive.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Per request, unless the call's wall-clock bound ends sooner.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One origin a call may reach.
#[derive(Clone)]
pub struct GrantedOrigin {
    pub base: BaseUrl,
    /// Added by the host to every request at this origin.
    pub credential: Option<Credential>,
}

/// What one plugin call may reach over `wasi:http`.
#[derive(Clone)]
pub struct HttpGrant {
    client: Arc<OutboundClient>,
    reach: Reach,
    origins: Vec<GrantedOrigin>,
    timeout: Duration,
}

impl HttpGrant {
    pub fn new(client: Arc<OutboundClient>, reach: Reach, origins: Vec<GrantedOrigin>) -> Self {
        Self {
            client,
            reach,
            origins,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// A pack's grant: the hosts (`host[:port]`) that its manifest declares AND the operator
    /// grants, over http and https; `endpoint`'s credential goes to the endpoint's origin
    /// only, and only when that origin is among them.
    pub fn for_pack(
        client: Arc<OutboundClient>,
        reach: Reach,
        declared: &[String],
        granted: &[String],
        endpoint: Option<(&BaseUrl, Credential)>,
    ) -> Self {
        let mut origins: Vec<GrantedOrigin> = declared
            .iter()
            .filter(|host| granted.contains(host))
            .flat_map(|host| ["https", "http"].map(|scheme| format!("{scheme}://{host}")))
            .filter_map(|url| BaseUrl::parse(&url).ok())
            .map(|base| GrantedOrigin {
                base,
                credential: None,
            })
            .collect();
        if let Some((endpoint, credential)) = endpoint {
            for origin in &mut origins {
                if crate::outbound::url::same_origin(origin.base.as_url(), endpoint.as_url()) {
                    origin.credential = Some(credential.clone());
                }
            }
        }
        Self::new(client, reach, origins)
    }

    /// The origins, for messages (`https://api.example.com, http://127.0.0.1:9000`).
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .origins
            .iter()
            .map(|o| o.base.as_url().origin().ascii_serialization())
            .collect();
        if names.is_empty() {
            "no origin".into()
        } else {
            names.join(", ")
        }
    }
}

/// The `wasi:http` hooks of one call: the grant (none: every request is denied) and the
/// call's wall-clock deadline, which no request outlives.
pub struct PluginHttp {
    pub(super) grant: Option<HttpGrant>,
    pub(super) deadline: Instant,
    /// What was refused, for the call's log (the plugin only sees `HTTP-request-denied`).
    pub(super) log: Arc<super::logs::PackLog>,
    pub(super) owner: Option<Arc<str>>,
    pub(super) pack_id: Arc<str>,
    pub(super) component: Arc<str>,
    pub(super) generation: u64,
}

impl PluginHttp {
    fn refuse(&self, why: &str) -> HttpError {
        self.log.push(
            self.owner.as_deref(),
            &self.pack_id,
            &self.component,
            self.generation,
            "warn",
            &format!("wasi:http request refused: {why}"),
        );
        tracing::warn!(pack = %self.pack_id, component = %self.component, "wasi:http request refused: {why}");
        HttpError::HttpRequestDenied
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for PluginHttp {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        // Credentials are the host's to add; routing and framing headers could send the
        // request elsewhere or split it.
        Arc::new(|name| {
            wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
                || is_reserved_header(name.as_str())
        })
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let checked = self.check(&request);
        let timeout = self.request_timeout(options.as_ref());
        Box::new(async move {
            let (grant, origin, url) = checked?;
            send(grant, origin, url, request, timeout).await
        })
    }
}

impl PluginHttp {
    /// The grant and origin the request is for, or why it may not go.
    fn check(
        &self,
        request: &http::Request<WasiBody>,
    ) -> Result<(HttpGrant, GrantedOrigin, reqwest::Url), HttpError> {
        let Some(grant) = &self.grant else {
            return Err(self.refuse("this call may not send HTTP requests"));
        };
        let url = reqwest::Url::parse(&request.uri().to_string())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let Some(origin) = grant
            .origins
            .iter()
            .find(|o| crate::outbound::url::same_origin(o.base.as_url(), &url))
        else {
            return Err(self.refuse(&format!(
                "{} is not a granted origin (granted: {})",
                url.origin().ascii_serialization(),
                grant.describe()
            )));
        };
        // The path as the plugin wrote it (URL parsing would already have folded `..`).
        let raw_path = request.uri().path();
        if let Err(rule) = check_path(raw_path) {
            return Err(self.refuse(&format!("path {raw_path:?}: {rule}")));
        }
        Ok((grant.clone(), origin.clone(), url))
    }

    fn request_timeout(&self, options: Option<&RequestOptions>) -> Duration {
        let asked = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let grant = self
            .grant
            .as_ref()
            .map_or(DEFAULT_REQUEST_TIMEOUT, |g| g.timeout);
        asked
            .min(grant)
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }
}

async fn send(
    grant: HttpGrant,
    origin: GrantedOrigin,
    url: reqwest::Url,
    request: http::Request<WasiBody>,
    timeout: Duration,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|_| HttpError::HttpRequestBodySize(Some(MAX_REQUEST_BYTES as u64)))?
        .to_bytes();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let builder = grant
        .client
        .request(
            &origin.base,
            grant.reach,
            parts.method,
            &url,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            origin.credential.as_ref(),
        )
        .map_err(|_| HttpError::DestinationIpProhibited)?;
    let response = builder
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(classify)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut collected = Vec::new();
    let mut response = response;
    loop {
        match tokio::time::timeout(timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if collected.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::HttpResponseBodySize(Some(
                        MAX_RESPONSE_BYTES as u64,
                    )));
                }
                collected.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => break,
            Ok(Err(err)) => return Err(classify(err)),
            Err(_) => return Err(HttpError::HttpResponseTimeout),
        }
    }
    let mut answer = http::Response::new(
        Full::new(Bytes::from(collected))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async { Ok(()) });
    Ok((answer, done))
}

/// The `wasi:http` error code for a failed send (no secret: the credential is a header).
fn classify(err: reqwest::Error) -> HttpError {
    if refusal(&err).is_some() {
        HttpError::DestinationIpProhibited
    } else if err.is_timeout() {
        HttpError::ConnectionTimeout
    } else if err.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::InternalError(Some(err.without_url().to_string()))
    }
}
