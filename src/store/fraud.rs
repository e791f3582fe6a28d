//! The fraud rules' shared state (`fraud_counter`, `known_good`): counters hit in one
//! statement per start, prefix blocks placed and lifted with their events.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::StoreResult;
use super::batch::Batch;
use super::conn::Source;
use super::sql::Backend;
use super::sql::SqlStore;
use crate::brands::BrandId;
use crate::domain::{Event, Millis};
use async_trait::async_trait;

/// A counter's window has ended, or a block ended inside it: the next hit starts a new window.
const RESTARTS: &str = "(fraud_counter.window_start + fraud_counter.window_ms <= excluded.window_start \
     OR (fraud_counter.blocked_until > fraud_counter.window_start \
         AND fraud_counter.blocked_until <= excluded.window_start))";

const STATE_COLUMNS: &str = "bucket, window_start, window_ms, hits, approvals, prev_hits, prev_approvals, \
    blocked_at, blocked_until, block_level";

fn state_from_row(row: &AnyRow) -> anyhow::Result<CounterState> {
    Ok(CounterState {
        bucket: row.try_get("bucket")?,
        window_start: row.try_get("window_start")?,
        window_ms: row.try_get("window_ms")?,
        hits: row.try_get("hits")?,
        approvals: row.try_get("approvals")?,
        prev_hits: row.try_get("prev_hits")?,
        prev_approvals: row.try_get("prev_approvals")?,
        blocked_at: row.try_get("blocked_at")?,
        blocked_until: row.try_get("blocked_until")?,
        block_level: row.try_get("block_level")?,
        pending: 0,
    })
}

/// Runs one batch on its own and returns the rows of its first statement.
async fn run(source: &Source, batch: Batch) -> anyhow::Result<Vec<AnyRow>> {
    source.fetch(batch).await
}

pub(super) async fn hit_counters(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    hits: &[CounterHit],
    now: Millis,
) -> anyhow::Result<Vec<CounterState>> {
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = Batch::new(backend);
    let brand = batch.bind(brand.as_str());
    let now = batch.bind(now);
    let rows: Vec<String> = hits
        .iter()
        .map(|hit| {
            format!(
                "({brand}, {}, {now}, {}, {}, {})",
                batch.bind(hit.bucket.as_str()),
                batch.bind(hit.window_ms),
                batch.bind(hit.count),
                batch.bind(hit.approvals)
            )
        })
        .collect();
    batch.push(format!(
        "INSERT INTO fraud_counter (brand_id, bucket, window_start, window_ms, hits, approvals) VALUES {} \
         ON CONFLICT (brand_id, bucket) DO UPDATE SET \
           hits = CASE WHEN {RESTARTS} THEN excluded.hits ELSE fraud_counter.hits + excluded.hits END, \
           approvals = CASE WHEN {RESTARTS} THEN excluded.approvals \
             ELSE fraud_counter.approvals + excluded.approvals END, \
           prev_hits = CASE WHEN {RESTARTS} THEN \
             (CASE WHEN fraud_counter.window_start + 2 * fraud_counter.window_ms > excluded.window_start \
              THEN fraud_counter.hits ELSE 0 END) \
             ELSE fraud_counter.prev_hits END, \
           prev_approvals = CASE WHEN {RESTARTS} THEN \
             (CASE WHEN fraud_counter.window_start + 2 * fraud_counter.window_ms > excluded.window_start \
              THEN fraud_counter.approvals ELSE 0 END) \
             ELSE fraud_counter.prev_approvals END, \
           window_start = CASE WHEN {RESTARTS} THEN excluded.window_start ELSE fraud_counter.window_start END, \
           window_ms = excluded.window_ms \
         RETURNING {STATE_COLUMNS}",
        rows.join(", ")
    ));
    let rows = run(source, batch).await.context("counting a start")?;
    rows.iter().map(state_from_row).collect()
}

/// Runs `change` (an UPDATE … RETURNING) in a transaction; commits it with `events` if it
/// changed a row, else rolls back. Whether it changed one.
async fn change_with_events(
    source: &Source,
    backend: Backend,
    change: Batch,
    events: &[Event],
) -> anyhow::Result<bool> {
    let mut tx = source.begin().await?;
    let changed = tx.run(change).await?;
    if changed.is_empty() {
        tx.rollback().await?;
        return Ok(false);
    }
    let mut written = Batch::new(backend);
    written.events(events)?;
    tx.commit_with(written).await?;
    Ok(true)
}

