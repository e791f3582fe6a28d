//! The SQL store for SQLite and PostgreSQL through `sqlx::Any`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, Connection, Executor, Row};
use tokio::sync::Mutex;

/// `anyhow::ensure!` for functions returning a store error.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(anyhow::anyhow!($($message)+).into());
        }
    };
}

use super::batch::Batch;
use super::conn::{Combiner, Single, Source};
use super::{
    CheckCount, DecideCheck, EventsFor, ForwardOutcome, IdempotencyClaim, LeasedWork,
    NewVerification, OrderRecord, OutboxRow, OutboxStats, ReceiptEvents, ReceiptOutcome,
    SendReservation, SmsRecord, Store, StoreResult, VerificationRecord, WebhookJob, WebhookOutcome,
};
use crate::brands::BrandId;
use crate::domain::{Millis, Money, OrderId, OrderStatus, PhoneNumber, Status, VerificationId};
use crate::events::Event;

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
async fn postgres_pool(url: &str, max_connections: u32) -> Result<sqlx::AnyPool, sqlx::Error> {
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
const RECORD_COLUMNS: &str = "verification_id, brand_id, status, phone_e164, phone_country, \
    order_reference, amount_minor, currency, locale, code_length, max_checks, max_sends, \
    resend_cooldown_ms, checks_used, sends, last_sent_at, created_at, updated_at, expires_at, finished_at, \
    phone_pseudonym, number_prefix, customer_pseudonym, ip_pseudonym, ip_range_pseudonym, \
    user_agent_family, has_order";

/// A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

pub struct SqlStore {
    source: Source,
    /// The fraud rules' counters. On PostgreSQL a pool of its own whose commits do not wait
    /// for the disk (`synchronous_commit = off`): a crash of the database may forget the last
    /// fraction of a second of counts, never a verification, an order or an event, and each
    /// start is spared a second flush. SQLite: the one connection.
    counters: Source,
    /// Group commit of the writes that need no transaction of their own.
    combiner: Combiner,
    backend: Backend,
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
        Ok(Self {
            source,
            counters,
            combiner,
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
    fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Runs `statement` for the outbox rows `ids`, a thousand at a time (well under both
    /// backends' parameter limits).
    async fn for_outbox_ids(
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
    fn lease_sql(
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

async fn fetch_record(
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
async fn fetch_brand_record(
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
fn finish_batch(
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
async fn finish_in(
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
const ORDER_COLUMNS: &str = "order_id, brand_id, verification_id, status, order_reference, amount_minor, currency, \
    payload, callback_url, attempts, next_attempt_at, upstream_status, upstream_body, last_error, created_at, \
    updated_at, finished_at";

fn order_from_row(row: &AnyRow) -> anyhow::Result<OrderRecord> {
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
async fn queue_webhooks(
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
async fn order_follows(
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
async fn insert_events(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[Event],
) -> anyhow::Result<()> {
    let mut batch = Batch::new(backend);
    batch.events(events)?;
    batch.run(conn).await?;
    Ok(())
}

fn sms_from_row(row: &AnyRow) -> anyhow::Result<SmsRecord> {
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
fn placeholders(first: usize, count: usize) -> String {
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

    async fn hit_counters(
        &self,
        brand: &BrandId,
        hits: &[super::CounterHit],
        now: Millis,
    ) -> StoreResult<Vec<super::CounterState>> {
        Ok(super::fraud::hit_counters(&self.counters, self.backend, brand, hits, now).await?)
    }

    async fn place_block(
        &self,
        brand: &BrandId,
        block: &super::NewBlock,
        events: &[Event],
    ) -> StoreResult<bool> {
        Ok(super::fraud::place_block(&self.source, self.backend, brand, block, events).await?)
    }

    async fn lift_block(
        &self,
        brand: &BrandId,
        bucket: &str,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool> {
        Ok(
            super::fraud::lift_block(&self.source, self.backend, brand, bucket, now, events)
                .await?,
        )
    }

    async fn active_blocks(&self, now: Millis) -> StoreResult<Vec<super::BlockRecord>> {
        Ok(super::fraud::active_blocks(&self.source, self.backend, now).await?)
    }

    async fn record_approval(
        &self,
        brand: &BrandId,
        signals: &super::ApprovalSignals,
    ) -> StoreResult<()> {
        Ok(super::fraud::record_approval(&self.counters, self.backend, brand, signals).await?)
    }

    async fn known_good(
        &self,
        brand: &BrandId,
        subjects: &[String],
        since: Millis,
    ) -> StoreResult<bool> {
        Ok(super::fraud::known_good(&self.counters, self.backend, brand, subjects, since).await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.source.acquire().await?)
            .await?;
        Ok(())
    }

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
                let finish = finish_batch(self.backend, id, status, now, &decision.events)?;
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
                tx.commit().await.context("committing a check")?;
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

    async fn sms_receipt(
        &self,
        reference: &str,
        delivered: bool,
        now: Millis,
        events: ReceiptEvents<'_>,
    ) -> StoreResult<ReceiptOutcome> {
        let status = if delivered {
            "delivered"
        } else {
            "undelivered"
        };
        let mut tx = self.source.begin().await?;
        let updated = sqlx::query(
            "UPDATE sms_message SET status = $2, updated_at = $3 \
             WHERE (message_id = $1 OR provider_reference = $1) AND status = 'sent' \
             RETURNING message_id, verification_id, brand_id, provider, provider_reference, segments, status, sent_at",
        )
        .bind(reference)
        .bind(status)
        .bind(now)
        .fetch_optional(tx.conn().await?)
        .await
        .context("applying a delivery receipt")?;
        let Some(row) = updated else {
            let known = sqlx::query(
                "SELECT 1 FROM sms_message WHERE message_id = $1 OR provider_reference = $1",
            )
            .bind(reference)
            .fetch_optional(tx.conn().await?)
            .await?
            .is_some();
            tx.rollback().await?;
            return Ok(if known {
                ReceiptOutcome::AlreadyFinal
            } else {
                ReceiptOutcome::UnknownMessage
            });
        };
        let sms = sms_from_row(&row)?;
        let record = fetch_record(tx.conn().await?, &sms.verification_id)
            .await?
            .with_context(|| format!("SMS {} names a missing verification", sms.message_id))?;
        insert_events(tx.conn().await?, self.backend, &events(&record, &sms)).await?;
        tx.commit().await.context("committing a delivery receipt")?;
        Ok(ReceiptOutcome::Recorded)
    }

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
    ) -> StoreResult<Vec<OutboxRow>> {
        // A batch given up half-way (its write may have reached the sink, its answer lost)
        // or left by a dead relay is claimed again whole, exactly as it was: the same rows
        // make the same deduplication token, so no table (the rollups included) counts a
        // repeat. Only then are new rows taken, as a new batch.
        let again = sqlx::query(
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
        .context("claiming an earlier outbox batch again")?;
        let rows = if again.is_empty() {
            let lock = self.skip_locked();
            let sql = format!(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2, batch = $5 \
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
                .bind(uuid::Uuid::now_v7().simple().to_string())
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
            uuid::Uuid::now_v7().simple()
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
