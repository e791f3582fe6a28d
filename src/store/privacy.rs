//! Personal data: the retention purge (bounded passes of short statements) and a person's
//! erasure and access, by their number and pseudonyms.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Row;

use super::StoreResult;
use super::batch::Batch;
use super::sql::{SqlStore, record_from_row};
use crate::brands::BrandId;
use crate::domain::records::VerificationRecord;
use crate::domain::{Event, Millis};

/// What one purge pass may touch, and when each kind of data is due.
#[derive(Debug, Clone, Copy)]
pub struct PurgeCutoffs {
    /// Verifications and orders finished before this lose their number, payload and answer.
    pub finished_before: Millis,
    /// Idempotency keys created before this are deleted.
    pub idempotency_before: Millis,
    /// Dead letters failed before this are deleted.
    pub dead_letters_before: Millis,
    pub now: Millis,
    /// Rows per statement: each is its own short transaction.
    pub limit: i64,
}

/// Rows one pass purged, by what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub phone_numbers: u64,
    pub order_payloads: u64,
    pub idempotency_keys: u64,
    pub fraud_counters: u64,
    pub dead_letters: u64,
}

impl Purged {
    /// `(what, rows)` for the metrics and the log.
    pub fn by_table(&self) -> [(&'static str, u64); 5] {
        [
            ("verification", self.phone_numbers),
            ("held_order", self.order_payloads),
            ("idempotency", self.idempotency_keys),
            ("fraud_counter", self.fraud_counters),
            ("dead_letter", self.dead_letters),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_table().iter().map(|(_, rows)| rows).sum()
    }
}

/// Who a person is to the store: their number and their pseudonyms under every event pepper
/// still in use (phone numbers; customer references).
#[derive(Debug, Clone, Default)]
pub struct Person {
    pub e164: Option<String>,
    pub phone_pseudonyms: Vec<String>,
    pub customer_pseudonyms: Vec<String>,
}

impl Person {
    /// Every pseudonym, as it appears in events and fraud-counter buckets.
    pub fn pseudonyms(&self) -> impl Iterator<Item = &String> {
        self.phone_pseudonyms
            .iter()
            .chain(&self.customer_pseudonyms)
            .filter(|p| !p.is_empty())
    }
}

/// What an erasure removed or blanked in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Verifications whose number and pseudonyms were blanked.
    pub verifications: u64,
    /// Of those, the pending ones first aborted.
    pub aborted: u64,
    /// Held orders whose payload and upstream answer were blanked.
    pub orders: u64,
    pub idempotency_keys: u64,
    pub sms_references: u64,
    /// Events not yet shipped, and dead letters, about the person.
    pub outbox_events: u64,
    pub dead_letters: u64,
    pub known_good: u64,
    pub fraud_counters: u64,
}

/// A held order, as a person's access request shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PersonOrder {
    pub order_id: String,
    pub verification_id: String,
    pub status: String,
    pub payload: String,
    pub upstream_status: Option<i64>,
    pub created_at: Millis,
}

/// Everything the database holds about a person.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub verifications: Vec<VerificationRecord>,
    pub orders: Vec<PersonOrder>,
    pub fraud_counters: u64,
}

#[async_trait]
pub trait PrivacyStore: Send + Sync {
    /// One retention pass: at most `limit` rows per statement, each statement its own
    /// transaction, so no lock is held for long.
    async fn purge(&self, cutoffs: &PurgeCutoffs) -> StoreResult<Purged>;

    /// Everything held about `person` in `brand`.
    async fn find_person(&self, brand: &BrandId, person: &Person) -> StoreResult<Held>;

    /// Aborts the person's pending verifications and orders, blanks their number, pseudonyms,
    /// payloads and answers, deletes their idempotency keys, unshipped events, dead letters,
    /// known-good marks and counters — with `audit` (an event naming who asked, never whom)
    /// — in one transaction.
    async fn erase_person(
        &self,
        brand: &BrandId,
        person: &Person,
        now: Millis,
        audit: &[Event],
    ) -> StoreResult<Erased>;
}

/// Runs one bounded statement on its own and returns how many rows it changed.
async fn changed(store: &SqlStore, batch: Batch, what: &str) -> anyhow::Result<u64> {
    let rows = store
        .source
        .fetch(batch)
        .await
        .with_context(|| format!("purging {what}"))?;
    Ok(rows.len() as u64)
}

/// `(a, b, …)` of placeholders for `values`, bound in `batch`; `('(none)')` for none (matches no
/// real value: blanked ones are never looked up).
fn list(batch: &mut Batch, values: &[String]) -> String {
    if values.is_empty() {
        return format!("({})", batch.bind("(none)"));
    }
    let items: Vec<String> = values
        .iter()
        .map(|value| batch.bind(value.as_str()))
        .collect();
    format!("({})", items.join(", "))
}

