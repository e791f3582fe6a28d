//! What a load run reports: flows and calls with their latencies, errors, the pumping
//! attack's outcome, and the service's CPU and memory.

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::{Flow, Model, leak};
use super::stats::{Latency, ProcessSample};

/// What the pumper of the attack scenario saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PumpReport {
    pub starts: u64,
    /// Refused by a fraud rule (429/403).
    pub refused: u64,
    /// Served: an SMS went out to a pumped number.
    pub sent: u64,
    pub sent_share: f64,
    pub refused_per_second: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub scenario: Flow,
    pub model: Model,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub flows_started: u64,
    pub flows_completed: u64,
    pub flows_per_second: f64,
    /// Completed flows by path (approved, wrong_then_approved, resent_then_approved, aborted,
    /// abandoned, and expired once checked).
    pub outcomes: BTreeMap<String, u64>,
    pub calls: BTreeMap<String, Latency>,
    pub errors: BTreeMap<String, u64>,
    pub sms_received: u64,
    /// Gate: distinct orders the upstream took.
    pub orders_forwarded: Option<u64>,
    /// Attack: the pumper's side.
    pub pumping: Option<PumpReport>,
    pub service: Option<ServiceUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceUsage {
    pub cpu_seconds: f64,
    /// CPU use over the run; 100 = one core.
    pub cpu_percent: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

impl super::Report for LoadReport {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let load = match self.model {
            Model::Closed => format!("closed, {} buyers", self.concurrency.unwrap_or_default()),
            Model::Open => format!("open, {} flows/s", self.rate.unwrap_or_default()),
        };
        let mut rows = vec![
            ("scenario", format!("{:?}", self.scenario).to_lowercase()),
            ("model", load),
            (
                "flows",
                format!(
                    "{} started, {} completed in {:.1} s",
                    self.flows_started, self.flows_completed, self.seconds
                ),
            ),
            (
                "throughput",
                format!("{:.0} flows/s", self.flows_per_second),
            ),
        ];
        for (name, l) in &self.calls {
            let line = format!(
                "p50 {:.1} · p90 {:.1} · p99 {:.1} · max {:.1} ms ({})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            );
            rows.push((leak(format!("latency {name}")), line));
        }
        rows.push(("outcomes", format!("{:?}", self.outcomes)));
        rows.push((
            "errors",
            if self.errors.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", self.errors)
            },
        ));
        if let Some(forwarded) = self.orders_forwarded {
            rows.push(("orders forwarded", forwarded.to_string()));
        }
        if let Some(pump) = &self.pumping {
            rows.push((
                "pumping",
                format!(
                    "{} starts, {} refused ({:.0}/s), {} SMS sent ({:.2} %), {} errors",
                    pump.starts,
                    pump.refused,
                    pump.refused_per_second,
                    pump.sent,
                    pump.sent_share * 100.0,
                    pump.errors
                ),
            ));
        }
        if let Some(service) = &self.service {
            let usage = format!(
                "{:.0} % CPU ({:.1} s), RSS {:.0} MB, peak {:.0} MB",
                service.cpu_percent, service.cpu_seconds, service.rss_mb, service.peak_rss_mb
            );
            rows.push(("service", usage));
        }
        rows
    }
}

pub(super) fn usage(before: ProcessSample, after: ProcessSample, seconds: f64) -> ServiceUsage {
    let cpu_seconds = after.cpu_seconds - before.cpu_seconds;
    ServiceUsage {
        cpu_seconds,
        cpu_percent: 100.0 * cpu_seconds / seconds,
        rss_mb: after.rss_mb,
        peak_rss_mb: after.peak_rss_mb,
    }
}
