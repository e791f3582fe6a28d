//! Held orders (gate mode): forwards and webhooks, claimed with leases.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Row;

use super::sql::*;
use super::*;
use crate::brands::BrandId;
use crate::domain::{Event, Millis, OrderId, OrderRecord, OrderStatus, VerificationId};

/// What became of one forward attempt.
#[derive(Debug, Clone)]
pub enum ForwardOutcome {
    /// The upstream took the order (2xx).
    Forwarded { status: u16, body: String },
    /// The upstream refused it (4xx other than 408/429): final, never retried.
    Rejected { status: u16, body: String },
    /// Worth another attempt at `next_attempt_at` (5xx, 408, 429, timeout, connection).
    Retry {
        status: Option<u16>,
        body: Option<String>,
        error: String,
        next_attempt_at: Millis,
    },
    /// Out of attempts, or nothing to forward to: final.
    Failed {
        status: Option<u16>,
        body: Option<String>,
        error: String,
    },
}

/// A webhook due for delivery, with the order it announces.
#[derive(Debug, Clone)]
pub struct WebhookJob {
    pub webhook_id: i64,
    pub attempts: u32,
    pub order: OrderRecord,
}

/// What became of one webhook attempt.
#[derive(Debug, Clone)]
pub enum WebhookOutcome {
    Delivered,
    Retry {
        error: String,
        next_attempt_at: Millis,
    },
    Failed {
        error: String,
    },
}

/// A piece of leased gate work.
#[derive(Debug, Clone, Copy)]
pub enum LeasedWork<'a> {
    Forward(&'a OrderId),
    Webhook(i64),
}