/// The condition on `verification` that finds the person in `brand` (bound in `batch`).
fn person_condition(batch: &mut Batch, brand: &BrandId, person: &Person) -> String {
    let brand = batch.bind(brand.as_str());
    let e164 = batch.bind(person.e164.clone().unwrap_or_else(|| "(none)".to_owned()));
    let phones = list(batch, &person.phone_pseudonyms);
    let customers = list(batch, &person.customer_pseudonyms);
    format!(
        "brand_id = {brand} AND (phone_e164 = {e164} OR phone_pseudonym IN {phones} \
         OR customer_pseudonym IN {customers})"
    )
}

#[async_trait]
impl PrivacyStore for SqlStore {
    async fn purge(&self, cutoffs: &PurgeCutoffs) -> StoreResult<Purged> {
        // Each step is one bounded statement (its own short transaction): `{before}` is the
        // step's cutoff, `{limit}` the batch size.
        let steps: [(&str, Millis, &str); 5] = [
            // A finished verification keeps its row (counts, audit, the pseudonym its events
            // carry) but not the number.
            (
                "phone numbers",
                cutoffs.finished_before,
                "UPDATE verification SET phone_e164 = '' WHERE verification_id IN \
                 (SELECT verification_id FROM verification WHERE finished_at IS NOT NULL \
                  AND finished_at < {before} AND phone_e164 <> '' LIMIT {limit}) \
                 RETURNING verification_id",
            ),
            (
                "order payloads",
                cutoffs.finished_before,
                "UPDATE held_order SET payload = '', upstream_body = NULL, last_error = NULL \
                 WHERE order_id IN (SELECT order_id FROM held_order WHERE finished_at IS NOT \
                  NULL AND finished_at < {before} AND payload <> '' LIMIT {limit}) \
                 RETURNING order_id",
            ),
            (
                "idempotency keys",
                cutoffs.idempotency_before,
                "DELETE FROM idempotency WHERE (brand_id, idempotency_key) IN \
                 (SELECT brand_id, idempotency_key FROM idempotency WHERE created_at < {before} \
                  AND lease_until < {before} LIMIT {limit}) RETURNING idempotency_key",
            ),
            // A counter whose window and the one before have ended, and whose block (if any)
            // ended more than a day ago (a repeat within a day doubles the cool-down), is spent.
            (
                "fraud counters",
                cutoffs.now,
                "DELETE FROM fraud_counter WHERE (brand_id, bucket) IN \
                 (SELECT brand_id, bucket FROM fraud_counter \
                  WHERE window_start + 2 * window_ms < {before} \
                  AND window2_start + 2 * window2_ms < {before} \
                  AND blocked_until + 86400000 < {before} LIMIT {limit}) RETURNING bucket",
            ),
            (
                "dead letters",
                cutoffs.dead_letters_before,
                "DELETE FROM dead_letter WHERE dead_letter_id IN \
                 (SELECT dead_letter_id FROM dead_letter WHERE failed_at < {before} \
                  LIMIT {limit}) RETURNING dead_letter_id",
            ),
        ];
        let mut counts = [0u64; 5];
        for ((what, cutoff, statement), count) in steps.into_iter().zip(&mut counts) {
            let mut batch = Batch::new(self.backend);
            let (before, limit) = (batch.bind(cutoff), batch.bind(cutoffs.limit));
            batch.push(
                statement
                    .replace("{before}", &before)
                    .replace("{limit}", &limit),
            );
            *count = changed(self, batch, what).await?;
        }
        let [
            phone_numbers,
            order_payloads,
            idempotency_keys,
            fraud_counters,
            dead_letters,
        ] = counts;
        Ok(Purged {
            phone_numbers,
            order_payloads,
            idempotency_keys,
            fraud_counters,
            dead_letters,
        })
    }

