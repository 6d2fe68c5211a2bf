//! The HTTP client that sends outbound requests by the rules of [`super`].
//!
//! Two `reqwest` clients share one configuration: one for [`Reach::Any`], and one for
//! [`Reach::PublicOnly`] whose DNS resolver refuses a name that resolves to a non-public address.
//! The check sits in the resolver, i.e. on the addresses the connection will use, so a name
//! that answers a public address to a first lookup and a private one to the next (DNS
//! rebinding) is refused all the same. IP-literal hosts never reach a resolver; they are
//! checked when the request is built. Connections are pooled per client, so a connection made
//! for an admin never serves a public-only request.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Url, redirect};

use super::address::{AddressClass, classify};
use super::url::{BaseUrl, same_origin};

/// Same-origin redirects followed at most, per request; the next one is returned as is.
pub const MAX_REDIRECTS: usize = 3;

/// Which addresses a request may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Public unicast addresses only (see [`super::address`]).
    PublicOnly,
    /// Any address: loopback, private and link-local too.
    Any,
}

impl Reach {
    /// Admin keys reach anything (operators commonly probe a relay on the same host); other
    /// keys only public addresses unless the operator allows private targets.
    pub fn for_caller(admin: bool, operator_allows_private: bool) -> Self {
        if admin || operator_allows_private {
            Reach::Any
        } else {
            Reach::PublicOnly
        }
    }

    fn allows(self, ip: IpAddr) -> Result<(), AddressClass> {
        match (self, classify(ip)) {
            (Reach::Any, _) => Ok(()),
            (Reach::PublicOnly, class) if class.is_public() => Ok(()),
            (Reach::PublicOnly, class) => Err(class),
        }
    }
}

/// A host that is, or resolves to, an address the request may not reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AddressRefused {
    pub host: String,
    pub address: IpAddr,
    pub class: AddressClass,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        if literal == self.address.to_string() {
            write!(f, "{} is a {} address", self.address, self.class)
        } else {
            write!(
                f,
                "{} resolves to {}, a {} address",
                self.host, self.address, self.class
            )
        }
    }
}

/// Why a request was not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Address(AddressRefused),
    /// The URL is not at the target's origin: the target's credential must not go there.
    #[error("{url} is not at the target's origin")]
    OtherOrigin { url: String },
}

/// A secret that authenticates to the target: the value of one header. It has no `Debug`
/// that shows the value, and its header is marked sensitive (kept out of HTTP/2 tables).
#[derive(Clone)]
pub struct Credential {
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.name)
            .finish_non_exhaustive()
    }
}

/// A secret that is not a valid header value (said without echoing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the credential contains characters that cannot go in an HTTP header")]
pub struct InvalidCredential;

impl Credential {
    /// The provider contract's auth schemes: `x-api-key` and `api-key` put the secret in that
    /// header; anything else (`bearer`) is `Authorization: Bearer <secret>`.
    pub fn for_scheme(scheme: &str, secret: &str) -> Result<Self, InvalidCredential> {
        let (name, text) = match scheme {
            "x-api-key" | "api-key" => (
                HeaderName::from_static(if scheme == "x-api-key" {
                    "x-api-key"
                } else {
                    "api-key"
                }),
                secret.to_string(),
            ),
            _ => (reqwest::header::AUTHORIZATION, format!("Bearer {secret}")),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| InvalidCredential)?;
        value.set_sensitive(true);
        Ok(Self { name, value })
    }
}

/// Headers that a caller-supplied header list (e.g. a probe plan) may not set: credentials
/// are the host's to add, and routing or framing headers could send the request elsewhere
/// or split it.
pub fn is_reserved_header(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "host",
        "forwarded",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str()) || lower.starts_with("x-forwarded-")
}

/// Settings of the underlying HTTP clients.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub user_agent: String,
}

/// Sends outbound requests by the rules.
pub struct OutboundClient {
    public_only: reqwest::Client,
    any: reqwest::Client,
    /// Also bounds the lookup of [`OutboundClient::check_target`].
    connect_timeout: Duration,
}

