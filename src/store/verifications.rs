//! Verifications: their lifecycle, each change with its events in one transaction.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Row;

use super::batch::Batch;
use super::sql::*;
use super::*;
use crate::brands::BrandId;
use crate::domain::{Event, Millis, NewVerification, Status, VerificationId, VerificationRecord};

/// What the verifier decided about a counted check, applied in the same transaction.
#[derive(Debug)]
pub struct CheckDecision {
    /// The final status to move to (approved, locked), if any.
    pub finish: Option<Status>,
    /// Events describing the check and its consequence.
    pub events: Vec<Event>,
    /// What an approval tells the fraud rules, committed with it.
    pub approval: Option<super::ApprovalSignals>,
}

/// Decides about a counted check from the record (counter already raised) and the stored hash.
pub type DecideCheck<'a> = &'a (dyn Fn(&VerificationRecord, &[u8]) -> CheckDecision + Send + Sync);

/// Events describing a change to a verification, built from the record after the change.
pub type EventsFor<'a> = &'a (dyn Fn(&VerificationRecord) -> Vec<Event> + Send + Sync);

/// The result of a check.
#[derive(Debug)]
pub enum CheckCount {
    /// The attempt was counted and decided; the record as it stands after the decision.
    Counted(Box<VerificationRecord>),
    /// Not counted: the verification is not open for checks; here it is as it stands.
    Refused(Box<VerificationRecord>),
    NotFound,
}

/// The result of reserving a resend.
#[derive(Debug)]
pub enum SendReservation {
    Reserved(Box<VerificationRecord>),
    Refused(Box<VerificationRecord>),
    NotFound,
}

/// Verifications: their lifecycle, each change with its events in one transaction.
#[async_trait]
pub trait VerificationStore: Send + Sync {
    /// Stores a new pending verification (its first send counted) and its events.
    async fn insert_verification(&self, new: &NewVerification, events: &[Event])
    -> StoreResult<()>;

