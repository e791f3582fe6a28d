//! The SQL store for SQLite and PostgreSQL through `sqlx::Any`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, Connection, Executor, Row};
use tokio::sync::Mutex;

use super::batch::Batch;
use super::conn::{Combiner, Single, Source};
use super::{OrderRecord, SmsRecord, Store, StoreResult, VerificationRecord};
use crate::brands::BrandId;
use crate::domain::Event;
use crate::domain::{Millis, Money, OrderId, OrderStatus, PhoneNumber, Status, VerificationId};

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

/// A PostgreSQL pool of `max_connections` (at least one). sqlx pings every connection it
/// hands out: a round trip per transaction. Only a connection that sat idle (a restarted
/// server may have dropped it) is tested; a busy one that broke fails its statement with a
/// retryable 503 and is not given out again.
pub(super) async fn postgres_pool(
    url: &str,
    max_connections: u32,
) -> Result<sqlx::AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(max_connections.max(1))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
}

/// Columns read back for a [`VerificationRecord`].
pub(super) const RECORD_COLUMNS: &str = "verification_id, brand_id, status, phone_e164, phone_country, \
    order_reference, amount_minor, currency, locale, code_length, max_checks, max_sends, \
    resend_cooldown_ms, checks_used, sends, last_sent_at, created_at, updated_at, expires_at, finished_at, \
    phone_pseudonym, number_prefix, customer_pseudonym, ip_pseudonym, ip_range_pseudonym, \
    user_agent_family, has_order";

/// A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
pub(super) const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

pub struct SqlStore {
    pub(super) source: Source,
    /// The fraud rules' counters. On PostgreSQL a pool of its own whose commits do not wait
    /// for the disk (`synchronous_commit = off`): a crash of the database may forget the last
    /// fraction of a second of counts, never a verification, an order or an event, and each
    /// start is spared a second flush. SQLite: the one connection.
    pub(super) counters: Source,
    /// Group commit of the writes that need no transaction of their own.
    pub(super) combiner: Combiner,
    /// The fraud counters' hits, merged likewise (on `counters`).
    pub(super) hits: super::fraud::HitCombiner,
    pub(super) backend: Backend,
}

impl SqlStore {
    /// Connects to `url`. SQLite gets WAL and one connection: it serialises writes anyway,
    /// and one writer avoids `SQLITE_BUSY` on lock upgrades.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let context = || format!("connecting to the {} database", backend.as_str());
        let source = match backend {
            Backend::Sqlite => {
                create_sqlite_parent_dir(url)?;
                let mut conn = AnyConnection::connect(url).await.with_context(context)?;
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                )
                .await
                .with_context(context)?;
                Source::Single(Arc::new(Mutex::new(Single::new(conn))))
            }
            Backend::Postgres => Source::Pool(
                postgres_pool(url, max_connections)
                    .await
                    .with_context(context)?,
            ),
        };
        // SQLite has one connection: one group at a time.
        let parallel = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => (max_connections as usize / 4).max(1),
        };
        let combiner = Combiner::start(source.clone(), parallel);
        let counters = match (&source, backend) {
            (Source::Pool(_), Backend::Postgres) => {
                let separator = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{separator}options=-c%20synchronous_commit%3Doff");
                Source::Pool(
                    postgres_pool(&url, max_connections / 2)
                        .await
                        .with_context(context)?,
                )
            }
            _ => source.clone(),
        };
        // Hits wait on a hot counter's row lock (the brand's ceiling, a busy prefix) while a
        // group runs: two groups under way let the next gather meanwhile.
        let hits = super::fraud::HitCombiner::start(counters.clone(), backend, 1);
        Ok(Self {
            source,
            counters,
            combiner,
            hits,
            backend,
        })
    }

    /// Applies the backend's pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&mut *self.source.acquire().await?)
            .await
            .context("applying database migrations")
    }

    /// PostgreSQL: SKIP LOCKED lets several instances claim disjoint work without waiting.
    /// SQLite has one writer, so claims are serialised anyway.
    pub(super) fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Runs `statement` for the outbox rows `ids`, a thousand at a time (well under both
    /// backends' parameter limits).
    pub(super) async fn for_outbox_ids(
        &self,
        statement: &str,
        ids: &[i64],
        what: &'static str,
    ) -> anyhow::Result<()> {
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "{statement} WHERE outbox_id IN ({})",
                placeholders(1, chunk.len())
            );
            let query = chunk
                .iter()
                .fold(sqlx::query(&sql), |query, id| query.bind(*id));
            query
                .execute(&mut *self.source.acquire().await?)
                .await
                .context(what)?;
        }
        Ok(())
    }

    /// The claim of leased work (orders to forward, webhooks to send): leases to `$1` until
    /// `$2` up to `$4` rows of `table` in `status` that are due and unleased at `$3`, in
    /// `order_by` order. The outer test re-checks each row under its lock, so two instances
    /// never hold the same row.
    pub(super) fn lease_sql(
        &self,
        table: &str,
        key: &str,
        status: &str,
        order_by: &str,
        returning: &str,
    ) -> String {
        let lock = self.skip_locked();
        format!(
            "UPDATE {table} SET lease_owner = $1, lease_until = $2 \
             WHERE status = '{status}' AND lease_until < $3 AND {key} IN ( \
                 SELECT {key} FROM {table} \
                 WHERE status = '{status}' AND next_attempt_at <= $3 AND lease_until < $3 \
                 ORDER BY {order_by} LIMIT $4 {lock}) \
             RETURNING {returning}"
        )
    }
}

