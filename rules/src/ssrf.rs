//! The SSRF deny table (SPEC §3 step 6).
//!
//! The proxy resolves a destination name, runs every resolved address through
//! [`classify_ip`], and dials only addresses that come back `None` (or that the route
//! opts into with `allow_private`). Addresses that carry an IPv4 address inside an IPv6
//! one (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address they carry, so
//! `::ffff:169.254.169.254` is as blocked as `169.254.169.254`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address must not be dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SsrfClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Carrier-grade NAT, 100.64/10.
    Cgnat,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// Cloud instance metadata services: 169.254.169.254, 100.100.100.200,
    /// 168.63.129.16, fd00:ec2::254.
    Metadata,
    /// Reserved or unallocated space: 240/4, 192.0.0/24, 100::/64, 2001:10::/28 and
    /// IPv6 outside 2000::/3.
    Reserved,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// 0.0.0.0/8 other than 0.0.0.0.
    ThisNetwork,
    /// fc00::/7.
    UniqueLocal,
    /// Deprecated site-local fec0::/10.
    SiteLocal,
    /// Teredo tunnels, 2001::/32.
    Teredo,
}

impl SsrfClass {
    /// A stable snake_case name, for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            SsrfClass::Loopback => "loopback",
            SsrfClass::Private => "private",
            SsrfClass::LinkLocal => "link_local",
            SsrfClass::Cgnat => "cgnat",
            SsrfClass::Multicast => "multicast",
            SsrfClass::Unspecified => "unspecified",
            SsrfClass::Broadcast => "broadcast",
            SsrfClass::Metadata => "metadata",
            SsrfClass::Reserved => "reserved",
            SsrfClass::Documentation => "documentation",
            SsrfClass::Benchmarking => "benchmarking",
            SsrfClass::ThisNetwork => "this_network",
            SsrfClass::UniqueLocal => "unique_local",
            SsrfClass::SiteLocal => "site_local",
            SsrfClass::Teredo => "teredo",
        }
    }
}

impl std::fmt::Display for SsrfClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classify an address. `None` means publicly routable: it may be dialled.
pub fn classify_ip(ip: IpAddr) -> Option<SsrfClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Metadata endpoints reachable from inside cloud VMs. They sit inside broader classes
/// (link-local, CGNAT) or in public space (Azure's 168.63.129.16), so they are checked first.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure IMDS, OpenStack, ...
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer
];

/// AWS IMDS over IPv6.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// IPv4 table: (network, prefix length, class), most specific first.
const V4_TABLE: &[([u8; 4], u8, SsrfClass)] = &[
    ([255, 255, 255, 255], 32, SsrfClass::Broadcast),
    ([0, 0, 0, 0], 32, SsrfClass::Unspecified),
    ([0, 0, 0, 0], 8, SsrfClass::ThisNetwork),
    ([10, 0, 0, 0], 8, SsrfClass::Private),
    ([100, 64, 0, 0], 10, SsrfClass::Cgnat),
    ([127, 0, 0, 0], 8, SsrfClass::Loopback),
    ([169, 254, 0, 0], 16, SsrfClass::LinkLocal),
    ([172, 16, 0, 0], 12, SsrfClass::Private),
    ([192, 0, 0, 0], 24, SsrfClass::Reserved), // IETF protocol assignments
    ([192, 0, 2, 0], 24, SsrfClass::Documentation),
    ([192, 168, 0, 0], 16, SsrfClass::Private),
    ([198, 18, 0, 0], 15, SsrfClass::Benchmarking),
    ([198, 51, 100, 0], 24, SsrfClass::Documentation),
    ([203, 0, 113, 0], 24, SsrfClass::Documentation),
    ([224, 0, 0, 0], 4, SsrfClass::Multicast),
    ([240, 0, 0, 0], 4, SsrfClass::Reserved),
];

fn classify_v4(ip: Ipv4Addr) -> Option<SsrfClass> {
    if METADATA_V4.contains(&ip) {
        return Some(SsrfClass::Metadata);
    }
    let addr = u32::from(ip);
    V4_TABLE
        .iter()
        .find(|(net, len, _)| prefix_matches_v4(addr, u32::from_be_bytes(*net), *len))
        .map(|(_, _, class)| *class)
}

