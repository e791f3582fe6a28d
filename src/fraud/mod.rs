//! The fraud rules, evaluated in the start step (and at resend) before any SMS is sent,
//! cheapest first:
//!
//! 1. the brand's allow-list (test numbers pass everything) and deny-list of prefixes;
//! 2. number walks (`walk.rs`): a number close to several recent unconverted ones of its
//!    prefix is refused by its range, before anything is counted or even keyed (a walk's
//!    refusal computes no pseudonym of its own);
//! 3. answers remembered by this instance: counters it saw exhausted, blocks it saw placed;
//! 4. one statement on the shared database that counts the start in every counter it belongs
//!    to and returns them: rate limits per number, customer, IP, IP range, order reference and
//!    brand; the range guard (an IP range whose many starts never convert, judged on the
//!    shared totals this instance saw a confirmation lag ago, `range.rs`); the SMS-pumping
//!    guard per number prefix; the brand-wide conversion guard; the
//!    new-prefix budget (a brand with a history serves few unconverted starts to prefixes none
//!    of its buyers converted in);
//! 5. the SIM-swap check (a call to the operator), only when everything else passed.
//!
//! Every rule has a mode: `enforce` refuses; `monitor` serves the start and records what the
//! rule would have done (a `verification_blocked` event with outcome `monitored`). Every
//! refusal is an event naming the rule and what it counted by, never the key.
//!
//! Known-good numbers and customers (an approval within `known_good_days`) pass the pumping
//! guard and the unconverted-start budget: pumped numbers never convert, real buyers do, so
//! real buyers in an attacked prefix are still served.

pub mod config;
mod confirm_lag;
mod hot;
mod limits;
mod pumping;
mod range;
pub mod sim_swap;
mod walk;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

pub use crate::clock::Clock;
pub use config::{FraudConfig, RuleMode, Window};
use hot::Hot;
pub use limits::ip_range;
use pumping::{BRAND_SEEN, BRAND_STARTS, NEW_PREFIX_STARTS, PREFIX_SEEN, RANGE_REFUSED};

use crate::brands::Brand;
use crate::domain::{Millis, PhoneNumber};
use crate::events::{EventFactory, EventType};
use crate::metrics::Metrics;
use crate::store::{ApprovalSignals, BlockRecord, CounterHit, CounterState, Store};
use sim_swap::{SimSwapClient, SwapAnswer};

/// Why a rule refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `rate_limit`, `pumping`, `brand_conversion`, `deny_list`, `sim_swap`.
    pub rule: &'static str,
    /// What the rule counted by: `phone`, `customer`, `ip`, `ip_range`, `order_reference`,
    /// `brand`, `prefix`.
    pub key_type: &'static str,
    /// The problem type: `rate_limited`, `prefix_blocked`, `number_blocked`,
    /// `sim_swap_recent`, `sim_swap_unavailable`.
    pub problem: &'static str,
    /// When trying again can succeed, if waiting helps.
    pub retry_at: Option<Millis>,
}

/// The outcome of the rules for one start or resend.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The first enforcing rule that refused.
    pub refusal: Option<Refusal>,
    /// Rules in monitor mode that would have refused.
    pub monitored: Vec<Refusal>,
    /// Flags for the served verification's events (`sim_swap_flagged`, …).
    pub flags: Vec<String>,
}

/// What the rules know of a start.
#[derive(Debug, Clone, Copy)]
pub struct StartFacts<'a> {
    pub phone: &'a PhoneNumber,
    pub customer_reference: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub order_reference: &'a str,
    /// A resend counts toward the number's limits only.
    pub resend: bool,
}

pub struct Fraud {
    store: Arc<dyn Store>,
    sim_swap: SimSwapClient,
    metrics: Arc<Metrics>,
    events: EventFactory,
    clock: Arc<Clock>,
    /// `brand \0 bucket` → (until, refusal): counters seen exhausted, blocks seen in force.
    cache: Mutex<HashMap<String, (Millis, Refusal)>>,
    /// `brand \0 bucket` → the hot counters this instance gathers between writes.
    hot: Mutex<HashMap<String, Hot>>,
    /// The latest numbers started per prefix, to tell a walked range.
    walks: walk::Walks,
    /// `brand \0 number` of starts served on the new-prefix budget: their approval gives it back.
    on_budget: Mutex<std::collections::HashSet<String>>,
    /// How long each brand's buyers take to confirm.
    lags: confirm_lag::ConfirmLags,
    /// When this instance served the starts of each IP range (the range guard).
    ranges: range::Ranges,
}