pub(super) async fn fetch_record(
    conn: &mut AnyConnection,
    id: &VerificationId,
) -> anyhow::Result<Option<VerificationRecord>> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM verification WHERE verification_id = $1");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| record_from_row(&row)).transpose()
}

/// A brand's record, or `None` for another brand's or an unknown id.
pub(super) async fn fetch_brand_record(
    conn: &mut AnyConnection,
    brand: &BrandId,
    id: &VerificationId,
) -> anyhow::Result<Option<VerificationRecord>> {
    Ok(fetch_record(conn, id)
        .await?
        .filter(|record| record.brand == brand.as_str()))
}

/// The statements that move a pending verification to `to`, with its events; the
/// statement returns `has_order` if the verification was pending. Its held order is moved by
/// [`order_follows`].
pub(super) fn finish_batch(
    backend: Backend,
    id: &VerificationId,
    to: Status,
    now: Millis,
    events: &[Event],
) -> anyhow::Result<Batch> {
    let mut batch = Batch::new(backend);
    let (status, id_value, at) = (
        batch.bind(to.as_str()),
        batch.bind(id.to_string()),
        batch.bind(now),
    );
    batch.push(format!(
        "UPDATE verification SET status = {status}, updated_at = {at}, finished_at = {at} \
         WHERE verification_id = {id_value} AND status = 'pending' RETURNING has_order"
    ));
    batch.events(events)?;
    Ok(batch)
}

/// Moves a pending verification to `to` inside a transaction, with its events and its held
/// order if it has one; `true` if it was pending. On `false` the events were written all the
/// same: the caller rolls back.
pub(super) async fn finish_in(
    conn: &mut AnyConnection,
    backend: Backend,
    id: &VerificationId,
    to: Status,
    now: Millis,
    events: &[Event],
) -> anyhow::Result<bool> {
    let finished = finish_batch(backend, id, to, now, events)?
        .run(conn)
        .await
        .context("finishing a verification")?;
    let Some(row) = finished.first() else {
        return Ok(false);
    };
    if row.try_get::<i64, _>("has_order")? != 0 {
        order_follows(conn, id, to, now).await?;
    }
    Ok(true)
}

pub(super) fn create_sqlite_parent_dir(url: &str) -> anyhow::Result<()> {
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

pub(super) fn int<T: TryFrom<i64>>(row: &AnyRow, column: &str) -> anyhow::Result<T> {
    let value: i64 = row.try_get(column)?;
    T::try_from(value).map_err(|_| anyhow::anyhow!("{column} out of range: {value}"))
}

pub(super) fn record_from_row(row: &AnyRow) -> anyhow::Result<VerificationRecord> {
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
        phone_pseudonym: row.try_get("phone_pseudonym")?,
        number_prefix: row.try_get("number_prefix")?,
        customer_pseudonym: row.try_get("customer_pseudonym")?,
        ip_pseudonym: row.try_get("ip_pseudonym")?,
        ip_range_pseudonym: row.try_get("ip_range_pseudonym")?,
        user_agent_family: row.try_get("user_agent_family")?,
        has_order: row.try_get::<i64, _>("has_order")? != 0,
    })
}

