//! Personal data over its life: the retention purge (a supervised worker), and a person's
//! erasure and access (operator routes of the privacy scope). Every field that can identify a
//! person, where it lives and for how long, is listed in the README's "Personal data".

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::brands::{Brand, BrandRegistry};
use crate::clock::Clock;
use crate::domain::{Millis, PhoneNumber};
use crate::events::relay::EventSink;
use crate::events::{EventFactory, EventType};
use crate::metrics::Metrics;
use crate::pseudonym::Pseudonymizer;
use crate::store::{Erased, Person, PurgeCutoffs, Store};

const DAY_MS: Millis = 86_400_000;

/// `[privacy]`, as the worker and the routes use it.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub retention_days: u32,
    pub idempotency_hours: u32,
    pub interval: Duration,
    pub batch_rows: u32,
}

/// Who an erasure or access request is about: a number or a customer reference, in a brand.
#[derive(Debug, Clone)]
pub enum Subject {
    Phone(PhoneNumber),
    Customer(String),
}

/// What an erasure removed, everywhere.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    pub database: Erased,
    /// The event store: `clickhouse` or `jsonl`.
    pub event_sink: &'static str,
    /// Events removed from it.
    pub events: u64,
}

/// Everything held about a person.
#[derive(Debug, Clone, Serialize)]
pub struct AccessReport {
    pub verifications: Vec<serde_json::Value>,
    pub orders: Vec<crate::store::PersonOrder>,
    /// Events about the person in the event store, by type.
    pub events: std::collections::BTreeMap<String, u64>,
    /// Whether the number or customer is known-good (passes prefix blocks).
    pub known_good: bool,
    /// Fraud-rule counters keyed by the person's pseudonyms.
    pub fraud_counters: u64,
}

/// Built once at start (see `startup.rs`).
pub struct Privacy {
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn EventSink>,
    /// The current event pepper first, then the retired ones still within retention.
    pub peppers: Vec<Pseudonymizer>,
    pub events: EventFactory,
    pub brands: Arc<BrandRegistry>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<Clock>,
    pub retention: Retention,
}

impl Privacy {
    /// The person as the store finds them: the number, and its (or the reference's)
    /// pseudonym under every pepper.
    fn person(&self, subject: &Subject) -> Person {
        match subject {
            Subject::Phone(phone) => Person {
                e164: Some(phone.e164().to_owned()),
                phone_pseudonyms: self
                    .peppers
                    .iter()
                    .map(|p| p.pseudonym("phone", phone.e164()))
                    .collect(),
                customer_pseudonyms: Vec::new(),
            },
            Subject::Customer(reference) => Person {
                e164: None,
                phone_pseudonyms: Vec::new(),
                customer_pseudonyms: self
                    .peppers
                    .iter()
                    .map(|p| p.pseudonym("customer", reference))
                    .collect(),
            },
        }
    }

    /// One retention pass; what it purged.
    pub async fn purge_once(&self) -> anyhow::Result<crate::store::Purged> {
        let now = self.clock.now();
        let retention = Millis::from(self.retention.retention_days) * DAY_MS;
        let cutoffs = PurgeCutoffs {
            finished_before: now - retention,
            idempotency_before: now - Millis::from(self.retention.idempotency_hours) * 3_600_000,
            dead_letters_before: now - retention,
            now,
            limit: i64::from(self.retention.batch_rows),
        };
        let purged = self.store.purge(&cutoffs).await?;
        for (table, rows) in purged.by_table() {
            self.metrics.privacy_purged(table, rows);
        }
        if purged.total() > 0 {
            tracing::info!(?purged, "retention purge");
        }
        Ok(purged)
    }

    /// Runs purge passes every `interval` (at once again after a pass that hit its bound)
    /// until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.retention.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            loop {
                match self.purge_once().await {
                    Ok(purged)
                        if purged
                            .by_table()
                            .iter()
                            .any(|(_, rows)| *rows >= u64::from(self.retention.batch_rows)) =>
                    {
                        tokio::task::yield_now().await;
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "retention purge failed; retrying next tick");
                        break;
                    }
                }
            }
        }
        tracing::info!("retention purge stopped");
    }

    /// Erases every trace of `subject` in `brand`: the database (pending verifications
    /// aborted), the event store; an audit event names `actor`, never the subject.
    pub async fn erase(
        &self,
        brand: &Brand,
        subject: &Subject,
        actor: &str,
    ) -> anyhow::Result<ErasureReport> {
        let person = self.person(subject);
        let now = self.clock.now();
        let pseudonyms: Vec<String> = person.pseudonyms().cloned().collect();
        let events = self.sink.erase(brand.id.as_str(), &pseudonyms).await?;
        let mut audit = self.events.prefix_block(
            brand.id.as_str(),
            EventType::PrivacyErasure,
            "",
            0,
            &format!("requested by {actor}"),
            now,
        );
        audit.outcome = "erased".to_owned();
        audit.rule = "erasure".to_owned();
        audit.key_type = match subject {
            Subject::Phone(_) => "phone",
            Subject::Customer(_) => "customer",
        }
        .to_owned();
        let database = self
            .store
            .erase_person(&brand.id, &person, now, &[audit])
            .await?;
        // Events that were still being shipped when the database step ran reach the event
        // store only now: asking again after the database step catches them.
        let events = events + self.sink.erase(brand.id.as_str(), &pseudonyms).await?;
        tracing::info!(brand = %brand.id, actor, ?database, events, "personal data erased");
        Ok(ErasureReport {
            database,
            event_sink: self.sink.name(),
            events,
        })
    }

    /// Everything held about `subject` in `brand`.
    pub async fn access(&self, brand: &Brand, subject: &Subject) -> anyhow::Result<AccessReport> {
        let person = self.person(subject);
        let held = self.store.find_person(&brand.id, &person).await?;
        let pseudonyms: Vec<String> = person.pseudonyms().cloned().collect();
        let events = self.sink.count(brand.id.as_str(), &pseudonyms).await?;
        let verifications = held
            .verifications
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id.to_string(),
                    "status": v.status.as_str(),
                    "phone": v.phone.e164(),
                    "country": v.phone.country(),
                    "order_reference": v.order_reference,
                    "amount_minor": v.amount.minor(),
                    "currency": v.amount.currency(),
                    "locale": v.locale,
                    "created_at": crate::http::rfc3339(v.created_at),
                    "finished_at": v.finished_at.map(crate::http::rfc3339),
                    "user_agent_family": v.user_agent_family,
                })
            })
            .collect();
        // Whether the fraud rules see the person as known-good: their lookup, under the current
        // pepper's pseudonyms (listed first).
        let since = self.clock.now() - Millis::from(brand.fraud.known_good_days) * DAY_MS;
        let current = crate::store::KnownGood {
            phone_pseudonym: person.phone_pseudonyms.first().map(String::as_str),
            customer_pseudonym: person.customer_pseudonyms.first().map(String::as_str),
        };
        let known_good = self.store.known_good(&brand.id, &current, since).await?;
        Ok(AccessReport {
            verifications,
            orders: held.orders,
            events,
            known_good,
            fraud_counters: held.fraud_counters,
        })
    }
}