/// Held orders (gate mode): forwards and webhooks, claimed with leases.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// A brand's held order; another brand's id is `None`.
    async fn get_order(&self, brand: &BrandId, id: &OrderId) -> StoreResult<Option<OrderRecord>>;

    /// The order held with a verification, if any.
    async fn order_for_verification(&self, id: &VerificationId)
    -> StoreResult<Option<OrderRecord>>;

    /// Leases up to `limit` orders due for a forward attempt to `owner` until `lease_until`.
    /// An order whose holder died mid-forward is due again once its lease has run out.
    async fn claim_forwards(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OrderRecord>>;

    /// Records a forward attempt by the lease holder, with its events and (when final) the
    /// webhook, in one transaction. `false` if `owner` no longer holds the order.
    async fn complete_forward(
        &self,
        id: &OrderId,
        owner: &str,
        outcome: &ForwardOutcome,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Extends `owner`'s lease on a claimed forward or webhook to `lease_until`, so work that
    /// outlasts the lease (a slow upstream or receiver) is not claimed again by anyone.
    /// `false` if `owner` no longer holds it: then it must not be sent.
    async fn renew_lease(
        &self,
        work: LeasedWork<'_>,
        owner: &str,
        lease_until: Millis,
    ) -> StoreResult<bool>;

    /// Leases up to `limit` due webhooks to `owner`.
    async fn claim_webhooks(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<WebhookJob>>;

    /// Records a webhook attempt by the lease holder.
    async fn complete_webhook(
        &self,
        webhook_id: i64,
        owner: &str,
        outcome: &WebhookOutcome,
        now: Millis,
    ) -> StoreResult<()>;
}

#[async_trait]
impl OrderStore for SqlStore {
    async fn get_order(&self, brand: &BrandId, id: &OrderId) -> StoreResult<Option<OrderRecord>> {
        let sql =
            format!("SELECT {ORDER_COLUMNS} FROM held_order WHERE order_id = $1 AND brand_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(brand.as_str())
            .fetch_optional(&mut *self.source.acquire().await?)
            .await?;
        Ok(row.map(|row| order_from_row(&row)).transpose()?)
    }

    async fn order_for_verification(
        &self,
        id: &VerificationId,
    ) -> StoreResult<Option<OrderRecord>> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM held_order WHERE verification_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *self.source.acquire().await?)
            .await?;
        Ok(row.map(|row| order_from_row(&row)).transpose()?)
    }

    async fn claim_forwards(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        let sql = self.lease_sql(
            "held_order",
            "order_id",
            "forwarding",
            "next_attempt_at",
            ORDER_COLUMNS,
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *self.source.acquire().await?)
            .await
            .context("claiming orders to forward")?;
        Ok(rows
            .iter()
            .map(order_from_row)
            .collect::<anyhow::Result<_>>()?)
    }

    async fn complete_forward(
        &self,
        id: &OrderId,
        owner: &str,
        outcome: &ForwardOutcome,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool> {
        let (status, upstream_status, body, error, next_attempt_at) = match outcome {
            ForwardOutcome::Forwarded { status, body } => (
                OrderStatus::Forwarded,
                Some(*status),
                Some(body.as_str()),
                None,
                None,
            ),
            ForwardOutcome::Rejected { status, body } => (
                OrderStatus::RejectedUpstream,
                Some(*status),
                Some(body.as_str()),
                None,
                None,
            ),
            ForwardOutcome::Retry {
                status,
                body,
                error,
                next_attempt_at,
            } => (
                OrderStatus::Forwarding,
                *status,
                body.as_deref(),
                Some(error.as_str()),
                Some(*next_attempt_at),
            ),
            ForwardOutcome::Failed {
                status,
                body,
                error,
            } => (
                OrderStatus::ForwardFailed,
                *status,
                body.as_deref(),
                Some(error.as_str()),
                None,
            ),
        };
        let mut tx = self.source.begin().await?;
        let updated = sqlx::query(
            "UPDATE held_order SET status = $2, attempts = attempts + 1, upstream_status = $3, upstream_body = $4, \
                 last_error = $5, next_attempt_at = $6, finished_at = $7, lease_owner = NULL, lease_until = 0, \
                 updated_at = $8 \
             WHERE order_id = $1 AND lease_owner = $9 AND status = 'forwarding'",
        )
        .bind(id.to_string())
        .bind(status.as_str())
        .bind(upstream_status.map(i64::from))
        .bind(body)
        .bind(error)
        .bind(next_attempt_at)
        .bind(status.is_final().then_some(now))
        .bind(now)
        .bind(owner)
        .execute(tx.conn().await?)
        .await
        .context("recording a forward attempt")?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if status.is_final() {
            queue_webhooks(tx.conn().await?, "order_id = $1", &id.to_string(), now).await?;
        }
        insert_events(tx.conn().await?, self.backend, events).await?;
        tx.commit().await.context("committing a forward attempt")?;
        Ok(true)
    }

    async fn renew_lease(
        &self,
        work: LeasedWork<'_>,
        owner: &str,
        lease_until: Millis,
    ) -> StoreResult<bool> {
        let query = match work {
            LeasedWork::Forward(id) => sqlx::query(
                "UPDATE held_order SET lease_until = $3 \
                 WHERE order_id = $1 AND lease_owner = $2 AND status = 'forwarding'",
            )
            .bind(id.to_string()),
            LeasedWork::Webhook(id) => sqlx::query(
                "UPDATE webhook_delivery SET lease_until = $3 \
                 WHERE webhook_id = $1 AND lease_owner = $2 AND status = 'pending'",
            )
            .bind(id),
        };
        let renewed = query
            .bind(owner)
            .bind(lease_until)
            .execute(&mut *self.source.acquire().await?)
            .await
            .context("renewing a lease")?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn claim_webhooks(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<WebhookJob>> {
        let sql = self.lease_sql(
            "webhook_delivery",
            "webhook_id",
            "pending",
            "webhook_id",
            "webhook_id, order_id, attempts",
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *self.source.acquire().await?)
            .await
            .context("claiming webhooks")?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let order_id: String = row.try_get("order_id")?;
            let sql = format!("SELECT {ORDER_COLUMNS} FROM held_order WHERE order_id = $1");
            let order = sqlx::query(&sql)
                .bind(&order_id)
                .fetch_one(&mut *self.source.acquire().await?)
                .await
                .context("reading a webhook's order")?;
            jobs.push(WebhookJob {
                webhook_id: row.try_get("webhook_id")?,
                attempts: int(&row, "attempts")?,
                order: order_from_row(&order)?,
            });
        }
        Ok(jobs)
    }

    async fn complete_webhook(
        &self,
        webhook_id: i64,
        owner: &str,
        outcome: &WebhookOutcome,
        now: Millis,
    ) -> StoreResult<()> {
        let (status, error, next_attempt_at, delivered_at) = match outcome {
            WebhookOutcome::Delivered => ("delivered", None, now, Some(now)),
            WebhookOutcome::Retry {
                error,
                next_attempt_at,
            } => ("pending", Some(error.as_str()), *next_attempt_at, None),
            WebhookOutcome::Failed { error } => ("failed", Some(error.as_str()), now, None),
        };
        sqlx::query(
            "UPDATE webhook_delivery SET status = $2, attempts = attempts + 1, last_error = $3, next_attempt_at = $4, \
                 delivered_at = $5, lease_owner = NULL, lease_until = 0 \
             WHERE webhook_id = $1 AND lease_owner = $6",
        )
        .bind(webhook_id)
        .bind(status)
        .bind(error)
        .bind(next_attempt_at)
        .bind(delivered_at)
        .bind(owner)
        .execute(&mut *self.source.acquire().await?)
        .await
        .context("recording a webhook attempt")?;
        Ok(())
    }
}
