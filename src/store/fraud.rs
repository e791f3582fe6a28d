//! The fraud rules' shared state (`fraud_counter`, `known_good`): counters hit in one
//! statement per start, prefix blocks placed and lifted with their events.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::batch::Batch;
use super::conn::Source;
use super::sql::Backend;
use super::{ApprovalSignals, BlockRecord, CounterHit, CounterState, NewBlock};
use crate::brands::BrandId;
use crate::domain::Millis;
use crate::events::Event;

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
