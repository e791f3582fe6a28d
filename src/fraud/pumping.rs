//! The SMS-pumping guard: a number prefix (or the whole brand) with many starts and few
//! approvals is blocked for a cool-down that doubles when it trips again; known-good numbers
//! and customers pass it.

use super::config::Pumping;
use super::hot::BLOCK_CACHE_MS;
use super::limits::Limit;
use super::{Fraud, Refusal, RuleMode, StartFacts, Verdict};
use crate::brands::Brand;
use crate::domain::Millis;
use crate::events::EventType;
use crate::store::{CounterHit, CounterState, KnownGood, NewBlock};

/// A prefix that trips again within this long after its last block ended gets the next,
/// doubled cool-down; later it starts over at the first.
pub(super) const REPEAT_WINDOW_MS: Millis = 24 * 3_600_000;

/// The starts of a counter old enough to have converted (see [`super::confirm_lag`]): those
/// of the window before this one, and those of this window, that this instance saw written at
/// least the brand's confirmation lag ago (`settled`, `settled_prev`: of the window before,
/// those starts only, when it ended less than the lag ago — their approvals are still coming,
/// and count in this window). A surge of starts — a sale beginning, a busy prefix on a fresh
/// instance, a window's turn — is thus never judged before its buyers could have typed their
/// codes.
pub(super) fn mature_starts(counter: &CounterState) -> f64 {
    let before = previous(counter).0;
    let before = counter
        .settled_prev
        .map_or(before, |settled| settled.min(before));
    (before + counter.settled) as f64
}

/// Whether a counter's approvals (this window's and the one before) reach `ratio` of `starts`.
pub(super) fn converts(counter: &CounterState, ratio: f64, starts: f64) -> bool {
    (counter.approvals + previous(counter).1) as f64 >= ratio * starts
}

/// The starts and approvals of the window before this one, unless this window began as a
/// block ended: a released prefix is judged on what came after its block, never again on the
/// attack that tripped it.
fn previous(counter: &CounterState) -> (i64, i64) {
    let after_block = counter.blocked_until != 0
        && counter.blocked_until <= counter.window_start
        && counter.window_start - counter.blocked_until < counter.window_ms;
    if after_block {
        (0, 0)
    } else {
        (counter.prev_hits, counter.prev_approvals)
    }
}

/// The per-instance memory of a range the range guard refused (`range_refused:<bucket>`).
pub(super) const RANGE_REFUSED: &str = "range_refused:";

/// The brand's counter of all starts and their approvals in the pumping window.
pub(super) const BRAND_STARTS: &str = "brand_starts";

/// The brand's counter of the starts it served to prefixes without an approval within
/// `known_good_days`, less those that converted (the new-prefix budget).
pub(super) const NEW_PREFIX_STARTS: &str = "new_prefix_starts";

/// A prefix's counter of approvals over `known_good_days` (`prefix_seen:+49151`): a prefix the
/// brand's buyers use.
pub(super) const PREFIX_SEEN: &str = "prefix_seen:";

/// The brand's approvals over `known_good_days`: how much history its prefixes' memory holds.
pub(super) const BRAND_SEEN: &str = "brand_seen";

/// How the brand's buyers' prefixes have shown, so that a prefix without an approval is one
/// they do not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// A history: `new_prefix_min_approvals` approvals within `known_good_days`.
    History,
    /// A shop without one that is busy now: `new_prefix_recent_approvals` approvals in the
    /// pumping window and the one before (a new shop's buyers convert in their prefixes within
    /// a minute, but its rarer prefixes have not all shown yet).
    Recent,
}

/// Whether and how the brand's buyers' prefixes have shown: from the brand's approvals within
/// `known_good_days` (`history`) or in the pumping windows (`recent`, the brand's counter).
fn buyers_prefixes_shown(
    pumping: &Pumping,
    history: &CounterState,
    recent: Option<&CounterState>,
) -> Option<Shown> {
    let approvals = |counter: &CounterState| counter.approvals + counter.prev_approvals;
    if approvals(history) >= i64::from(pumping.new_prefix_min_approvals) {
        Some(Shown::History)
    } else if pumping.new_prefix_recent_approvals > 0
        && recent
            .is_some_and(|all| approvals(all) >= i64::from(pumping.new_prefix_recent_approvals))
    {
        Some(Shown::Recent)
    } else {
        None
    }
}

/// The unconverted starts the new-prefix budget has spent in its window (`budget`, with
/// `pending_approvals` this instance has not written yet).
///
/// With a history, a prefix without an approval in `known_good_days` is none of the buyers':
/// every start served on the budget counts from the moment it is served. Without one, an
/// unseen prefix may be a buyer's whose first buyers are still typing their codes, so only
/// starts old enough to have converted count (`settled`), and the window before's unconverted
/// starts up to the whole budget: a pumper that spent the last window's budget does not find a
/// fresh one at the window's turn.
fn budget_spent(shown: Shown, budget: &CounterState, pending_approvals: i64, limit: i64) -> i64 {
    let converted = budget.approvals + pending_approvals;
    match shown {
        Shown::History => budget.hits - converted,
        Shown::Recent => {
            (budget.settled - converted).max(0)
                + (budget.prev_hits - budget.prev_approvals).clamp(0, limit)
        }
    }
}

