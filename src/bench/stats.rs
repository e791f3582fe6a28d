//! Measurements: latency histograms per call, error counts by type, and the service's CPU
//! time and memory read from `/proc`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of one kind of call, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Histograms (microseconds, 1 µs to 60 s, 3 significant digits) and errors, shared by tasks.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    pub fn record(&self, call: &'static str, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = calls.entry(call).or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
        });
        let _ = histogram.record(micros);
    }

    pub fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.into())
            .or_default() += 1;
    }

    pub fn latencies(&self) -> BTreeMap<String, Latency> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls
            .iter()
            .map(|(call, h)| {
                let ms = |micros: u64| micros as f64 / 1000.0;
                let latency = Latency {
                    count: h.len(),
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p90_ms: ms(h.value_at_quantile(0.90)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    max_ms: ms(h.max()),
                };
                ((*call).to_owned(), latency)
            })
            .collect()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// CPU time and memory of a process, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessSample {
    /// User plus system CPU seconds since the process started.
    pub cpu_seconds: f64,
    pub rss_mb: f64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_mb: f64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is not there.
pub fn sample(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports CPU time in clock ticks of USER_HZ, which is 100 on every mainstream build.
    Some(ProcessSample {
        cpu_seconds: ticks / 100.0,
        rss_mb: kb("VmRSS:") / 1024.0,
        peak_rss_mb: kb("VmHWM:") / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.record("check", Duration::from_millis(ms));
        }
        recorder.error("422 invalid_code");
        let latency = &recorder.latencies()["check"];
        assert_eq!(latency.count, 100);
        assert!((49.0..=51.0).contains(&latency.p50_ms), "{latency:?}");
        assert!((98.0..=100.5).contains(&latency.p99_ms), "{latency:?}");
        assert_eq!(recorder.errors()["422 invalid_code"], 1);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample(std::process::id()).expect("our own /proc entry");
        assert!(
            sample.peak_rss_mb > 0.0 && sample.rss_mb > 0.0,
            "{sample:?}"
        );
    }
}
