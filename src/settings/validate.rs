//! Settings checked once, at load, and read as typed values (`Duration`s, counts at least one)
//! ever after: no use site clamps a setting it was given.

use std::time::Duration;

use super::{EventSettings, GateSettings, Settings};

/// `name` must lie in `min..=max`.
fn within(problems: &mut Vec<String>, name: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        problems.push(format!(
            "{name} must be between {min} and {max} (got {value})"
        ));
    }
}

impl Settings {
    /// Every value out of its range, each named; `Ok` if none.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let p = &mut problems;
        const DAY_MS: u64 = 86_400_000;
        within(
            p,
            "http.request_timeout_ms",
            self.http.request_timeout_ms,
            1,
            DAY_MS,
        );
        within(
            p,
            "http.body_limit_bytes",
            self.http.body_limit_bytes as u64,
            1,
            1 << 30,
        );
        within(
            p,
            "http.max_in_flight",
            self.http.max_in_flight as u64,
            1,
            1_000_000,
        );
        within(
            p,
            "database.max_connections",
            u64::from(self.database.max_connections),
            1,
            10_000,
        );
        within(
            p,
            "sweeper.interval_ms",
            self.sweeper.interval_ms,
            10,
            DAY_MS,
        );
        let events = &self.events;
        within(
            p,
            "events.batch_rows",
            events.batch_rows as u64,
            1,
            1_000_000,
        );
        within(
            p,
            "events.batch_bytes",
            events.batch_bytes as u64,
            1,
            1 << 30,
        );
        within(p, "events.period_ms", events.period_ms, 1, DAY_MS);
        within(p, "events.lease_ms", events.lease_ms, 1_000, DAY_MS);
        within(
            p,
            "events.retry_initial_ms",
            events.retry_initial_ms,
            1,
            DAY_MS,
        );
        within(
            p,
            "events.retry_max_ms",
            events.retry_max_ms,
            events.retry_initial_ms.max(1),
            DAY_MS,
        );
        let gate = &self.gate;
        within(
            p,
            "gate.poll_interval_ms",
            gate.poll_interval_ms,
            10,
            DAY_MS,
        );
        within(p, "gate.lease_ms", gate.lease_ms, 100, DAY_MS);
        within(p, "gate.retry_initial_ms", gate.retry_initial_ms, 1, DAY_MS);
        within(
            p,
            "gate.retry_max_ms",
            gate.retry_max_ms,
            gate.retry_initial_ms.max(1),
            DAY_MS,
        );
        within(
            p,
            "gate.webhook_timeout_ms",
            gate.webhook_timeout_ms,
            1,
            DAY_MS,
        );
        within(
            p,
            "gate.forward_max_attempts",
            u64::from(gate.forward_max_attempts),
            1,
            1_000,
        );
        within(
            p,
            "gate.webhook_max_attempts",
            u64::from(gate.webhook_max_attempts),
            1,
            1_000,
        );
        within(
            p,
            "clickhouse.timeout_ms",
            self.clickhouse.timeout_ms,
            1,
            DAY_MS,
        );
        let privacy = &self.privacy;
        within(
            p,
            "privacy.retention_days",
            u64::from(privacy.retention_days),
            1,
            3_650,
        );
        within(
            p,
            "privacy.idempotency_hours",
            u64::from(privacy.idempotency_hours),
            1,
            24 * 365,
        );
        within(
            p,
            "privacy.purge_interval_ms",
            privacy.purge_interval_ms,
            10,
            DAY_MS,
        );
        within(
            p,
            "privacy.purge_batch_rows",
            u64::from(privacy.purge_batch_rows),
            1,
            100_000,
        );
        if let Some(cluster) = &self.clickhouse.cluster
            && (cluster.is_empty()
                || cluster.len() > 64
                || !cluster
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            p.push(format!(
                "clickhouse.cluster must be a cluster name of letters, digits and _ (got {cluster:?})"
            ));
        }
        anyhow::ensure!(
            problems.is_empty(),
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        );
        Ok(())
    }
}

impl GateSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms)
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }
}

impl EventSettings {
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms)
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_out_of_range_is_named_at_load() {
        let error = Settings::from_sources(
            Some("[events]\nlease_ms = 10\n[gate]\npoll_interval_ms = 0\nretry_initial_ms = 500\nretry_max_ms = 100\n"),
            Vec::new(),
        )
        .expect_err("refused");
        let message = format!("{error:#}");
        for expected in [
            "events.lease_ms must be between 1000 and 86400000 (got 10)",
            "gate.poll_interval_ms must be between 10 and 86400000 (got 0)",
            "gate.retry_max_ms must be between 500 and 86400000 (got 100)",
        ] {
            assert!(message.contains(expected), "{message}");
        }
        let zero_threads = Settings::from_sources(
            None,
            vec![(
                "ORDERGUARD_DATABASE__MAX_CONNECTIONS".to_owned(),
                "0".to_owned(),
            )],
        )
        .expect_err("refused");
        assert!(format!("{zero_threads:#}").contains("database.max_connections"));
        Settings::default()
            .validate()
            .expect("the defaults are valid");
    }
}
