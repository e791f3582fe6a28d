//! Persistence, so the domain never sees SQL: one trait per aggregate (verifications, SMS,
//! outbox, orders and webhooks, idempotency keys, fraud state), each in its own file with its
//! SQL, and [`Store`] joining them for the application. The connection and group-commit
//! plumbing (`conn.rs`, `batch.rs`) and the typed errors (`error.rs`) sit apart.
//!
//! [`SqlStore`] serves both backends: SQLite (embedded default) and PostgreSQL. The SQL is
//! written once in the dialect both accept (`$n` parameters, `RETURNING`, `ON CONFLICT`), and
//! each backend keeps its own migrations under `migrations/<backend>/`.

/// `anyhow::ensure!` for functions returning a store error.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(anyhow::anyhow!($($message)+).into());
        }
    };
}

mod batch;
mod conn;
mod error;
mod fraud;
mod idempotency;
mod orders;
mod outbox;
mod privacy;
mod sms;
mod sql;
mod verifications;

pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use fraud::{
    ApprovalSignals, BlockRecord, CounterHit, CounterState, FraudStore, KnownGood, NewBlock,
};
pub use idempotency::{IdempotencyClaim, IdempotencyStore};
pub use orders::{ForwardOutcome, LeasedWork, OrderStore, WebhookJob, WebhookOutcome};
pub use outbox::{OutboxRow, OutboxStats, OutboxStore};
pub use privacy::{Erased, Held, Person, PersonOrder, PrivacyStore, PurgeCutoffs, Purged};
pub use sms::{ReceiptEvents, ReceiptOutcome, SmsStore};
pub use sql::{Backend, SqlStore};
pub use verifications::{
    CheckCount, CheckDecision, DecideCheck, EventsFor, SendReservation, VerificationStore,
};

use async_trait::async_trait;

use crate::domain::records::{OrderRecord, SmsRecord, VerificationRecord};

#[async_trait]
pub trait Store:
    FraudStore
    + VerificationStore
    + SmsStore
    + OutboxStore
    + OrderStore
    + IdempotencyStore
    + PrivacyStore
    + Send
    + Sync
    + 'static
{
    /// Which backend this is, for readiness output and dialect choices.
    fn backend(&self) -> Backend;

    /// Checks the database answers.
    async fn ping(&self) -> StoreResult<()>;
}
