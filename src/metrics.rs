//! Prometheus metrics, registered once in the application's own registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    verifications_started: IntCounterVec,
    verifications_finished: IntCounterVec,
    sms_sends: IntCounterVec,
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
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            verifications_started,
            verifications_finished,
            sms_sends,
        })
    }

    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    pub fn verification_started(&self, brand: &str) {
        self.verifications_started.with_label_values(&[brand]).inc();
    }

    pub fn verification_finished(&self, brand: &str, status: &str) {
        self.verifications_finished
            .with_label_values(&[brand, status])
            .inc();
    }

    pub fn sms_sent(&self, provider: &str, result: &str) {
        self.sms_sends.with_label_values(&[provider, result]).inc();
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