/// What a start's statement counted, for [`Fraud::decide`].
#[derive(Clone, Copy)]
pub(super) struct Counted<'a> {
    /// Its rate-limit counters.
    pub(super) limits: &'a [Limit],
    /// The bucket of the counter the range guard reads, when the guard runs for this start.
    pub(super) range: Option<&'a str>,
    /// Every counter as the statement (or this instance's hot counts) left it.
    pub(super) states: &'a [CounterState],
}

impl Fraud {
    /// Judges the counters of a start after its hit.
    pub(super) async fn decide(
        &self,
        brand: &Brand,
        facts: &StartFacts<'_>,
        counted: Counted<'_>,
        now: Millis,
        verdict: &mut Verdict,
    ) -> anyhow::Result<()> {
        let Counted {
            limits,
            range,
            states,
        } = counted;
        let config = &brand.fraud;
        let brand_id = brand.id.as_str();
        let pumping = &config.pumping;
        let rate_mode = config.rate_limits.mode;
        let prefix = self.events.prefixes().prefix(facts.phone);
        let prefix_bucket = format!("prefix:{prefix}");
        let state = |bucket: &str| states.iter().find(|s| s.bucket == bucket);

        for limit in limits {
            let Some(counter) = state(&limit.hit.bucket) else {
                continue;
            };
            // The windows over their limit: refused until the last of them ends.
            let mut over = None;
            if counter.hits > limit.limits[0] {
                over = Some(counter.window_start + counter.window_ms);
            }
            if counter.window2_ms > 0 && counter.hits2 > limit.limits[1] {
                over = over.max(Some(counter.window2_start + counter.window2_ms));
            }
            if let Some(until) = over {
                let refusal = Refusal {
                    rule: "rate_limit",
                    key_type: limit.key_type,
                    problem: "rate_limited",
                    retry_at: Some(until),
                };
                if rate_mode == RuleMode::Enforce {
                    self.remember(brand_id, &limit.hit.bucket, until, &refusal);
                }
                if self.judge(brand_id, rate_mode, refusal, verdict) {
                    return Ok(());
                }
            }
        }
        if let Some(range) = range
            && let Some(counter) = state(range)
            && self.ranges.never_converts(
                &format!("{brand_id}\0{range}"),
                counter,
                pumping.range_min_starts,
                self.lags.lag(brand_id),
                now,
            )
        {
            // Many starts from one IP range, none approved: a pumper's proxies, not buyers.
            let refusal = Refusal {
                rule: "range_conversion",
                key_type: "ip_range",
                problem: "rate_limited",
                retry_at: Some((counter.window_start + counter.window_ms).min(now + 60_000)),
            };
            if pumping.mode == RuleMode::Enforce {
                // The range's next starts are refused from memory (with the known-good read a
                // blocked prefix takes), until an approval from it can have opened it.
                self.remember(
                    brand_id,
                    &format!("{RANGE_REFUSED}{range}"),
                    (counter.window_start + counter.window_ms).min(now + BLOCK_CACHE_MS),
                    &refusal,
                );
            }
            if !self.known_good(brand, facts, now).await?
                && self.judge(brand_id, pumping.mode, refusal, verdict)
            {
                return Ok(());
            }
        }
        if let Some(counter) = state(&prefix_bucket) {
            let blocked_until = if counter.blocked_until > now {
                Some(counter.blocked_until)
            } else {
                self.maybe_block(brand, &prefix, counter, now).await?
            };
            if let Some(until) = blocked_until {
                let refusal = Refusal {
                    rule: "pumping",
                    key_type: "prefix",
                    problem: "prefix_blocked",
                    retry_at: Some(until),
                };
                if pumping.mode == RuleMode::Enforce {
                    self.remember(
                        brand_id,
                        &prefix_bucket,
                        until.min(now + BLOCK_CACHE_MS),
                        &refusal,
                    );
                }
                if !self.known_good(brand, facts, now).await?
                    && self.judge(brand_id, pumping.mode, refusal, verdict)
                {
                    return Ok(());
                }
            } else if let Some(all) = state(BRAND_STARTS)
                && mature_starts(all) >= f64::from(pumping.brand_min_starts)
                && !converts(all, pumping.brand_min_approval_ratio, mature_starts(all))
                && counter.approvals + counter.prev_approvals == 0
            {
                // The whole brand converts far below its usual: slow pumping spread over many
                // prefixes. Only prefixes that converted in this window, and known-good
                // numbers, are served.
                let refusal = Refusal {
                    rule: "brand_conversion",
                    key_type: "brand",
                    problem: "prefix_blocked",
                    retry_at: Some(now + 60_000),
                };
                if !self.known_good(brand, facts, now).await?
                    && self.judge(brand_id, pumping.mode, refusal, verdict)
                {
                    return Ok(());
                }
            } else if let Some(budget) = state(NEW_PREFIX_STARTS)
                && let Some(history) = state(BRAND_SEEN)
                && let Some(seen) = state(&format!("{PREFIX_SEEN}{prefix}"))
                && counter.approvals + counter.prev_approvals == 0
                && seen.approvals + seen.prev_approvals == 0
                && let Some(shown) = buyers_prefixes_shown(pumping, history, state(BRAND_STARTS))
            {
                // The brand's buyers' prefixes have shown, and this prefix had no approval in
                // `known_good_days`: a prefix its buyers do not use, where a slow pumper spread
                // over many prefixes hides. Only so many such starts that did not convert are
                // served per window; a real buyer who converts in the prefix opens it.
                let limit = i64::from(pumping.new_prefix_budget);
                let pending = self.pending_approvals(brand_id, NEW_PREFIX_STARTS);
                if budget_spent(shown, budget, pending, limit) >= limit {
                    let refusal = Refusal {
                        rule: "new_prefix",
                        key_type: "prefix",
                        problem: "prefix_blocked",
                        retry_at: Some((budget.window_start + budget.window_ms).min(now + 60_000)),
                    };
                    if !self.known_good(brand, facts, now).await?
                        && self.judge(brand_id, pumping.mode, refusal, verdict)
                    {
                        return Ok(());
                    }
                }
                self.add_hot(brand_id, NEW_PREFIX_STARTS, 1);
                let mut on_budget = self.on_budget.lock().unwrap_or_else(|e| e.into_inner());
                if on_budget.len() >= super::hot::CACHE_LIMIT {
                    on_budget.clear();
                }
                on_budget.insert(format!("{brand_id}\0{}", facts.phone.e164()));
            }
        }

        Ok(())
    }

