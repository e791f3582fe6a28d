//! The relay: ships the outbox to the event sink in batches and deletes only what the sink
//! acknowledged.
//!
//! Several instances share one outbox: each claims a batch with a lease (PostgreSQL:
//! `FOR UPDATE SKIP LOCKED`), so no two ship the same rows at once. A sink that is down, slow
//! or failing makes the relay back off (capped, jittered) and retry; the outbox grows and the
//! metrics say so. A batch the sink refuses as bad data is split until the bad events are
//! isolated; those go to the dead-letter table and everything else is shipped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::Event;
use crate::metrics::Metrics;
use crate::store::{OutboxRow, Store};

/// Why a sink did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Down, slow, overloaded or a transport failure: the same batch may succeed later.
    #[error("{0}")]
    Retryable(String),
    /// The sink refused the data itself: sending it again cannot succeed.
    #[error("{0}")]
    Rejected(String),
}

/// Where events go: ClickHouse, or a JSON-lines file in the embedded default.
#[async_trait]
pub trait EventSink: Send + Sync {
    fn name(&self) -> &'static str;
    /// Writes the whole batch, or fails without having written it (a retry is deduplicated).
    async fn write(&self, events: &[Event]) -> Result<(), SinkError>;
    /// [`EventSink::write`] for a batch claimed from the outbox, with each event's payload
    /// there (its JSON as the service wrote it, which decoded to the event). A sink that
    /// stores that JSON as it is (the JSON-lines file) writes it rather than encoding the
    /// event again.
    async fn write_claimed(&self, events: &[Event], _payloads: &[&str]) -> Result<(), SinkError> {
        self.write(events).await
    }
    /// Removes every event of `brand` that carries one of `pseudonyms` (a number's or a
    /// customer's); how many it removed.
    async fn erase(&self, brand: &str, pseudonyms: &[String]) -> anyhow::Result<u64>;
    /// The events of `brand` that carry one of `pseudonyms`, counted by type.
    async fn count(
        &self,
        brand: &str,
        pseudonyms: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>>;
}

/// How many batches the relay ships at most when it stops.
const SHUTDOWN_BATCHES: usize = 8;

/// What one claim shipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shipped {
    /// Events that left the outbox (shipped or dead-lettered).
    pub moved: usize,
    /// The claim took a whole batch: more may be waiting.
    pub full: bool,
}

/// How the relay batches and retries.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    /// How long the relay waits when the outbox is empty.
    pub period: Duration,
    /// How long a claimed batch stays reserved for this instance.
    pub lease: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

pub struct Relay {
    store: Arc<dyn Store>,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    settings: RelaySettings,
    owner: String,
    clock: Arc<crate::clock::Clock>,
    /// This relay gave a batch up (a write without an answer) that it has not claimed again.
    given_up: AtomicBool,
    /// When this relay next looks for batches others gave up and left (a relay that died).
    adopt_at: AtomicI64,
}

/// How often a relay looks for given-up batches it did not give up itself.
const ADOPT_EVERY_MS: i64 = 5_000;

type Shipping<'a> = Pin<Box<dyn Future<Output = anyhow::Result<usize>> + Send + 'a>>;

