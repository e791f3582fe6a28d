//! What one instance keeps between its writes to the shared counters: the hot counters (the
//! brand's ceiling and conversion, a prefix's starts), gathered and written in batches, and the
//! answers it remembers (counters seen exhausted, blocks seen in force).

use std::collections::VecDeque;

use super::confirm_lag::MAX_CONFIRM_LAG_MS;
use super::{Fraud, Refusal};
use crate::domain::Millis;
use crate::store::{CounterHit, CounterState};

/// How often an instance writes what it gathered in the hot counters (the brand's ceiling and
/// conversion, a prefix's starts). Between writes it decides on the last total plus its own.
pub(super) const HOT_FLUSH_MS: Millis = 250;

/// ...or once it gathered this many starts, so its view is never more than that behind.
pub(super) const HOT_FLUSH_STARTS: i64 = 8;

/// Entries the per-instance cache holds before it is cleared.
pub(super) const CACHE_LIMIT: usize = 100_000;

/// How long this instance answers from a remembered block without asking the database (an
/// operator's lift on another instance reaches it within this time).
pub(super) const BLOCK_CACHE_MS: Millis = 5_000;

/// A hot counter's state on this instance.
pub(super) struct Hot {
    /// Starts counted here and not yet written.
    pub(super) pending: i64,
    /// Starts counted here whose write is under way.
    pub(super) in_flight: i64,
    /// Approvals seen here and not yet written.
    pub(super) pending_approvals: i64,
    /// As last written (by this instance's statement, which returns the shared total).
    pub(super) state: Option<CounterState>,
    pub(super) written_at: Millis,
    /// The shared totals this instance read at its writes, oldest first: (when, window
    /// start, hits), kept back to [`MAX_CONFIRM_LAG_MS`] ago.
    pub(super) history: VecDeque<(Millis, Millis, i64)>,
}

/// A hot counter's history keeps at most one total per this long: a busy counter is written
/// every 8 starts, and the longest lag must still be covered.
const HISTORY_STEP_MS: Millis = 100;

/// Totals kept per hot counter at most: the longest lag at one total per [`HISTORY_STEP_MS`].
const HISTORY: usize = (MAX_CONFIRM_LAG_MS / HISTORY_STEP_MS) as usize + 64;

impl Default for Hot {
    /// Never written: its first start writes it.
    fn default() -> Self {
        Self {
            pending: 0,
            in_flight: 0,
            pending_approvals: 0,
            state: None,
            written_at: Millis::MIN,
            history: VecDeque::new(),
        }
    }
}

