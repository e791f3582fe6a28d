//! Where the store's connections come from, and its transactions.
//!
//! PostgreSQL: sqlx's pool. SQLite: its one connection behind a lock, with no pool. sqlx's pool
//! pings a connection when it is taken and again when it is given back; for SQLite each ping
//! is a hand-over to the connection's worker thread, and every hand-over keeps the one
//! connection idle while the task holding it waits to be scheduled. The same holds for each
//! message of a transaction, so on SQLite a [`Tx`] sends its `BEGIN` with its first batch and
//! its `COMMIT` with its last. On both, a [`Combiner`] commits the writes that queue up
//! meanwhile together.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, mpsc, oneshot};

use super::batch::Batch;
use super::sql::Backend;

/// How long a caller waits for a connection before the store reports itself at capacity.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) enum Source {
    Pool(AnyPool),
    Single(Arc<Mutex<Single>>),
}

pub(super) struct Single {
    conn: AnyConnection,
    /// A transaction was broken off half-way (an error, or a caller that went away): the
    /// next user rolls it back first.
    broken_off: bool,
}

impl Single {
    pub(super) fn new(conn: AnyConnection) -> Self {
        Self {
            conn,
            broken_off: false,
        }
    }
}

/// A connection taken from its source, given back on drop.
pub(super) enum Conn {
    Pooled(PoolConnection<Any>),
    Single(OwnedMutexGuard<Single>),
}

impl Conn {
    /// A batch with nothing in it, for this connection's database.
    fn empty_batch(&self) -> Batch {
        Batch::new(match self {
            Self::Pooled(_) => Backend::Postgres,
            Self::Single(_) => Backend::Sqlite,
        })
    }
}

impl Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Pooled(conn) => conn,
            Self::Single(single) => &single.conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Pooled(conn) => conn,
            Self::Single(single) => &mut single.conn,
        }
    }
}

impl Source {
    /// A connection; an exhausted source is `sqlx::Error::PoolTimedOut` either way, which the
    /// API answers with a retryable 503.
    pub(super) async fn acquire(&self) -> anyhow::Result<Conn> {
        match self {
            Self::Pool(pool) => Ok(Conn::Pooled(pool.acquire().await?)),
            Self::Single(single) => {
                let mut guard = tokio::time::timeout(ACQUIRE_TIMEOUT, single.clone().lock_owned())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?;
                if guard.broken_off {
                    // "no transaction is active" is fine: the transaction may have ended.
                    let _ = guard.conn.execute("ROLLBACK").await;
                    guard.broken_off = false;
                }
                Ok(Conn::Single(guard))
            }
        }
    }

    /// Commits `batch` atomically: alone on a pool (PostgreSQL: one statement, atomic by
    /// itself), in a transaction sent with it on SQLite.
    pub(super) async fn write(&self, batch: Batch) -> anyhow::Result<()> {
        match self {
            Self::Pool(_) => {
                batch.run(&mut *self.acquire().await?).await?;
            }
            Self::Single(_) => {
                self.begin().await?.commit_with(batch).await?;
            }
        }
        Ok(())
    }

    /// Runs `batch` atomically on its own and returns its first statement's rows: one
    /// autocommit statement on a pool, a transaction sent with it on SQLite.
    pub(super) async fn fetch(&self, batch: Batch) -> anyhow::Result<Vec<AnyRow>> {
        match self {
            Self::Pool(_) => batch.run(&mut *self.acquire().await?).await,
            Self::Single(_) => self.begin().await?.commit_with(batch).await,
        }
    }

    pub(super) async fn begin(&self) -> anyhow::Result<Tx> {
        Ok(Tx {
            conn: self.acquire().await?,
            begun: false,
            ended: false,
        })
    }
}

/// A transaction. On SQLite's single connection its `BEGIN` travels with its first batch and
/// its `COMMIT` with its last. One that began and did not end — an error, or a caller that went
/// away, even while `BEGIN` itself was under way — never reaches the next user of its
/// connection: a pooled connection is closed (the server rolls back), SQLite's is rolled back
/// by the next user.
pub(super) struct Tx {
    conn: Conn,
    begun: bool,
    ended: bool,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.begun && !self.ended {
            match &mut self.conn {
                Conn::Pooled(conn) => conn.close_on_drop(),
                Conn::Single(single) => single.broken_off = true,
            }
        }
    }
}

impl Tx {
    /// Runs `batch` inside the transaction, beginning it if need be.
    pub(super) async fn run(&mut self, batch: Batch) -> anyhow::Result<Vec<AnyRow>> {
        self.send(batch, false).await
    }

    /// The connection, for statements of its own; the transaction has begun.
    pub(super) async fn conn(&mut self) -> anyhow::Result<&mut AnyConnection> {
        if !self.begun {
            self.send(self.conn.empty_batch(), false).await?;
        }
        Ok(&mut self.conn)
    }

    pub(super) async fn commit(self) -> anyhow::Result<()> {
        let nothing = self.conn.empty_batch();
        self.commit_with(nothing).await?;
        Ok(())
    }

    /// Runs `batch`, then commits.
    pub(super) async fn commit_with(mut self, batch: Batch) -> anyhow::Result<Vec<AnyRow>> {
        self.send(batch, true).await
    }

    pub(super) async fn rollback(mut self) -> anyhow::Result<()> {
        if self.begun {
            self.conn
                .execute("ROLLBACK")
                .await
                .context("rolling back")?;
        }
        self.ended = true;
        Ok(())
    }

