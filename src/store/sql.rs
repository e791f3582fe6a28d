//! The SQL store for SQLite and PostgreSQL through `sqlx::Any`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::{
    CheckCount, IdempotencyClaim, NewVerification, SendReservation, Store, VerificationRecord,
};
use crate::brands::BrandId;
use crate::domain::{Millis, Money, PhoneNumber, Status, VerificationId};

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("database.url must start with sqlite:// or postgres://")
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Columns read back for a [`VerificationRecord`].
const RECORD_COLUMNS: &str = "verification_id, brand_id, status, phone_e164, phone_country, \
    order_reference, amount_minor, currency, locale, code_length, max_checks, max_sends, \
    resend_cooldown_ms, checks_used, sends, last_sent_at, created_at, updated_at, expires_at, finished_at";

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

impl SqlStore {
    /// Connects to `url`. SQLite gets WAL and one connection: it serialises writes anyway,
    /// and one writer avoids `SQLITE_BUSY` on lock upgrades.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .max_connections(match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => max_connections.max(1),
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                      PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .with_context(|| format!("connecting to the {} database", backend.as_str()))?;
        Ok(Self { pool, backend })
    }

    /// Applies the backend's pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    async fn fetch_record(
        &self,
        id: &VerificationId,
    ) -> anyhow::Result<Option<VerificationRecord>> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM verification WHERE verification_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| record_from_row(&row)).transpose()
    }
}

