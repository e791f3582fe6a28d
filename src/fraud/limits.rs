//! The rate limits: which counters a start counts in (number, customer, IP, IP range, order
//! reference, brand), and which of them a refused start gives back.

use super::{Fraud, FraudConfig, StartFacts, Window};
use crate::store::CounterHit;

/// The /24 of an IPv4 address or the /64 of an IPv6 address, as text; empty for no address.
pub fn ip_range(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => String::new(),
    }
}

/// A rate-limit counter of this start: its bucket, window and what it counts by.
pub(super) struct Limit {
    pub(super) hit: CounterHit,
    pub(super) limit: i64,
    pub(super) key_type: &'static str,
}

impl Fraud {
    /// The rate-limit counters of a start.
    pub(super) fn limits(&self, config: &FraudConfig, facts: &StartFacts<'_>) -> Vec<Limit> {
        let pseudonyms = self.events.pseudonymizer();
        let limits = &config.rate_limits;
        let mut keys: Vec<(&'static str, &[Window], String)> = vec![(
            "phone",
            &limits.phone,
            pseudonyms.pseudonym("phone", facts.phone.e164()),
        )];
        // The client's address counts for a start and for a resend the buyer's browser asked
        // for (the code page, behind `http.trusted_proxies`).
        if let Some(ip) = facts.client_ip {
            keys.push(("ip", &limits.ip, pseudonyms.pseudonym("ip", ip)));
            keys.push((
                "ip_range",
                &limits.ip_range,
                pseudonyms.pseudonym("ip_range", &ip_range(ip)),
            ));
        }
        if !facts.resend {
            if let Some(customer) = facts.customer_reference {
                keys.push((
                    "customer",
                    &limits.customer,
                    pseudonyms.pseudonym("customer", customer),
                ));
            }
            keys.push((
                "order_reference",
                &limits.order_reference,
                pseudonyms.pseudonym("order_reference", facts.order_reference),
            ));
            keys.push(("brand", &limits.brand, "all".to_owned()));
        }
        keys.into_iter()
            .filter(|(_, _, key)| !key.is_empty())
            .flat_map(|(key_type, windows, key)| {
                windows.iter().map(move |window| Limit {
                    hit: CounterHit {
                        bucket: format!("{key_type}:{}:{key}", window.label()),
                        window_ms: window.window_ms,
                        count: 1,
                        approvals: 0,
                    },
                    limit: window.limit,
                    key_type,
                })
            })
            .collect()
    }

    /// The counters that count only starts that never converted: an approval refunds them.
    pub(super) fn refund_buckets(
        &self,
        config: &FraudConfig,
        ip: &str,
        range: &str,
    ) -> Vec<String> {
        let limits = &config.rate_limits;
        let mut buckets = Vec::new();
        for (key_type, windows, key) in [
            ("ip", &limits.ip, ip),
            ("ip_range", &limits.ip_range, range),
        ] {
            if key.is_empty() {
                continue;
            }
            for window in windows {
                buckets.push(format!("{key_type}:{}:{key}", window.label()));
            }
        }
        buckets
    }
}
