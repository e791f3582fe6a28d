//! The verification core: start, read, check, resend, cancel and expire verifications.
//!
//! This is where the lifecycle rules live. It takes validated input, talks to the store and
//! the SMS sender, and answers with records or a [`VerifyError`]; it knows nothing of HTTP.

use std::sync::Arc;

use crate::brands::Brand;
use crate::domain::{CodeHasher, Millis, Status, VerificationId};
use crate::domain::{SmsRecord, VerificationRecord};
use crate::events::{EventFactory, EventType};
use crate::metrics::Metrics;
use crate::sms::SmsSender;
use crate::store::Store;

mod check;
mod error;
mod send;
mod start;

pub use error::VerifyError;

/// What a shop gives to start a verification (raw; validated by [`Verifier::start`]).
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The new verification's id, chosen by the caller: an idempotent request stores it with
    /// its key, so a retry after a crash finds what the first attempt created.
    pub id: VerificationId,
    /// The number typed in the checkout; ignored when a customer reference is given and the
    /// brand has a customer directory (the number on file is used).
    pub phone: Option<String>,
    pub order_reference: String,
    pub amount: String,
    pub currency: String,
    pub locale: Option<String>,
    /// The shop's customer reference; only its pseudonym is kept.
    pub customer_reference: Option<String>,
    /// The buyer's IP address as the shop saw it; only its pseudonym is kept.
    pub client_ip: Option<String>,
    /// The buyer's User-Agent; only its coarse family is kept.
    pub user_agent: Option<String>,
    /// Gate mode: the order to hold until the verification is approved.
    pub order: Option<crate::domain::NewOrder>,
}

pub struct Verifier {
    store: Arc<dyn Store>,
    sms: Arc<SmsSender>,
    hasher: CodeHasher,
    events: EventFactory,
    metrics: Arc<Metrics>,
    /// The host in the SMS's WebOTP line.
    otp_host: String,
    directory: Arc<crate::directory::Directory>,
    /// Woken on every approval: gate mode forwards the held order at once.
    on_approval: Arc<tokio::sync::Notify>,
    fraud: Arc<crate::fraud::Fraud>,
}

/// What a [`Verifier`] works with.
pub struct VerifierDeps {
    pub store: Arc<dyn Store>,
    pub sms: Arc<SmsSender>,
    pub hasher: CodeHasher,
    pub events: EventFactory,
    pub metrics: Arc<Metrics>,
    /// The host in the SMS's WebOTP line.
    pub otp_host: String,
    pub directory: Arc<crate::directory::Directory>,
    /// Woken on every approval.
    pub on_approval: Arc<tokio::sync::Notify>,
    /// The fraud rules of the start step.
    pub fraud: Arc<crate::fraud::Fraud>,
}

impl Verifier {
    /// The time the verifier reads: the fraud rules' clock, so a verification's times and the
    /// rules' windows are on one clock (tests move it forward).
    fn now(&self) -> Millis {
        self.fraud.clock().now()
    }

    /// A refusal for the caller: its `retry_at`, on the rules' clock, told on the wall clock
    /// the client reads (the same in production; a test clock runs ahead of it).
    fn refused(&self, mut refusal: crate::fraud::Refusal) -> VerifyError {
        refusal.retry_at = refusal
            .retry_at
            .map(|at| at - self.now() + crate::domain::now_millis());
        VerifyError::Refused(refusal)
    }

    pub fn new(deps: VerifierDeps) -> Self {
        let VerifierDeps {
            store,
            sms,
            hasher,
            events,
            metrics,
            otp_host,
            directory,
            on_approval,
            fraud,
        } = deps;
        Self {
            store,
            sms,
            hasher,
            events,
            metrics,
            otp_host,
            directory,
            on_approval,
            fraud,
        }
    }