impl OutboundClient {
    pub fn new(options: &ClientOptions) -> anyhow::Result<Self> {
        let build = |resolver: Option<Arc<PublicOnlyResolver>>| {
            let mut builder = reqwest::Client::builder()
                .redirect(same_origin_redirects())
                // A proxy would connect for us, out of sight of the address rules.
                .no_proxy()
                .connect_timeout(options.connect_timeout)
                .pool_max_idle_per_host(options.pool_max_idle_per_host)
                .user_agent(options.user_agent.as_str());
            if let Some(resolver) = resolver {
                builder = builder.dns_resolver(resolver);
            }
            builder.build()
        };
        Ok(Self {
            public_only: build(Some(Arc::new(PublicOnlyResolver)))?,
            any: build(None)?,
            connect_timeout: options.connect_timeout,
        })
    }

    /// Refuses a target whose host is, or resolves to, an address that `reach` excludes,
    /// before anything connects. A name that does not resolve (in time) passes: its request
    /// then fails as a network error or a timeout (and is checked again, on the addresses it
    /// connects to).
    pub async fn check_target(&self, base: &BaseUrl, reach: Reach) -> Result<(), AddressRefused> {
        if reach == Reach::Any {
            return Ok(());
        }
        let url = base.as_url();
        if let Some(refused) = literal_refused(url, reach) {
            return Err(refused);
        }
        let Some(::url::Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        match tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((name, 0))).await {
            Ok(Ok(addrs)) => first_refused(name, addrs, reach),
            Ok(Err(_)) | Err(_) => Ok(()),
        }
    }

    /// A request to `url`, which must be at `target`'s origin, with `credential` (if any) in
    /// its header. Reserved headers among `headers` are dropped (see [`is_reserved_header`]).
    pub fn request<'a>(
        &self,
        target: &BaseUrl,
        reach: Reach,
        method: Method,
        url: &Url,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        credential: Option<&Credential>,
    ) -> Result<RequestBuilder, Refused> {
        if !same_origin(url, target.as_url()) {
            return Err(Refused::OtherOrigin {
                url: url.to_string(),
            });
        }
        if let Some(refused) = literal_refused(url, reach) {
            return Err(Refused::Address(refused));
        }
        let client = match reach {
            Reach::PublicOnly => &self.public_only,
            Reach::Any => &self.any,
        };
        let mut request = client.request(method, url.clone());
        for (name, value) in headers {
            if !is_reserved_header(name) {
                request = request.header(name, value);
            }
        }
        if let Some(credential) = credential {
            request = request.header(credential.name.clone(), credential.value.clone());
        }
        Ok(request)
    }
}

/// The address refusal behind a failed send, if that is why it failed (the resolver of a
/// public-only client refused the name).
pub fn refusal(err: &reqwest::Error) -> Option<AddressRefused> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return Some(refused.clone());
        }
        source = err.source();
    }
    None
}

fn literal_refused(url: &Url, reach: Reach) -> Option<AddressRefused> {
    let ip = match url.host()? {
        ::url::Host::Ipv4(v4) => IpAddr::V4(v4),
        ::url::Host::Ipv6(v6) => IpAddr::V6(v6),
        ::url::Host::Domain(_) => return None,
    };
    reach.allows(ip).err().map(|class| AddressRefused {
        host: url.host_str().unwrap_or_default().to_string(),
        address: ip,
        class,
    })
}

/// Refuses the whole name when any of its addresses is excluded: a name that mixes public and
/// private answers is not one to trust with a credential.
fn first_refused(
    name: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    reach: Reach,
) -> Result<(), AddressRefused> {
    for addr in addrs {
        if let Err(class) = reach.allows(addr.ip()) {
            return Err(AddressRefused {
                host: name.to_string(),
                address: addr.ip(),
                class,
            });
        }
    }
    Ok(())
}

