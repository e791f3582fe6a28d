//! The range guard: an IP range (/24 or /64) whose starts never convert is a pumper's, even
//! when it spreads its numbers over many prefixes. A pumper that rents a few ranges (a proxy
//! provider's, a cloud's) brings many starts from each, and none is ever approved; real buyers
//! either come from many ranges, one start each, or share one behind a carrier-grade NAT, where
//! most of them convert.
//!
//! The shared `ip_range` rate-limit counter says how many starts a range was served in the
//! limit's window and how many of them were approved, by every instance. How many of them are
//! old enough to have converted is read from the totals this instance saw: each start it
//! serves from a range returns the range's shared total, and a total seen at least the brand's
//! confirmation lag ago counts starts (of every instance) that are at least that old. A range
//! is judged only on those, so a burst behind a NAT whose buyers are still typing their codes
//! is never refused: it is refused once more than `range_min_starts` starts were served in the
//! window, none approved, and a total of at least [`RANGE_MIN_SETTLED`] was seen the lag ago.
//! One approval from the range opens it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::config::RANGE_MIN_SETTLED;
use super::confirm_lag::MAX_CONFIRM_LAG_MS;
use crate::domain::Millis;
use crate::store::CounterState;

/// Ranges kept before the memory is cleared (it then forgets what it saw of their starts, so
/// they are judged a confirmation lag later: never sooner).
const RANGES: usize = 100_000;

/// A range's totals are kept at most one per this long (a busy range's are many a second).
const STEP_MS: Millis = 1_000;

/// Totals kept per range at most: the longest lag at one total per [`STEP_MS`].
const KEEP: usize = (MAX_CONFIRM_LAG_MS / STEP_MS) as usize + 8;

/// A range's shared total as this instance saw it when it served one of its starts.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Millis,
    window_start: Millis,
    /// Starts served in the window by then, every instance's (that one included).
    hits: i64,
}

#[derive(Default)]
pub(super) struct Ranges {
    /// `brand \0 bucket of the range's counter` → the totals seen, oldest first.
    seen: Mutex<HashMap<String, VecDeque<Seen>>>,
}

impl Ranges {
    /// Notes that this instance served a start from the range whose counter read `counter`
    /// after the start's hit, at `now`.
    pub(super) fn served(&self, key: &str, counter: &CounterState, now: Millis) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= RANGES && !seen.contains_key(key) {
            seen.clear();
        }
        let totals = seen.entry(key.to_owned()).or_default();
        totals.retain(|total| total.window_start == counter.window_start);
        // Within a step of the last total kept, this one adds nothing a lag could ask for that
        // the last does not say more cautiously (fewer starts, as old).
        if totals.back().is_some_and(|last| now - last.at < STEP_MS) {
            return;
        }
        totals.push_back(Seen {
            at: now,
            window_start: counter.window_start,
            hits: counter.hits,
        });
        // One total at or before the longest lag's edge is all that is read of the past.
        while totals.len() > KEEP
            || totals
                .get(1)
                .is_some_and(|total| total.at <= now - MAX_CONFIRM_LAG_MS)
        {
            totals.pop_front();
        }
    }

    /// Whether the range counted in `counter` (key `key`) never converts: more than
    /// `min_starts` starts served in the counter's window (this one aside) and none approved in
    /// it or the window before, and a total of at least [`RANGE_MIN_SETTLED`] of its starts
    /// seen by this instance at least `lag` before `now`, in this window.
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
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let settled = seen.get(key).map_or(0, |totals| {
            totals
                .iter()
                .filter(|total| total.window_start == counter.window_start && total.at <= now - lag)
                .map(|total| total.hits)
                .max()
                .unwrap_or(0)
        });
        settled >= RANGE_MIN_SETTLED
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
        // Ten starts in 20 s, none approved yet: a NAT's buyers still typing.
        for n in 0..10 {
            ranges.served("r", &counter(n + 1, 0, 100_000), 100_000 + n * 2_000);
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
        // A range this instance never served a start of: it has seen no total that old.
        assert!(!ranges.never_converts("s", &counter(11, 0, 100_000), 10, lag, 134_000));
    }

    #[test]
    fn totals_seen_count_every_instances_starts() {
        let ranges = Ranges::default();
        // This instance served every other start of a range; the totals it saw hold the
        // other instance's starts too.
        for n in [0, 2, 4] {
            ranges.served("r", &counter(n + 1, 0, 0), n * 1_000);
        }
        // 30 s after its second start (the range's third): three starts that old.
        assert!(ranges.never_converts("r", &counter(12, 0, 0), 10, 30_000, 32_000));
        assert!(!ranges.never_converts("r", &counter(12, 0, 0), 10, 30_000, 31_999));
    }

    #[test]
    fn a_busy_range_is_judged_on_the_total_it_had_a_lag_ago() {
        let ranges = Ranges::default();
        // Ten starts a second for 40 s, none approved.
        for n in 0..400 {
            ranges.served("r", &counter(n + 1, 0, 0), n * 100);
        }
        assert!(!ranges.never_converts("r", &counter(401, 0, 0), 10, 30_000, 29_999));
        assert!(ranges.never_converts("r", &counter(401, 0, 0), 10, 30_000, 40_000));
        // What is kept reaches back the longest lag, and no further than one total.
        let seen = ranges.seen.lock().expect("lock");
        let totals = &seen["r"];
        assert!(totals.len() <= KEEP, "{}", totals.len());
        assert_eq!(totals.front().map(|t| t.hits), Some(1));
    }
}