    /// A brand's verification, with an overdue pending one reported (and marked) expired.
    pub async fn get(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<VerificationRecord, VerifyError> {
        let mut record = self
            .store
            .get_verification(&brand.id, id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let now = self.now();
        if record.status == Status::Pending && record.expires_at <= now {
            self.finish(&record, Status::Expired, now).await?;
            record = self
                .store
                .get_verification(&brand.id, id)
                .await?
                .ok_or(VerifyError::NotFound)?;
        }
        Ok(record)
    }

    /// Cancels a pending verification (the buyer aborted the purchase).
    pub async fn cancel(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<VerificationRecord, VerifyError> {
        let record = self
            .store
            .get_verification(&brand.id, id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let now = self.now();
        if record.status != Status::Pending || record.expires_at <= now {
            return Err(self.refusal(&record, now).await);
        }
        if !self.finish(&record, Status::Aborted, now).await? {
            let current = self
                .store
                .get_verification(&brand.id, id)
                .await?
                .ok_or(VerifyError::NotFound)?;
            return Err(self.refusal(&current, now).await);
        }
        tracing::info!(verification_id = %id, brand = %brand.id, "verification aborted");
        self.store
            .get_verification(&brand.id, id)
            .await?
            .ok_or(VerifyError::NotFound)
    }

    /// A verification by id alone, for the code page (its signed link is the credential);
    /// an overdue pending one is reported (and marked) expired.
    pub async fn find(&self, id: &VerificationId) -> Result<VerificationRecord, VerifyError> {
        let record = self
            .store
            .find_verification(id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let now = self.now();
        if record.status == Status::Pending && record.expires_at <= now {
            self.finish(&record, Status::Expired, now).await?;
            return self
                .store
                .find_verification(id)
                .await?
                .ok_or(VerifyError::NotFound);
        }
        Ok(record)
    }

    /// Counts the prefix blocks in force (kept in the metrics).
    pub async fn count_blocks(&self) -> anyhow::Result<usize> {
        Ok(self.fraud.blocks().await?.len())
    }

    /// Marks overdue pending verifications expired; returns how many.
    pub async fn expire_due(&self) -> anyhow::Result<usize> {
        let now = self.now();
        let expired_event = |record: &VerificationRecord| {
            vec![
                self.events
                    .verification(record, EventType::VerificationExpired, now),
            ]
        };
        let expired = self.store.expire_due(now, 500, &expired_event).await?;
        for record in &expired {
            self.metrics
                .verification_finished(&record.brand, Status::Expired.as_str());
            tracing::info!(verification_id = %record.id, brand = record.brand, "verification expired");
        }
        Ok(expired.len())
    }

    /// Applies a delivery receipt that a provider of kind `kind` (its label in metrics)
    /// authenticated, for a message sent through one of `providers`.
    pub async fn sms_receipt(
        &self,
        kind: &str,
        providers: &[String],
        reference: &str,
        delivered: bool,
        reason: &str,
    ) -> anyhow::Result<ReceiptResult> {
        let result = self
            .apply_receipt(providers, reference, delivered, reason)
            .await?;
        self.metrics.sms_receipt(kind, result.as_str());
        Ok(result)
    }

    /// [`Self::sms_receipt`] without counting it.
    async fn apply_receipt(
        &self,
        providers: &[String],
        reference: &str,
        delivered: bool,
        reason: &str,
    ) -> anyhow::Result<ReceiptResult> {
        let now = self.now();
        let events = |record: &VerificationRecord, sms: &SmsRecord| {
            let kind = if delivered {
                EventType::SmsDelivered
            } else {
                EventType::SmsUndelivered
            };
            let mut event = self.events.verification(record, kind, now);
            event.sms_provider = sms.provider.clone();
            event.sms_segments = sms.segments;
            event.outcome = if delivered {
                "delivered"
            } else {
                "undelivered"
            }
            .to_owned();
            event.reason = reason.chars().take(200).collect();
            vec![event]
        };
        let outcome = self
            .store
            .sms_receipt(providers, reference, delivered, now, &events)
            .await?;
        Ok(match outcome {
            crate::store::ReceiptOutcome::Recorded => ReceiptResult::Recorded,
            crate::store::ReceiptOutcome::AlreadyFinal => ReceiptResult::Duplicate,
            crate::store::ReceiptOutcome::UnknownMessage => ReceiptResult::UnknownMessage,
        })
    }

    /// Applies the SMPP sessions' delivery receipts, each then answered (`deliver_sm_resp`).
    /// A receipt that overtook the recording of its submit is tried again for five seconds;
    /// one the database cannot take now is left unanswered, so the SMSC delivers it again.
    pub async fn apply_smpp_receipts(
        self: Arc<Self>,
        mut receipts: tokio::sync::mpsc::UnboundedReceiver<crate::sms::DeliveryReceipt>,
    ) {
        while let Some(receipt) = receipts.recv().await {
            let verifier = self.clone();
            tokio::spawn(async move {
                let scope = [receipt.provider.clone()];
                // Counted once, with its final result, however many tries it took.
                for attempt in 1..=20 {
                    let applied = verifier
                        .apply_receipt(
                            &scope,
                            &receipt.reference,
                            receipt.delivered,
                            &receipt.reason,
                        )
                        .await;
                    match applied {
                        Ok(ReceiptResult::UnknownMessage) if attempt < 20 => {
                            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        }
                        Ok(result) => {
                            verifier.metrics.sms_receipt("smpp", result.as_str());
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(provider = receipt.provider, error = %format!("{error:#}"), "an SMPP receipt could not be applied; the SMSC will deliver it again");
                            return;
                        }
                    }
                }
                receipt.acknowledge().await;
            });
        }
    }

    /// Moves a pending verification to `to` with its event; `false` if it was no longer pending.
    async fn finish(
        &self,
        record: &VerificationRecord,
        to: Status,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let kind = match to {
            Status::Aborted => EventType::VerificationAborted,
            Status::Expired => EventType::VerificationExpired,
            Status::Approved => EventType::VerificationApproved,
            Status::Locked => EventType::VerificationLocked,
            Status::Pending => anyhow::bail!("a verification cannot finish as pending"),
        };
        let event = self.events.verification(record, kind, now);
        let finished = self.store.finish(&record.id, to, now, &[event]).await?;
        if finished {
            self.metrics
                .verification_finished(&record.brand, to.as_str());
        }
        Ok(finished)
    }

    /// Why `record` does not accept the operation, marking an overdue one expired.
    async fn refusal(&self, record: &VerificationRecord, now: Millis) -> VerifyError {
        match record.status {
            Status::Pending if record.expires_at <= now => {
                match self.finish(record, Status::Expired, now).await {
                    Ok(_) => VerifyError::Expired,
                    Err(error) => VerifyError::Internal(error),
                }
            }
            // The last allowed check is being compared right now; it will lock or approve.
            Status::Pending if record.checks_used >= record.max_checks => VerifyError::Locked,
            Status::Pending if record.sends >= record.max_sends => VerifyError::SendLimitReached,
            Status::Pending => match record.resend_available_at() {
                Some(available_at) if available_at > now => {
                    VerifyError::ResendCooldown { available_at }
                }
                _ => VerifyError::Internal(anyhow::anyhow!(
                    "verification {} refused for no known reason",
                    record.id
                )),
            },
            Status::Approved => VerifyError::AlreadyApproved,
            Status::Locked => VerifyError::Locked,
            Status::Aborted => VerifyError::Aborted,
            Status::Expired => VerifyError::Expired,
        }
    }
}

/// What became of a delivery receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptResult {
    Recorded,
    /// The message already had its final status: a repeated receipt.
    Duplicate,
    UnknownMessage,
}

impl ReceiptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Duplicate => "duplicate",
            Self::UnknownMessage => "unknown_message",
        }
    }
}
