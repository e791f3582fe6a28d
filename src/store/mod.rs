//! Persistence behind one trait, so the domain never sees SQL.
//!
//! [`SqlStore`] serves both backends: SQLite (embedded default) and PostgreSQL. The SQL is
//! written once in the dialect both accept (`$n` parameters, `RETURNING`, `ON CONFLICT`), and
//! each backend keeps its own migrations under `migrations/<backend>/`.

mod batch;
mod conn;
mod error;
mod fraud;
mod sql;

pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use sql::{Backend, SqlStore};

use async_trait::async_trait;

use crate::brands::BrandId;
use crate::domain::records::{NewVerification, OrderRecord, SmsRecord, VerificationRecord};
use crate::domain::{Event, Millis, OrderId, Status, VerificationId};

/// What became of one forward attempt.
#[derive(Debug, Clone)]
pub enum ForwardOutcome {
    /// The upstream took the order (2xx).
    Forwarded { status: u16, body: String },
    /// The upstream refused it (4xx other than 408/429): final, never retried.
    Rejected { status: u16, body: String },
    /// Worth another attempt at `next_attempt_at` (5xx, 408, 429, timeout, connection).
    Retry {
        status: Option<u16>,
        body: Option<String>,
        error: String,
        next_attempt_at: Millis,
    },
    /// Out of attempts, or nothing to forward to: final.
    Failed {
        status: Option<u16>,
        body: Option<String>,
        error: String,
    },
}

/// A webhook due for delivery, with the order it announces.
#[derive(Debug, Clone)]
pub struct WebhookJob {
    pub webhook_id: i64,
    pub attempts: u32,
    pub order: OrderRecord,
}

/// What became of one webhook attempt.
#[derive(Debug, Clone)]
pub enum WebhookOutcome {
    Delivered,
    Retry {
        error: String,
        next_attempt_at: Millis,
    },
    Failed {
        error: String,
    },
}

/// What the verifier decided about a counted check, applied in the same transaction.
#[derive(Debug)]
pub struct CheckDecision {
    /// The final status to move to (approved, locked), if any.
    pub finish: Option<Status>,
    /// Events describing the check and its consequence.
    pub events: Vec<Event>,
}

/// Decides about a counted check from the record (counter already raised) and the stored hash.
pub type DecideCheck<'a> = &'a (dyn Fn(&VerificationRecord, &[u8]) -> CheckDecision + Send + Sync);

/// Events describing a change to a verification, built from the record after the change.
pub type EventsFor<'a> = &'a (dyn Fn(&VerificationRecord) -> Vec<Event> + Send + Sync);

/// Events describing a delivery receipt, from the verification and its SMS.
pub type ReceiptEvents<'a> =
    &'a (dyn Fn(&VerificationRecord, &SmsRecord) -> Vec<Event> + Send + Sync);

/// The result of a check.
#[derive(Debug)]
pub enum CheckCount {
    /// The attempt was counted and decided; the record as it stands after the decision.
    Counted(Box<VerificationRecord>),
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

/// A piece of leased gate work.
#[derive(Debug, Clone, Copy)]
pub enum LeasedWork<'a> {
    Forward(&'a OrderId),
    Webhook(i64),
}

/// The result of claiming an idempotency key.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// Go ahead, creating `resource` (the id stored with the key), then
    /// [`Store::idempotency_complete`] or `_release`. `resumed`: an earlier attempt with this
    /// key died before answering (its lease ran out); it may have created `resource` already.
    Claimed { resource: String, resumed: bool },
    /// Seen before with the same request: replay this response.
    Replay { status: u16, body: String },
    /// Seen before with a different request.
    Mismatch,
    /// The first request with this key is still being processed (its lease runs).
    InProgress,
}