impl Fraud {
    pub fn new(
        store: Arc<dyn Store>,
        sim_swap: SimSwapClient,
        metrics: Arc<Metrics>,
        events: EventFactory,
        clock: Arc<Clock>,
    ) -> Self {
        Self {
            store,
            sim_swap,
            metrics,
            events,
            clock,
            cache: Mutex::new(HashMap::new()),
            hot: Mutex::new(HashMap::new()),
            walks: walk::Walks::default(),
            on_budget: Mutex::new(std::collections::HashSet::new()),
            lags: confirm_lag::ConfirmLags::default(),
            ranges: range::Ranges::default(),
        }
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Applies `refusal` under `mode`: an enforced one ends the evaluation.
    fn judge(&self, brand: &str, mode: RuleMode, refusal: Refusal, verdict: &mut Verdict) -> bool {
        match mode {
            RuleMode::Enforce => {
                self.metrics.fraud_refusal(brand, refusal.rule, "enforce");
                verdict.refusal = Some(refusal);
                true
            }
            RuleMode::Monitor => {
                self.metrics.fraud_refusal(brand, refusal.rule, "monitor");
                verdict.monitored.push(refusal);
                false
            }
            RuleMode::Off => false,
        }
    }

    /// Evaluates every rule for a start (or resend) of `brand` at `now` (the start's own time
    /// on [`Clock`], so its counters' windows and the verification agree).
    pub async fn evaluate(
        &self,
        brand: &Brand,
        facts: &StartFacts<'_>,
        now: Millis,
    ) -> anyhow::Result<Verdict> {
        let config = &brand.fraud;
        let brand_id = brand.id.as_str();
        let mut verdict = Verdict::default();
        let e164 = facts.phone.e164();
        if config.allow_numbers.iter().any(|n| n == e164) {
            return Ok(verdict);
        }
        let prefix = self.events.prefixes().prefix(facts.phone);
        if config
            .deny_prefixes
            .iter()
            .any(|p| e164.starts_with(p.as_str()))
        {
            let refusal = Refusal {
                rule: "deny_list",
                key_type: "prefix",
                problem: "number_blocked",
                retry_at: None,
            };
            self.judge(brand_id, RuleMode::Enforce, refusal, &mut verdict);
            return Ok(verdict);
        }
        let exempt = config.exempt(e164);
        let pumping = &config.pumping;
        let guard_prefix = !exempt && !facts.resend && pumping.mode.runs();

        // A number walking a range (several close numbers that never converted, started in
        // the last two minutes) is refused before anything is counted: only the range is
        // refused, first-time buyers elsewhere in the prefix are served, and the walk's starts
        // do not lower the prefix's conversion.
        let walk = if guard_prefix {
            self.walks
                .observe(&format!("{brand_id}\0{prefix}"), e164, now)
        } else {
            walk::Walk::None
        };
        let walking = match walk {
            walk::Walk::None => false,
            walk::Walk::Inside => true,
            walk::Walk::Near => !self.known_good(brand, facts, now).await?,
        };
        if walking {
            let refusal = Refusal {
                rule: "number_walk",
                key_type: "range",
                problem: "prefix_blocked",
                retry_at: Some(now + walk::WALK_MS),
            };
            if self.judge(brand_id, pumping.mode, refusal, &mut verdict) {
                return Ok(verdict);
            }
        }

        let limits = if config.rate_limits.mode.runs() {
            self.limits(config, facts)
        } else {
            Vec::new()
        };
        let prefix_bucket = format!("prefix:{prefix}");
        let brand_guard = guard_prefix && pumping.brand_min_starts > 0;
        // The range guard reads the start's `ip_range` counter (its limit's first row).
        let range = if guard_prefix && pumping.range_min_starts > 0 {
            limits
                .iter()
                .find(|limit| limit.key_type == "ip_range")
                .map(|limit| limit.hit.bucket.as_str())
        } else {
            None
        };

        // Remembered answers first: no database round trip for a refusal already known.
        let rate_mode = config.rate_limits.mode;
        for limit in &limits {
            if let Some(refusal) = self.cached(brand_id, &limit.hit.bucket, now)
                && self.judge(brand_id, rate_mode, refusal, &mut verdict)
            {
                return Ok(verdict);
            }
        }
        if let Some(range) = range
            && let Some(refusal) = self.cached(brand_id, &format!("{RANGE_REFUSED}{range}"), now)
            && !self.known_good(brand, facts, now).await?
            && self.judge(brand_id, pumping.mode, refusal, &mut verdict)
        {
            return Ok(verdict);
        }
        if !exempt
            && pumping.mode.runs()
            && let Some(refusal) = self.cached(brand_id, &prefix_bucket, now)
            && !self.known_good(brand, facts, now).await?
            && self.judge(brand_id, pumping.mode, refusal, &mut verdict)
        {
            return Ok(verdict);
        }

        // Counters every start of a brand (or of a busy prefix) shares are hot rows: counted
        // here and written together every HOT_FLUSH_MS in the same statement as a start's own
        // counters, so starts never queue on one row's lock. Decisions read the last written
        // state plus what this instance counted since.
        let window_ms = Millis::from(pumping.window_seconds) * 1000;
        let mut hot: Vec<CounterHit> = limits
            .iter()
            .filter(|limit| limit.key_type == "brand")
            .map(|limit| limit.hit.clone())
            .collect();
        if guard_prefix {
            hot.push(CounterHit {
                bucket: prefix_bucket.clone(),
                window_ms,
                window2_ms: 0,
                count: 1,
                approvals: 0,
            });
        }
        if brand_guard {
            hot.push(CounterHit {
                bucket: BRAND_STARTS.to_owned(),
                window_ms,
                window2_ms: 0,
                count: 1,
                approvals: 0,
            });
            if pumping.budget_runs() {
                // Read here; a start is counted in it once it is served (`decide`).
                hot.push(CounterHit {
                    bucket: NEW_PREFIX_STARTS.to_owned(),
                    window_ms,
                    window2_ms: 0,
                    count: 0,
                    approvals: 0,
                });
                // Whether the prefix had an approval in `known_good_days`: read, and counted
                // by approvals only.
                let history_ms = Millis::from(config.known_good_days) * 86_400_000;
                hot.push(CounterHit {
                    bucket: format!("{PREFIX_SEEN}{prefix}"),
                    window_ms: history_ms,
                    window2_ms: 0,
                    count: 0,
                    approvals: 0,
                });
                hot.push(CounterHit {
                    bucket: BRAND_SEEN.to_owned(),
                    window_ms: history_ms,
                    window2_ms: 0,
                    count: 0,
                    approvals: 0,
                });
            }
        }
        let mut hits: Vec<CounterHit> = limits
            .iter()
            .filter(|limit| limit.key_type != "brand")
            .map(|limit| limit.hit.clone())
            .collect();
        let (due, mut local) = self.count_hot(brand_id, &hot, now);
        hits.extend(due.iter().cloned());
        let written = self.store.hit_counters(&brand.id, &hits, now).await;
        self.written_hot(brand_id, written.as_deref().unwrap_or_default(), &due);
        let written = written?;
        local.retain(|state| !written.iter().any(|w| w.bucket == state.bucket));
        let mut states: Vec<CounterState> = written.into_iter().chain(local).collect();
        // Only the budget of a shop without a history reads its settled starts.
        let settle_budget = pumping.new_prefix_recent_approvals > 0;
        // Read once, and only by a start whose pumping counters are judged.
        let mut lag = None;
        for state in &mut states {
            if state.bucket == prefix_bucket
                || state.bucket == BRAND_STARTS
                || (settle_budget && state.bucket == NEW_PREFIX_STARTS)
            {
                let lag = *lag.get_or_insert_with(|| self.lags.lag(brand_id));
                self.settle(brand_id, state, now, lag);
            }
        }
        let counted = pumping::Counted {
            limits: &limits,
            range,
            states: &states,
        };
        self.decide(brand, facts, counted, now, &mut verdict)
            .await?;
        if verdict.refusal.is_some() {
            // A refused start consumes no rate limit: only served starts count toward them.
            // The prefix counter keeps it: refused pumping keeps the prefix's conversion low
            // for as long as the attack goes on. The brand's keeps only the brand guard's own
            // refusals: a start refused for its limits or its blocked prefix says nothing of
            // the brand's conversion.
            let mut refunds: Vec<String> = limits
                .iter()
                .map(|limit| limit.hit.bucket.clone())
                .collect();
            refunds.retain(|bucket| !bucket.starts_with("brand:"));
            if brand_guard
                && verdict
                    .refusal
                    .as_ref()
                    .is_some_and(|refusal| refusal.rule != "brand_conversion")
            {
                self.add_hot(brand_id, BRAND_STARTS, -1);
            }
            for limit in limits.iter().filter(|limit| limit.key_type == "brand") {
                self.add_hot(brand_id, &limit.hit.bucket, -1);
            }
            let signals = ApprovalSignals {
                refunds,
                started_at: now,
                converted: false,
            };
            self.store.record_approval(&brand.id, &signals).await?;
            return Ok(verdict);
        }
        if config.sim_swap.base_url.is_some() && config.sim_swap.mode.runs() && !facts.resend {
            self.check_sim_swap(brand, facts, &mut verdict).await;
        }
        if verdict.refusal.is_none()
            && let Some(range) = range
            && let Some(counter) = states.iter().find(|state| state.bucket == range)
        {
            self.ranges
                .served(&format!("{brand_id}\0{range}"), counter, now);
        }
        Ok(verdict)
    }

    async fn check_sim_swap(&self, brand: &Brand, facts: &StartFacts<'_>, verdict: &mut Verdict) {
        let config = &brand.fraud.sim_swap;
        let started = Instant::now();
        let answer = self.sim_swap.check(config, facts.phone.e164()).await;
        self.metrics.sim_swap_check(
            brand.id.as_str(),
            answer.label(),
            started.elapsed().as_secs_f64(),
        );
        let refusal = match &answer {
            SwapAnswer::NotSwapped => return,
            SwapAnswer::Swapped if config.on_swap == config::OnSwap::Flag => {
                verdict.flags.push("sim_swap_flagged".to_owned());
                return;
            }
            SwapAnswer::Swapped => Refusal {
                rule: "sim_swap",
                key_type: "phone",
                problem: "sim_swap_recent",
                retry_at: None,
            },
            SwapAnswer::Error(error) => {
                tracing::warn!(brand = %brand.id, error, "SIM swap check failed");
                if config.on_error == config::OnError::Allow {
                    verdict.flags.push("sim_swap_unchecked".to_owned());
                    return;
                }
                Refusal {
                    rule: "sim_swap",
                    key_type: "phone",
                    problem: "sim_swap_unavailable",
                    retry_at: Some(self.clock.now() + 30_000),
                }
            }
        };
        self.judge(brand.id.as_str(), config.mode, refusal, verdict);
    }

    /// What an approval of `record` tells the rules, written in the approval's own
    /// transaction: the start from its IP and range was not a pumped one (refunded). `None`
    /// when there is nothing to write: no address, or no rate limit running. (The number and
    /// customer become known-good by the approval itself: see [`crate::store::KnownGood`].)
    pub fn approval_signals(
        &self,
        brand: &Brand,
        record: &crate::domain::VerificationRecord,
    ) -> Option<ApprovalSignals> {
        let config = &brand.fraud;
        if !config.rate_limits.mode.runs() {
            return None;
        }
        let refunds = self.refund_buckets(config, &record.ip_pseudonym, &record.ip_range_pseudonym);
        if refunds.is_empty() {
            return None;
        }
        Some(ApprovalSignals {
            refunds,
            started_at: record.created_at,
            converted: true,
        })
    }

    /// An approval committed: its prefix and its brand converted. Counted in the hot counters,
    /// written with their next write.
    pub fn approved(&self, brand: &Brand, record: &crate::domain::VerificationRecord) {
        if !brand.fraud.pumping.mode.runs() {
            return;
        }
        let key = format!("{}\0{}", brand.id, record.number_prefix);
        self.walks.converted(&key, record.phone.e164());
        self.lags
            .observe(brand.id.as_str(), self.clock.now() - record.created_at);
        let mut converted = vec![
            format!("prefix:{}", record.number_prefix),
            BRAND_STARTS.to_owned(),
        ];
        if brand.fraud.pumping.budget_runs() {
            // The prefix and the brand have a history of approvals now.
            converted.push(format!("{PREFIX_SEEN}{}", record.number_prefix));
            converted.push(BRAND_SEEN.to_owned());
            let on_budget = self
                .on_budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("{}\0{}", brand.id, record.phone.e164()));
            if on_budget {
                // A buyer, not a pumper: the start is given back to the budget.
                converted.push(NEW_PREFIX_STARTS.to_owned());
            }
        }
        self.approve_hot(brand.id.as_str(), &converted);
    }

