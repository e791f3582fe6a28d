//! The range guard: an IP range (/24 or /64) whose starts never convert is a pumper's, even
//! when it spreads its numbers over many prefixes. A pumper that rents a few ranges (a proxy
//! provider's, a cloud's) brings many starts from each, and none is ever approved; real buyers
//! either come from many ranges, one start each, or share one behind a carrier-grade NAT, where
//! most of them convert.
//!
//! The shared `ip_range` rate-limit counter says how many starts a range was served in the
//! limit's window and how many of them were approved (every instance's). Whether enough of them
//! are old enough to have converted is this instance's own view: it keeps the times of the
//! starts it served per range. A range is judged only on those, so a burst behind a NAT whose
//! buyers are still typing their codes is never refused: it is refused once `range_min_starts`
//! starts were served in the window, none approved, and at least [`RANGE_MIN_SETTLED`] of them
//! are older than the brand's confirmation lag. One approval from the range opens it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::config::RANGE_MIN_SETTLED;
use crate::domain::Millis;
use crate::store::CounterState;

/// Ranges kept before the memory is cleared (it then forgets how old their starts are, so
/// they are judged a confirmation lag later: never sooner).
const RANGES: usize = 100_000;

/// Start times kept per range: the oldest are the ones that matter, and a range with this many
/// has shown what it is.
const KEEP: usize = 64;

#[derive(Default)]
pub(super) struct Ranges {
    /// `brand \0 bucket of the range's counter` → when this instance served its starts,
    /// oldest first.
    served: Mutex<HashMap<String, VecDeque<Millis>>>,
}

impl Ranges {
    /// Notes that this instance served a start from the range counted in `key` at `now`.
    pub(super) fn served(&self, key: &str, now: Millis) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if served.len() >= RANGES && !served.contains_key(key) {
            served.clear();
        }
        let times = served.entry(key.to_owned()).or_default();
        if times.len() < KEEP {
            times.push_back(now);
        }
    }

    /// Whether the range counted in `counter` (key `key`) never converts: at least `min_starts`
    /// starts served in the counter's window and none approved in it or the window before, and
    /// at least [`RANGE_MIN_SETTLED`] of the starts this instance served in the window older
    /// than `lag`.
    pub(super) fn never_converts(
        &self,
        key: &str,
        counter: &CounterState,
        min_starts: u32,
        lag: Millis,
        now: Millis,
    ) -> bool {
        if min_starts == 0
            || counter.approvals + counter.prev_approvals > 0
            // `hits` holds this start too, which is not served yet.
            || counter.hits <= i64::from(min_starts)
        {
            return false;
        }
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = served.get_mut(key) else {
            return false;
        };
        // Starts of an earlier window are no evidence in this one.
        while times.front().is_some_and(|at| *at < counter.window_start) {
            times.pop_front();
        }
        times.iter().take_while(|at| **at <= now - lag).count() >= RANGE_MIN_SETTLED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(hits: i64, approvals: i64, window_start: Millis) -> CounterState {
        CounterState {
            bucket: "ip_range:300/600s:r".to_owned(),
            window_start,
            window_ms: 600_000,
            hits,
            approvals,
            ..CounterState::default()
        }
    }

    #[test]
    fn a_range_is_judged_on_starts_old_enough_to_have_converted() {
        let ranges = Ranges::default();
        // Ten starts in the last 20 s, none approved yet: a NAT's buyers still typing.
        for at in 0..10 {
            ranges.served("r", 100_000 + at * 2_000);
        }
        let lag = 30_000;
        assert!(!ranges.never_converts("r", &counter(11, 0, 100_000), 10, lag, 121_000));
        // Three of them are 30 s old, none was approved: a pumper's.
        assert!(ranges.never_converts("r", &counter(11, 0, 100_000), 10, lag, 134_000));
        // One approval in the window, or in the window before, opens it.
        assert!(!ranges.never_converts("r", &counter(10, 1, 100_000), 10, lag, 134_000));
        let mut before = counter(11, 0, 100_000);
        before.prev_approvals = 1;
        assert!(!ranges.never_converts("r", &before, 10, lag, 134_000));
        // Fewer starts than the minimum, or the guard off.
        assert!(!ranges.never_converts("r", &counter(10, 0, 100_000), 10, lag, 134_000));
        assert!(!ranges.never_converts("r", &counter(11, 0, 100_000), 0, lag, 134_000));
        // A new window: the old window's starts are no evidence.
        assert!(!ranges.never_converts("r", &counter(11, 0, 700_000), 10, lag, 710_000));
        // Another instance's range: this one has not seen its starts' ages.
        assert!(!ranges.never_converts("s", &counter(11, 0, 100_000), 10, lag, 134_000));
    }
}