/// The result of a delivery receipt.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Recorded,
    /// The message already had a final delivery status; nothing changed.
    AlreadyFinal,
    UnknownMessage,
}

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub payload: String,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest_created_at: Option<Millis>,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is, for readiness output and dialect choices.
    fn backend(&self) -> Backend;

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

    /// Checks the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a new pending verification (its first send counted) and its events.
    async fn insert_verification(&self, new: &NewVerification, events: &[Event])
    -> StoreResult<()>;

    /// A brand's verification; another brand's id is `None`, as is an unknown id.
    async fn get_verification(
        &self,
        brand: &BrandId,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>>;

    /// A verification by id alone (the code page, authorized by its signed link).
    async fn find_verification(
        &self,
        id: &VerificationId,
    ) -> StoreResult<Option<VerificationRecord>>;

    /// In one transaction: raises the check counter if the verification is pending, unexpired
    /// and under its limit (so parallel checks can never count more than `max_checks`), lets
    /// `decide` compare the code, and applies the decision and its events.
    async fn check_code(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        now: Millis,
        decide: DecideCheck<'_>,
    ) -> StoreResult<CheckCount>;

    /// Moves a pending verification to a final status with its events. `false` (and no
    /// events) if it was no longer pending.
    async fn finish(
        &self,
        id: &VerificationId,
        to: Status,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Atomically counts a resend and swaps in the new code hash, if the verification is
    /// pending, unexpired, under its send limit and past its cooldown; with its events.
    async fn reserve_send(
        &self,
        brand: &BrandId,
        id: &VerificationId,
        code_hash: &[u8],
        code_length: u8,
        now: Millis,
        events: EventsFor<'_>,
    ) -> StoreResult<SendReservation>;

    /// Marks pending verifications past their expiry as expired (at most `limit`), each with
    /// its events, and returns them. Safe to run on several instances at once.
    async fn expire_due(
        &self,
        now: Millis,
        limit: i64,
        events: EventsFor<'_>,
    ) -> StoreResult<Vec<VerificationRecord>>;

    /// Records an SMS hand-over (or failure) with its events. `refund_send` gives the send
    /// back to the verification (a failure that cannot have reached the phone), in the same
    /// write.
    async fn record_sms(
        &self,
        sms: &SmsRecord,
        refund_send: bool,
        events: &[Event],
    ) -> StoreResult<()>;

    /// Whether any SMS (sent or failed) was recorded for verification `id`.
    async fn has_sms(&self, id: &VerificationId) -> StoreResult<bool>;

    /// Replaces a pending verification's code hash; `false` if it is no longer pending.
    async fn replace_code(&self, id: &VerificationId, code_hash: &[u8]) -> StoreResult<bool>;

    /// Applies a delivery receipt for the message with our id or the provider's reference.
    async fn sms_receipt(
        &self,
        reference: &str,
        delivered: bool,
        now: Millis,
        events: ReceiptEvents<'_>,
    ) -> StoreResult<ReceiptOutcome>;

    /// Appends events that come with no other change (refused starts).
    async fn append_events(&self, events: &[Event]) -> StoreResult<()>;

    /// Leases up to `limit` unclaimed (or lease-expired) outbox rows to `owner` until
    /// `lease_until`, oldest first. Several instances never get the same row at once. A batch
    /// given up or left by a dead relay is claimed again first, whole and alone.
    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<OutboxRow>>;

    /// Deletes rows the sink acknowledged.
    async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Gives leased rows that were never written back, to be claimed in any batch.
    async fn release_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Gives back rows whose write failed without an answer: they may be in the sink. They
    /// are claimed again as exactly this batch, so the retry carries the same deduplication
    /// token.
    async fn give_up_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Moves rows the sink refused as bad data to the dead-letter table, with the refusal.
    async fn dead_letter(&self, rows: &[OutboxRow], error: &str, now: Millis) -> StoreResult<()>;

    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;

    /// A brand's held order; another brand's id is `None`.
    async fn get_order(&self, brand: &BrandId, id: &OrderId) -> StoreResult<Option<OrderRecord>>;

    /// The order held with a verification, if any.
    async fn order_for_verification(&self, id: &VerificationId)
    -> StoreResult<Option<OrderRecord>>;

    /// Leases up to `limit` orders due for a forward attempt to `owner` until `lease_until`.
    /// An order whose holder died mid-forward is due again once its lease has run out.
    async fn claim_forwards(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OrderRecord>>;

    /// Records a forward attempt by the lease holder, with its events and (when final) the
    /// webhook, in one transaction. `false` if `owner` no longer holds the order.
    async fn complete_forward(
        &self,
        id: &OrderId,
        owner: &str,
        outcome: &ForwardOutcome,
        now: Millis,
        events: &[Event],
    ) -> StoreResult<bool>;

    /// Extends `owner`'s lease on a claimed forward or webhook to `lease_until`, so work that
    /// outlasts the lease (a slow upstream or receiver) is not claimed again by anyone.
    /// `false` if `owner` no longer holds it: then it must not be sent.
    async fn renew_lease(
        &self,
        work: LeasedWork<'_>,
        owner: &str,
        lease_until: Millis,
    ) -> StoreResult<bool>;

    /// Leases up to `limit` due webhooks to `owner`.
    async fn claim_webhooks(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<WebhookJob>>;

    /// Records a webhook attempt by the lease holder.
    async fn complete_webhook(
        &self,
        webhook_id: i64,
        owner: &str,
        outcome: &WebhookOutcome,
        now: Millis,
    ) -> StoreResult<()>;

    /// Claims `key` for a request whose body hashes to `request_hash`, until `lease_until`;
    /// `resource` is the id the request will create, stored with the key. A key whose holder
    /// died (lease over, no response stored) is claimed again, with its stored resource.
    async fn idempotency_claim(
        &self,
        brand: &BrandId,
        key: &str,
        request_hash: &[u8],
        resource: &str,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<IdempotencyClaim>;

    /// Stores the response to replay for a claimed key.
    async fn idempotency_complete(
        &self,
        brand: &BrandId,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()>;

    /// Gives a claimed key up (the request failed in a way worth retrying).
    async fn idempotency_release(&self, brand: &BrandId, key: &str) -> StoreResult<()>;
}
