//! The one retry delay every worker uses (the relay, the forwarder, the webhook sender, the
//! supervisor's restarts): `initial` doubled per failure up to `max`, with jitter between half
//! and all of it, so many instances never retry in step.

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `failures` (1 = after the first failure).
pub fn delay(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let full = initial.saturating_mul(1 << exponent).min(max);
    let millis = full.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for (failures, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (30, 1_000),
        ] {
            let delay = delay(initial, max, failures).as_millis() as u64;
            assert!(
                (full / 2..=full).contains(&delay),
                "failure {failures}: {delay} ms"
            );
        }
    }
}