impl Fraud {
    pub(super) fn cached(&self, brand: &str, bucket: &str, now: Millis) -> Option<Refusal> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&format!("{brand}\0{bucket}"))
            .filter(|(until, _)| *until > now)
            .map(|(_, refusal)| refusal.clone())
    }

    pub(super) fn remember(&self, brand: &str, bucket: &str, until: Millis, refusal: &Refusal) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(format!("{brand}\0{bucket}"), (until, refusal.clone()));
    }

    /// Counts a start in the hot counters `hot`. Returns the ones due to be written (their
    /// gathered counts, or a read of a counter this instance has not seen) and this
    /// instance's view of the others: the last written state plus what it counted since.
    pub(super) fn count_hot(
        &self,
        brand: &str,
        hot: &[CounterHit],
        now: Millis,
    ) -> (Vec<CounterHit>, Vec<CounterState>) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        let mut local = Vec::new();
        for hit in hot {
            let counter = counters
                .entry(format!("{brand}\0{}", hit.bucket))
                .or_default();
            counter.pending += hit.count;
            match &counter.state {
                Some(state)
                    if now - counter.written_at < HOT_FLUSH_MS
                        && counter.pending < HOT_FLUSH_STARTS =>
                {
                    let mut view = state.clone();
                    let unwritten = counter.pending + counter.in_flight;
                    view.hits += unwritten;
                    view.pending = unwritten;
                    local.push(view);
                }
                _ => {
                    // Approvals gathered for a window that has ended by now belong to it,
                    // not to the window this write starts.
                    let ended = counter
                        .state
                        .as_ref()
                        .is_some_and(|state| state.window_start + state.window_ms <= now);
                    due.push(CounterHit {
                        count: counter.pending,
                        approvals: if ended { 0 } else { counter.pending_approvals },
                        ..hit.clone()
                    });
                    counter.in_flight += counter.pending;
                    counter.pending = 0;
                    counter.pending_approvals = 0;
                    // Written now: no other start of this instance writes it meanwhile.
                    counter.written_at = now;
                }
            }
        }
        if counters.len() >= CACHE_LIMIT {
            counters.clear();
        }
        (due, local)
    }

    /// Takes the states a statement wrote (carrying the counts in `flushed`) as the new base
    /// of the hot counters. Writes of one instance may land out of order: an older total never
    /// replaces a newer one.
    pub(super) fn written_hot(
        &self,
        brand: &str,
        written: &[CounterState],
        flushed: &[CounterHit],
    ) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        for hit in flushed {
            let Some(counter) = counters.get_mut(&format!("{brand}\0{}", hit.bucket)) else {
                continue;
            };
            counter.in_flight -= hit.count;
            let Some(state) = written.iter().find(|state| state.bucket == hit.bucket) else {
                continue;
            };
            let newer = counter.state.as_ref().is_none_or(|old| {
                (
                    state.window_start,
                    state.blocked_until,
                    state.hits + state.approvals,
                ) >= (
                    old.window_start,
                    old.blocked_until,
                    old.hits + old.approvals,
                )
            });
            if newer {
                counter.state = Some(state.clone());
                let at = counter.written_at;
                // A total written within a step of the last one kept adds nothing that a lag
                // could ask for (what was written by then is still true).
                let spaced = counter
                    .history
                    .back()
                    .is_none_or(|(when, window_start, _)| {
                        *when <= at - HISTORY_STEP_MS || *window_start != state.window_start
                    });
                if spaced {
                    counter
                        .history
                        .push_back((at, state.window_start, state.hits));
                }
                // One total at or before the longest lag's edge is all that is read of the
                // past.
                while counter.history.len() > HISTORY
                    || counter
                        .history
                        .get(1)
                        .is_some_and(|(when, _, _)| *when <= at - MAX_CONFIRM_LAG_MS)
                {
                    counter.history.pop_front();
                }
            }
        }
    }

    /// Fills in `state.settled` and `state.settled_prev`: of its window's starts and of the
    /// window's before, those this instance saw written at least `lag` before `now`. None of
    /// this window's if it saw no total that old; all of the window before's if it saw no
    /// total at all (a fresh instance cannot tell their ages).
    pub(super) fn settle(&self, brand: &str, state: &mut CounterState, now: Millis, lag: Millis) {
        let counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let seen = counters
            .get(&format!("{brand}\0{}", state.bucket))
            .and_then(|counter| {
                counter
                    .history
                    .iter()
                    .rev()
                    .find(|(when, _, _)| *when <= now - lag)
            });
        state.settled = seen
            .filter(|(_, window_start, _)| *window_start == state.window_start)
            .map_or(0, |(_, _, hits)| *hits);
        // A window begins at its first start after the last one ended; the window before is
        // the one that ended at most a window's length before this one began.
        let window_before = |window_start: Millis| {
            window_start < state.window_start
                && window_start + 2 * state.window_ms > state.window_start
        };
        state.settled_prev = match seen {
            // This window had begun by then: the window before is old enough, all of it.
            _ if state.window_start <= now - lag => None,
            // The window before had ended by then: all of it too.
            Some((_, window_start, _))
                if window_before(*window_start) && window_start + state.window_ms <= now - lag =>
            {
                None
            }
            // Of the window before, only what was written by then.
            Some((_, window_start, hits)) if window_before(*window_start) => Some(*hits),
            // Nothing written here in the window before by then.
            Some(_) => Some(0),
            None => None,
        };
    }

    /// Counts an approval in the hot counters `buckets` of `brand`; written with their next
    /// write, so approvals never queue on the brand's or a busy prefix's row either.
    pub(super) fn approve_hot(&self, brand: &str, buckets: &[String]) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        for bucket in buckets {
            counters
                .entry(format!("{brand}\0{bucket}"))
                .or_default()
                .pending_approvals += 1;
        }
    }

    /// Approvals this instance counted in a hot counter and has not written yet.
    pub(super) fn pending_approvals(&self, brand: &str, bucket: &str) -> i64 {
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{brand}\0{bucket}"))
            .map_or(0, |counter| counter.pending_approvals)
    }

    /// Adds `starts` to a hot counter's unwritten starts: -1 takes a refused start back out,
    /// +1 counts a served start in a counter it was only read from.
    pub(super) fn add_hot(&self, brand: &str, bucket: &str, starts: i64) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = counters.get_mut(&format!("{brand}\0{bucket}")) {
            counter.pending += starts;
        }
    }

    pub(super) fn forget(&self, brand: &str, bucket: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{brand}\0{bucket}"));
    }
}
