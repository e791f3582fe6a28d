//! The SMS-pumping guard: a number prefix (or the whole brand) with many starts and few
//! approvals is blocked for a cool-down that doubles when it trips again; known-good numbers
//! and customers pass it.

use super::hot::BLOCK_CACHE_MS;
use super::limits::Limit;
use super::{Fraud, Refusal, RuleMode, StartFacts, Verdict};
use crate::brands::Brand;
use crate::domain::Millis;
use crate::events::EventType;
use crate::store::{CounterHit, CounterState, NewBlock};

/// A prefix that trips again within this long after its last block ended gets the next,
/// doubled cool-down; later it starts over at the first.
pub(super) const REPEAT_WINDOW_MS: Millis = 24 * 3_600_000;

/// Whether a counter's approvals reach `ratio` of its starts, over this window and the one
/// before: at the start of a window the latest starts still wait for their codes, and the
/// window before (settled) keeps a converting prefix from looking like a pumped one.
pub(super) fn ratio_at_least(counter: &CounterState, ratio: f64) -> bool {
    // The starts this instance counted since the last write are left out: their approvals
    // are not in the written state yet either.
    let starts = counter.hits - counter.pending + counter.prev_hits;
    let approvals = counter.approvals + counter.prev_approvals;
    approvals as f64 >= ratio * starts as f64
}

/// Buyers take a while to type their code: a window younger than this has too many starts
/// still waiting to judge its conversion...
pub(super) const SETTLE_MS: Millis = 120_000;

/// ...unless `min_starts` arrived within this long of its start: faster than any real prefix
/// (20 starts in 5 s is 4 per second into one prefix), as a walker does.
pub(super) const BURST_MS: Millis = 5_000;

/// Whether a counter's conversion can be judged: its window is old enough that most of its
/// starts had the time to be confirmed.
pub(super) fn judgeable(counter: &CounterState, now: Millis) -> bool {
    now - counter.window_start >= SETTLE_MS
}

/// The brand's counter of all starts and their approvals in the pumping window.
pub(super) const BRAND_STARTS: &str = "brand_starts";

impl Fraud {
    /// Judges the counters of a start after its hit.
    pub(super) async fn decide(
        &self,
        brand: &Brand,
        facts: &StartFacts<'_>,
        limits: &[Limit],
        states: &[CounterState],
        now: Millis,
        verdict: &mut Verdict,
    ) -> anyhow::Result<()> {
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
            if counter.hits > limit.limit {
                let until = counter.window_start + counter.window_ms;
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
                && all.hits >= i64::from(pumping.brand_min_starts)
                && judgeable(all, now)
                && !ratio_at_least(all, pumping.brand_min_approval_ratio)
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
        let starts = counter.hits;
        if starts < i64::from(pumping.min_starts)
            || ratio_at_least(counter, pumping.min_approval_ratio)
            || !(judgeable(counter, now) || now - counter.window_start < BURST_MS)
        {
            return Ok(None);
        }
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
                "{} starts, {} approved in {} s; blocked for {} s",
                starts,
                counter.approvals,
                pumping.window_seconds,
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
        let mut subjects = vec![format!(
            "phone:{}",
            pseudonyms.pseudonym("phone", facts.phone.e164())
        )];
        if let Some(customer) = facts.customer_reference {
            subjects.push(format!(
                "customer:{}",
                pseudonyms.pseudonym("customer", customer)
            ));
        }
        let since = now - Millis::from(brand.fraud.known_good_days) * 86_400_000;
        Ok(self.store.known_good(&brand.id, &subjects, since).await?)
    }
}