    async fn find_person(&self, brand: &BrandId, person: &Person) -> StoreResult<Held> {
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "SELECT {} FROM verification WHERE {condition} ORDER BY created_at",
            super::sql::RECORD_COLUMNS
        ));
        let rows = self
            .source
            .fetch(batch)
            .await
            .context("finding a person's verifications")?;
        let verifications = rows
            .iter()
            .map(record_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;

        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "SELECT order_id, verification_id, status, payload, upstream_status, created_at \
             FROM held_order WHERE verification_id IN \
             (SELECT verification_id FROM verification WHERE {condition}) ORDER BY created_at"
        ));
        let rows = self
            .source
            .fetch(batch)
            .await
            .context("finding a person's orders")?;
        let orders = rows
            .iter()
            .map(|row| {
                Ok(PersonOrder {
                    order_id: row.try_get("order_id")?,
                    verification_id: row.try_get("verification_id")?,
                    status: row.try_get("status")?,
                    payload: row.try_get("payload")?,
                    upstream_status: row.try_get("upstream_status")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let mut batch = Batch::new(self.backend);
        let condition = bucket_condition(&mut batch, brand, person);
        batch.push(format!(
            "SELECT bucket FROM fraud_counter WHERE {condition}"
        ));
        let fraud_counters = self
            .source
            .fetch(batch)
            .await
            .context("finding a person's fraud counters")?
            .len() as u64;
        Ok(Held {
            verifications,
            orders,
            fraud_counters,
        })
    }

    async fn erase_person(
        &self,
        brand: &BrandId,
        person: &Person,
        now: Millis,
        audit: &[Event],
    ) -> StoreResult<Erased> {
        let mut erased = Erased::default();
        let mut tx = self.source.begin().await?;
        let count = |rows: Vec<sqlx::any::AnyRow>| rows.len() as u64;

        // Pending ones end as aborted first: nobody can finish a verification about a person
        // who asked to be forgotten.
        let mut batch = Batch::new(self.backend);
        let at = batch.bind(now);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "UPDATE verification SET status = 'aborted', finished_at = {at}, updated_at = {at} \
             WHERE status = 'pending' AND {condition} RETURNING verification_id"
        ));
        erased.aborted = count(tx.run(batch).await.context("aborting")?);
        let mut batch = Batch::new(self.backend);
        let at = batch.bind(now);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "UPDATE held_order SET status = 'aborted', finished_at = {at}, updated_at = {at} \
             WHERE status = 'awaiting_verification' AND verification_id IN \
             (SELECT verification_id FROM verification WHERE {condition}) RETURNING order_id"
        ));
        tx.run(batch).await.context("aborting held orders")?;

        // Everything keyed by the person's verifications and orders, then the verifications
        // themselves (which the conditions above find).
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "UPDATE held_order SET payload = '', upstream_body = NULL, last_error = NULL \
             WHERE verification_id IN (SELECT verification_id FROM verification WHERE {condition}) \
             AND (payload <> '' OR upstream_body IS NOT NULL OR last_error IS NOT NULL) \
             RETURNING order_id"
        ));
        erased.orders = count(tx.run(batch).await.context("blanking orders")?);
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        let brand_value = batch.bind(brand.as_str());
        batch.push(format!(
            "DELETE FROM idempotency WHERE brand_id = {brand_value} AND (resource_id IN \
             (SELECT verification_id FROM verification WHERE {condition}) OR resource_id IN \
             (SELECT order_id FROM held_order WHERE verification_id IN \
              (SELECT verification_id FROM verification WHERE {condition}))) \
             RETURNING idempotency_key"
        ));
        erased.idempotency_keys = count(tx.run(batch).await.context("deleting keys")?);
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "UPDATE sms_message SET provider_reference = NULL WHERE provider_reference IS NOT NULL \
             AND verification_id IN (SELECT verification_id FROM verification WHERE {condition}) \
             RETURNING message_id"
        ));
        erased.sms_references = count(tx.run(batch).await.context("blanking SMS")?);
        // The approvals that made the person known-good: blanking their pseudonyms below
        // forgets the mark (the fraud rules look it up by pseudonym).
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "SELECT verification_id FROM verification WHERE status = 'approved' \
             AND (phone_pseudonym <> '' OR customer_pseudonym <> '') AND {condition}"
        ));
        erased.known_good = count(tx.run(batch).await.context("finding known-good marks")?);
        let mut batch = Batch::new(self.backend);
        let condition = person_condition(&mut batch, brand, person);
        batch.push(format!(
            "UPDATE verification SET phone_e164 = '', phone_pseudonym = '', customer_pseudonym = '', \
             ip_pseudonym = '', ip_range_pseudonym = '', user_agent_family = '' \
             WHERE {condition} RETURNING verification_id"
        ));
        erased.verifications = count(tx.run(batch).await.context("blanking verifications")?);

        // Unshipped events and dead letters that name a pseudonym of the person.
        for (table, key, target) in [
            ("outbox", "outbox_id", &mut erased.outbox_events),
            ("dead_letter", "dead_letter_id", &mut erased.dead_letters),
        ] {
            for pseudonym in person.pseudonyms() {
                let mut batch = Batch::new(self.backend);
                let pattern = batch.bind(format!("%\"{pseudonym}\"%"));
                batch.push(format!(
                    "DELETE FROM {table} WHERE payload LIKE {pattern} RETURNING {key}"
                ));
                *target += count(tx.run(batch).await.context("deleting events")?);
            }
        }
        let mut batch = Batch::new(self.backend);
        let condition = bucket_condition(&mut batch, brand, person);
        batch.push(format!(
            "DELETE FROM fraud_counter WHERE {condition} RETURNING bucket"
        ));
        erased.fraud_counters = count(tx.run(batch).await.context("deleting counters")?);

        let mut written = Batch::new(self.backend);
        written.events(audit)?;
        tx.commit_with(written)
            .await
            .context("committing an erasure")?;
        Ok(erased)
    }
}

/// The person's known-good subjects.
/// The fraud counters keyed by one of the person's pseudonyms (`phone:5/600s:<pseudonym>`).
fn bucket_condition(batch: &mut Batch, brand: &BrandId, person: &Person) -> String {
    let brand = batch.bind(brand.as_str());
    let mut alternatives: Vec<String> = person
        .pseudonyms()
        .map(|pseudonym| format!("bucket LIKE {}", batch.bind(format!("%:{pseudonym}"))))
        .collect();
    if alternatives.is_empty() {
        alternatives.push("1 = 0".to_owned());
    }
    format!("brand_id = {brand} AND ({})", alternatives.join(" OR "))
}