/// The resolver of the public-only client: the system resolver, then the address rules.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            first_refused(&name, addrs.iter().copied(), Reach::PublicOnly)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Follows a redirect only to the first URL's origin (so credentials never leave it), at most
/// [`MAX_REDIRECTS`] times; any other redirect is returned to the caller as the response.
fn same_origin_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        if attempt.previous().len() > MAX_REDIRECTS || !same_origin(first, attempt.url()) {
            return attempt.stop();
        }
        attempt.follow()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OutboundClient {
        OutboundClient::new(&ClientOptions {
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: 1,
            user_agent: "wharf-test".into(),
        })
        .unwrap()
    }

    #[test]
    fn reach_follows_the_caller_and_the_operator() {
        assert_eq!(Reach::for_caller(true, false), Reach::Any);
        assert_eq!(Reach::for_caller(false, true), Reach::Any);
        assert_eq!(Reach::for_caller(false, false), Reach::PublicOnly);
    }

    #[tokio::test]
    async fn private_literals_and_names_are_refused_before_connecting() {
        let client = client();
        for (base, class) in [
            ("http://127.0.0.1:9", AddressClass::Loopback),
            ("http://[::1]:9", AddressClass::Loopback),
            ("http://[::ffff:127.0.0.1]:9", AddressClass::Loopback),
            ("http://169.254.169.254", AddressClass::LinkLocal),
            ("http://10.0.0.1", AddressClass::Private),
            ("http://2130706433:9", AddressClass::Loopback),
            ("http://0x7f.1:9", AddressClass::Loopback),
            ("http://localhost:9", AddressClass::Loopback),
        ] {
            let base = BaseUrl::parse(base).unwrap();
            let refused = client
                .check_target(&base, Reach::PublicOnly)
                .await
                .expect_err(base.as_url().as_str());
            assert_eq!(refused.class, class, "{base}");
            assert!(client.check_target(&base, Reach::Any).await.is_ok());
        }
        let public = BaseUrl::parse("http://8.8.8.8").unwrap();
        assert!(
            client
                .check_target(&public, Reach::PublicOnly)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_private_name_when_the_request_connects() {
        let client = client();
        let base = BaseUrl::parse("http://localhost:9").unwrap();
        let url = base.join("/v1/models").unwrap();
        let request = client
            .request(&base, Reach::PublicOnly, Method::GET, &url, [], None)
            .unwrap();
        let err = request.send().await.unwrap_err();
        let refused = refusal(&err).expect("the send failed on the address rule");
        assert_eq!(
            (refused.host.as_str(), refused.class),
            ("localhost", AddressClass::Loopback)
        );
        assert!(refused.to_string().contains("localhost resolves to"));
    }

    #[test]
    fn requests_stay_at_the_target_origin_and_carry_only_its_credential() {
        let client = client();
        let base = BaseUrl::parse("http://127.0.0.1:3000/v1").unwrap();
        let elsewhere = Url::parse("http://127.0.0.1:3001/v1/models").unwrap();
        let credential = Credential::for_scheme("bearer", "sk-secret").unwrap();
        assert!(matches!(
            client.request(
                &base,
                Reach::Any,
                Method::GET,
                &elsewhere,
                [],
                Some(&credential)
            ),
            Err(Refused::OtherOrigin { .. })
        ));
        let literal = base.join("/models").unwrap();
        assert!(matches!(
            client.request(
                &base,
                Reach::PublicOnly,
                Method::GET,
                &literal,
                [],
                Some(&credential)
            ),
            Err(Refused::Address(_))
        ));
        let request = client
            .request(
                &base,
                Reach::Any,
                Method::GET,
                &literal,
                [
                    ("authorization", "Bearer other"),
                    ("Host", "elsewhere"),
                    ("x-forwarded-host", "elsewhere"),
                    ("accept", "application/json"),
                ],
                Some(&credential),
            )
            .unwrap()
            .build()
            .unwrap();
        let headers = request.headers();
        assert_eq!(headers["authorization"], "Bearer sk-secret");
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert!(headers.get("host").is_none() && headers.get("x-forwarded-host").is_none());
        assert_eq!(headers["accept"], "application/json");
        assert!(!format!("{credential:?}").contains("sk-secret"));
    }

    #[test]
    fn credentials_follow_the_scheme() {
        for (scheme, header, value) in [
            ("bearer", "authorization", "Bearer k-1234"),
            ("x-api-key", "x-api-key", "k-1234"),
            ("api-key", "api-key", "k-1234"),
        ] {
            let credential = Credential::for_scheme(scheme, "k-1234").unwrap();
            assert_eq!(
                (credential.name.as_str(), credential.value.to_str().unwrap()),
                (header, value)
            );
            assert!(credential.value.is_sensitive());
        }
        assert_eq!(
            Credential::for_scheme("bearer", "k\n1").unwrap_err(),
            InvalidCredential
        );
    }
}