impl Relay {
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        settings: RelaySettings,
        owner: String,
    ) -> Self {
        Self {
            store,
            sink,
            metrics,
            settings,
            owner,
            clock: Arc::default(),
            given_up: AtomicBool::new(false),
            adopt_at: AtomicI64::new(0),
        }
    }

    /// Reads `clock` instead of the system clock (the application's, moved by tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Ships until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        let mut stats_at = Instant::now() - Duration::from_secs(60);
        loop {
            if *stop.borrow() {
                break;
            }
            // Only after a full batch does the relay claim again at once: a relay that kept
            // up would otherwise claim a handful of events in a tight loop, and each claim
            // walks the outbox's index past the rows deleted since the last vacuum.
            let pause = match self.ship_batch().await {
                Ok(Shipped { moved: 0, .. }) => self.settings.period,
                Ok(Shipped { full, .. }) => {
                    failures = 0;
                    if full {
                        Duration::ZERO
                    } else {
                        self.settings.period
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = crate::backoff::delay(
                        self.settings.retry_initial,
                        self.settings.retry_max,
                        failures,
                    );
                    tracing::warn!(sink = self.sink.name(), error = %format!("{error:#}"), failures, retry_in_ms = pause.as_millis() as u64, "event sink unavailable; retrying");
                    pause
                }
            };
            if stats_at.elapsed() >= Duration::from_secs(1) || pause > Duration::ZERO {
                self.update_stats().await;
                stats_at = Instant::now();
            }
            if pause > Duration::ZERO {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
            }
        }
        // What was written since the last claim goes out before the instance stops (one who
        // tried the flow and stopped the service at once found no events file): full batches
        // while there are any, up to SHUTDOWN_BATCHES, and only while the sink answers. The
        // rest stays in the outbox for the next start or another instance, as after a crash.
        if failures == 0 {
            for _ in 0..SHUTDOWN_BATCHES {
                match self.ship_batch().await {
                    Ok(Shipped { full: true, .. }) => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(sink = self.sink.name(), error = %format!("{error:#}"), "events left in the outbox at shutdown");
                        break;
                    }
                }
            }
        }
        self.update_stats().await;
        tracing::info!(sink = self.sink.name(), "relay stopped");
    }

    async fn update_stats(&self) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                let age = stats.oldest_created_at.map_or(0.0, |oldest| {
                    (self.clock.now() - oldest).max(0) as f64 / 1000.0
                });
                self.metrics.outbox(stats.pending, age);
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "reading outbox statistics")
            }
        }
    }

    /// Claims one batch and ships it. An error means the sink is unavailable and the batch was
    /// given back.
    pub async fn ship_batch(&self) -> anyhow::Result<Shipped> {
        let now = self.clock.now();
        let lease_until = now + self.settings.lease.as_millis() as i64;
        // Given-up batches are claimed again first, but looked for only when this relay
        // gave one up or now and then (one left by a dead relay): the look costs a query.
        let adopt =
            self.given_up.load(Ordering::Relaxed) || now >= self.adopt_at.load(Ordering::Relaxed);
        if adopt {
            self.adopt_at.store(now + ADOPT_EVERY_MS, Ordering::Relaxed);
        }
        let mut rows = self
            .store
            .claim_outbox(
                &self.owner,
                self.settings.batch_rows as i64,
                now,
                lease_until,
                adopt,
            )
            .await?;
        if adopt && !rows.first().is_some_and(|row| row.again) {
            self.given_up.store(false, Ordering::Relaxed);
        }
        if rows.is_empty() {
            return Ok(Shipped::default());
        }
        let mut full = rows.len() >= self.settings.batch_rows;
        // Keep the batch under the byte budget (at least one row); give the rest back.
        let mut bytes = 0;
        let keep = rows
            .iter()
            .position(|row| {
                bytes += row.payload.len();
                bytes > self.settings.batch_bytes
            })
            .unwrap_or(rows.len())
            .max(1);
        let rest: Vec<i64> = rows.split_off(keep).iter().map(|r| r.outbox_id).collect();
        if !rest.is_empty() {
            full = true;
            self.store.release_outbox(&rest).await?;
        }
        let mut events = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        let mut decodable = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_str::<Event>(&row.payload) {
                Ok(event) => {
                    events.push(event);
                    decodable.push(row);
                }
                Err(_) => undecodable.push(row),
            }
        }
        let mut moved = 0;
        if !undecodable.is_empty() {
            self.store
                .dead_letter(
                    &undecodable,
                    "payload is not a valid event",
                    self.clock.now(),
                )
                .await?;
            self.metrics
                .events_dead_lettered(self.sink.name(), undecodable.len());
            moved += undecodable.len();
        }
        if !events.is_empty() {
            moved += self.deliver(&decodable, &events).await?;
        }
        Ok(Shipped { moved, full })
    }

    /// Writes `events` (from `rows`), splitting a refused batch to isolate bad events.
    fn deliver<'a>(&'a self, rows: &'a [OutboxRow], events: &'a [Event]) -> Shipping<'a> {
        Box::pin(async move {
            let ids: Vec<i64> = rows.iter().map(|r| r.outbox_id).collect();
            let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
            match self.sink.write_claimed(events, &payloads).await {
                Ok(()) => {
                    self.store.ack_outbox(&ids).await?;
                    self.metrics.events_shipped(self.sink.name(), events.len());
                    Ok(events.len())
                }
                Err(SinkError::Retryable(error)) => {
                    self.metrics.sink_error(self.sink.name(), "unavailable");
                    // The write may have been committed with its answer lost: retry exactly
                    // these rows, never re-composed with newer ones.
                    self.store.give_up_outbox(&ids).await?;
                    self.given_up.store(true, Ordering::Relaxed);
                    Err(anyhow::anyhow!(error))
                }
                Err(SinkError::Rejected(error)) => {
                    self.metrics.sink_error(self.sink.name(), "rejected");
                    if rows.len() == 1 {
                        tracing::error!(sink = self.sink.name(), event_id = %events[0].event_id, %error, "event refused as bad data; moved to the dead-letter table");
                        self.store
                            .dead_letter(rows, &error, self.clock.now())
                            .await?;
                        self.metrics.events_dead_lettered(self.sink.name(), 1);
                        return Ok(1);
                    }
                    let middle = rows.len() / 2;
                    let first = self.deliver(&rows[..middle], &events[..middle]).await;
                    if first.is_err() {
                        self.store.release_outbox(&ids[middle..]).await?;
                    }
                    Ok(first? + self.deliver(&rows[middle..], &events[middle..]).await?)
                }
            }
        })
    }
}