fn create_sqlite_parent_dir(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

fn int<T: TryFrom<i64>>(row: &AnyRow, column: &str) -> anyhow::Result<T> {
    let value: i64 = row.try_get(column)?;
    T::try_from(value).map_err(|_| anyhow::anyhow!("{column} out of range: {value}"))
}

fn record_from_row(row: &AnyRow) -> anyhow::Result<VerificationRecord> {
    let id: String = row.try_get("verification_id")?;
    let status: String = row.try_get("status")?;
    Ok(VerificationRecord {
        id: VerificationId::from_str(&id).context("stored verification id")?,
        brand: row.try_get("brand_id")?,
        status: Status::from_str(&status).map_err(anyhow::Error::msg)?,
        phone: PhoneNumber::from_stored(row.try_get("phone_e164")?, row.try_get("phone_country")?),
        order_reference: row.try_get("order_reference")?,
        amount: Money::from_minor(row.try_get("amount_minor")?, row.try_get("currency")?),
        locale: row.try_get("locale")?,
        code_length: int(row, "code_length")?,
        max_checks: int(row, "max_checks")?,
        max_sends: int(row, "max_sends")?,
        resend_cooldown_ms: row.try_get("resend_cooldown_ms")?,
        checks_used: int(row, "checks_used")?,
        sends: int(row, "sends")?,
        last_sent_at: row.try_get("last_sent_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_verification(&self, new: &NewVerification) -> anyhow::Result<()> {
        let limits = &new.limits;
        sqlx::query(
            "INSERT INTO verification (verification_id, brand_id, status, phone_e164, phone_country, \
             order_reference, amount_minor, currency, locale, code_hash, code_length, max_checks, \
             max_sends, resend_cooldown_ms, checks_used, sends, last_sent_at, created_at, updated_at, \
             expires_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, 1, $14, $14, $14, $15)",
        )
        .bind(new.id.to_string())
        .bind(new.brand.as_str())
        .bind(new.phone.e164())
        .bind(new.phone.country())
        .bind(&new.order_reference)
        .bind(new.amount.minor())
        .bind(new.amount.currency())
        .bind(new.locale.as_deref())
        .bind(&new.code_hash)
        .bind(i64::from(limits.code_length))
        .bind(i64::from(limits.max_checks))
        .bind(i64::from(limits.max_sends))
        .bind(i64::from(limits.resend_cooldown_seconds) * 1000)
        .bind(new.now)
        .bind(new.now + i64::from(limits.ttl_seconds) * 1000)
        .execute(&self.pool)
        .await
        .context("inserting verification")?;
        Ok(())
    }

    async fn get_verification(
        &self,
        brand: &BrandId,
        id: &VerificationId,
    ) -> anyhow::Result<Option<VerificationRecord>> {
        Ok(self
            .fetch_record(id)
            .await?
            .filter(|record| record.brand == brand.as_str()))
    }

    async fn count_check(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        now: Millis,
    ) -> anyhow::Result<CheckCount> {
        // The counter is raised in the same statement that checks the limit, so concurrent
        // checks serialise on the row and no more than max_checks can ever be counted.
        let counted = sqlx::query(
            "UPDATE verification SET checks_used = checks_used + 1, updated_at = $3 \
             WHERE verification_id = $1 AND brand_id = $2 AND status = 'pending' \
               AND expires_at > $3 AND checks_used < max_checks \
             RETURNING checks_used, max_checks, code_hash",
        )
        .bind(id.to_string())
        .bind(brand.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .context("counting a check")?;
        if let Some(row) = counted {
            return Ok(CheckCount::Counted {
                checks_used: int(&row, "checks_used")?,
                max_checks: int(&row, "max_checks")?,
                code_hash: row.try_get("code_hash")?,
            });
        }
        Ok(match self.get_verification(brand, id).await? {
            Some(record) => CheckCount::Refused(Box::new(record)),
            None => CheckCount::NotFound,
        })
    }

    async fn finish(&self, id: &VerificationId, to: Status, now: Millis) -> anyhow::Result<bool> {
        let result = sqlx::query(
            "UPDATE verification SET status = $2, updated_at = $3, finished_at = $3 \
             WHERE verification_id = $1 AND status = 'pending'",
        )
        .bind(id.to_string())
        .bind(to.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .context("finishing a verification")?;
        Ok(result.rows_affected() == 1)
    }

    async fn reserve_send(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        code_hash: &[u8],
        code_length: u8,
        now: Millis,
    ) -> anyhow::Result<SendReservation> {
        let sql = format!(
            "UPDATE verification SET sends = sends + 1, last_sent_at = $4, updated_at = $4, code_hash = $3, \
                 code_length = $5 \
             WHERE verification_id = $1 AND brand_id = $2 AND status = 'pending' AND expires_at > $4 \
               AND sends < max_sends \
               AND (last_sent_at IS NULL OR last_sent_at + resend_cooldown_ms <= $4) \
             RETURNING {RECORD_COLUMNS}"
        );
        let reserved = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(brand.as_str())
            .bind(code_hash)
            .bind(now)
            .bind(i64::from(code_length))
            .fetch_optional(&self.pool)
            .await
            .context("reserving a send")?;
        if let Some(row) = reserved {
            return Ok(SendReservation::Reserved(Box::new(record_from_row(&row)?)));
        }
        Ok(match self.get_verification(brand, id).await? {
            Some(record) => SendReservation::Refused(Box::new(record)),
            None => SendReservation::NotFound,
        })
    }

    async fn expire_due(
        &self,
        now: Millis,
        limit: i64,
    ) -> anyhow::Result<Vec<(VerificationId, String)>> {
        // The outer status test re-checks each row under its lock, so two instances sweeping
        // at once expire each verification once.
        let rows = sqlx::query(
            "UPDATE verification SET status = 'expired', updated_at = $1, finished_at = $1 \
             WHERE status = 'pending' AND verification_id IN ( \
                 SELECT verification_id FROM verification \
                 WHERE status = 'pending' AND expires_at <= $1 LIMIT $2) \
             RETURNING verification_id, brand_id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("expiring verifications")?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("verification_id")?;
                Ok((VerificationId::from_str(&id)?, row.try_get("brand_id")?))
            })
            .collect()
    }

    async fn idempotency_claim(
        &self,
        brand: &BrandId,
        key: &str,
        request_hash: &[u8],
        now: Millis,
    ) -> anyhow::Result<IdempotencyClaim> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (brand_id, idempotency_key, request_hash, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(brand.as_str())
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("claiming an idempotency key")?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyClaim::Claimed);
        }
        let row = sqlx::query(
            "SELECT request_hash, response_status, response_body FROM idempotency \
             WHERE brand_id = $1 AND idempotency_key = $2",
        )
        .bind(brand.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        // Released between our insert and this read: the caller may simply retry.
        let Some(row) = row else {
            return Ok(IdempotencyClaim::InProgress);
        };
        let stored_hash: Vec<u8> = row.try_get("request_hash")?;
        if stored_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        let status: Option<i64> = row.try_get("response_status")?;
        let body: Option<String> = row.try_get("response_body")?;
        Ok(match (status, body) {
            (Some(status), Some(body)) => IdempotencyClaim::Replay {
                status: u16::try_from(status).context("stored status")?,
                body,
            },
            _ => IdempotencyClaim::InProgress,
        })
    }

    async fn idempotency_complete(
        &self,
        brand: &BrandId,
        key: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE idempotency SET response_status = $3, response_body = $4 \
             WHERE brand_id = $1 AND idempotency_key = $2",
        )
        .bind(brand.as_str())
        .bind(key)
        .bind(i64::from(status))
        .bind(body)
        .execute(&self.pool)
        .await
        .context("storing an idempotent response")?;
        Ok(())
    }

    async fn idempotency_release(&self, brand: &BrandId, key: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM idempotency WHERE brand_id = $1 AND idempotency_key = $2")
            .bind(brand.as_str())
            .bind(key)
            .execute(&self.pool)
            .await
            .context("releasing an idempotency key")?;
        Ok(())
    }
}
