//! `Idempotency-Key` claims and their stored responses.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Row;

use super::sql::*;
use super::*;
use crate::brands::BrandId;
use crate::domain::Millis;

/// The result of claiming an idempotency key.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// Go ahead, creating `resource` (the id stored with the key), then
    /// [`Store::idempotency_complete`] or `_release`. `resumed`: an earlier attempt with this
    /// key died before answering (its lease ran out); it may have created `resource` already.
    Claimed { resource: String, resumed: bool },
    /// Seen before with the same request: replay this response.
    Replay { status: u16, body: String },
    /// Seen before with a different request.
    Mismatch,
    /// The first request with this key is still being processed (its lease runs).
    InProgress,
}

/// `Idempotency-Key` claims and their stored responses.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request whose body hashes to `request_hash`, until `lease_until`;
    /// `resource` is the id the request will create, stored with the key. A key whose holder
    /// died (lease over, no response stored) is claimed again, with its stored resource.
    async fn idempotency_claim(
        &self,
        brand: &BrandId,
        key: &str,
        request_hash: &[u8],
        resource: &str,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<IdempotencyClaim>;

    /// Stores the response to replay for a claimed key.
    async fn idempotency_complete(
        &self,
        brand: &BrandId,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()>;

    /// Gives a claimed key up (the request failed in a way worth retrying).
    async fn idempotency_release(&self, brand: &BrandId, key: &str) -> StoreResult<()>;
}

#[async_trait]
impl IdempotencyStore for SqlStore {
    async fn idempotency_claim(
        &self,
        brand: &BrandId,
        key: &str,
        request_hash: &[u8],
        resource: &str,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<IdempotencyClaim> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (brand_id, idempotency_key, request_hash, created_at, \
             lease_until, resource_id) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(brand.as_str())
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .bind(lease_until)
        .bind(resource)
        .execute(&mut *self.source.acquire().await?)
        .await
        .context("claiming an idempotency key")?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyClaim::Claimed {
                resource: resource.to_owned(),
                resumed: false,
            });
        }
        let row = sqlx::query(
            "SELECT request_hash, response_status, response_body, lease_until, resource_id \
             FROM idempotency WHERE brand_id = $1 AND idempotency_key = $2",
        )
        .bind(brand.as_str())
        .bind(key)
        .fetch_optional(&mut *self.source.acquire().await?)
        .await
        .context("reading an idempotency key")?;
        // Released between our insert and this read: the caller may simply retry.
        let Some(row) = row else {
            return Ok(IdempotencyClaim::InProgress);
        };
        let stored_hash: Vec<u8> = row.try_get("request_hash").context("request_hash")?;
        if stored_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        let status: Option<i64> = row.try_get("response_status").context("response_status")?;
        let body: Option<String> = row.try_get("response_body").context("response_body")?;
        if let (Some(status), Some(body)) = (status, body) {
            return Ok(IdempotencyClaim::Replay {
                status: u16::try_from(status).context("stored status")?,
                body,
            });
        }
        let held_until: i64 = row.try_get("lease_until").context("lease_until")?;
        if held_until > now {
            return Ok(IdempotencyClaim::InProgress);
        }
        // The holder died without answering: take the key over (one retry wins).
        let taken = sqlx::query(
            "UPDATE idempotency SET lease_until = $3 WHERE brand_id = $1 AND idempotency_key = $2 \
             AND response_status IS NULL AND lease_until = $4",
        )
        .bind(brand.as_str())
        .bind(key)
        .bind(lease_until)
        .bind(held_until)
        .execute(&mut *self.source.acquire().await?)
        .await
        .context("taking over an idempotency key")?;
        if taken.rows_affected() != 1 {
            return Ok(IdempotencyClaim::InProgress);
        }
        let stored: Option<String> = row.try_get("resource_id").context("resource_id")?;
        Ok(IdempotencyClaim::Claimed {
            resource: stored.unwrap_or_else(|| resource.to_owned()),
            resumed: true,
        })
    }

    async fn idempotency_complete(
        &self,
        brand: &BrandId,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE idempotency SET response_status = $3, response_body = $4 \
             WHERE brand_id = $1 AND idempotency_key = $2",
        )
        .bind(brand.as_str())
        .bind(key)
        .bind(i64::from(status))
        .bind(body)
        .execute(&mut *self.source.acquire().await?)
        .await
        .context("storing an idempotent response")?;
        Ok(())
    }

    async fn idempotency_release(&self, brand: &BrandId, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM idempotency WHERE brand_id = $1 AND idempotency_key = $2")
            .bind(brand.as_str())
            .bind(key)
            .execute(&mut *self.source.acquire().await?)
            .await
            .context("releasing an idempotency key")?;
        Ok(())
    }
}
