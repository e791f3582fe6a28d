//! The buyer's address on requests from the buyer's browser (the code page): the peer, or,
//! when the peer is one of `http.trusted_proxies`, the `X-Forwarded-For` entry read from the
//! right past every trusted hop. An untrusted peer's header is ignored, so a script cannot
//! pick the address it is counted under.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// One CIDR block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0–{bits}"))?,
            None => bits,
        };
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn parse(blocks: &[String]) -> Result<Self, String> {
        blocks
            .iter()
            .map(|block| Cidr::parse(block))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(address))
    }

    /// The client's address: the first untrusted hop from the right, an IPv4-mapped IPv6
    /// address as the IPv4 address it is (a dual-stack listener reports IPv4 peers so), so
    /// that it is counted under the same address and /24 as when it arrives as IPv4.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.first_untrusted(peer, headers).to_canonical()
    }

    fn first_untrusted(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(peer) {
            return client;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(address) = hop.parse::<IpAddr>() else {
                // A malformed entry ends the chain: the last good hop is the client.
                return client;
            };
            client = address;
            if !self.trusts(address) {
                return client;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_owned(), "fd00::/8".to_owned()])
            .expect("cidrs");
        let via = headers(&["198.51.100.7, 203.0.113.9, 10.1.2.3"]);
        // The buyer wrote 198.51.100.7 themselves; 203.0.113.9 is what our proxy saw.
        assert_eq!(proxies.client(ip("10.0.0.1"), &via), ip("203.0.113.9"));
        // Several header lines count as one list, in order.
        let split = headers(&["198.51.100.7", "203.0.113.9, 10.1.2.3"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &split), ip("203.0.113.9"));
        // An untrusted peer's header is ignored.
        assert_eq!(proxies.client(ip("192.0.2.1"), &via), ip("192.0.2.1"));
        // Nothing trusted: the peer.
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.1"), &via), ip("10.0.0.1"));
        // Every hop trusted: the leftmost.
        let internal = headers(&["10.9.9.9, 10.1.2.3"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &internal), ip("10.9.9.9"));
        // A malformed entry stops the walk at the last good hop.
        let bad = headers(&["198.51.100.7, nonsense, 10.1.2.3"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &bad), ip("10.1.2.3"));
        // IPv6 and IPv4-mapped peers.
        assert_eq!(proxies.client(ip("fd12::1"), &via), ip("203.0.113.9"));
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &via),
            ip("203.0.113.9")
        );
        // An untrusted IPv4-mapped peer, or hop, is its IPv4 address.
        assert_eq!(
            proxies.client(ip("::ffff:192.0.2.1"), &via),
            ip("192.0.2.1")
        );
        let mapped = headers(&["::ffff:203.0.113.9"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &mapped), ip("203.0.113.9"));
    }

    #[test]
    fn blocks_are_parsed_strictly() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("::/129").is_err());
        let one = Cidr::parse("192.0.2.1").expect("bare address");
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        let all = Cidr::parse("0.0.0.0/0").expect("everything");
        assert!(all.contains(ip("203.0.113.1")));
    }
}
