//! The verification core: start, read, check, resend, cancel and expire verifications.
//!
//! This is where the lifecycle rules live. It takes validated input, talks to the store and
//! the SMS sender, and answers with records or a [`VerifyError`]; it knows nothing of HTTP.

use std::sync::Arc;

use crate::brands::Brand;
use crate::domain::{
    CodeHasher, Millis, Money, OtpCode, PhoneError, PhoneNumber, Status, VerificationId,
    money::MoneyError, now_millis,
};
use crate::metrics::Metrics;
use crate::sms::{SmsMessage, SmsSender};
use crate::store::{CheckCount, NewVerification, SendReservation, Store, VerificationRecord};

/// What a shop gives to start a verification (raw; validated by [`Verifier::start`]).
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub phone: String,
    pub order_reference: String,
    pub amount: String,
    pub currency: String,
    pub locale: Option<String>,
}

/// Why an operation was refused. Each variant has a stable problem type at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Phone(#[from] PhoneError),
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("no such verification")]
    NotFound,
    #[error("the verification has expired")]
    Expired,
    #[error("too many wrong codes: the verification is locked")]
    Locked,
    #[error("the verification was cancelled")]
    Aborted,
    #[error("the verification is already approved")]
    AlreadyApproved,
    #[error("the code is not correct")]
    InvalidCode { attempts_remaining: u32 },
    #[error("a new code can be sent once the cooldown has passed")]
    ResendCooldown { available_at: Millis },
    #[error("no more codes can be sent for this verification")]
    SendLimitReached,
    #[error("the SMS could not be sent; try again with resend")]
    SmsFailed { verification_id: VerificationId },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<MoneyError> for VerifyError {
    fn from(error: MoneyError) -> Self {
        let field = match error {
            MoneyError::Currency => "currency",
            MoneyError::Amount(_) => "amount",
        };
        Self::InvalidField {
            field,
            message: error.to_string(),
        }
    }
}