    /// A brand's verification; another brand's id is `None`, as is an unknown id.
    async fn get_verification(
        &self,
        brand: &BrandId,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>>;

    /// A verification by id alone (the code page, authorized by its signed link).
    async fn find_verification(
        &self,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>>;

    /// In one transaction: raises the check counter if the verification is pending, unexpired
    /// and under its limit (so parallel checks can never count more than `max_checks`), lets
    /// `decide` compare the code, and applies the decision and its events.
    async fn check_code(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        now: Millis,
        decide: DecideCheck<'_>,
    ) -> StoreResult<CheckCount>;

    /// Moves a pending verification to a final status with its events. `false` (and no
    /// events) if it was no longer pending.
    async fn finish(
        &self,
        id: &VerificationId,
        to: Status,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Atomically counts a resend and swaps in the new code hash, if the verification is
    /// pending, unexpired, under its send limit and past its cooldown; with its events.
    async fn reserve_send(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        code_hash: &[u8],
        code_length: u8,
        now: Millis,
        events: EventsFor<'_>,
    ) -> StoreResult<SendReservation>;

    /// Marks pending verifications past their expiry as expired (at most `limit`), each with
    /// its events, and returns them. Safe to run on several instances at once.
    async fn expire_due(
        &self,
        now: Millis,
        limit: i64,
        events: EventsFor<'_>,
    ) -> StoreResult<Vec<VerificationRecord>>;

    /// Replaces a pending verification's code hash; `false` if it is no longer pending.
    async fn replace_code(&self, id: &VerificationId, code_hash: &[u8]) -> StoreResult<bool>;
}

#[async_trait]
impl VerificationStore for SqlStore {
    async fn insert_verification(
        &self,
        new: &NewVerification,
        events: &[Event],
    ) -> StoreResult<()> {
        let limits = &new.limits;
        let mut batch = Batch::new(self.backend);
        let id = batch.bind(new.id.to_string());
        let brand = batch.bind(new.brand.as_str());
        let reference = batch.bind(new.order_reference.as_str());
        let amount = batch.bind(new.amount.minor());
        let currency = batch.bind(new.amount.currency());
        let now = batch.bind(new.now);
        let values = [
            id.clone(),
            brand.clone(),
            "'pending'".to_owned(),
            batch.bind(new.phone.e164()),
            batch.bind(new.phone.country()),
            reference.clone(),
            amount.clone(),
            currency.clone(),
            batch.bind(new.locale.as_deref()),
            batch.bind(new.code_hash.as_slice()),
            batch.bind(i64::from(limits.code_length)),
            batch.bind(i64::from(limits.max_checks)),
            batch.bind(i64::from(limits.max_sends)),
            batch.bind(i64::from(limits.resend_cooldown_seconds) * 1000),
            "0".to_owned(),
            "1".to_owned(),
            now.clone(),
            now.clone(),
            now.clone(),
            batch.bind(new.now + i64::from(limits.ttl_seconds) * 1000),
            batch.bind(new.phone_pseudonym.as_str()),
            batch.bind(new.number_prefix.as_str()),
            batch.bind(new.customer_pseudonym.as_str()),
            batch.bind(new.ip_pseudonym.as_str()),
            batch.bind(new.ip_range_pseudonym.as_str()),
            batch.bind(new.user_agent_family.as_str()),
            batch.bind(i64::from(new.order.is_some())),
        ];
        batch.push(format!(
            "INSERT INTO verification (verification_id, brand_id, status, phone_e164, phone_country, \
             order_reference, amount_minor, currency, locale, code_hash, code_length, max_checks, \
             max_sends, resend_cooldown_ms, checks_used, sends, last_sent_at, created_at, updated_at, \
             expires_at, phone_pseudonym, number_prefix, customer_pseudonym, ip_pseudonym, \
             ip_range_pseudonym, user_agent_family, has_order) VALUES ({})",
            values.join(", ")
        ));
        if let Some(order) = &new.order {
            let values = [
                batch.bind(order.id.to_string()),
                brand,
                id,
                "'awaiting_verification'".to_owned(),
                reference,
                amount,
                currency,
                batch.bind(order.payload.as_str()),
                batch.bind(order.callback_url.as_deref()),
                now.clone(),
                now,
            ];
            batch.push(format!(
                "INSERT INTO held_order (order_id, brand_id, verification_id, status, order_reference, \
                 amount_minor, currency, payload, callback_url, created_at, updated_at) VALUES ({})",
                values.join(", ")
            ));
        }
        batch.events(events)?;
        self.combiner
            .write(batch)
            .await
            .context("inserting a verification")?;
        Ok(())
    }

    async fn get_verification(
        &self,
        brand: &BrandId,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>> {
        let mut conn = self.source.acquire().await?;
        Ok(fetch_brand_record(&mut conn, brand, id).await?)
    }

    async fn find_verification(
        &self,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>> {
        let mut conn = self.source.acquire().await?;
        Ok(fetch_record(&mut conn, id).await?)
    }

    async fn check_code(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        now: Millis,
        decide: DecideCheck<'_>,
    ) -> StoreResult<CheckCount> {
        let mut tx = self.source.begin().await?;
        // The counter is raised in the same statement that tests the limit, and the row stays
        // locked until commit, so concurrent checks serialise and no more than max_checks can
        // ever be counted.
        let mut count = Batch::new(self.backend);
        let (id_value, brand_value, at) = (
            count.bind(id.to_string()),
            count.bind(brand.as_str()),
            count.bind(now),
        );
        count.push(format!(
            "UPDATE verification SET checks_used = checks_used + 1, updated_at = {at} \
             WHERE verification_id = {id_value} AND brand_id = {brand_value} AND status = 'pending' \
               AND expires_at > {at} AND checks_used < max_checks \
             RETURNING code_hash, {RECORD_COLUMNS}"
        ));
        let counted = tx.run(count).await.context("counting a check")?;
        let Some(row) = counted.first() else {
            let record = fetch_brand_record(tx.conn().await?, brand, id).await?;
            tx.rollback().await?;
            return Ok(record.map_or(CheckCount::NotFound, |r| CheckCount::Refused(Box::new(r))));
        };
        let code_hash: Vec<u8> = row.try_get("code_hash")?;
        let mut record = record_from_row(row)?;
        let decision = decide(&record, &code_hash);
        match decision.finish {
            // We hold the row lock (on SQLite the write lock): it is still pending. Without a
            // held order to move, the finish, its events and the commit go as one batch.
            Some(status) if !record.has_order => {
                let mut finish = finish_batch(self.backend, id, status, now, &decision.events)?;
                if let Some(signals) = &decision.approval {
                    super::fraud::approval_statements(&mut finish, brand, signals);
                }
                let finished = tx.commit_with(finish).await.context("committing a check")?;
                ensure!(
                    !finished.is_empty(),
                    "verification {id} changed under its lock"
                );
            }
            Some(status) => {
                let conn = tx.conn().await?;
                ensure!(
                    finish_in(conn, self.backend, id, status, now, &decision.events).await?,
                    "verification {id} changed under its lock"
                );
                let mut signals = Batch::new(self.backend);
                if let Some(approval) = &decision.approval {
                    super::fraud::approval_statements(&mut signals, brand, approval);
                }
                tx.commit_with(signals)
                    .await
                    .context("committing a check")?;
            }
            None => {
                let mut events = Batch::new(self.backend);
                events.events(&decision.events)?;
                tx.commit_with(events).await.context("committing a check")?;
            }
        }
        if let Some(status) = decision.finish {
            record.status = status;
            record.finished_at = Some(now);
        }
        Ok(CheckCount::Counted(Box::new(record)))
    }

    async fn finish(
        &self,
        id: &VerificationId,
        to: Status,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool> {
        let mut tx = self.source.begin().await?;
        if !finish_in(tx.conn().await?, self.backend, id, to, now, events).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await.context("committing a status change")?;
        Ok(true)
    }

    async fn reserve_send(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        code_hash: &[u8],
        code_length: u8,
        now: Millis,
        events: EventsFor<'_>,
    ) -> StoreResult<SendReservation> {
        let sql = format!(
            "UPDATE verification SET sends = sends + 1, last_sent_at = $4, updated_at = $4, code_hash = $3, \
                 code_length = $5 \
             WHERE verification_id = $1 AND brand_id = $2 AND status = 'pending' AND expires_at > $4 \
               AND sends < max_sends \
               AND (last_sent_at IS NULL OR last_sent_at + resend_cooldown_ms <= $4) \
             RETURNING {RECORD_COLUMNS}"
        );
        let mut tx = self.source.begin().await?;
        let reserved = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(brand.as_str())
            .bind(code_hash)
            .bind(now)
            .bind(i64::from(code_length))
            .fetch_optional(tx.conn().await?)
            .await
            .context("reserving a send")?;
        let Some(row) = reserved else {
            let record = fetch_brand_record(tx.conn().await?, brand, id).await?;
            tx.rollback().await?;
            return Ok(record.map_or(SendReservation::NotFound, |r| {
                SendReservation::Refused(Box::new(r))
            }));
        };
        let record = record_from_row(&row)?;
        insert_events(tx.conn().await?, self.backend, &events(&record)).await?;
        tx.commit().await.context("committing a resend")?;
        Ok(SendReservation::Reserved(Box::new(record)))
    }

    async fn expire_due(
        &self,
        now: Millis,
        limit: i64,
        events: EventsFor<'_>,
    ) -> StoreResult<Vec<VerificationRecord>> {
        // The outer status test re-checks each row under its lock, so two instances sweeping
        // at once expire each verification once.
        let sql = format!(
            "UPDATE verification SET status = 'expired', updated_at = $1, finished_at = $1 \
             WHERE status = 'pending' AND verification_id IN ( \
                 SELECT verification_id FROM verification \
                 WHERE finished_at IS NULL AND status = 'pending' AND expires_at <= $1 LIMIT $2) \
             RETURNING {RECORD_COLUMNS}"
        );
        let mut tx = self.source.begin().await?;
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(tx.conn().await?)
            .await
            .context("expiring verifications")?;
        let records = rows
            .iter()
            .map(record_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        for record in records.iter().filter(|r| r.has_order) {
            order_follows(tx.conn().await?, &record.id, Status::Expired, now).await?;
        }
        let all: Vec<Event> = records.iter().flat_map(events).collect();
        insert_events(tx.conn().await?, self.backend, &all).await?;
        tx.commit().await.context("committing expiries")?;
        Ok(records)
    }

    async fn replace_code(&self, id: &VerificationId, code_hash: &[u8]) -> StoreResult<bool> {
        let replaced = sqlx::query(
            "UPDATE verification SET code_hash = $2 WHERE verification_id = $1 AND status = 'pending'",
        )
        .bind(id.to_string())
        .bind(code_hash)
        .execute(&mut *self.source.acquire().await?)
        .await
        .context("replacing a code")?;
        Ok(replaced.rows_affected() == 1)
    }
}
