//! The events outbox the relay ships from.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Row;

use super::batch::Batch;
use super::sql::*;
use super::*;
use crate::domain::{Event, Millis};

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub payload: String,
    /// Part of a batch given up earlier and claimed again whole.
    pub again: bool,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest_created_at: Option<Millis>,
}

/// The events outbox the relay ships from.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Appends events that come with no other change (refused starts).
    async fn append_events(&self, events: &[Event]) -> StoreResult<()>;

    /// Leases up to `limit` unclaimed (or lease-expired) outbox rows to `owner` until
    /// `lease_until`, oldest first. Several instances never get the same row at once. With
    /// `given_up_first`, a batch given up after a write without an answer is claimed again
    /// first, whole and alone.
    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        now: Millis,
        lease_until: Millis,
        given_up_first: bool,
    ) -> StoreResult<Vec<OutboxRow>>;

    /// Deletes rows the sink acknowledged.
    async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Gives leased rows that were never written back, to be claimed in any batch.
    async fn release_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Gives back rows whose write failed without an answer: they may be in the sink. They
    /// are claimed again as exactly this batch, so the retry carries the same deduplication
    /// token.
    async fn give_up_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Moves rows the sink refused as bad data to the dead-letter table, with the refusal.
    async fn dead_letter(&self, rows: &[OutboxRow], error: &str, now: Millis) -> StoreResult<()>;

    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;
}

#[async_trait]
impl OutboxStore for SqlStore {
    async fn append_events(&self, events: &[Event]) -> StoreResult<()> {
        let mut batch = Batch::new(self.backend);
        batch.events(events)?;
        self.combiner.write(batch).await.context("writing events")?;
        Ok(())
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        now: Millis,
        lease_until: Millis,
        given_up_first: bool,
    ) -> StoreResult<Vec<OutboxRow>> {
        // A batch given up half-way (its write may have reached the sink, its answer lost)
        // is claimed again whole, exactly as it was: the same rows make the same
        // deduplication token, so no table (the rollups included) counts a repeat. Only then
        // are new rows taken. Only given-up rows carry a batch, so this look is nearly free.
        let again = if !given_up_first {
            Vec::new()
        } else {
            sqlx::query(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2 \
             WHERE claimed_until < $3 AND batch = ( \
                 SELECT batch FROM outbox WHERE batch IS NOT NULL AND claimed_until < $3 \
                 ORDER BY outbox_id LIMIT 1) \
             RETURNING outbox_id, payload",
            )
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .fetch_all(&mut *self.source.acquire().await?)
            .await
            .context("claiming an earlier outbox batch again")?
        };
        let claimed_again = !again.is_empty();
        let rows = if again.is_empty() {
            let lock = self.skip_locked();
            let sql = format!(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2 \
                 WHERE outbox_id IN ( \
                     SELECT outbox_id FROM outbox WHERE claimed_until < $3 AND batch IS NULL \
                     ORDER BY outbox_id LIMIT $4 {lock}) \
                 RETURNING outbox_id, payload"
            );
            sqlx::query(&sql)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *self.source.acquire().await?)
                .await
                .context("claiming outbox rows")?
        } else {
            again
        };
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(OutboxRow {
                    outbox_id: row.try_get("outbox_id")?,
                    payload: row.try_get("payload")?,
                    again: claimed_again,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by_key(|row| row.outbox_id);
        Ok(claimed)
    }

    async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        self.for_outbox_ids("DELETE FROM outbox", ids, "deleting shipped outbox rows")
            .await?;
        Ok(())
    }

    async fn release_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        let statement = "UPDATE outbox SET claimed_by = NULL, claimed_until = 0, batch = NULL";
        self.for_outbox_ids(statement, ids, "releasing outbox rows")
            .await?;
        Ok(())
    }

    async fn give_up_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        // One batch id for exactly these rows (a uuid: safe to write inline).
        let statement = format!(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = 0, batch = '{}'",
            crate::domain::id::new_v7().simple()
        );
        self.for_outbox_ids(&statement, ids, "giving an outbox batch up")
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, rows: &[OutboxRow], error: &str, now: Millis) -> StoreResult<()> {
        let mut tx = self.source.begin().await?;
        for row in rows {
            let event_id = serde_json::from_str::<serde_json::Value>(&row.payload)
                .ok()
                .and_then(|v| {
                    v.get("event_id")
                        .and_then(|id| id.as_str().map(str::to_owned))
                })
                .unwrap_or_default();
            sqlx::query("INSERT INTO dead_letter (event_id, payload, error, failed_at) VALUES ($1, $2, $3, $4)")
                .bind(event_id)
                .bind(&row.payload)
                .bind(error)
                .bind(now)
                .execute(tx.conn().await?)
                .await
                .context("dead-lettering an event")?;
            sqlx::query("DELETE FROM outbox WHERE outbox_id = $1")
                .bind(row.outbox_id)
                .execute(tx.conn().await?)
                .await?;
        }
        tx.commit().await.context("committing dead letters")?;
        Ok(())
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        let row = sqlx::query("SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox")
            .fetch_one(&mut *self.source.acquire().await?)
            .await
            .context("reading outbox statistics")?;
        Ok(OutboxStats {
            pending: row.try_get("pending")?,
            oldest_created_at: row.try_get("oldest")?,
        })
    }
}