    /// Every prefix block in force.
    pub async fn blocks(&self) -> anyhow::Result<Vec<BlockRecord>> {
        let blocks = self.store.active_blocks(self.clock.now()).await?;
        self.metrics.active_blocks(blocks.len());
        Ok(blocks)
    }

    /// Lifts the block on `prefix` of `brand` at once; the event names `actor`. False when
    /// no block was in force.
    pub async fn lift(&self, brand: &Brand, prefix: &str, actor: &str) -> anyhow::Result<bool> {
        let now = self.clock.now();
        let bucket = format!("prefix:{prefix}");
        let event = self.events.prefix_block(
            brand.id.as_str(),
            EventType::PrefixBlockLifted,
            prefix,
            0,
            &format!("lifted by {actor}"),
            now,
        );
        let lifted = self
            .store
            .lift_block(&brand.id, &bucket, now, &[event])
            .await?;
        self.forget(brand.id.as_str(), &bucket);
        if lifted {
            self.metrics.prefix_block(brand.id.as_str(), "lifted");
            tracing::info!(brand = %brand.id, prefix, actor, "prefix block lifted");
        }
        Ok(lifted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_the_slash_24_and_the_slash_64() {
        assert_eq!(ip_range("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(ip_range("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(ip_range("not an ip"), "");
        // IPv4-mapped: the IPv4 /24, not the one /64 every mapped address shares.
        assert_eq!(ip_range("::ffff:203.0.113.77"), "203.0.113.0/24");
        assert_ne!(
            ip_range("::ffff:198.51.100.7"),
            ip_range("::ffff:203.0.113.7")
        );
    }
}
