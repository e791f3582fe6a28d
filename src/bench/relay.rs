//! The `relay` scenario: fill the outbox with synthetic events, then measure how fast relays
//! empty it into ClickHouse, and check that every event arrived exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use serde::Serialize;

use crate::domain::now_millis;
use crate::events::clickhouse::ClickHouseSink;
use crate::events::relay::{Relay, RelaySettings};
use crate::events::{Event, EventType};
use crate::metrics::Metrics;
use crate::settings::ClickHouseSettings;
use crate::store::{OutboxStore, SqlStore, Store};

#[derive(Debug, Args)]
pub struct RelayOptions {
    /// The service database (use an empty one): `postgres://…` or `sqlite://…`.
    #[arg(long)]
    pub database_url: String,
    /// ClickHouse HTTP URL; must be on loopback.
    #[arg(long)]
    pub clickhouse_url: String,
    /// Events to ship (1 to 5,000,000).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 5_000)]
    pub batch_rows: usize,
    /// Relays shipping in parallel (as several instances would).
    #[arg(long, default_value_t = 2)]
    pub relays: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct RelayReport {
    pub events: usize,
    pub relays: usize,
    pub batch_rows: usize,
    pub fill_seconds: f64,
    pub ship_seconds: f64,
    pub events_per_second: f64,
    pub rows_in_clickhouse: u64,
    pub distinct_in_clickhouse: u64,
}

impl super::Report for RelayReport {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("scenario", "relay (outbox → ClickHouse)".to_owned()),
            ("events", self.events.to_string()),
            (
                "relays × batch",
                format!("{} × {}", self.relays, self.batch_rows),
            ),
            ("outbox fill", format!("{:.2} s", self.fill_seconds)),
            ("shipping", format!("{:.2} s", self.ship_seconds)),
            (
                "throughput",
                format!("{:.0} events/s", self.events_per_second),
            ),
            (
                "in ClickHouse",
                format!(
                    "{} rows, {} distinct",
                    self.rows_in_clickhouse, self.distinct_in_clickhouse
                ),
            ),
        ]
    }
}

fn require_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']']);
    ensure!(
        host == "localhost" || host.starts_with("127.") || host == "::1",
        "the load tool only targets loopback; {url} is not"
    );
    Ok(())
}

/// A plausible event, the `index`th of a synthetic stream.
pub(crate) fn synthetic(index: usize, now: i64) -> Event {
    let kinds = [
        EventType::VerificationStarted,
        EventType::SmsSent,
        EventType::CodeChecked,
        EventType::VerificationApproved,
    ];
    Event {
        event_id: uuid::Uuid::now_v7(),
        ts: now,
        brand: "nordwind".to_owned(),
        event_type: kinds[index % kinds.len()].as_str().to_owned(),
        verification_id: uuid::Uuid::now_v7(),
        order_id: uuid::Uuid::nil(),
        channel: "sms".to_owned(),
        country: "DE".to_owned(),
        number_prefix: format!("+4915{}", index % 10),
        phone_pseudonym: format!("{:032x}", index * 7919),
        customer_pseudonym: String::new(),
        ip_pseudonym: format!("{:032x}", index * 104_729),
        attempt: (index % 3) as u16,
        outcome: "correct".to_owned(),
        reason: String::new(),
        amount_minor: 4_990,
        currency: "EUR".to_owned(),
        ms_since_start: (index % 60_000) as i64,
        sms_provider: "http".to_owned(),
        sms_segments: 1,
        locale: "de".to_owned(),
        user_agent_family: "Chrome Mobile".to_owned(),
        instance: "bench".to_owned(),
        rule: String::new(),
        key_type: String::new(),
        flags: Vec::new(),
    }
}

pub async fn run(options: RelayOptions) -> anyhow::Result<RelayReport> {
    ensure!(
        (1..=5_000_000).contains(&options.events),
        "--events must be between 1 and 5,000,000"
    );
    ensure!(
        (1..=16).contains(&options.relays),
        "--relays must be between 1 and 16"
    );
    require_loopback(&options.clickhouse_url)?;
    if options.database_url.starts_with("postgres") {
        require_loopback(&options.database_url)?;
    }
    let store =
        SqlStore::connect(&options.database_url, (options.relays as u32 * 2).max(4)).await?;
    store.migrate().await?;
    ensure!(
        store.outbox_stats().await?.pending == 0,
        "the outbox is not empty: use a fresh database"
    );
    let store: Arc<dyn Store> = Arc::new(store);
    let settings = ClickHouseSettings::default();
    let sink = Arc::new(ClickHouseSink::new(&options.clickhouse_url, &settings));
    sink.ensure_migrated()
        .await
        .context("preparing ClickHouse")?;
    let count = |sql: &'static str| {
        let sink = sink.clone();
        async move {
            sink.client()
                .query(sql)
                .fetch_one::<u64>()
                .await
                .context("counting in ClickHouse")
        }
    };
    let rows_before = count("SELECT count() FROM events").await?;

    let fill = Instant::now();
    let now = now_millis();
    for start in (0..options.events).step_by(1_000) {
        let events: Vec<Event> = (start..(start + 1_000).min(options.events))
            .map(|i| synthetic(i, now))
            .collect();
        store.append_events(&events).await?;
    }
    let fill_seconds = fill.elapsed().as_secs_f64();

    let metrics = Arc::new(Metrics::new()?);
    let relay_settings = RelaySettings {
        batch_rows: options.batch_rows,
        batch_bytes: 64 * 1024 * 1024,
        period: Duration::from_millis(10),
        lease: Duration::from_secs(60),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_secs(2),
    };
    let ship = Instant::now();
    let mut relays = Vec::new();
    for n in 0..options.relays {
        let relay = Relay::new(
            store.clone(),
            sink.clone(),
            metrics.clone(),
            relay_settings.clone(),
            format!("bench-{n}"),
        );
        relays.push(tokio::spawn(async move {
            let mut shipped = 0;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the relay did not finish within 10 minutes"
                );
                match relay.ship_batch().await?.moved {
                    0 => return Ok::<usize, anyhow::Error>(shipped),
                    n => shipped += n,
                }
            }
        }));
    }
    let mut shipped = 0;
    for relay in relays {
        shipped += relay.await.context("relay task")??;
    }
    let ship_seconds = ship.elapsed().as_secs_f64();
    ensure!(
        shipped == options.events,
        "shipped {shipped} of {} events",
        options.events
    );
    let rows_in_clickhouse = count("SELECT count() FROM events").await? - rows_before;
    let distinct_in_clickhouse =
        count("SELECT uniqExact(event_id) FROM events WHERE instance = 'bench'").await?;
    Ok(RelayReport {
        events: options.events,
        relays: options.relays,
        batch_rows: options.batch_rows,
        fill_seconds,
        ship_seconds,
        events_per_second: options.events as f64 / ship_seconds,
        rows_in_clickhouse,
        distinct_in_clickhouse,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_targets_are_accepted() {
        for url in [
            "http://127.0.0.1:8123",
            "http://localhost:8123/",
            "postgres://u:p@127.0.0.1:5432/db",
            "http://[::1]:8123",
        ] {
            assert!(super::require_loopback(url).is_ok(), "{url}");
        }
        for url in [
            "http://10.0.0.5:8123",
            "https://clickhouse.example.com",
            "postgres://db.internal/x",
        ] {
            assert!(super::require_loopback(url).is_err(), "{url}");
        }
    }
}
