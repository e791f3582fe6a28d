//! Persistence behind one trait, so the domain never sees SQL.
//!
//! [`SqlStore`] serves both backends: SQLite (embedded default) and PostgreSQL. The SQL is
//! written once in the dialect both accept (`$n` parameters, `RETURNING`, `ON CONFLICT`), and
//! each backend keeps its own migrations under `migrations/<backend>/`.

mod sql;

pub use sql::{Backend, SqlStore};

use async_trait::async_trait;

use crate::brands::BrandId;
use crate::domain::{Limits, Millis, Money, PhoneNumber, Status, VerificationId};

/// A verification as stored.
#[derive(Debug, Clone)]
pub struct VerificationRecord {
    pub id: VerificationId,
    pub brand: String,
    pub status: Status,
    pub phone: PhoneNumber,
    pub order_reference: String,
    pub amount: Money,
    pub locale: Option<String>,
    pub code_length: u8,
    pub max_checks: u32,
    pub max_sends: u32,
    pub resend_cooldown_ms: Millis,
    pub checks_used: u32,
    pub sends: u32,
    pub last_sent_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Millis,
    pub finished_at: Option<Millis>,
}

impl VerificationRecord {
    /// When the next send is allowed, if a send happened.
    pub fn resend_available_at(&self) -> Option<Millis> {
        self.last_sent_at.map(|sent| sent + self.resend_cooldown_ms)
    }
}

/// What a new verification row holds.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: VerificationId,
    pub brand: BrandId,
    pub phone: PhoneNumber,
    pub order_reference: String,
    pub amount: Money,
    pub locale: Option<String>,
    pub code_hash: Vec<u8>,
    pub limits: Limits,
    pub now: Millis,
}

impl VerificationRecord {
    /// The record of a verification just inserted, without reading it back.
    pub fn pending(new: &NewVerification) -> Self {
        Self {
            id: new.id,
            brand: new.brand.as_str().to_owned(),
            status: Status::Pending,
            phone: new.phone.clone(),
            order_reference: new.order_reference.clone(),
            amount: new.amount.clone(),
            locale: new.locale.clone(),
            code_length: new.limits.code_length,
            max_checks: new.limits.max_checks,
            max_sends: new.limits.max_sends,
            resend_cooldown_ms: Millis::from(new.limits.resend_cooldown_seconds) * 1000,
            checks_used: 0,
            sends: 1,
            last_sent_at: Some(new.now),
            created_at: new.now,
            updated_at: new.now,
            expires_at: new.now + Millis::from(new.limits.ttl_seconds) * 1000,
            finished_at: None,
        }
    }
}

/// The result of counting a check before comparing the code.
#[derive(Debug)]
pub enum CheckCount {
    /// The attempt was counted; compare against `code_hash`.
    Counted {
        checks_used: u32,
        max_checks: u32,
        code_hash: Vec<u8>,
    },
    /// Not counted: the verification is not open for checks; here it is as it stands.
    Refused(Box<VerificationRecord>),
    NotFound,
}

/// The result of reserving a resend.
#[derive(Debug)]
pub enum SendReservation {
    Reserved(Box<VerificationRecord>),
    Refused(Box<VerificationRecord>),
    NotFound,
}

/// The result of claiming an idempotency key.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First use: go ahead, then [`Store::idempotency_complete`] or `_release`.
    Claimed,
    /// Seen before with the same request: replay this response.
    Replay { status: u16, body: String },
    /// Seen before with a different request.
    Mismatch,
    /// The first request with this key is still being processed.
    InProgress,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is, for readiness output and dialect choices.
    fn backend(&self) -> Backend;

    /// Checks the database answers.
    async fn ping(&self) -> anyhow::Result<()>;

    /// Stores a new pending verification whose first send is already counted.
    async fn insert_verification(&self, new: &NewVerification) -> anyhow::Result<()>;

    /// A brand's verification; another brand's id is `None`, as is an unknown id.
    async fn get_verification(
        &self,
        brand: &BrandId,
        id: &VerificationId,
    ) -> anyhow::Result<Option<VerificationRecord>>;

    /// Atomically raises the check counter if the verification is pending, unexpired and under
    /// its limit. Parallel calls can never count more than `max_checks`.
    async fn count_check(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        now: Millis,
    ) -> anyhow::Result<CheckCount>;

    /// Moves a pending verification to a final status. `false` if it was no longer pending.
    async fn finish(&self, id: &VerificationId, to: Status, now: Millis) -> anyhow::Result<bool>;

    /// Atomically counts a resend and swaps in the new code hash, if the verification is
    /// pending, unexpired, under its send limit and past its cooldown.
    async fn reserve_send(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        code_hash: &[u8],
        code_length: u8,
        now: Millis,
    ) -> anyhow::Result<SendReservation>;

    /// Marks every pending verification past its expiry as expired (at most `limit`), and
    /// returns them as `(verification, brand)`. Safe to run on several instances at once.
    async fn expire_due(
        &self,
        now: Millis,
        limit: i64,
    ) -> anyhow::Result<Vec<(VerificationId, String)>>;

    /// Claims `key` for a request whose body hashes to `request_hash`.
    async fn idempotency_claim(
        &self,
        brand: &BrandId,
        key: &str,
        request_hash: &[u8],
        now: Millis,
    ) -> anyhow::Result<IdempotencyClaim>;

    /// Stores the response to replay for a claimed key.
    async fn idempotency_complete(
        &self,
        brand: &BrandId,
        key: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()>;

    /// Gives a claimed key up (the request failed in a way worth retrying).
    async fn idempotency_release(&self, brand: &BrandId, key: &str) -> anyhow::Result<()>;
}