pub struct Verifier {
    store: Arc<dyn Store>,
    sms: Arc<SmsSender>,
    hasher: CodeHasher,
    metrics: Arc<Metrics>,
    /// The host in the SMS's WebOTP line.
    otp_host: String,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn Store>,
        sms: Arc<SmsSender>,
        hasher: CodeHasher,
        metrics: Arc<Metrics>,
        otp_host: String,
    ) -> Self {
        Self {
            store,
            sms,
            hasher,
            metrics,
            otp_host,
        }
    }

    /// Starts a verification and sends the first code.
    pub async fn start(
        &self,
        brand: &Brand,
        request: StartRequest,
    ) -> Result<VerificationRecord, VerifyError> {
        let order_reference = validate_text("order_reference", &request.order_reference, 64)?;
        let amount = Money::parse(&request.amount, &request.currency)?;
        let locale = request.locale.as_deref().map(validate_locale).transpose()?;
        let phone = PhoneNumber::parse(
            &request.phone,
            brand.default_country.as_deref(),
            &brand.allowed_countries,
        )?;

        let id = VerificationId::new();
        let code = OtpCode::generate(brand.limits.code_length);
        let new = NewVerification {
            id,
            brand: brand.id.clone(),
            phone,
            order_reference,
            amount,
            locale,
            code_hash: self.hasher.hash(&id, &code),
            limits: brand.limits,
            now: now_millis(),
        };
        self.store.insert_verification(&new).await?;
        self.metrics.verification_started(brand.id.as_str());
        let record = VerificationRecord::pending(&new);
        tracing::info!(verification_id = %id, brand = %brand.id, to = %record.phone, "verification started");
        self.send_code(brand, &record, &code).await?;
        Ok(record)
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
        let now = now_millis();
        if record.status == Status::Pending && record.expires_at <= now {
            self.finish(&record.brand, &record.id, Status::Expired, now)
                .await?;
            record = self
                .store
                .get_verification(&brand.id, id)
                .await?
                .ok_or(VerifyError::NotFound)?;
        }
        Ok(record)
    }

    /// Checks a code. The attempt is counted in the database before the comparison.
    pub async fn check(
        &self,
        brand: &Brand,
        id: &VerificationId,
        input: &str,
    ) -> Result<VerificationRecord, VerifyError> {
        let trimmed: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if !(4..=10).contains(&trimmed.len()) || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::InvalidField {
                field: "code",
                message: "must be 4–10 digits".to_owned(),
            });
        }
        let now = now_millis();
        let (checks_used, max_checks, code_hash) =
            match self.store.count_check(&brand.id, id, now).await? {
                CheckCount::Counted {
                    checks_used,
                    max_checks,
                    code_hash,
                } => (checks_used, max_checks, code_hash),
                CheckCount::Refused(record) => return Err(self.refusal(&record, now).await),
                CheckCount::NotFound => return Err(VerifyError::NotFound),
            };
        // The HMAC covers every digit, so a code of the wrong length simply does not match.
        let correct = OtpCode::parse(&trimmed, trimmed.len() as u8)
            .is_some_and(|code| self.hasher.verify(id, &code, &code_hash));
        let record = |status| async move {
            let record = self
                .store
                .get_verification(&brand.id, id)
                .await?
                .ok_or(VerifyError::NotFound)?;
            tracing::info!(verification_id = %id, brand = %brand.id, attempt = checks_used, status, "code checked");
            Ok::<_, VerifyError>(record)
        };
        if correct {
            if self
                .finish(brand.id.as_str(), id, Status::Approved, now)
                .await?
            {
                return record("approved").await;
            }
            // Another request finished it between our count and now (a parallel correct check).
            let current = record("not pending").await?;
            return Err(self.refusal(&current, now).await);
        }
        if checks_used >= max_checks {
            self.finish(brand.id.as_str(), id, Status::Locked, now)
                .await?;
            tracing::info!(verification_id = %id, brand = %brand.id, attempt = checks_used, "wrong code, locked");
            return Err(VerifyError::Locked);
        }
        tracing::info!(verification_id = %id, brand = %brand.id, attempt = checks_used, "wrong code");
        Err(VerifyError::InvalidCode {
            attempts_remaining: max_checks - checks_used,
        })
    }

    /// Sends a new code (the previous one stops working), within the send limit and cooldown.
    pub async fn resend(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<VerificationRecord, VerifyError> {
        let code = OtpCode::generate(brand.limits.code_length);
        let now = now_millis();
        match self
            .store
            .reserve_send(
                &brand.id,
                id,
                &self.hasher.hash(id, &code),
                brand.limits.code_length,
                now,
            )
            .await?
        {
            SendReservation::Reserved(record) => {
                tracing::info!(verification_id = %id, brand = %brand.id, send = record.sends, "code resent");
                self.send_code(brand, &record, &code).await?;
                Ok(*record)
            }
            SendReservation::Refused(record) => Err(self.refusal(&record, now).await),
            SendReservation::NotFound => Err(VerifyError::NotFound),
        }
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
        let now = now_millis();
        if record.status != Status::Pending || record.expires_at <= now {
            return Err(self.refusal(&record, now).await);
        }
        if !self
            .finish(&record.brand, &record.id, Status::Aborted, now)
            .await?
        {
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

    /// Marks overdue pending verifications expired; returns how many.
    pub async fn expire_due(&self) -> anyhow::Result<usize> {
        let expired = self.store.expire_due(now_millis(), 500).await?;
        for (id, brand) in &expired {
            self.metrics
                .verification_finished(brand, Status::Expired.as_str());
            tracing::info!(verification_id = %id, brand, "verification expired");
        }
        Ok(expired.len())
    }

    /// Moves a pending verification to `to`, counting it; `false` if it was no longer pending.
    async fn finish(
        &self,
        brand: &str,
        id: &VerificationId,
        to: Status,
        now: Millis,
    ) -> anyhow::Result<bool> {
        let finished = self.store.finish(id, to, now).await?;
        if finished {
            self.metrics.verification_finished(brand, to.as_str());
        }
        Ok(finished)
    }

    /// Why `record` does not accept the operation, marking an overdue one expired.
    async fn refusal(&self, record: &VerificationRecord, now: Millis) -> VerifyError {
        match record.status {
            Status::Pending if record.expires_at <= now => {
                match self
                    .finish(&record.brand, &record.id, Status::Expired, now)
                    .await
                {
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

    async fn send_code(
        &self,
        brand: &Brand,
        record: &VerificationRecord,
        code: &OtpCode,
    ) -> Result<(), VerifyError> {
        let message = SmsMessage {
            message_id: uuid::Uuid::now_v7(),
            verification_id: record.id,
            to: record.phone.clone(),
            sender: brand.sms_sender.clone(),
            text: self.sms_text(brand, record, code),
        };
        match self.sms.send(&message).await {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(verification_id = %record.id, brand = %brand.id, %error, "sending the code failed");
                Err(VerifyError::SmsFailed {
                    verification_id: record.id,
                })
            }
        }
    }

    /// The SMS: the brand's text, then a blank line and the WebOTP line `@host #code`.
    fn sms_text(&self, brand: &Brand, record: &VerificationRecord, code: &OtpCode) -> String {
        let minutes = ((record.expires_at - record.created_at) / 60_000).max(1);
        let text = brand
            .sms_template
            .replace("{brand}", &brand.display_name)
            .replace("{amount}", &record.amount.to_string())
            .replace("{order_reference}", &record.order_reference)
            .replace("{minutes}", &minutes.to_string())
            .replace("{code}", code.expose());
        format!("{text}\n\n@{} #{}", self.otp_host, code.expose())
    }
}

fn validate_text(field: &'static str, value: &str, max: usize) -> Result<String, VerifyError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(VerifyError::InvalidField {
            field,
            message: format!("must be 1–{max} characters without control characters"),
        });
    }
    Ok(value.to_owned())
}

fn validate_locale(locale: &str) -> Result<String, VerifyError> {
    let valid = (2..=10).contains(&locale.len())
        && locale.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    if valid {
        Ok(locale.to_owned())
    } else {
        Err(VerifyError::InvalidField {
            field: "locale",
            message: "must be a language tag such as \"de\" or \"sv-SE\"".to_owned(),
        })
    }
}
