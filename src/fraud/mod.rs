//! The fraud rules, evaluated in the start step (and at resend) before any SMS is sent,
//! cheapest first:
//!
//! 1. the brand's allow-list (test numbers pass everything) and deny-list of prefixes;
//! 2. answers remembered by this instance: counters it saw exhausted, blocks it saw placed;
//! 3. one statement on the shared database that counts the start in every counter it belongs
//!    to and returns them: rate limits per number, customer, IP, IP range, order reference and
//!    brand; the SMS-pumping guard per number prefix; the brand's budget of unconverted starts;
//! 4. the SIM-swap check (a call to the operator), only when everything else passed.
//!
//! Every rule has a mode: `enforce` refuses; `monitor` serves the start and records what the
//! rule would have done (a `verification_blocked` event with outcome `monitored`). Every
//! refusal is an event naming the rule and what it counted by, never the key.
//!
//! Known-good numbers and customers (an approval within `known_good_days`) pass the pumping
//! guard and the unconverted-start budget: pumped numbers never convert, real buyers do, so
//! real buyers in an attacked prefix are still served.

pub mod config;
pub mod sim_swap;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

pub use config::{FraudConfig, RuleMode, Window};

use crate::brands::Brand;
use crate::domain::{Millis, PhoneNumber, now_millis};
use crate::events::{EventFactory, EventType};
use crate::metrics::Metrics;
use crate::store::{ApprovalSignals, BlockRecord, CounterHit, CounterState, NewBlock, Store};
use sim_swap::{SimSwapClient, SwapAnswer};

/// A prefix that trips again within this long after its last block ended gets the next,
/// doubled cool-down; later it starts over at the first.
const REPEAT_WINDOW_MS: Millis = 24 * 3_600_000;
/// How long this instance answers from a remembered block without asking the database (an
/// operator's lift on another instance reaches it within this time).
const BLOCK_CACHE_MS: Millis = 5_000;
/// How often an instance writes what it gathered in the hot counters (the brand's ceiling and
/// conversion, a prefix's starts). Between writes it decides on the last total plus its own.
const HOT_FLUSH_MS: Millis = 250;
/// ...or once it gathered this many starts, so its view is never more than that behind.
const HOT_FLUSH_STARTS: i64 = 8;
/// Entries the per-instance cache holds before it is cleared.
const CACHE_LIMIT: usize = 100_000;

/// The time the fraud rules read: the system clock plus an offset that tests move forward,
/// so windows and cool-downs are tested without waiting.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> Millis {
        now_millis() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward by `ms` (tests).
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The /24 of an IPv4 address or the /64 of an IPv6 address, as text; empty for no address.
pub fn ip_range(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => String::new(),
    }
}

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

/// A rate-limit counter of this start: its bucket, window and what it counts by.
struct Limit {
    hit: CounterHit,
    limit: i64,
    key_type: &'static str,
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
}

/// A hot counter's state on this instance.
struct Hot {
    /// Starts counted here and not yet written.
    pending: i64,
    /// Starts counted here whose write is under way.
    in_flight: i64,
    /// Approvals seen here and not yet written.
    pending_approvals: i64,
    /// As last written (by this instance's statement, which returns the shared total).
    state: Option<CounterState>,
    written_at: Millis,
}

