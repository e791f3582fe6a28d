//! The fraud rules' shared state (`fraud_counter`): counters hit in one statement per start,
//! prefix blocks placed and lifted with their events; known-good numbers looked up among the
//! approved verifications.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot};

use super::StoreResult;
use super::batch::Batch;
use super::conn::{Grouped, Source, combine, for_each_caller, refused_by_database, stopped};
use super::sql::Backend;
use super::sql::SqlStore;
use crate::brands::BrandId;
use crate::domain::{Event, Millis};
use async_trait::async_trait;

/// A counter's window has ended, or a block ended inside it: the next hit starts a new window.
const RESTARTS: &str = "(fraud_counter.window_start + fraud_counter.window_ms <= excluded.window_start \
     OR (fraud_counter.blocked_until > fraud_counter.window_start \
         AND fraud_counter.blocked_until <= excluded.window_start))";

/// A counter's second window has ended (or it had none): the next hit starts a new one.
const RESTARTS_2: &str =
    "(fraud_counter.window2_start + fraud_counter.window2_ms <= excluded.window2_start)";

const STATE_COLUMNS: &str = "bucket, window_start, window_ms, hits, approvals, prev_hits, prev_approvals, \
    blocked_at, blocked_until, block_level, window2_start, window2_ms, hits2";

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
        window2_start: row.try_get("window2_start")?,
        window2_ms: row.try_get("window2_ms")?,
        hits2: row.try_get("hits2")?,
        pending: 0,
        settled: 0,
        settled_prev: None,
    })
}

/// Runs one batch on its own and returns the rows of its first statement.
async fn run(source: &Source, batch: Batch) -> anyhow::Result<Vec<AnyRow>> {
    source.fetch(batch).await
}

/// One start's (or resend's, or a hot flush's) hits, waiting to be merged with others.
struct HitJob {
    brand: String,
    hits: Vec<CounterHit>,
    now: Millis,
    done: oneshot::Sender<anyhow::Result<Vec<CounterState>>>,
}

impl Grouped for HitJob {
    fn weight(&self) -> usize {
        self.hits.len() * 6
    }
}

/// The most starts one merged hit statement takes, and the most values it binds.
const MAX_HIT_JOBS: usize = 64;
const MAX_HIT_VALUES: usize = 20_000;

/// Counter hits that queue up while earlier ones run go as one statement: every counter the
/// group hits once (in key order, so two statements never wait on each other's rows in
/// opposite orders), each with the group's sum. Each start then gets the counters as they were
/// right after its own hit — the total less what the starts queued after it added — which is
/// what it would have read alone: 50 parallel starts to one number still see 1 to 50.
#[derive(Clone)]
pub(super) struct HitCombiner {
    jobs: mpsc::UnboundedSender<HitJob>,
}

impl HitCombiner {
    pub(super) fn start(source: Source, backend: Backend, parallel: usize) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(combine(
            queue,
            parallel,
            (MAX_HIT_JOBS, MAX_HIT_VALUES),
            move |group| {
                let source = source.clone();
                async move { hit_group(&source, backend, group).await }
            },
        ));
        Self { jobs }
    }

    /// Counts `hits` for `brand` and returns each counter as it is after them.
    pub(super) async fn hit(
        &self,
        brand: &BrandId,
        hits: &[CounterHit],
        now: Millis,
    ) -> anyhow::Result<Vec<CounterState>> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let (done, answer) = oneshot::channel();
        let job = HitJob {
            brand: brand.as_str().to_owned(),
            hits: hits.to_vec(),
            now,
            done,
        };
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A counter as one merged statement hits it: the sums of its group.
struct MergedHit {
    window_ms: Millis,
    window2_ms: Millis,
    count: i64,
    approvals: i64,
    now: Millis,
}

type CounterKey = (String, String);

