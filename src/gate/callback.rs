//! Where webhooks may go. A shop names a `callback_url` per order, so the URL is attacker
//! input: without a policy it points the service's signed POSTs at its own network (SSRF:
//! `http://127.0.0.1:6379/`, `https://169.254.169.254/…`). The policy is applied twice:
//!
//! - when the order is held ([`CallbackPolicy::check`]): scheme, the brand's host allow-list,
//!   IP literals, and the name's current DNS answers, so the shop gets a clear 422 at once;
//! - when the webhook is sent: the client resolves names through [`GuardedResolver`], which
//!   drops every forbidden address, and follows no redirects, so a name re-pointed at
//!   127.0.0.1 after the order was held (DNS rebinding) reaches nothing.
//!
//! Production: `https` only; loopback, private (RFC 1918, IPv6 ULA), link-local (cloud
//! metadata), CGNAT (RFC 6598), multicast, unspecified, broadcast and reserved addresses are
//! refused. Dev mode (or `gate.allow_loopback_callbacks = true`, refused in production) also
//! allows loopback, over `http` too, for local receivers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

/// What a callback URL may point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// Whether loopback addresses (and `http` to them) are allowed: dev mode only.
    pub allow_loopback: bool,
}

/// Why an address is refused, for the problem detail and logs.
pub fn forbidden_reason(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4, allow_loopback),
        IpAddr::V6(v6) => {
            // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach the IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4, allow_loopback);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return v4_reason(Ipv4Addr::new(a, b, c, d), allow_loopback);
            }
            v6_reason(v6, allow_loopback)
        }
    }
}

fn v4_reason(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        (!allow_loopback).then_some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_documentation() || (a == 198 && (18..20).contains(&b)) {
        Some("reserved")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr, allow_loopback: bool) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        (!allow_loopback).then_some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("reserved")
    } else {
        None
    }
}

impl CallbackPolicy {
    /// Checks `value` without looking anything up: scheme, credentials, the brand's host
    /// allow-list (`webhooks.hosts`; empty allows any host) and IP literals.
    pub fn check_static(&self, value: &str, allowed_hosts: &[String]) -> Result<Url, String> {
        let url = Url::parse(value).map_err(|_| "is not a URL".to_owned())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".to_owned());
        }
        let host = url.host().ok_or_else(|| "has no host".to_owned())?;
        let loopback = match &host {
            Host::Ipv4(ip) => ip.is_loopback(),
            Host::Ipv6(ip) => ip.is_loopback(),
            Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_loopback && loopback => {}
            _ if self.allow_loopback => {
                return Err("must be an https URL (http only for loopback in dev mode)".to_owned());
            }
            _ => return Err("must be an https URL".to_owned()),
        }
        if !allowed_hosts.is_empty() {
            let name = match &host {
                Host::Domain(name) => name.to_ascii_lowercase(),
                Host::Ipv4(ip) => ip.to_string(),
                Host::Ipv6(ip) => format!("[{ip}]"),
            };
            if !allowed_hosts
                .iter()
                .any(|pattern| host_matches(pattern, &name))
            {
                return Err(format!(
                    "host {name} is not in the brand's webhooks.hosts allow-list"
                ));
            }
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        if let Some(reason) = literal.and_then(|ip| forbidden_reason(ip, self.allow_loopback)) {
            return Err(format!("points at a {reason} address"));
        }
        Ok(url)
    }

    /// [`check_static`](Self::check_static), then the name's current DNS answers: every
    /// address must be allowed (a name with one internal address is refused whole).
    pub async fn check(&self, value: &str, allowed_hosts: &[String]) -> Result<Url, String> {
        let url = self.check_static(value, allowed_hosts)?;
        if let Some(Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| format!("host {name} does not resolve"))?
                .collect();
            if addresses.is_empty() {
                return Err(format!("host {name} does not resolve"));
            }
            for address in addresses {
                if let Some(reason) = forbidden_reason(address.ip(), self.allow_loopback) {
                    return Err(format!("host {name} resolves to a {reason} address"));
                }
            }
        }
        Ok(url)
    }

    /// The HTTP client for webhooks: names resolved through [`GuardedResolver`], no redirects
    /// (a redirect could lead to an IP literal that no resolver sees).
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: *self }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()?)
    }
}

/// `pattern` is a host name, or `*.example.com` for any subdomain of example.com.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// Resolves with the system resolver and keeps only allowed addresses; none left is an error,
/// so the connection is never attempted.
pub struct GuardedResolver {
    policy: CallbackPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.policy.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| forbidden_reason(address.ip(), allow_loopback).is_none())
                .collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to addresses webhooks may not reach").into();
                return Err(error);
            }
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: CallbackPolicy = CallbackPolicy {
        allow_loopback: false,
    };
    const DEV: CallbackPolicy = CallbackPolicy {
        allow_loopback: true,
    };

    #[test]
    fn production_refuses_every_internal_address_and_plain_http() {
        for url in [
            "http://127.0.0.1:22/",
            "https://127.0.0.1/",
            "https://127.1.2.3/",
            "http://[::1]:6379/",
            "https://[::1]:6379/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/",
            "https://100.127.255.254/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            "https://0.0.0.0/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a00:1]/",
            "http://shop.example/hook",
            "ftp://shop.example/hook",
            "https://user:pass@shop.example/hook",
            "not a url",
        ] {
            assert!(PRODUCTION.check_static(url, &[]).is_err(), "{url} accepted");
        }
        for url in [
            "https://shop.example/hook",
            "https://93.184.216.34/hook",
            "https://100.128.0.1/",
            "https://[2a00:1450::1]/",
        ] {
            assert!(PRODUCTION.check_static(url, &[]).is_ok(), "{url} refused");
        }
    }

    #[test]
    fn dev_mode_allows_loopback_and_nothing_else_internal() {
        for url in [
            "http://127.0.0.1:9000/",
            "http://localhost:9000/",
            "http://[::1]:9000/",
        ] {
            assert!(DEV.check_static(url, &[]).is_ok(), "{url} refused");
        }
        for url in [
            "http://10.0.0.1/",
            "https://10.0.0.1/",
            "https://169.254.169.254/",
            "http://shop.example/",
        ] {
            assert!(DEV.check_static(url, &[]).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn a_brand_allow_list_admits_only_its_hosts() {
        let hosts = vec!["hooks.shop.example".to_owned(), "*.pay.example".to_owned()];
        for url in [
            "https://hooks.shop.example/a",
            "https://HOOKS.shop.example/a",
            "https://eu.pay.example/a",
        ] {
            assert!(PRODUCTION.check_static(url, &hosts).is_ok(), "{url}");
        }
        for url in [
            "https://shop.example/a",
            "https://pay.example/a",
            "https://evilpay.example/a",
            "https://hooks.shop.example.evil.example/a",
        ] {
            assert!(PRODUCTION.check_static(url, &hosts).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_held_and_when_sent() {
        let error = PRODUCTION
            .check("https://localhost:9/hook", &[])
            .await
            .expect_err("localhost resolves to loopback");
        assert!(error.contains("loopback"), "{error}");

        // At send time: the guarded client never connects. A receiver listens on loopback
        // and counts connections; none may arrive.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let sent = PRODUCTION
            .client()
            .expect("client")
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await;
        let error = format!(
            "{:?}",
            sent.expect_err("the guarded client reached loopback")
        );
        assert!(error.contains("may not reach"), "{error}");
        // The same client in dev mode does connect: the refusal is the policy, not the port.
        let _ = DEV
            .client()
            .expect("client")
            .post(format!("http://localhost:{port}/hook"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }
}
