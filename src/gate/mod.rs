//! Gate mode's workers: forwarding approved orders upstream exactly once, and telling shops
//! the outcome by signed webhook. Both claim work with a lease, so several instances share it
//! and a crashed instance's work is resumed by another once the lease runs out.

pub mod callback;
pub mod forwarder;
pub mod webhooks;

use std::time::Duration;

use rand::Rng;

use crate::settings::GateSettings;

/// Capped exponential backoff with jitter for attempt `attempts` (1 = the first retry).
pub fn backoff(settings: &GateSettings, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let full = Duration::from_millis(settings.retry_initial_ms.max(1))
        .saturating_mul(1 << exponent)
        .min(Duration::from_millis(settings.retry_max_ms.max(1)));
    let millis = full.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

/// Cuts `body` to `limit` bytes at a character boundary.
pub fn truncate(body: &str, limit: usize) -> String {
    if body.len() <= limit {
        return body.to_owned();
    }
    let mut end = limit;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let settings = GateSettings {
            retry_initial_ms: 100,
            retry_max_ms: 1_000,
            ..GateSettings::default()
        };
        for (attempts, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (30, 1_000),
        ] {
            let delay = backoff(&settings, attempts).as_millis() as u64;
            assert!(
                (full / 2..=full).contains(&delay),
                "attempt {attempts}: {delay} ms"
            );
        }
        assert_eq!(truncate("äbc", 1), "");
        assert_eq!(truncate("äbc", 2), "ä");
    }
}
