//! How long a brand's buyers take to confirm: a start younger than that may still convert, so
//! the guards do not count it as evidence either way yet. Learnt per brand from the time
//! between its recent starts and their approvals (the SMS's delivery and the typing), so a
//! brand whose buyers take a minute is not judged on starts whose codes are still being typed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::domain::Millis;

/// The shortest lag: below this, a start is never judged, whatever the buyers show.
pub(super) const MIN_CONFIRM_LAG_MS: Millis = 30_000;

/// The longest lag. It bounds how long a guard waits before it may judge a start, so someone
/// who confirms slowly on purpose (to make the guards wait) wins at most this much.
pub(super) const MAX_CONFIRM_LAG_MS: Millis = 120_000;

/// The latest approvals whose delays are kept per brand.
const SAMPLES: usize = 200;

/// Approvals needed before the delays say anything; until then the lag is the shortest one.
const MIN_SAMPLES: usize = 20;

/// The lag is this quantile of the recent delays: the time within which most buyers confirm.
const QUANTILE: f64 = 0.9;

#[derive(Default)]
struct Delays {
    recent: VecDeque<Millis>,
    lag: Millis,
}

/// The confirmation lag of each brand, as this instance saw its approvals.
#[derive(Default)]
pub(super) struct ConfirmLags {
    brands: Mutex<HashMap<String, Delays>>,
}

impl ConfirmLags {
    /// Notes that a start of `brand` was approved `delay` after it began.
    pub(super) fn observe(&self, brand: &str, delay: Millis) {
        let mut brands = self.brands.lock().unwrap_or_else(|e| e.into_inner());
        let delays = brands.entry(brand.to_owned()).or_default();
        if delays.recent.len() == SAMPLES {
            delays.recent.pop_front();
        }
        delays.recent.push_back(delay.max(0));
        delays.lag = lag_of(&delays.recent);
    }

    /// How old a start of `brand` must be before a guard counts it as not converted.
    pub(super) fn lag(&self, brand: &str) -> Millis {
        self.brands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(brand)
            .map_or(MIN_CONFIRM_LAG_MS, |delays| delays.lag)
    }
}

/// The [`QUANTILE`] of `delays`, within the shortest and the longest lag.
fn lag_of(delays: &VecDeque<Millis>) -> Millis {
    if delays.len() < MIN_SAMPLES {
        return MIN_CONFIRM_LAG_MS;
    }
    let mut sorted: Vec<Millis> = delays.iter().copied().collect();
    let rank = ((sorted.len() as f64 * QUANTILE).ceil() as usize).clamp(1, sorted.len()) - 1;
    let (_, quantile, _) = sorted.select_nth_unstable(rank);
    (*quantile).clamp(MIN_CONFIRM_LAG_MS, MAX_CONFIRM_LAG_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_follows_the_brands_slow_confirmers_within_its_bounds() {
        let lags = ConfirmLags::default();
        assert_eq!(lags.lag("nordwind"), MIN_CONFIRM_LAG_MS, "nothing seen yet");
        // Buyers typing 10-60 s: 90 % of them within 55 s.
        for n in 0..(SAMPLES as i64) {
            lags.observe("nordwind", 10_000 + (n * 50_000) / SAMPLES as i64);
        }
        let lag = lags.lag("nordwind");
        assert!((54_000..=56_000).contains(&lag), "{lag}");
        assert_eq!(lags.lag("fjallnet"), MIN_CONFIRM_LAG_MS, "per brand");
        // Fast buyers: never below the shortest lag.
        for _ in 0..SAMPLES {
            lags.observe("fjallnet", 5_000);
        }
        assert_eq!(lags.lag("fjallnet"), MIN_CONFIRM_LAG_MS);
        // Confirming slowly on purpose buys at most the longest lag; only the latest count.
        for _ in 0..SAMPLES {
            lags.observe("nordwind", 3_600_000);
        }
        assert_eq!(lags.lag("nordwind"), MAX_CONFIRM_LAG_MS);
        for _ in 0..SAMPLES {
            lags.observe("nordwind", 20_000);
        }
        assert_eq!(lags.lag("nordwind"), MIN_CONFIRM_LAG_MS);
    }

    #[test]
    fn a_few_approvals_say_nothing_yet() {
        let lags = ConfirmLags::default();
        for _ in 0..MIN_SAMPLES - 1 {
            lags.observe("nordwind", 100_000);
        }
        assert_eq!(lags.lag("nordwind"), MIN_CONFIRM_LAG_MS);
        lags.observe("nordwind", 100_000);
        assert_eq!(lags.lag("nordwind"), 100_000);
    }
}