impl Default for Hot {
    /// Never written: its first start writes it.
    fn default() -> Self {
        Self {
            pending: 0,
            in_flight: 0,
            pending_approvals: 0,
            state: None,
            written_at: Millis::MIN,
        }
    }
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
        }
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    fn cached(&self, brand: &str, bucket: &str, now: Millis) -> Option<Refusal> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&format!("{brand}\0{bucket}"))
            .filter(|(until, _)| *until > now)
            .map(|(_, refusal)| refusal.clone())
    }

    fn remember(&self, brand: &str, bucket: &str, until: Millis, refusal: &Refusal) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(format!("{brand}\0{bucket}"), (until, refusal.clone()));
    }

    /// Counts a start in the hot counters `hot`. Returns the ones due to be written (their
    /// gathered counts, or a read of a counter this instance has not seen) and this
    /// instance's view of the others: the last written state plus what it counted since.
    fn count_hot(
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
    fn written_hot(&self, brand: &str, written: &[CounterState], flushed: &[CounterHit]) {
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
            }
        }
    }

    /// Counts an approval in the hot counters `buckets` of `brand`; written with their next
    /// write, so approvals never queue on the brand's or a busy prefix's row either.
    fn approve_hot(&self, brand: &str, buckets: &[String]) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        for bucket in buckets {
            counters
                .entry(format!("{brand}\0{bucket}"))
                .or_default()
                .pending_approvals += 1;
        }
    }

    /// Takes a start back out of a hot counter (a refused start).
    fn uncount_hot(&self, brand: &str, bucket: &str) {
        let mut counters = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = counters.get_mut(&format!("{brand}\0{bucket}")) {
            counter.pending -= 1;
        }
    }

    fn forget(&self, brand: &str, bucket: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{brand}\0{bucket}"));
    }

    /// The rate-limit counters of a start.
    fn limits(&self, config: &FraudConfig, facts: &StartFacts<'_>) -> Vec<Limit> {
        let pseudonyms = self.events.pseudonymizer();
        let limits = &config.rate_limits;
        let mut keys: Vec<(&'static str, &[Window], String)> = vec![(
            "phone",
            &limits.phone,
            pseudonyms.pseudonym("phone", facts.phone.e164()),
        )];
        if !facts.resend {
            if let Some(customer) = facts.customer_reference {
                keys.push((
                    "customer",
                    &limits.customer,
                    pseudonyms.pseudonym("customer", customer),
                ));
            }
            if let Some(ip) = facts.client_ip {
                keys.push(("ip", &limits.ip, pseudonyms.pseudonym("ip", ip)));
                keys.push((
                    "ip_range",
                    &limits.ip_range,
                    pseudonyms.pseudonym("ip_range", &ip_range(ip)),
                ));
            }
            keys.push((
                "order_reference",
                &limits.order_reference,
                pseudonyms.pseudonym("order_reference", facts.order_reference),
            ));
            keys.push(("brand", &limits.brand, "all".to_owned()));
        }
        keys.into_iter()
            .filter(|(_, _, key)| !key.is_empty())
            .flat_map(|(key_type, windows, key)| {
                windows.iter().map(move |window| Limit {
                    hit: CounterHit {
                        bucket: format!("{key_type}:{}:{key}", window.label()),
                        window_ms: window.window_ms,
                        count: 1,
                        approvals: 0,
                    },
                    limit: window.limit,
                    key_type,
                })
            })
            .collect()
    }

    /// The counters that count only starts that never converted: an approval refunds them.
    fn refund_buckets(&self, config: &FraudConfig, ip: &str, range: &str) -> Vec<String> {
        let limits = &config.rate_limits;
        let mut buckets = Vec::new();
        for (key_type, windows, key) in [
            ("ip", &limits.ip, ip),
            ("ip_range", &limits.ip_range, range),
        ] {
            if key.is_empty() {
                continue;
            }
            for window in windows {
                buckets.push(format!("{key_type}:{}:{key}", window.label()));
            }
        }
        buckets
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
        let exempt = config
            .allow_prefixes
            .iter()
            .any(|p| e164.starts_with(p.as_str()));
        let limits = self.limits(config, facts);
        let pumping = &config.pumping;
        let prefix_bucket = format!("prefix:{prefix}");
        let guard_prefix = !exempt && !facts.resend;
        let brand_guard = guard_prefix && pumping.brand_min_starts > 0;

        // Remembered answers first: no database round trip for a refusal already known.
        let rate_mode = config.rate_limits.mode;
        for limit in &limits {
            if let Some(refusal) = self.cached(brand_id, &limit.hit.bucket, now)
                && self.judge(brand_id, rate_mode, refusal, &mut verdict)
            {
                return Ok(verdict);
            }
        }
        if !exempt
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
                count: 1,
                approvals: 0,
            });
        }
        if brand_guard {
            hot.push(CounterHit {
                bucket: BRAND_STARTS.to_owned(),
                window_ms,
                count: 1,
                approvals: 0,
            });
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
        let states: Vec<CounterState> = written.into_iter().chain(local).collect();
        self.decide(brand, facts, &limits, &states, now, &mut verdict)
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
                self.uncount_hot(brand_id, BRAND_STARTS);
            }
            for limit in limits.iter().filter(|limit| limit.key_type == "brand") {
                self.uncount_hot(brand_id, &limit.hit.bucket);
            }
            let signals = ApprovalSignals {
                refunds,
                started_at: now,
                now,
                ..ApprovalSignals::default()
            };
            self.store.record_approval(&brand.id, &signals).await?;
            return Ok(verdict);
        }
        if config.sim_swap.base_url.is_some() && !facts.resend {
            self.check_sim_swap(brand, facts, &mut verdict).await;
        }
        Ok(verdict)
    }

    /// Judges the counters of a start after its hit.
    async fn decide(
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
    async fn maybe_block(
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

    async fn known_good(
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

    /// What an approval tells the rules: the prefix converted, the IP's and range's start was
    /// not a pumped one, the number and customer are known-good. Failures are logged: the
    /// approval itself stands.
    pub async fn on_approval(
        &self,
        brand: &Brand,
        record: &crate::domain::VerificationRecord,
        phone_pseudonym: &str,
    ) {
        let prefix = self.events.prefixes().prefix(&record.phone);
        let mut known_good = vec![format!("phone:{phone_pseudonym}")];
        if !record.customer_pseudonym.is_empty() {
            known_good.push(format!("customer:{}", record.customer_pseudonym));
        }
        self.approve_hot(
            brand.id.as_str(),
            &[format!("prefix:{prefix}"), BRAND_STARTS.to_owned()],
        );
        let signals = ApprovalSignals {
            approved: Vec::new(),
            refunds: self.refund_buckets(
                &brand.fraud,
                &record.ip_pseudonym,
                &record.ip_range_pseudonym,
            ),
            known_good,
            started_at: record.created_at,
            now: self.clock.now(),
        };
        if let Err(error) = self.store.record_approval(&brand.id, &signals).await {
            tracing::warn!(brand = %brand.id, error = %format!("{error:#}"), "recording an approval for the fraud rules failed");
        }
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

/// Whether a counter's approvals reach `ratio` of its starts, over this window and the one
/// before: at the start of a window the latest starts still wait for their codes, and the
/// window before (settled) keeps a converting prefix from looking like a pumped one.
fn ratio_at_least(counter: &CounterState, ratio: f64) -> bool {
    // The starts this instance counted since the last write are left out: their approvals
    // are not in the written state yet either.
    let starts = counter.hits - counter.pending + counter.prev_hits;
    let approvals = counter.approvals + counter.prev_approvals;
    approvals as f64 >= ratio * starts as f64
}

/// Buyers take a while to type their code: a window younger than this has too many starts
/// still waiting to judge its conversion...
const SETTLE_MS: Millis = 120_000;
/// ...unless `min_starts` arrived within this long of its start: faster than any real prefix
/// (20 starts in 5 s is 4 per second into one prefix), as a walker does.
const BURST_MS: Millis = 5_000;

/// Whether a counter's conversion can be judged: its window is old enough that most of its
/// starts had the time to be confirmed.
fn judgeable(counter: &CounterState, now: Millis) -> bool {
    now - counter.window_start >= SETTLE_MS
}

/// The brand's counter of all starts and their approvals in the pumping window.
const BRAND_STARTS: &str = "brand_starts";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_the_slash_24_and_the_slash_64() {
        assert_eq!(ip_range("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(ip_range("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(ip_range("not an ip"), "");
    }
}