    /// Sends `batch`, with `BEGIN` first if the transaction has not begun and `COMMIT` last
    /// if `commit`: in the batch's own query on SQLite, as statements of their own on a pool.
    async fn send(&mut self, mut batch: Batch, commit: bool) -> anyhow::Result<Vec<AnyRow>> {
        let begin = !self.begun;
        // Begun as soon as `BEGIN` may be under way: a drop from here on ends the transaction.
        self.begun = true;
        let rows = match &mut self.conn {
            Conn::Single(single) => {
                batch.begin = begin;
                batch.commit = commit;
                batch.run(&mut single.conn).await?
            }
            Conn::Pooled(conn) => {
                if begin {
                    conn.execute("BEGIN")
                        .await
                        .context("starting a transaction")?;
                }
                let rows = batch.run(conn).await?;
                if commit {
                    conn.execute("COMMIT").await.context("committing")?;
                }
                rows
            }
        };
        self.ended = commit;
        Ok(rows)
    }
}

/// The most writes one group commit takes, and the most values it binds (well under either
/// backend's parameter limit).
const MAX_GROUP: usize = 16;
const MAX_GROUP_VALUES: usize = 20_000;

/// Writes that queue up while earlier ones are being committed are committed together, in one
/// statement (PostgreSQL) or one transaction sent in one hand-over (SQLite): group commit.
/// Each caller still waits for its own write to be committed. A group the database refuses is
/// broken up and its writes run alone, so a bad write fails only its own caller; a group that
/// found no database fails all its callers at once. The writes run in tasks
/// of their own: a caller that goes away does not break a group off. Up to `parallel` groups
/// are under way at once; meanwhile the queue fills the next one.
#[derive(Clone)]
pub(super) struct Combiner {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<anyhow::Result<()>>,
}

impl Grouped for Job {
    fn weight(&self) -> usize {
        self.batch.values()
    }
}

impl Combiner {
    pub(super) fn start(source: Source, parallel: usize) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(combine(
            queue,
            parallel,
            (MAX_GROUP, MAX_GROUP_VALUES),
            move |group| {
                let source = source.clone();
                async move { commit_group(&source, group).await }
            },
        ));
        Self { jobs }
    }

    /// Commits `batch`, with whatever other writes are waiting.
    pub(super) async fn write(&self, batch: Batch) -> anyhow::Result<()> {
        let (done, result) = oneshot::channel();
        self.jobs.send(Job { batch, done }).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

/// A queued job's answer never came: the task that writes them has stopped.
pub(super) fn stopped() -> anyhow::Error {
    anyhow::anyhow!("the database writer has stopped")
}

/// A job that can wait in a queue to be run with others; its weight (values it binds) bounds a
/// group.
pub(super) trait Grouped: Send + 'static {
    fn weight(&self) -> usize;
}

/// Takes the jobs that queue up while earlier groups run, up to `max` (jobs, weight) at a
/// time, and runs each group with `run` in a task of its own, at most `parallel` at once: a
/// caller that goes away does not break a group off.
pub(super) async fn combine<J, F, Fut>(
    mut queue: mpsc::UnboundedReceiver<J>,
    parallel: usize,
    (max_jobs, max_weight): (usize, usize),
    run: F,
) where
    J: Grouped,
    F: Fn(Vec<J>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    let mut carried: Option<J> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut weight = first.weight();
        let mut group = vec![first];
        while group.len() < max_jobs {
            let Ok(job) = queue.try_recv() else {
                break;
            };
            if weight + job.weight() > max_weight {
                carried = Some(job);
                break;
            }
            weight += job.weight();
            group.push(job);
        }
        let work = run(group);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

async fn commit_group(source: &Source, mut group: Vec<Job>) {
    if let [_] = group.as_slice() {
        let job = group.pop().expect("one job");
        let _ = job.done.send(source.write(job.batch).await);
        return;
    }
    // The same kinds of writes in the same order make the same SQL, which stays prepared.
    group.sort_by(|a, b| a.batch.statements().cmp(b.batch.statements()));
    let mut merged = Batch::new(group[0].batch.backend());
    for job in &group {
        merged.append(&job.batch);
    }
    match source.write(merged).await {
        Ok(()) => {
            for job in group {
                let _ = job.done.send(Ok(()));
            }
        }
        // The database refused some row: find it by writing each alone.
        Err(error) if refused_by_database(&error) => {
            for job in group {
                let _ = job.done.send(source.write(job.batch).await);
            }
        }
        // No connection, or a lost one: each write would fail the same way, one acquire
        // timeout after another.
        Err(error) => {
            for job in group {
                let _ = job.done.send(Err(for_each_caller(&error)));
            }
        }
    }
}

pub(super) fn refused_by_database(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(_))
        )
    })
}

/// A group's failure for one of its callers: the same store error, kind included
/// (`anyhow::Error` cannot be cloned; a `StoreError` can).
pub(super) fn for_each_caller(error: &anyhow::Error) -> anyhow::Error {
    anyhow::Error::from(super::StoreError::of(error)).context("writing a group of changes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreError, StoreErrorKind};

    #[test]
    fn each_caller_of_a_failed_group_gets_the_failure_with_its_kind() {
        let timed_out = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("taking it");
        let shared = for_each_caller(&timed_out);
        assert_eq!(StoreError::of(&shared).kind(), StoreErrorKind::Unavailable);
        assert!(format!("{shared:#}").contains("taking it"));
        assert!(!refused_by_database(&timed_out));
        let lost = anyhow::Error::from(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        assert!(StoreError::is_unavailable_cause(&for_each_caller(&lost)));
        let bug = anyhow::anyhow!("no such table");
        assert_eq!(
            StoreError::of(&for_each_caller(&bug)).kind(),
            StoreErrorKind::Other
        );
    }
}
