//! The rate limits: which counters a start counts in (number, customer, IP, IP range, order
//! reference, brand), and which of them a refused start gives back.

use super::{Fraud, FraudConfig, StartFacts, Window};
use crate::store::CounterHit;

/// The /24 of an IPv4 address or the /64 of an IPv6 address, as text; empty for no address.
/// An IPv4-mapped IPv6 address is its IPv4 address: every one of them lies in one /64.
pub fn ip_range(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) {
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

/// A rate-limit counter of this start: one row of its key, counting up to two of the key's
/// windows, and what it counts by.
pub(super) struct Limit {
    pub(super) hit: CounterHit,
    /// The limit of the row's first window, and of its second (when `hit.window2_ms` > 0).
    pub(super) limits: [i64; 2],
    pub(super) key_type: &'static str,
}

/// A key's counter rows: its windows two by two (a number's "5/10m" and "10/1d" on one row,
/// so a start writes one row, not two), each row's bucket naming its windows
/// (`phone:5/600s+10/86400s:<pseudonym>`: a changed window starts a new counter). The brand's
/// own ceiling is a hot counter (gathered in memory, see `hot.rs`), one window per row.
fn rows<'a>(
    key_type: &'static str,
    windows: &'a [Window],
    key: &'a str,
) -> impl Iterator<Item = (String, &'a [Window])> + 'a {
    let per_row = if key_type == "brand" { 1 } else { 2 };
    windows.chunks(per_row).map(move |windows| {
        let labels: Vec<String> = windows.iter().map(Window::label).collect();
        (format!("{key_type}:{}:{key}", labels.join("+")), windows)
    })
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
        let mut limits = Vec::new();
        for (key_type, windows, key) in keys.iter().filter(|(_, _, key)| !key.is_empty()) {
            for (bucket, windows) in rows(key_type, windows, key) {
                let second = windows.get(1);
                limits.push(Limit {
                    hit: CounterHit {
                        bucket,
                        window_ms: windows[0].window_ms,
                        window2_ms: second.map_or(0, |w| w.window_ms),
                        count: 1,
                        approvals: 0,
                    },
                    limits: [windows[0].limit, second.map_or(i64::MAX, |w| w.limit)],
                    key_type,
                });
            }
        }
        limits
    }

    /// The counters that count only starts that never converted: an approval refunds them.
    pub(super) fn refund_buckets(
        &self,
        config: &FraudConfig,
        ip: &str,
        range: &str,
    ) -> Vec<String> {
        let limits = &config.rate_limits;
        [
            ("ip", &limits.ip, ip),
            ("ip_range", &limits.ip_range, range),
        ]
        .into_iter()
        .filter(|(_, _, key)| !key.is_empty())
        .flat_map(|(key_type, windows, key)| rows(key_type, windows, key).map(|(bucket, _)| bucket))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_windows_share_rows_two_by_two_and_the_brands_do_not() {
        let windows: Vec<Window> = ["5/10m", "10/1d", "50/30d"]
            .iter()
            .map(|w| Window::parse(w).expect("window"))
            .collect();
        let phone: Vec<(String, usize)> = rows("phone", &windows, "k")
            .map(|(bucket, windows)| (bucket, windows.len()))
            .collect();
        assert_eq!(
            phone,
            [
                ("phone:5/600s+10/86400s:k".to_owned(), 2),
                ("phone:50/2592000s:k".to_owned(), 1)
            ]
        );
        assert_eq!(rows("brand", &windows, "all").count(), 3);
    }
}
