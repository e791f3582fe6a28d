//! Number walks: a script that pumps SMS walks a number range (`…1000`, `…1001`, `…1002`), so
//! its numbers sit close together; real buyers' numbers are spread over the whole prefix (ten
//! million numbers or more behind a three-digit German prefix). A start whose number is near
//! several recent unconverted starts of its prefix is walking.
//!
//! This is what tells a walker from a busy real prefix in the first seconds, before any code
//! could have been typed: both bring many starts and no approvals yet. Each instance keeps the
//! last numbers it saw per prefix; behind a load balancer every instance still sees every
//! n-th number of a walk, which is as dense.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::domain::Millis;

/// Numbers kept per prefix.
const KEEP: usize = 32;
/// How close two numbers must be to count as one range.
pub(super) const SPAN: u64 = 10_000;
/// How many recent unconverted numbers near a new one make a walk.
pub(super) const NEAR: usize = 6;
/// How long a number stays evidence of a walk.
pub(super) const WALK_MS: Millis = 120_000;
/// Prefixes kept before the memory is cleared.
const PREFIXES: usize = 50_000;
/// A number this close to one of a walk's is inside the walk (a walker's step).
const STEP: u64 = 16;

/// What a start's number is to the walks of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    /// Not near a walk.
    None,
    /// Near enough to be walking, not right next to any number of the walk.
    Near,
    /// A step away from a number of the walk: the walk itself, never a known-good buyer in
    /// practice (refused without asking the database).
    Inside,
}

/// One recent start: its number (the E.164 digits) and when it started.
#[derive(Clone, Copy)]
struct Seen {
    number: u64,
    at: Millis,
}

#[derive(Default)]
pub(super) struct Walks {
    /// `brand \0 prefix` → the latest starts, oldest first.
    recent: Mutex<HashMap<String, VecDeque<Seen>>>,
}

fn digits(e164: &str) -> Option<u64> {
    e164.trim_start_matches('+').parse().ok()
}

impl Walks {
    /// Records a start to `e164` in `prefix` at `now`; whether it is walking: at least
    /// [`NEAR`] of the prefix's recent unconverted starts lie within [`SPAN`] of it.
    pub(super) fn observe(&self, key: &str, e164: &str, now: Millis) -> Walk {
        let Some(number) = digits(e164) else {
            return Walk::None;
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= PREFIXES && !recent.contains_key(key) {
            recent.clear();
        }
        let seen = recent.entry(key.to_owned()).or_default();
        while seen.front().is_some_and(|s| now - s.at > WALK_MS) {
            seen.pop_front();
        }
        let distances: Vec<u64> = seen
            .iter()
            .filter(|s| s.number != number)
            .map(|s| s.number.abs_diff(number))
            .filter(|distance| *distance <= SPAN)
            .collect();
        // A number seen again is moved to the end, never kept twice: one number started over
        // and over (a flood, refused by its own limit) must not push a walk's numbers out.
        seen.retain(|s| s.number != number);
        if seen.len() == KEEP {
            seen.pop_front();
        }
        seen.push_back(Seen { number, at: now });
        match distances.iter().min() {
            _ if distances.len() < NEAR => Walk::None,
            Some(closest) if *closest <= STEP => Walk::Inside,
            _ => Walk::Near,
        }
    }

    /// A start to `e164` converted: it is no evidence of a walk.
    pub(super) fn converted(&self, key: &str, e164: &str) {
        let Some(number) = digits(e164) else {
            return;
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = recent.get_mut(key) {
            seen.retain(|s| s.number != number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_is_seen_after_a_few_close_numbers_and_random_numbers_never_are() {
        let walks = Walks::default();
        let walking: Vec<Walk> = (0..10)
            .map(|n| walks.observe("b\0+49151", &format!("+4915100001{n:03}"), n))
            .collect();
        assert_eq!(walking[..6], [Walk::None; 6]);
        assert_eq!(walking[6..], [Walk::Inside; 4]);
        // A stride of 997 is as close, though not inside: known-good numbers are asked for.
        let strided: Vec<Walk> = (0..10i64)
            .map(|n| walks.observe("b\0+49152", &format!("+49152{:08}", n * 997), n))
            .collect();
        assert_eq!(strided[6..], [Walk::Near; 4]);
        // Numbers spread over the prefix, as buyers' are, never walk: 10,000 of them.
        let mut x: u64 = 12_345;
        for n in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let number = format!("+49160{:08}", (x >> 20) % 100_000_000);
            assert_eq!(
                walks.observe("b\0+49160", &number, n),
                Walk::None,
                "{number}"
            );
        }
    }

    #[test]
    fn one_number_started_over_and_over_does_not_hide_a_walk() {
        let walks = Walks::default();
        for n in 0..6 {
            walks.observe("k", &format!("+4915100001{n:03}"), n);
        }
        // A flood of one number far from the walk, in the same prefix, between the walk's
        // steps: more starts than the numbers kept per prefix.
        for n in 0..(3 * KEEP as i64) {
            walks.observe("k", "+4915199999999", 10 + n);
        }
        assert_eq!(
            walks.observe("k", "+4915100001006", 200),
            Walk::Inside,
            "the walk's numbers are still there"
        );
    }

    #[test]
    fn converted_and_old_numbers_are_no_evidence() {
        let walks = Walks::default();
        for n in 0..6 {
            walks.observe("k", &format!("+4915100001{n:03}"), 0);
            walks.converted("k", &format!("+4915100001{n:03}"));
        }
        assert_eq!(
            walks.observe("k", "+4915100001999", 0),
            Walk::None,
            "all converted"
        );
        for n in 0..6 {
            walks.observe("k", &format!("+4915100002{n:03}"), 0);
        }
        assert_eq!(
            walks.observe("k", "+4915100002999", WALK_MS + 1),
            Walk::None,
            "the walk is older than WALK_MS"
        );
        assert_eq!(walks.observe("j", "not a number", 0), Walk::None);
    }
}
