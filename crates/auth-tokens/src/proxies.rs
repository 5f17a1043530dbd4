//! Which peers are proxies whose word on the client is believed, and the
//! client's address by that rule. Shared by the gateway (which forwards
//! `X-Forwarded-*` only from trusted proxies) and the auth-service (which
//! records the address a session was opened from).

use std::net::IpAddr;

/// Trusted proxies: single addresses or CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let (ip, bits) = match e.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (e.as_str(), None),
            };
            let ip: IpAddr = ip.parse().map_err(|_| format!("trusted proxy {e:?} is not an IP or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => {
                    b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("bad prefix length in {e:?}"))?
                }
                None => max,
            };
            nets.push((ip, bits));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A server listening on `[::]` sees IPv4 peers as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (full, rest) = (usize::from(bits / 8), bits % 8);
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

/// The client's address for a request from `peer` carrying the
/// `X-Forwarded-For` lines `forwarded_for`. A peer that is not a trusted
/// proxy is the client; otherwise the chain is read from its right end
/// (the entry the nearest proxy added) past every trusted proxy, and the
/// first address that is not one is the client. An entry that is not an
/// address ends the walk at the last trusted hop: nothing left of it can
/// be believed.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for.flat_map(|line| line.split(',')).map(str::trim).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(address) = parse_entry(entry) else {
            return client;
        };
        client = address;
        if !trusted.contains(address) {
            return address;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, maybe bracketed (IPv6) or with a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip())
        .or_else(|| entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_by_prefix() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()]).unwrap();
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()), "an IPv4 peer seen on an IPv6 socket");
        assert!(!t.contains("::ffff:11.1.2.3".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer: &str, lines: &[&str]| client_address(ip(peer), lines.iter().copied(), &t);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(client("203.0.113.9", &["1.1.1.1"]), ip("203.0.113.9"));
        // Behind trusted proxies: the first address they did not add.
        assert_eq!(client("10.0.0.1", &["6.6.6.6, 198.51.100.7, 10.0.0.2"]), ip("198.51.100.7"));
        assert_eq!(client("10.0.0.1", &["6.6.6.6", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(client("10.0.0.1", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client("10.0.0.1", &["198.51.100.7:5555"]), ip("198.51.100.7"));
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(client("10.0.0.1", &["198.51.100.7, unknown, 10.0.0.3"]), ip("10.0.0.3"));
        assert_eq!(client("10.0.0.1", &["not-an-ip"]), ip("10.0.0.1"));
        // No header: the trusted peer itself.
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
        // Only trusted addresses: the leftmost.
        assert_eq!(client("10.0.0.1", &["10.9.9.9, 10.0.0.2"]), ip("10.9.9.9"));
    }
}