pub(super) async fn place_block(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    block: &NewBlock,
    events: &[Event],
) -> anyhow::Result<bool> {
    let mut batch = Batch::new(backend);
    let (brand, bucket, now, until, level, seen) = (
        batch.bind(brand.as_str()),
        batch.bind(block.bucket.as_str()),
        batch.bind(block.now),
        batch.bind(block.until),
        batch.bind(block.level),
        batch.bind(block.seen_until),
    );
    batch.push(format!(
        "UPDATE fraud_counter SET blocked_at = {now}, blocked_until = {until}, block_level = {level}, \
           block_starts = hits, block_approvals = approvals \
         WHERE brand_id = {brand} AND bucket = {bucket} AND blocked_until = {seen} \
         RETURNING bucket"
    ));
    change_with_events(source, backend, batch, events)
        .await
        .context("placing a prefix block")
}

pub(super) async fn lift_block(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    bucket: &str,
    now: Millis,
    events: &[Event],
) -> anyhow::Result<bool> {
    let mut batch = Batch::new(backend);
    let (brand, bucket, now) = (
        batch.bind(brand.as_str()),
        batch.bind(bucket),
        batch.bind(now),
    );
    // Ending it now also restarts the prefix's window at its next start; the level stays, so
    // a prefix that trips again gets the doubled cool-down.
    batch.push(format!(
        "UPDATE fraud_counter SET blocked_until = {now} \
         WHERE brand_id = {brand} AND bucket = {bucket} AND blocked_until > {now} \
         RETURNING bucket"
    ));
    change_with_events(source, backend, batch, events)
        .await
        .context("lifting a prefix block")
}

pub(super) async fn active_blocks(
    source: &Source,
    backend: Backend,
    now: Millis,
) -> anyhow::Result<Vec<BlockRecord>> {
    let mut batch = Batch::new(backend);
    let now = batch.bind(now);
    batch.push(format!(
        "SELECT brand_id, bucket, blocked_at, blocked_until, block_level, block_starts, block_approvals \
         FROM fraud_counter WHERE blocked_until > {now} ORDER BY blocked_until, brand_id, bucket"
    ));
    let rows = run(source, batch).await.context("listing prefix blocks")?;
    rows.iter()
        .map(|row| {
            Ok(BlockRecord {
                brand: row.try_get("brand_id")?,
                bucket: row.try_get("bucket")?,
                blocked_at: row.try_get("blocked_at")?,
                blocked_until: row.try_get("blocked_until")?,
                block_level: row.try_get("block_level")?,
                starts: row.try_get("block_starts")?,
                approvals: row.try_get("block_approvals")?,
            })
        })
        .collect()
}

pub(super) async fn record_approval(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    signals: &ApprovalSignals,
) -> anyhow::Result<()> {
    let mut batch = Batch::new(backend);
    let brand = batch.bind(brand.as_str());
    let started = batch.bind(signals.started_at);
    if !signals.known_good.is_empty() {
        let now = batch.bind(signals.now);
        let rows: Vec<String> = signals
            .known_good
            .iter()
            .map(|subject| format!("({brand}, {}, {now})", batch.bind(subject.as_str())))
            .collect();
        batch.push(format!(
            "INSERT INTO known_good (brand_id, subject, approved_at) VALUES {} \
             ON CONFLICT (brand_id, subject) DO UPDATE SET approved_at = excluded.approved_at",
            rows.join(", ")
        ));
    }
    if !signals.approved.is_empty() {
        let buckets: Vec<String> = signals
            .approved
            .iter()
            .map(|bucket| batch.bind(bucket.as_str()))
            .collect();
        batch.push(format!(
            "UPDATE fraud_counter SET approvals = approvals + 1 \
             WHERE brand_id = {brand} AND bucket IN ({}) AND window_start <= {started}",
            buckets.join(", ")
        ));
    }
    if !signals.refunds.is_empty() {
        let buckets: Vec<String> = signals
            .refunds
            .iter()
            .map(|bucket| batch.bind(bucket.as_str()))
            .collect();
        batch.push(format!(
            "UPDATE fraud_counter SET hits = hits - 1 \
             WHERE brand_id = {brand} AND bucket IN ({}) AND hits > 0 AND window_start <= {started}",
            buckets.join(", ")
        ));
    }
    // Written alone, never merged with other approvals: two approvals in one statement could
    // touch the same counter twice, and PostgreSQL keeps only one of two CTE updates of a row.
    source
        .write(batch)
        .await
        .context("recording an approval's fraud signals")
}