    /// Places a block on `prefix` if its counts say so; the block's end if one is in force now
    /// (placed here or, a moment ago, by another instance).
    pub(super) async fn maybe_block(
        &self,
        brand: &Brand,
        prefix: &str,
        counter: &CounterState,
        now: Millis,
    ) -> anyhow::Result<Option<Millis>> {
        let pumping = &brand.fraud.pumping;
        // Judged only on starts old enough to have converted.
        let judged = mature_starts(counter);
        if judged < f64::from(pumping.min_starts)
            || converts(counter, pumping.min_approval_ratio, judged)
        {
            return Ok(None);
        }
        let starts = counter.hits;
        let repeat = counter.blocked_until > 0 && now - counter.blocked_until < REPEAT_WINDOW_MS;
        let level = if repeat { counter.block_level + 1 } else { 1 };
        let cooldown = (i64::from(pumping.cooldown_seconds) * 1000)
            .saturating_mul(1 << (level - 1).clamp(0, 20))
            .min(i64::from(pumping.max_cooldown_seconds) * 1000);
        let until = now + cooldown;
        let event = self.events.prefix_block(
            brand.id.as_str(),
            EventType::PrefixBlockPlaced,
            prefix,
            level,
            &format!(
                "{} starts, {} approved in {} s (window before: {}, {}); judged on {:.0} starts; \
                 blocked for {} s",
                starts,
                counter.approvals,
                (now - counter.window_start) / 1000,
                previous(counter).0,
                previous(counter).1,
                judged,
                cooldown / 1000
            ),
            now,
        );
        let block = NewBlock {
            bucket: format!("prefix:{prefix}"),
            seen_until: counter.blocked_until,
            now,
            until,
            level,
        };
        if pumping.mode == RuleMode::Monitor {
            // A monitored guard places no block: the would-be refusal is the event.
            return Ok(Some(until));
        }
        if self.store.place_block(&brand.id, &block, &[event]).await? {
            self.metrics.prefix_block(brand.id.as_str(), "placed");
            tracing::warn!(brand = %brand.id, prefix, level, cooldown_s = cooldown / 1000, "prefix blocked: pumping guard");
            Ok(Some(until))
        } else {
            // Another instance placed (or an operator lifted) it in between: read it again.
            let hit = CounterHit {
                bucket: block.bucket.clone(),
                window_ms: Millis::from(pumping.window_seconds) * 1000,
                window2_ms: 0,
                count: 0,
                approvals: 0,
            };
            let again = self.store.hit_counters(&brand.id, &[hit], now).await?;
            Ok(again
                .first()
                .map(|s| s.blocked_until)
                .filter(|until| *until > now))
        }
    }

    pub(super) async fn known_good(
        &self,
        brand: &Brand,
        facts: &StartFacts<'_>,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let pseudonyms = self.events.pseudonymizer();
        let phone = pseudonyms.pseudonym("phone", facts.phone.e164());
        let customer = facts
            .customer_reference
            .map(|customer| pseudonyms.pseudonym("customer", customer));
        let person = KnownGood {
            phone_pseudonym: Some(&phone),
            customer_pseudonym: customer.as_deref(),
        };
        let since = now - Millis::from(brand.fraud.known_good_days) * 86_400_000;
        Ok(self.store.known_good(&brand.id, &person, since).await?)
    }
}