async fn hit_group(source: &Source, backend: Backend, group: Vec<HitJob>) {
    let mut merged: BTreeMap<CounterKey, MergedHit> = BTreeMap::new();
    for job in &group {
        for hit in &job.hits {
            let entry = merged
                .entry((job.brand.clone(), hit.bucket.clone()))
                .or_insert(MergedHit {
                    window_ms: hit.window_ms,
                    window2_ms: hit.window2_ms,
                    count: 0,
                    approvals: 0,
                    now: job.now,
                });
            entry.window_ms = hit.window_ms;
            entry.window2_ms = hit.window2_ms;
            entry.count += hit.count;
            entry.approvals += hit.approvals;
            entry.now = entry.now.max(job.now);
        }
    }
    let totals = match hit_counters(source, backend, &merged).await {
        Ok(totals) => totals,
        // The database refused some row: each start alone finds whose.
        Err(error) if refused_by_database(&error) && group.len() > 1 => {
            for job in group {
                let answer = Box::pin(hit_alone(source, backend, &job)).await;
                let _ = job.done.send(answer);
            }
            return;
        }
        Err(error) => {
            for job in group {
                let _ = job.done.send(Err(for_each_caller(&error)));
            }
            return;
        }
    };
    // The last start in the queue sees the totals; each one before it, the totals less what
    // the starts after it added.
    let mut later: HashMap<CounterKey, (i64, i64)> = HashMap::new();
    let mut answers = Vec::with_capacity(group.len());
    for job in group.iter().rev() {
        let mut views = Vec::with_capacity(job.hits.len());
        for hit in &job.hits {
            let key = (job.brand.clone(), hit.bucket.clone());
            if let Some(total) = totals.get(&key) {
                let (count, approvals) = later.get(&key).copied().unwrap_or_default();
                let mut view = total.clone();
                view.hits -= count;
                view.approvals -= approvals;
                // The second window counted the same starts.
                if view.window2_ms > 0 {
                    view.hits2 -= count;
                }
                views.push(view);
            }
        }
        for hit in &job.hits {
            let added = later
                .entry((job.brand.clone(), hit.bucket.clone()))
                .or_default();
            added.0 += hit.count;
            added.1 += hit.approvals;
        }
        answers.push(views);
    }
    for (job, views) in group.into_iter().zip(answers.into_iter().rev()) {
        let _ = job.done.send(Ok(views));
    }
}

async fn hit_alone(
    source: &Source,
    backend: Backend,
    job: &HitJob,
) -> anyhow::Result<Vec<CounterState>> {
    let mut merged: BTreeMap<CounterKey, MergedHit> = BTreeMap::new();
    for hit in &job.hits {
        merged.insert(
            (job.brand.clone(), hit.bucket.clone()),
            MergedHit {
                window_ms: hit.window_ms,
                window2_ms: hit.window2_ms,
                count: hit.count,
                approvals: hit.approvals,
                now: job.now,
            },
        );
    }
    let totals = hit_counters(source, backend, &merged).await?;
    Ok(job
        .hits
        .iter()
        .filter_map(|hit| {
            totals
                .get(&(job.brand.clone(), hit.bucket.clone()))
                .cloned()
        })
        .collect())
}

/// Hits every counter of `merged` once, in key order, and returns each as it is after. The
/// rows travel as one JSON array, so the statement's text is the same whatever the group's
/// size and stays prepared on every connection.
async fn hit_counters(
    source: &Source,
    backend: Backend,
    merged: &BTreeMap<CounterKey, MergedHit>,
) -> anyhow::Result<HashMap<CounterKey, CounterState>> {
    let rows: Vec<serde_json::Value> = merged
        .iter()
        .map(|((brand, bucket), hit)| {
            serde_json::json!({"b": brand, "k": bucket, "n": hit.now, "w": hit.window_ms,
                               "v": hit.window2_ms, "c": hit.count, "a": hit.approvals})
        })
        .collect();
    let mut batch = Batch::new(backend);
    let rows = batch.bind(serde_json::Value::Array(rows).to_string());
    let source_rows = match backend {
        Backend::Postgres => format!(
            "SELECT r.b, r.k, r.n, r.w, r.c, r.a, r.n, r.v, CASE WHEN r.v > 0 THEN r.c ELSE 0 END \
             FROM jsonb_to_recordset({rows}::jsonb) \
             AS r(b text, k text, n bigint, w bigint, v bigint, c bigint, a bigint)"
        ),
        // `WHERE true`: SQLite's upsert after a SELECT needs it to parse.
        Backend::Sqlite => format!(
            "SELECT value ->> '$.b', value ->> '$.k', value ->> '$.n', value ->> '$.w', \
             value ->> '$.c', value ->> '$.a', value ->> '$.n', value ->> '$.v', \
             CASE WHEN value ->> '$.v' > 0 THEN value ->> '$.c' ELSE 0 END \
             FROM json_each({rows}) WHERE true"
        ),
    };
    batch.push(format!(
        "INSERT INTO fraud_counter (brand_id, bucket, window_start, window_ms, hits, approvals, \
           window2_start, window2_ms, hits2) {source_rows} \
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
           window_ms = excluded.window_ms, \
           hits2 = CASE WHEN excluded.window2_ms = 0 THEN 0 WHEN {RESTARTS_2} THEN excluded.hits2 \
             ELSE fraud_counter.hits2 + excluded.hits2 END, \
           window2_start = CASE WHEN {RESTARTS_2} THEN excluded.window2_start \
             ELSE fraud_counter.window2_start END, \
           window2_ms = excluded.window2_ms \
         RETURNING brand_id, {STATE_COLUMNS}"
    ));
    let rows = run(source, batch).await.context("counting starts")?;
    rows.iter()
        .map(|row| {
            Ok((
                (row.try_get("brand_id")?, row.try_get("bucket")?),
                state_from_row(row)?,
            ))
        })
        .collect()
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
    if signals.refunds.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(backend);
    approval_statements(&mut batch, brand, signals);
    // Written alone, never merged with other approvals: two approvals in one statement could
    // touch the same counter twice, and PostgreSQL keeps only one of two CTE updates of a row.
    source
        .write(batch)
        .await
        .context("recording an approval's fraud signals")
}