pub(super) async fn known_good(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    subjects: &[String],
    since: Millis,
) -> anyhow::Result<bool> {
    let subjects: Vec<&String> = subjects.iter().filter(|s| !s.is_empty()).collect();
    if subjects.is_empty() {
        return Ok(false);
    }
    let mut batch = Batch::new(backend);
    let brand = batch.bind(brand.as_str());
    let since = batch.bind(since);
    let list: Vec<String> = subjects
        .iter()
        .map(|subject| batch.bind(subject.as_str()))
        .collect();
    batch.push(format!(
        "SELECT subject FROM known_good WHERE brand_id = {brand} AND subject IN ({}) \
         AND approved_at >= {since} LIMIT 1",
        list.join(", ")
    ));
    Ok(!run(source, batch)
        .await
        .context("looking up known-good numbers")?
        .is_empty())
}

/// One counter a start hits: a rate-limit bucket or a number prefix (see the `fraud_counter`
/// migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterHit {
    pub bucket: String,
    pub window_ms: Millis,
    /// Starts to add: 1 for one start, more for a batch an instance gathered, 0 to read.
    pub count: i64,
    /// Approvals to add (hot counters gather them too).
    pub approvals: i64,
}

/// A counter after a hit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterState {
    pub bucket: String,
    pub window_start: Millis,
    pub window_ms: Millis,
    pub hits: i64,
    pub approvals: i64,
    /// Hits and approvals of the window just before this one (0 if it was longer ago).
    pub prev_hits: i64,
    pub prev_approvals: i64,
    pub blocked_at: Millis,
    /// 0 when never blocked; a block is in force while it is in the future.
    pub blocked_until: Millis,
    pub block_level: i64,
    /// Starts an instance counted and has not written yet (included in `hits`).
    pub pending: i64,
}

/// A prefix block to place, if the counter's block is still what was read (`seen_until`).
#[derive(Debug, Clone)]
pub struct NewBlock {
    pub bucket: String,
    pub seen_until: Millis,
    pub now: Millis,
    pub until: Millis,
    pub level: i64,
}

/// A prefix block in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub brand: String,
    pub bucket: String,
    pub blocked_at: Millis,
    pub blocked_until: Millis,
    pub block_level: i64,
    /// The counts that tripped it.
    pub starts: i64,
    pub approvals: i64,
}

/// What an approval tells the fraud rules, written together.
#[derive(Debug, Clone, Default)]
pub struct ApprovalSignals {
    /// Counters whose approvals rise (the prefix, the brand), where the start was counted in
    /// their window.
    pub approved: Vec<String>,
    /// Counters of unconverted starts (IP, range, the brand's budget) the start is refunded to.
    pub refunds: Vec<String>,
    /// Number and customer pseudonyms that become known-good.
    pub known_good: Vec<String>,
    /// When the verification started: only counters whose window holds it change.
    pub started_at: Millis,
    pub now: Millis,
}

/// The fraud rules' shared state: counters, prefix blocks, known-good numbers.
#[async_trait]
pub trait FraudStore: Send + Sync {
    /// Counts one hit on each counter (starting a new window where the last one ended, or
    /// where a block ended) and returns each counter as it is after the hit, in one atomic
    /// statement shared by every instance.
    async fn hit_counters(
        &self,
        brand: &BrandId,
        hits: &[CounterHit],
        now: Millis,
    ) -> StoreResult<Vec<CounterState>>;

    /// Places a prefix block with its events, unless another instance changed the block since
    /// it was read; whether this call placed it.
    async fn place_block(
        &self,
        brand: &BrandId,
        block: &NewBlock,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Ends a block in force now, with its events; false when none was in force.
    async fn lift_block(
        &self,
        brand: &BrandId,
        bucket: &str,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Every prefix block in force at `now`.
    async fn active_blocks(&self, now: Millis) -> StoreResult<Vec<BlockRecord>>;

    /// Records what an approval tells the fraud rules.
    async fn record_approval(&self, brand: &BrandId, signals: &ApprovalSignals) -> StoreResult<()>;

    /// Whether any of `subjects` (pseudonyms) had an approval since `since`.
    async fn known_good(
        &self,
        brand: &BrandId,
        subjects: &[String],
        since: Millis,
    ) -> StoreResult<bool>;
}

#[async_trait]
impl FraudStore for SqlStore {
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
}