fn prefix_matches_v4(addr: u32, net: u32, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    addr & mask == net & mask
}

fn prefix_matches_v6(addr: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    addr & mask == net & mask
}

/// IPv6 native classes, checked after the IPv4-embedding forms.
const V6_TABLE: &[(u128, u8, SsrfClass)] = &[
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        SsrfClass::UniqueLocal,
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        SsrfClass::LinkLocal,
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        SsrfClass::SiteLocal,
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        SsrfClass::Multicast,
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        SsrfClass::Documentation,
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        SsrfClass::Documentation,
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        32,
        SsrfClass::Teredo,
    ),
    (
        0x2001_0002_0000_0000_0000_0000_0000_0000,
        48,
        SsrfClass::Benchmarking,
    ),
    (
        0x2001_0010_0000_0000_0000_0000_0000_0000,
        28,
        SsrfClass::Reserved,
    ), // deprecated ORCHID
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        SsrfClass::Reserved,
    ), // discard-only
];

/// All global unicast space is inside 2000::/3; anything else not named above is unallocated.
const GLOBAL_UNICAST: (u128, u8) = (0x2000_0000_0000_0000_0000_0000_0000_0000, 3);

fn classify_v6(ip: Ipv6Addr) -> Option<SsrfClass> {
    if ip.is_unspecified() {
        return Some(SsrfClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(SsrfClass::Loopback);
    }
    if ip == METADATA_V6 {
        return Some(SsrfClass::Metadata);
    }
    let addr = u128::from(ip);
    // The low 32 bits, as an IPv4 address (mapped, compatible, translated, NAT64 /96).
    let low_v4 = Ipv4Addr::from(addr as u32);
    // ::ffff:a.b.c.d (IPv4-mapped) and ::a.b.c.d (IPv4-compatible, deprecated).
    if prefix_matches_v6(addr, 0xffff_0000_0000, 96) || prefix_matches_v6(addr, 0, 96) {
        return classify_v4(low_v4);
    }
    // ::ffff:0:a.b.c.d (SIIT IPv4-translated) and 64:ff9b::a.b.c.d (NAT64 well-known prefix).
    if prefix_matches_v6(addr, 0xffff_0000_0000_0000, 96)
        || prefix_matches_v6(addr, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96)
    {
        return classify_v4(low_v4);
    }
    // 64:ff9b:1::/48, local-use NAT64 (RFC 8215). The operator picks the RFC 6052 prefix
    // length. Zeros between the prefix and the last 32 bits mean the common /96 layout;
    // otherwise judge every place the shorter layouts put an IPv4 address, and block if
    // any of them is blocked.
    if prefix_matches_v6(addr, 0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48) {
        let b = ip.octets();
        if b[6..12].iter().all(|&x| x == 0) {
            return classify_v4(low_v4);
        }
        return rfc6052_short_layouts(&b).into_iter().find_map(classify_v4);
    }
    // 2002:a.b.c.d::/48, 6to4.
    if prefix_matches_v6(addr, 0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        return classify_v4(Ipv4Addr::from((addr >> 80) as u32));
    }
    if let Some((_, _, class)) = V6_TABLE
        .iter()
        .find(|(net, len, _)| prefix_matches_v6(addr, *net, *len))
    {
        return Some(*class);
    }
    if !prefix_matches_v6(addr, GLOBAL_UNICAST.0, GLOBAL_UNICAST.1) {
        return Some(SsrfClass::Reserved);
    }
    None
}

/// The IPv4 address that an RFC 6052 prefix of length 48, 56 or 64 embeds in `b`.
/// Byte 8 (bits 64..72) is the reserved "u" octet, which the embedding skips.
fn rfc6052_short_layouts(b: &[u8; 16]) -> [Ipv4Addr; 3] {
    [
        Ipv4Addr::new(b[6], b[7], b[9], b[10]),   // /48
        Ipv4Addr::new(b[7], b[9], b[10], b[11]),  // /56
        Ipv4Addr::new(b[9], b[10], b[11], b[12]), // /64
    ]
}