/// The statements that record `signals`, added to `batch`: alone for a refused start's
/// refunds, or with the approval's own finish (in its transaction).
pub(super) fn approval_statements(batch: &mut Batch, brand: &BrandId, signals: &ApprovalSignals) {
    if signals.refunds.is_empty() {
        return;
    }
    let brand = batch.bind(brand.as_str());
    let started = batch.bind(signals.started_at);
    let list: Vec<String> = signals
        .refunds
        .iter()
        .map(|bucket| batch.bind(bucket.as_str()))
        .collect();
    // Each window gives the start back if the start was counted in it; an approval also counts
    // as one in the first window.
    let approvals = if signals.converted {
        format!(
            "approvals = CASE WHEN hits > 0 AND window_start <= {started} \
               THEN approvals + 1 ELSE approvals END, "
        )
    } else {
        String::new()
    };
    batch.push(format!(
        "UPDATE fraud_counter SET {approvals}\
           hits = CASE WHEN hits > 0 AND window_start <= {started} THEN hits - 1 ELSE hits END, \
           hits2 = CASE WHEN hits2 > 0 AND window2_start <= {started} THEN hits2 - 1 ELSE hits2 END \
         WHERE brand_id = {brand} AND bucket IN ({}) \
           AND ((hits > 0 AND window_start <= {started}) \
             OR (hits2 > 0 AND window2_start <= {started}))",
        list.join(", ")
    ));
}

/// Whether the number (`phone_pseudonym`) or the customer had an approval since `since`:
/// read from the approved verifications' partial indexes (`verification_known_good_*`).
pub(super) async fn known_good(
    source: &Source,
    backend: Backend,
    brand: &BrandId,
    person: &KnownGood<'_>,
    since: Millis,
) -> anyhow::Result<bool> {
    let mut batch = Batch::new(backend);
    let brand = batch.bind(brand.as_str());
    let since = batch.bind(since);
    // An erased verification's pseudonyms are blank: a blank one names nobody. The status is
    // a literal, so that both databases see each partial index's predicate.
    let mut lookups = Vec::new();
    for (column, pseudonym) in [
        ("phone_pseudonym", person.phone_pseudonym),
        ("customer_pseudonym", person.customer_pseudonym),
    ] {
        if let Some(pseudonym) = pseudonym.filter(|p| !p.is_empty()) {
            let value = batch.bind(pseudonym);
            lookups.push(format!(
                "SELECT known FROM (SELECT 1 AS known FROM verification \
                 WHERE brand_id = {brand} AND {column} = {value} AND {column} <> '' \
                 AND status = 'approved' AND finished_at >= {since} LIMIT 1) AS {column}"
            ));
        }
    }
    if lookups.is_empty() {
        return Ok(false);
    }
    batch.push(lookups.join(" UNION ALL "));
    Ok(!run(source, batch)
        .await
        .context("looking up known-good numbers")?
        .is_empty())
}

/// Whom a known-good lookup asks about: pseudonyms of the number and of the customer, under
/// the current event pepper.
#[derive(Debug, Clone, Copy)]
pub struct KnownGood<'a> {
    pub phone_pseudonym: Option<&'a str>,
    pub customer_pseudonym: Option<&'a str>,
}

/// One counter a start hits: a rate-limit bucket or a number prefix (see the `fraud_counter`
/// migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterHit {
    pub bucket: String,
    pub window_ms: Millis,
    /// A second window counted on the same row (a key's second limit); 0 for none.
    pub window2_ms: Millis,
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
    /// The second window, if the counter has one (`window2_ms` > 0).
    pub window2_start: Millis,
    pub window2_ms: Millis,
    pub hits2: i64,
    /// Starts an instance counted and has not written yet (included in `hits`).
    pub pending: i64,
    /// Of `hits`, those this instance saw written long enough ago to have converted by now
    /// (filled in by the fraud rules from their own history; 0 from the store).
    pub settled: i64,
    /// Of `prev_hits`, those old enough to have converted by now, when the window turned so
    /// recently that some are not (filled in like `settled`; `None`: all of them).
    pub settled_prev: Option<i64>,
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
    /// Counters of unconverted starts (IP, range, the brand's budget) the start is refunded to.
    pub refunds: Vec<String>,
    /// When the verification started: only counters whose window holds it change.
    pub started_at: Millis,
    /// An approval (counted in the counters' `approvals`: the range guard reads it), not a
    /// refused start's refund.
    pub converted: bool,
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

    /// Whether the number or the customer had an approval since `since`.
    async fn known_good(
        &self,
        brand: &BrandId,
        person: &KnownGood<'_>,
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
        Ok(self.hits.hit(brand, hits, now).await?)
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
        person: &KnownGood<'_>,
        since: Millis,
    ) -> StoreResult<bool> {
        Ok(super::fraud::known_good(&self.counters, self.backend, brand, person, since).await?)
    }
}
