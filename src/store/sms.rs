//! SMS hand-overs and their delivery receipts.

use anyhow::Context;
use async_trait::async_trait;

use super::batch::Batch;
use super::sql::*;
use super::*;
use crate::domain::{Event, Millis, SmsRecord, VerificationId, VerificationRecord};

/// Events describing a delivery receipt, from the verification and its SMS.
pub type ReceiptEvents<'a> =
    &'a (dyn Fn(&VerificationRecord, &SmsRecord) -> Vec<Event> + Send + Sync);

/// The result of a delivery receipt.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Recorded,
    /// The message already had a final delivery status; nothing changed.
    AlreadyFinal,
    UnknownMessage,
}

/// SMS hand-overs and their delivery receipts.
#[async_trait]
pub trait SmsStore: Send + Sync {
    /// Records an SMS hand-over (or failure) with its events. `refund_send` gives the send
    /// back to the verification (a failure that cannot have reached the phone), in the same
    /// write.
    async fn record_sms(
        &self,
        sms: &SmsRecord,
        refund_send: bool,
        events: &[Event],
    ) -> StoreResult<()>;

    /// Whether any SMS (sent or failed) was recorded for verification `id`.
    async fn has_sms(&self, id: &VerificationId) -> StoreResult<bool>;

    /// Applies a delivery receipt for the message with our id or the provider's reference,
    /// sent through one of `providers` (the receipt's sender may only speak for its own).
    async fn sms_receipt(
        &self,
        providers: &[String],
        reference: &str,
        delivered: bool,
        now: Millis,
        events: ReceiptEvents<'_>,
    ) -> StoreResult<ReceiptOutcome>;
}

#[async_trait]
impl SmsStore for SqlStore {
    async fn record_sms(
        &self,
        sms: &SmsRecord,
        refund_send: bool,
        events: &[Event],
    ) -> StoreResult<()> {
        let mut batch = Batch::new(self.backend);
        let sent_at = batch.bind(sms.sent_at);
        let values = [
            batch.bind(sms.message_id.as_str()),
            batch.bind(sms.verification_id.to_string()),
            batch.bind(sms.brand.as_str()),
            batch.bind(sms.provider.as_str()),
            batch.bind(sms.provider_reference.as_deref()),
            batch.bind(i64::from(sms.segments)),
            batch.bind(sms.status.as_str()),
            sent_at.clone(),
            sent_at,
        ];
        batch.push(format!(
            "INSERT INTO sms_message (message_id, verification_id, brand_id, provider, provider_reference, \
             segments, status, sent_at, updated_at) VALUES ({})",
            values.join(", ")
        ));
        if refund_send {
            let id = batch.bind(sms.verification_id.to_string());
            batch.push(format!(
                "UPDATE verification SET sends = sends - 1 WHERE verification_id = {id} AND sends > 0"
            ));
        }
        batch.events(events)?;
        self.combiner
            .write(batch)
            .await
            .context("recording an SMS")?;
        Ok(())
    }

    async fn has_sms(&self, id: &VerificationId) -> StoreResult<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sms_message WHERE verification_id = $1 LIMIT 1")
                .bind(id.to_string())
                .fetch_optional(&mut *self.source.acquire().await?)
                .await
                .context("looking for a verification's SMS")?;
        Ok(found.is_some())
    }

    async fn sms_receipt(
        &self,
        providers: &[String],
        reference: &str,
        delivered: bool,
        now: Millis,
        events: ReceiptEvents<'_>,
    ) -> StoreResult<ReceiptOutcome> {
        if providers.is_empty() {
            return Ok(ReceiptOutcome::UnknownMessage);
        }
        let status = if delivered {
            "delivered"
        } else {
            "undelivered"
        };
        // `$1` the reference, `$2` the status, `$3` the time, then the providers.
        let scope = |first: usize| {
            (first..first + providers.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut tx = self.source.begin().await?;
        let update = format!(
            "UPDATE sms_message SET status = $2, updated_at = $3 \
             WHERE (message_id = $1 OR provider_reference = $1) AND provider IN ({}) AND status = 'sent' \
             RETURNING message_id, verification_id, brand_id, provider, provider_reference, segments, status, sent_at",
            scope(4)
        );
        // The receipt can overtake the commit of its message's record (a group commit under
        // load): the update then misses a row that the look-up right after finds still
        // `sent`. That is not a repeated receipt: the update is tried again, once the row is
        // there.
        let known = format!(
            "SELECT status FROM sms_message WHERE (message_id = $1 OR provider_reference = $1) \
             AND provider IN ({})",
            scope(2)
        );
        let mut row = None;
        for _ in 0..2 {
            let mut query = sqlx::query(&update).bind(reference).bind(status).bind(now);
            for provider in providers {
                query = query.bind(provider.as_str());
            }
            row = query
                .fetch_optional(tx.conn().await?)
                .await
                .context("applying a delivery receipt")?;
            if row.is_some() {
                break;
            }
            let mut query = sqlx::query_scalar::<_, String>(&known).bind(reference);
            for provider in providers {
                query = query.bind(provider.as_str());
            }
            match query.fetch_optional(tx.conn().await?).await? {
                Some(status) if status == "sent" => continue,
                found => {
                    tx.rollback().await?;
                    return Ok(if found.is_some() {
                        ReceiptOutcome::AlreadyFinal
                    } else {
                        ReceiptOutcome::UnknownMessage
                    });
                }
            }
        }
        let Some(row) = row else {
            // Still not applied after the second try: the caller tries again later.
            tx.rollback().await?;
            return Ok(ReceiptOutcome::UnknownMessage);
        };
        let sms = sms_from_row(&row)?;
        let record = fetch_record(tx.conn().await?, &sms.verification_id)
            .await?
            .with_context(|| format!("SMS {} names a missing verification", sms.message_id))?;
        insert_events(tx.conn().await?, self.backend, &events(&record, &sms)).await?;
        tx.commit().await.context("committing a delivery receipt")?;
        Ok(ReceiptOutcome::Recorded)
    }
}