/// Columns read back for an [`OrderRecord`].
pub(super) const ORDER_COLUMNS: &str = "order_id, brand_id, verification_id, status, order_reference, amount_minor, currency, \
    payload, callback_url, attempts, next_attempt_at, upstream_status, upstream_body, last_error, created_at, \
    updated_at, finished_at";

pub(super) fn order_from_row(row: &AnyRow) -> anyhow::Result<OrderRecord> {
    let id: String = row.try_get("order_id")?;
    let verification: String = row.try_get("verification_id")?;
    let status: String = row.try_get("status")?;
    let upstream_status: Option<i64> = row.try_get("upstream_status")?;
    Ok(OrderRecord {
        id: OrderId::from_str(&id).context("stored order id")?,
        brand: row.try_get("brand_id")?,
        verification_id: VerificationId::from_str(&verification)
            .context("stored verification id")?,
        status: OrderStatus::from_str(&status).map_err(anyhow::Error::msg)?,
        order_reference: row.try_get("order_reference")?,
        amount: Money::from_minor(row.try_get("amount_minor")?, row.try_get("currency")?),
        payload: row.try_get("payload")?,
        callback_url: row.try_get("callback_url")?,
        attempts: int(row, "attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        upstream_status: upstream_status.and_then(|s| u16::try_from(s).ok()),
        upstream_body: row.try_get("upstream_body")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Queues a webhook for each order with a callback URL matching `condition` (a SQL predicate
/// on `held_order` with `$1` bound to `key`), inside the caller's transaction.
pub(super) async fn queue_webhooks(
    conn: &mut AnyConnection,
    condition: &str,
    key: &str,
    now: Millis,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO webhook_delivery (order_id, status, next_attempt_at, created_at) \
         SELECT order_id, 'pending', $2, $2 FROM held_order WHERE callback_url IS NOT NULL AND {condition}"
    );
    sqlx::query(&sql)
        .bind(key)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("queueing a webhook")?;
    Ok(())
}

/// Moves the order held with a verification along with it, inside the verification's
/// transaction: approved → forwarding (due now); locked / aborted / expired → the same final
/// status, announced by webhook.
pub(super) async fn order_follows(
    conn: &mut AnyConnection,
    verification: &VerificationId,
    to: Status,
    now: Millis,
) -> anyhow::Result<()> {
    let (status, next_attempt_at, finished_at) = match to {
        Status::Pending => return Ok(()),
        Status::Approved => (OrderStatus::Forwarding, Some(now), None),
        Status::Locked => (OrderStatus::Locked, None, Some(now)),
        Status::Aborted => (OrderStatus::Aborted, None, Some(now)),
        Status::Expired => (OrderStatus::Expired, None, Some(now)),
    };
    let moved = sqlx::query(
        "UPDATE held_order SET status = $2, next_attempt_at = $3, finished_at = $4, updated_at = $5 \
         WHERE verification_id = $1 AND status = 'awaiting_verification'",
    )
    .bind(verification.to_string())
    .bind(status.as_str())
    .bind(next_attempt_at)
    .bind(finished_at)
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("moving the held order along")?;
    if moved.rows_affected() == 1 && status.is_final() {
        queue_webhooks(conn, "verification_id = $1", &verification.to_string(), now).await?;
    }
    Ok(())
}

/// Writes `events` to the outbox inside the caller's transaction.
pub(super) async fn insert_events(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[Event],
) -> anyhow::Result<()> {
    let mut batch = Batch::new(backend);
    batch.events(events)?;
    batch.run(conn).await?;
    Ok(())
}

pub(super) fn sms_from_row(row: &AnyRow) -> anyhow::Result<SmsRecord> {
    let id: String = row.try_get("verification_id")?;
    Ok(SmsRecord {
        message_id: row.try_get("message_id")?,
        verification_id: VerificationId::from_str(&id).context("stored verification id")?,
        brand: row.try_get("brand_id")?,
        provider: row.try_get("provider")?,
        provider_reference: row.try_get("provider_reference")?,
        segments: int(row, "segments")?,
        status: row.try_get("status")?,
        sent_at: row.try_get("sent_at")?,
    })
}

/// `$first, $first+1, …` for `count` values, for `IN (…)` lists.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.source.acquire().await?)
            .await?;
        Ok(())
    }
}
