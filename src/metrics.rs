//! Prometheus metrics, registered once in the application's own registry.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    verifications_started: IntCounterVec,
    verifications_finished: IntCounterVec,
    sms_sends: IntCounterVec,
    sms_duration: HistogramVec,
    outbox_pending: IntGauge,
    outbox_oldest_age: Gauge,
    events_shipped: IntCounterVec,
    event_batches: IntCounterVec,
    clickhouse_errors: IntCounterVec,
    events_dead_lettered: IntCounterVec,
    sms_receipts: IntCounterVec,
    brand_reloads: IntCounterVec,
    worker_restarts: IntCounterVec,
    order_forwards: IntCounterVec,
    webhooks: IntCounterVec,
    fraud_refusals: IntCounterVec,
    prefix_blocks: IntCounterVec,
    active_blocks: IntGauge,
    sim_swap_checks: IntCounterVec,
    sim_swap_duration: HistogramVec,
    privacy_purged: IntCounterVec,
    /// The SMPP providers' sessions.
    pub smpp: SmppMetrics,
}

/// The SMPP providers' sessions, by provider.
pub struct SmppMetrics {
    /// 1 while bound, else 0.
    pub session_up: IntGaugeVec,
    /// Bind attempts: `ok` or the SMSC's refusal (`ESME_RINVPASWD`, …) or `connect_failed`.
    pub binds: IntCounterVec,
    /// `submit_sm` by outcome: `ok`, `throttled`, `refused`, `timeout`, `lost` (the session
    /// went down before the answer), `no_session`.
    pub submits: IntCounterVec,
    /// Submits awaiting their answer.
    pub window_in_use: IntGaugeVec,
    /// From the `submit_sm_resp` to the delivery receipt.
    pub receipt_lag: HistogramVec,
}

