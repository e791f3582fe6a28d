//! Where the store's connections come from, and its transactions.
//!
//! PostgreSQL: sqlx's pool. SQLite: its one connection behind a lock, with no pool. sqlx's pool
//! pings a connection when it is taken and again when it is given back; for SQLite each ping
//! is a hand-over to the connection's worker thread, and every hand-over keeps the one
//! connection idle while the task holding it waits to be scheduled. The same holds for each
//! message of a transaction, so on SQLite a [`Tx`] sends its `BEGIN` with its first batch and
//! its `COMMIT` with its last.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

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

    pub(super) async fn begin(&self) -> anyhow::Result<Tx> {
        Ok(match self {
            Self::Pool(pool) => Tx::Pooled(pool.begin().await.context("starting a transaction")?),
            Self::Single(_) => {
                let Conn::Single(conn) = self.acquire().await? else {
                    unreachable!("a single connection source gives single connections")
                };
                Tx::Single(Guarded {
                    conn,
                    begun: false,
                    ended: false,
                })
            }
        })
    }
}

/// A transaction: sqlx's on a pool; on SQLite's single connection, one whose `BEGIN` travels
/// with its first batch and `COMMIT` with its last.
pub(super) enum Tx {
    Pooled(Transaction<'static, Any>),
    Single(Guarded),
}

/// SQLite's connection inside a transaction; if the transaction began and did not end, the
/// next user rolls it back.
pub(super) struct Guarded {
    conn: OwnedMutexGuard<Single>,
    begun: bool,
    ended: bool,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.begun && !self.ended {
            self.conn.broken_off = true;
        }
    }
}

impl Guarded {
    /// Runs `batch`, with `BEGIN` if the transaction has not begun yet, and `COMMIT` last if
    /// `commit`.
    async fn run(&mut self, mut batch: Batch<'_>, commit: bool) -> anyhow::Result<Vec<AnyRow>> {
        batch.begin = !self.begun;
        batch.commit = commit;
        self.begun = true;
        let rows = batch.run(&mut self.conn.conn).await?;
        self.ended = commit;
        Ok(rows)
    }
}

impl Tx {
    /// Runs `batch` inside the transaction.
    pub(super) async fn run(&mut self, batch: Batch<'_>) -> anyhow::Result<Vec<AnyRow>> {
        match self {
            Self::Pooled(tx) => batch.run(tx).await,
            Self::Single(conn) => conn.run(batch, false).await,
        }
    }

    /// The connection, for statements of its own; the transaction has begun.
    pub(super) async fn conn(&mut self) -> anyhow::Result<&mut AnyConnection> {
        Ok(match self {
            Self::Pooled(tx) => tx,
            Self::Single(conn) => {
                if !conn.begun {
                    conn.run(Batch::new(Backend::Sqlite), false).await?;
                }
                &mut conn.conn.conn
            }
        })
    }

    pub(super) async fn commit(self) -> anyhow::Result<()> {
        self.commit_with(Batch::new(Backend::Sqlite)).await?;
        Ok(())
    }

    /// Runs `batch`, then commits.
    pub(super) async fn commit_with(self, batch: Batch<'_>) -> anyhow::Result<Vec<AnyRow>> {
        match self {
            Self::Pooled(mut tx) => {
                let rows = batch.run(&mut tx).await?;
                tx.commit().await.context("committing")?;
                Ok(rows)
            }
            Self::Single(mut conn) => conn.run(batch, true).await,
        }
    }

    pub(super) async fn rollback(self) -> anyhow::Result<()> {
        match self {
            Self::Pooled(tx) => tx.rollback().await.context("rolling back"),
            Self::Single(mut conn) => {
                if conn.begun {
                    conn.conn
                        .conn
                        .execute("ROLLBACK")
                        .await
                        .context("rolling back")?;
                }
                conn.ended = true;
                Ok(())
            }
        }
    }
}
