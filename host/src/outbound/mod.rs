//! The one set of rules for every request the server or a plugin sends out.
//!
//! Probes use them today; plugins' `wasi:http` and host adapters are to go through the same
//! functions, so that no subsystem grows its own idea of where a user's credential may go.
//!
//! 1. **URLs are built, never concatenated** ([`url`]): a validated base URL (http(s), a host,
//!    no userinfo, query or fragment) joined with a path that must start with `/` and carries
//!    no scheme, authority, `@`, backslash, fragment, dot segment, encoded separator, control
//!    character or whitespace (encoded forms included). The origin of the result is the base's.
//! 2. **Credentials go to the target's origin only** ([`client::OutboundClient::request`]):
//!    the request must be at the base's origin, the credential header is the host's to add,
//!    and caller headers cannot set credentials, `Host` or framing headers.
//! 3. **Redirects never cross origins**: a same-origin redirect is followed at most
//!    [`client::MAX_REDIRECTS`] times (so the credential stays at its origin); any other is
//!    returned as the response.
//! 4. **Private addresses need a privileged caller** ([`address`]): unless the caller may reach
//!    them ([`Reach::Any`]: an admin key, or the operator's `allow_private_targets`), targets in
//!    loopback, private, shared (CGNAT), link-local (cloud metadata), unique-local, unspecified,
//!    multicast and other special ranges are refused. The check runs on the resolved
//!    addresses, in the resolver of the connection itself, so DNS rebinding cannot slip past
//!    it, and on IP literals (IPv4-mapped IPv6 included) when the request is built.

pub mod address;
pub mod client;
pub mod url;

pub use self::address::AddressClass;
pub use self::client::{
    AddressRefused, ClientOptions, Credential, OutboundClient, Reach, Refused, refusal,
};
pub use self::url::{BaseUrl, BaseUrlError, PathRule};