impl SmppMetrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let session_up = IntGaugeVec::new(
            Opts::new("smpp_session_up", "1 while the SMPP session is bound"),
            &["provider"],
        )?;
        let binds = IntCounterVec::new(
            Opts::new("smpp_binds_total", "SMPP bind attempts by result"),
            &["provider", "result"],
        )?;
        let submits = IntCounterVec::new(
            Opts::new("smpp_submits_total", "SMPP submit_sm by outcome"),
            &["provider", "outcome"],
        )?;
        let window_in_use = IntGaugeVec::new(
            Opts::new("smpp_window_in_use", "SMPP submits awaiting their answer"),
            &["provider"],
        )?;
        let receipt_lag = HistogramVec::new(
            HistogramOpts::new(
                "smpp_receipt_lag_seconds",
                "Time from an SMPP submit's answer to its delivery receipt",
            )
            .buckets(vec![0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]),
            &["provider"],
        )?;
        registry.register(Box::new(session_up.clone()))?;
        registry.register(Box::new(binds.clone()))?;
        registry.register(Box::new(submits.clone()))?;
        registry.register(Box::new(window_in_use.clone()))?;
        registry.register(Box::new(receipt_lag.clone()))?;
        Ok(Self {
            session_up,
            binds,
            submits,
            window_in_use,
            receipt_lag,
        })
    }
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("orderguard".to_owned()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by matched route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by matched route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route", "method"],
        )?;
        let verifications_started = IntCounterVec::new(
            Opts::new(
                "verifications_started_total",
                "Verifications started, by brand",
            ),
            &["brand"],
        )?;
        let verifications_finished = IntCounterVec::new(
            Opts::new(
                "verifications_finished_total",
                "Verifications reaching a final status",
            ),
            &["brand", "status"],
        )?;
        let sms_sends = IntCounterVec::new(
            Opts::new(
                "sms_sends_total",
                "SMS send attempts by provider and result",
            ),
            &["provider", "result"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(verifications_started.clone()))?;
        registry.register(Box::new(verifications_finished.clone()))?;
        registry.register(Box::new(sms_sends.clone()))?;
        let sms_duration = HistogramVec::new(
            HistogramOpts::new(
                "sms_send_seconds",
                "Time one SMS provider took to accept or refuse a message, by provider and result",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["provider", "result"],
        )?;
        registry.register(Box::new(sms_duration.clone()))?;
        let outbox_pending = IntGauge::new("outbox_pending", "Events waiting in the outbox")?;
        let outbox_oldest_age = Gauge::new(
            "outbox_oldest_age_seconds",
            "Age of the oldest event waiting in the outbox",
        )?;
        let events_shipped = IntCounterVec::new(
            Opts::new("events_shipped_total", "Events the sink acknowledged"),
            &["sink"],
        )?;
        let event_batches = IntCounterVec::new(
            Opts::new(
                "event_batches_total",
                "Batches of events the sink acknowledged",
            ),
            &["sink"],
        )?;
        let clickhouse_errors = IntCounterVec::new(
            Opts::new(
                "clickhouse_errors_total",
                "Failed ClickHouse inserts: unavailable (retried) or rejected (bad data)",
            ),
            &["kind"],
        )?;
        let events_dead_lettered = IntCounterVec::new(
            Opts::new(
                "events_dead_lettered_total",
                "Events moved to the dead-letter table",
            ),
            &["sink"],
        )?;
        let sms_receipts = IntCounterVec::new(
            Opts::new(
                "sms_receipts_total",
                "Delivery receipts by provider and result",
            ),
            &["provider", "result"],
        )?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(outbox_oldest_age.clone()))?;
        registry.register(Box::new(events_shipped.clone()))?;
        registry.register(Box::new(event_batches.clone()))?;
        registry.register(Box::new(clickhouse_errors.clone()))?;
        registry.register(Box::new(events_dead_lettered.clone()))?;
        registry.register(Box::new(sms_receipts.clone()))?;
        let brand_reloads = IntCounterVec::new(
            Opts::new(
                "brand_reload_total",
                "Brand folder changes: applied, rejected (last good kept) or removed",
            ),
            &["result"],
        )?;
        registry.register(Box::new(brand_reloads.clone()))?;
        let worker_restarts = IntCounterVec::new(
            Opts::new(
                "worker_restarts_total",
                "Background workers restarted after dying (panic or early return), by worker",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(worker_restarts.clone()))?;
        let order_forwards = IntCounterVec::new(
            Opts::new(
                "order_forwards_total",
                "Forward attempts of held orders: forwarded, rejected, retry, failed",
            ),
            &["brand", "result"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "webhooks_total",
                "Webhook attempts: delivered, retry, failed",
            ),
            &["brand", "result"],
        )?;
        registry.register(Box::new(order_forwards.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        let fraud_refusals = IntCounterVec::new(
            Opts::new(
                "fraud_refusals_total",
                "Starts and resends a fraud rule refused (mode enforce) or would have refused (monitor)",
            ),
            &["brand", "rule", "mode"],
        )?;
        let prefix_blocks = IntCounterVec::new(
            Opts::new(
                "prefix_blocks_total",
                "Prefix blocks placed by the pumping guard or lifted by an operator",
            ),
            &["brand", "action"],
        )?;
        let active_blocks = IntGauge::new(
            "prefix_blocks_active",
            "Prefix blocks in force, as last counted by this instance",
        )?;
        let sim_swap_checks = IntCounterVec::new(
            Opts::new("sim_swap_checks_total", "SIM swap API calls by outcome"),
            &["brand", "outcome"],
        )?;
        let sim_swap_duration = HistogramVec::new(
            HistogramOpts::new("sim_swap_check_seconds", "SIM swap API latency")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["brand"],
        )?;
        registry.register(Box::new(fraud_refusals.clone()))?;
        registry.register(Box::new(prefix_blocks.clone()))?;
        registry.register(Box::new(active_blocks.clone()))?;
        registry.register(Box::new(sim_swap_checks.clone()))?;
        registry.register(Box::new(sim_swap_duration.clone()))?;
        let privacy_purged = IntCounterVec::new(
            Opts::new(
                "privacy_purged_total",
                "Rows the retention purge blanked or deleted, by table",
            ),
            &["table"],
        )?;
        registry.register(Box::new(privacy_purged.clone()))?;
        for table in [
            "verification",
            "held_order",
            "idempotency",
            "fraud_counter",
            "dead_letter",
        ] {
            privacy_purged.with_label_values(&[table]);
        }
        // Series that alerts and dashboards read exist from the start, at 0: a counter first
        // seen at 1 is a step `increase()` never shows, so the first worker restart or
        // rejected brand change would raise no alert.
        for kind in ["unavailable", "rejected"] {
            clickhouse_errors.with_label_values(&[kind]);
        }
        for sink in ["clickhouse", "jsonl"] {
            events_shipped.with_label_values(&[sink]);
            events_dead_lettered.with_label_values(&[sink]);
        }
        for result in ["applied", "rejected", "removed"] {
            brand_reloads.with_label_values(&[result]);
        }
        for worker in crate::supervisor::WORKERS {
            worker_restarts.with_label_values(&[worker]);
        }
        let smpp = SmppMetrics::register(&registry)?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            verifications_started,
            verifications_finished,
            sms_sends,
            sms_duration,
            outbox_pending,
            outbox_oldest_age,
            events_shipped,
            event_batches,
            clickhouse_errors,
            events_dead_lettered,
            sms_receipts,
            brand_reloads,
            worker_restarts,
            order_forwards,
            webhooks,
            fraud_refusals,
            prefix_blocks,
            active_blocks,
            sim_swap_checks,
            sim_swap_duration,
            privacy_purged,
            smpp,
        })
    }

    pub fn fraud_refusal(&self, brand: &str, rule: &str, mode: &str) {
        self.fraud_refusals
            .with_label_values(&[brand, rule, mode])
            .inc();
    }

    pub fn prefix_block(&self, brand: &str, action: &str) {
        self.prefix_blocks.with_label_values(&[brand, action]).inc();
    }

    /// The prefix blocks in force, as this instance last counted them (every sweep, and at
    /// every listing): all instances report the same shared count.
    pub fn active_blocks(&self, count: usize) {
        self.active_blocks.set(count as i64);
    }

    pub fn sim_swap_check(&self, brand: &str, outcome: &str, seconds: f64) {
        self.sim_swap_checks
            .with_label_values(&[brand, outcome])
            .inc();
        self.sim_swap_duration
            .with_label_values(&[brand])
            .observe(seconds);
    }

    pub fn privacy_purged(&self, table: &str, rows: u64) {
        self.privacy_purged.with_label_values(&[table]).inc_by(rows);
    }

    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// Makes the traffic series of these brands and SMS providers exist at 0 from the start:
    /// a series first scraped after its first increments hides them from `rate()`.
    pub fn declare(&self, brands: &[&str], providers: &[&str]) {
        for brand in brands {
            self.verifications_started.with_label_values(&[brand]);
        }
        for provider in providers {
            self.sms_sends.with_label_values(&[provider, "sent"]);
            self.sms_duration.with_label_values(&[provider, "sent"]);
        }
    }

    pub fn verification_started(&self, brand: &str) {
        self.verifications_started.with_label_values(&[brand]).inc();
    }

    pub fn verification_finished(&self, brand: &str, status: &str) {
        self.verifications_finished
            .with_label_values(&[brand, status])
            .inc();
    }

    /// One send attempt through `provider`: its result and how long the provider took.
    pub fn sms_sent(&self, provider: &str, result: &str, seconds: f64) {
        self.sms_sends.with_label_values(&[provider, result]).inc();
        self.sms_duration
            .with_label_values(&[provider, result])
            .observe(seconds);
    }

    pub fn outbox(&self, pending: i64, oldest_age_seconds: f64) {
        self.outbox_pending.set(pending);
        self.outbox_oldest_age.set(oldest_age_seconds);
    }

    /// One batch of `count` events the sink acknowledged.
    pub fn events_shipped(&self, sink: &str, count: usize) {
        self.events_shipped
            .with_label_values(&[sink])
            .inc_by(count as u64);
        self.event_batches.with_label_values(&[sink]).inc();
    }

    /// A failed write to the event sink; counted in `clickhouse_errors_total` for ClickHouse.
    pub fn sink_error(&self, sink: &str, kind: &str) {
        if sink == "clickhouse" {
            self.clickhouse_errors.with_label_values(&[kind]).inc();
        }
    }

    pub fn events_dead_lettered(&self, sink: &str, count: usize) {
        self.events_dead_lettered
            .with_label_values(&[sink])
            .inc_by(count as u64);
    }

    pub fn sms_receipt(&self, provider: &str, result: &str) {
        self.sms_receipts
            .with_label_values(&[provider, result])
            .inc();
    }

    pub fn worker_restart(&self, worker: &str) {
        self.worker_restarts.with_label_values(&[worker]).inc();
    }

    pub fn brand_reload(&self, result: &str) {
        self.brand_reloads.with_label_values(&[result]).inc();
    }

    pub fn order_forward(&self, brand: &str, result: &str) {
        self.order_forwards
            .with_label_values(&[brand, result])
            .inc();
    }

    pub fn webhook(&self, brand: &str, result: &str) {
        self.webhooks.with_label_values(&[brand, result]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_metrics_table_names_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README");
        let table = readme
            .split("## Metrics")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("a Metrics section");
        let metrics = Metrics::new().expect("metrics");
        // Labelled families without a series yet are not gathered: give each one.
        metrics.http_request("/x", "GET", 200, 0.1);
        metrics.verification_started("b");
        metrics.verification_finished("b", "approved");
        metrics.sms_sent("p", "sent", 0.1);
        metrics.sms_receipt("p", "delivered");
        metrics.order_forward("b", "forwarded");
        metrics.webhook("b", "delivered");
        metrics.fraud_refusal("b", "r", "enforce");
        metrics.prefix_block("b", "placed");
        metrics.sim_swap_check("b", "ok", 0.1);
        metrics.events_shipped("jsonl", 1);
        let families = metrics.registry.gather();
        assert!(families.len() >= 20, "{}", families.len());
        for family in families {
            let name = family.name().trim_start_matches("orderguard_");
            assert!(
                table.contains(&format!("`{name}`")),
                "the README's metrics table lacks {name}"
            );
        }
    }
}
