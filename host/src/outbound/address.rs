//! Which network addresses an outbound request may reach.
//!
//! Every address falls in one class. Only [`AddressClass::Public`] is reachable with
//! [`Reach::PublicOnly`](super::Reach::PublicOnly); the other classes are the server's own
//! machine, its networks and special-purpose ranges, where a request made on a user's behalf
//! would be server-side request forgery (SSRF): the server would reach, with its own network
//! position, services the user cannot reach (a relay's admin port, a database, the cloud
//! metadata service that hands out the machine's credentials).
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`,
//! 6to4 `2002::/16`) are classified by the IPv4 address they reach.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, from the point of view of a server sending requests for its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// `127.0.0.0/8`, `::1`: the server's own machine.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// RFC 6598 shared address space (carrier-grade NAT): `100.64.0.0/10`.
    SharedCgnat,
    /// `169.254.0.0/16` (with the cloud metadata service `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// Unique local IPv6: `fc00::/7`.
    UniqueLocal,
    /// `0.0.0.0/8`, `::`: "this host" (connecting to it reaches the server itself).
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Other special-purpose ranges (IANA registries): documentation, benchmarking, protocol
    /// assignments, reserved `240.0.0.0/4`, deprecated IPv6 forms, Teredo, ORCHID, ...
    Special,
}

impl AddressClass {
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private (RFC 1918)",
            AddressClass::SharedCgnat => "shared carrier-grade NAT (100.64.0.0/10)",
            AddressClass::LinkLocal => "link-local (includes cloud metadata 169.254.169.254)",
            AddressClass::UniqueLocal => "unique local (fc00::/7)",
            AddressClass::Unspecified => "unspecified (this host)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Special => "special-purpose (reserved)",
        })
    }
}

/// IPv4 ranges that are not public, most specific first where they nest.
const V4_RANGES: &[([u8; 4], u8, AddressClass)] = &[
    ([0, 0, 0, 0], 8, AddressClass::Unspecified),
    ([10, 0, 0, 0], 8, AddressClass::Private),
    ([100, 64, 0, 0], 10, AddressClass::SharedCgnat),
    ([127, 0, 0, 0], 8, AddressClass::Loopback),
    ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
    ([172, 16, 0, 0], 12, AddressClass::Private),
    // IETF protocol assignments (includes 192.0.0.170/171, NAT64 discovery).
    ([192, 0, 0, 0], 24, AddressClass::Special),
    // Documentation (TEST-NET-1..3).
    ([192, 0, 2, 0], 24, AddressClass::Special),
    ([198, 51, 100, 0], 24, AddressClass::Special),
    ([203, 0, 113, 0], 24, AddressClass::Special),
    // Deprecated 6to4 relay anycast.
    ([192, 88, 99, 0], 24, AddressClass::Special),
    ([192, 168, 0, 0], 16, AddressClass::Private),
    // Benchmarking.
    ([198, 18, 0, 0], 15, AddressClass::Special),
    ([224, 0, 0, 0], 4, AddressClass::Multicast),
    ([255, 255, 255, 255], 32, AddressClass::Broadcast),
    ([240, 0, 0, 0], 4, AddressClass::Special),
];

/// IPv6 ranges that are not public (after the IPv4-carrying forms are unwrapped).
const V6_RANGES: &[(u128, u8, AddressClass)] = &[
    (0, 128, AddressClass::Unspecified),
    (1, 128, AddressClass::Loopback),
    // The rest of ::/96 (deprecated IPv4-compatible addresses) and ::/8 in general.
    (0, 8, AddressClass::Special),
    // Local-use NAT64 (RFC 8215): its IPv4 side is whatever the local translator says.
    (0x0064_ff9b_0001 << 80, 48, AddressClass::Special),
    // Discard-only (RFC 6666).
    (0x0100 << 112, 64, AddressClass::Special),
    // Teredo: the IPv4 side is obfuscated and may be anything.
    (0x2001_0000 << 96, 32, AddressClass::Special),
    // Benchmarking.
    (0x2001_0002 << 96, 48, AddressClass::Special),
    // ORCHID v1 and v2.
    (0x2001_0010 << 96, 28, AddressClass::Special),
    (0x2001_0020 << 96, 28, AddressClass::Special),
    // Documentation.
    (0x2001_0db8 << 96, 32, AddressClass::Special),
    (0x3fff << 112, 20, AddressClass::Special),
    (0xfc00 << 112, 7, AddressClass::UniqueLocal),
    (0xfe80 << 112, 10, AddressClass::LinkLocal),
    // Deprecated site-local.
    (0xfec0 << 112, 10, AddressClass::Special),
    (0xff00 << 112, 8, AddressClass::Multicast),
];

/// The class of `ip`.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| prefix_matches_v4(bits, u32::from(Ipv4Addr::from(*net)), *len))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let bits = u128::from(ip);
    V6_RANGES
        .iter()
        .find(|(net, len, _)| prefix_matches_v6(bits, *net, *len))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address reaches, for the forms that carry one verbatim.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 reaches AA.BB.CC.DD.
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn prefix_matches_v4(bits: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

fn prefix_matches_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fall_in_their_class() {
        use AddressClass::*;
        let table: &[(&str, AddressClass)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.215.14", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.169.0.1", Public),
            ("223.255.255.255", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Special),
            ("192.0.0.170", Special),
            ("192.0.2.1", Special),
            ("198.18.0.1", Special),
            ("198.19.255.255", Special),
            ("198.51.100.7", Special),
            ("203.0.113.9", Special),
            ("2606:4700:4700::1111", Public),
            ("2001:4860:4860::8888", Public),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Special),
            ("2001::1", Special),
            ("fec0::1", Special),
            ("::7f00:1", Special),
            ("100::1", Special),
            // IPv6 forms that reach an IPv4 address are judged by that address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:8.8.8.8", Public),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("64:ff9b:1::1", Special),
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:808:808::1", Public),
        ];
        for (text, expected) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    #[test]
    fn only_public_is_public() {
        assert!(AddressClass::Public.is_public());
        for class in [
            AddressClass::Loopback,
            AddressClass::Private,
            AddressClass::SharedCgnat,
            AddressClass::LinkLocal,
            AddressClass::UniqueLocal,
            AddressClass::Unspecified,
            AddressClass::Multicast,
            AddressClass::Broadcast,
            AddressClass::Special,
        ] {
            assert!(!class.is_public(), "{class}");
        }
    }
}
