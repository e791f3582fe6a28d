//! The verification core: start, read, check, resend, cancel and expire verifications.
//!
//! This is where the lifecycle rules live. It takes validated input, talks to the store and
//! the SMS sender, and answers with records or a [`VerifyError`]; it knows nothing of HTTP.

use std::sync::Arc;

use crate::brands::Brand;
use crate::directory::DirectoryError;
use crate::domain::{
    CodeHasher, Millis, Money, OtpCode, PhoneError, PhoneNumber, Status, VerificationId,
    money::MoneyError,
};
use crate::domain::{NewVerification, SmsRecord, VerificationRecord};
use crate::events::{BlockedStart, EventFactory, EventType, user_agent_family};
use crate::metrics::Metrics;
use crate::sms::{SmsMessage, SmsSender, segments};
use crate::store::{CheckCount, CheckDecision, SendReservation, Store};

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
    #[error("the customer directory does not know this customer")]
    CustomerUnknown,
    #[error("the customer directory has no mobile number for this customer")]
    CustomerHasNoPhone,
    #[error("the customer directory is unavailable; try again shortly")]
    DirectoryUnavailable,
    #[error("refused by the fraud rule {}", .0.rule)]
    Refused(crate::fraud::Refusal),
    #[error("the SMS text cannot fit the brand's segment budget (sms.max_segments)")]
    SmsTextTooLong,
    #[error("the SMS could not be sent; try again with resend")]
    SmsFailed {
        verification_id: VerificationId,
        /// The held order, in gate mode: the shop fetches it and calls resend.
        order_id: Option<crate::domain::OrderId>,
    },
    /// The store failed; its kind says whether a retry can succeed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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

    /// Starts a verification and sends the first code.
    pub async fn start(
        &self,
        brand: &Brand,
        request: StartRequest,
    ) -> Result<VerificationRecord, VerifyError> {
        let order_reference = validate_text("order_reference", &request.order_reference, 64)?;
        let amount = Money::parse(&request.amount, &request.currency)?;
        let locale = request.locale.as_deref().map(validate_locale).transpose()?;
        let customer_reference = request
            .customer_reference
            .as_deref()
            .map(|c| validate_text("customer_reference", c, 128))
            .transpose()?;
        let client_ip = request.client_ip.as_deref().map(validate_ip).transpose()?;
        let user_agent = request.user_agent.as_deref().unwrap_or_default();
        if user_agent.chars().count() > 512 {
            return Err(VerifyError::InvalidField {
                field: "user_agent",
                message: "must be at most 512 characters".to_owned(),
            });
        }
        let now = self.now();
        // The number on file wins over a typed-in one: it cannot be redirected by a fraudster.
        let on_file = match &customer_reference {
            Some(reference) => match self
                .directory
                .phone(&brand.customer_directory, reference)
                .await
            {
                Ok(phone) => phone,
                Err(DirectoryError::UnknownCustomer) => return Err(VerifyError::CustomerUnknown),
                Err(DirectoryError::NoPhone) => return Err(VerifyError::CustomerHasNoPhone),
                Err(DirectoryError::Unavailable(cause)) => {
                    tracing::warn!(brand = %brand.id, cause, "customer directory unavailable");
                    return Err(VerifyError::DirectoryUnavailable);
                }
            },
            None => None,
        };
        let phone_input =
            on_file
                .or(request.phone.clone())
                .ok_or_else(|| {
                    VerifyError::InvalidField {
                field: "phone",
                message:
                    "is required (or a customer_reference, for a brand with a customer directory)"
                        .to_owned(),
            }
                })?;
        // A refused start's event: what is known of the start, and which rule refused it.
        let blocked_event = |rule: &str,
                             key_type: &str,
                             monitored: bool,
                             phone: Option<&PhoneNumber>,
                             country: Option<&str>| {
            let context = BlockedStart {
                rule,
                key_type,
                monitored,
                phone,
                country,
                customer_reference: customer_reference.as_deref().unwrap_or_default(),
                client_ip: client_ip.as_deref().unwrap_or_default(),
                user_agent,
                locale: locale.as_deref().unwrap_or_default(),
                amount_minor: amount.minor(),
                currency: amount.currency(),
            };
            self.events.blocked(brand.id.as_str(), &context, now)
        };
        let phone = match PhoneNumber::parse(
            &phone_input,
            brand.default_country.as_deref(),
            &brand.allowed_countries,
        ) {
            Ok(phone) => phone,
            Err(error) => {
                // A rule refused the number (country, number type): that is a blocked start.
                if error != PhoneError::Invalid {
                    let parsed =
                        PhoneNumber::parse_valid(&phone_input, brand.default_country.as_deref())
                            .ok()
                            .map(|(number, _)| number);
                    let country = match &error {
                        PhoneError::CountryNotAllowed(country) => Some(country.as_str()),
                        _ => None,
                    };
                    let event =
                        blocked_event(error.kind(), "phone", false, parsed.as_ref(), country);
                    self.store.append_events(&[event]).await?;
                    tracing::info!(brand = %brand.id, rule = error.kind(), "verification blocked");
                }
                return Err(error.into());
            }
        };

        // The fraud rules, cheapest first, before anything is stored or sent.
        let facts = crate::fraud::StartFacts {
            phone: &phone,
            customer_reference: customer_reference.as_deref(),
            client_ip: client_ip.as_deref(),
            order_reference: &order_reference,
            resend: false,
        };
        let verdict = self.fraud.evaluate(brand, &facts, now).await?;
        let blocked = |refusal: &crate::fraud::Refusal, monitored: bool| {
            blocked_event(
                refusal.rule,
                refusal.key_type,
                monitored,
                Some(&phone),
                None,
            )
        };
        let monitored: Vec<crate::events::Event> = verdict
            .monitored
            .iter()
            .map(|refusal| blocked(refusal, true))
            .collect();
        if let Some(refusal) = verdict.refusal {
            let mut events = monitored;
            events.push(blocked(&refusal, false));
            self.store.append_events(&events).await?;
            tracing::info!(brand = %brand.id, rule = refusal.rule, key_type = refusal.key_type, "verification blocked");
            return Err(VerifyError::Refused(refusal));
        }

        let id = request.id;
        let code = OtpCode::generate(brand.limits.code_length);
        let pseudonymizer = self.events.pseudonymizer();
        let phone_pseudonym = pseudonymizer.pseudonym("phone", phone.e164());
        let number_prefix = self.events.prefixes().prefix(&phone);
        let new = NewVerification {
            id,
            brand: brand.id.clone(),
            phone,
            order_reference,
            amount,
            locale,
            code_hash: self.hasher.hash(&id, &code),
            limits: brand.limits,
            now,
            phone_pseudonym,
            number_prefix,
            customer_pseudonym: pseudonymizer.pseudonym(
                "customer",
                customer_reference.as_deref().unwrap_or_default(),
            ),
            ip_pseudonym: pseudonymizer.pseudonym("ip", client_ip.as_deref().unwrap_or_default()),
            ip_range_pseudonym: pseudonymizer.pseudonym(
                "ip_range",
                &client_ip
                    .as_deref()
                    .map(crate::fraud::ip_range)
                    .unwrap_or_default(),
            ),
            user_agent_family: user_agent_family(user_agent).to_owned(),
            order: request.order.clone(),
        };
        let record = VerificationRecord::pending(&new);
        // The text's length does not depend on the code's digits: refuse before anything is
        // stored if it cannot fit the budget.
        self.sms_text(
            brand,
            &record,
            &"0".repeat(usize::from(brand.limits.code_length)),
        )?;
        let mut started = self
            .events
            .verification(&record, EventType::VerificationStarted, now);
        started.flags = verdict.flags.clone();
        started.flags.extend(
            verdict
                .monitored
                .iter()
                .map(|refusal| format!("monitored:{}", refusal.rule)),
        );
        let mut events = monitored;
        events.insert(0, started);
        if let Some(order) = &new.order {
            let mut held = self.events.verification(&record, EventType::OrderHeld, now);
            held.order_id = *order.id.as_uuid();
            events.push(held);
        }
        self.store.insert_verification(&new, &events).await?;
        self.metrics.verification_started(brand.id.as_str());
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

    /// Checks a code. In one transaction the attempt is counted, the code compared, and the
    /// outcome stored with its events.
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
        // The HMAC covers every digit, so a code of the wrong length simply does not match.
        let code = OtpCode::parse(&trimmed, trimmed.len() as u8);
        let now = self.now();
        let decide = |record: &VerificationRecord, stored: &[u8]| {
            let correct = code
                .as_ref()
                .is_some_and(|code| self.hasher.verify(id, code, stored));
            let mut checked = self
                .events
                .verification(record, EventType::CodeChecked, now);
            checked.attempt = u16::try_from(record.checks_used).unwrap_or(u16::MAX);
            checked.outcome = if correct { "correct" } else { "incorrect" }.to_owned();
            let finish = if correct {
                Some(Status::Approved)
            } else if record.checks_used >= record.max_checks {
                Some(Status::Locked)
            } else {
                None
            };
            let mut events = vec![checked];
            if finish.is_some() {
                let kind = if correct {
                    EventType::VerificationApproved
                } else {
                    EventType::VerificationLocked
                };
                let mut event = self.events.verification(record, kind, now);
                event.attempt = u16::try_from(record.checks_used).unwrap_or(u16::MAX);
                events.push(event);
            }
            CheckDecision { finish, events }
        };
        let record = match self.store.check_code(&brand.id, id, now, &decide).await? {
            CheckCount::Counted(record) => *record,
            CheckCount::Refused(record) => return Err(self.refusal(&record, now).await),
            CheckCount::NotFound => return Err(VerifyError::NotFound),
        };
        let attempt = record.checks_used;
        match record.status {
            Status::Approved => {
                self.on_approval.notify_one();
                let phone_pseudonym = self
                    .events
                    .pseudonymizer()
                    .pseudonym("phone", record.phone.e164());
                self.fraud
                    .on_approval(brand, &record, &phone_pseudonym)
                    .await;
                self.metrics
                    .verification_finished(brand.id.as_str(), Status::Approved.as_str());
                tracing::info!(verification_id = %id, brand = %brand.id, attempt, "code correct, approved");
                Ok(record)
            }
            Status::Locked => {
                self.metrics
                    .verification_finished(brand.id.as_str(), Status::Locked.as_str());
                tracing::info!(verification_id = %id, brand = %brand.id, attempt, "wrong code, locked");
                Err(VerifyError::Locked)
            }
            _ => {
                tracing::info!(verification_id = %id, brand = %brand.id, attempt, "wrong code");
                Err(VerifyError::InvalidCode {
                    attempts_remaining: record.max_checks.saturating_sub(attempt),
                })
            }
        }
    }

    /// What an idempotent start that died mid-way (a crash, a dropped connection, its own
    /// timeout) created: `None` if it never stored the verification, so the retry starts
    /// afresh with the same id. A pending verification whose SMS was never recorded gets it
    /// now, with a new code (the first one was never known outside the dead request).
    pub async fn resume(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<Option<VerificationRecord>, VerifyError> {
        let Some(record) = self.store.get_verification(&brand.id, id).await? else {
            return Ok(None);
        };
        if record.status == Status::Pending && !self.store.has_sms(id).await? {
            let code = OtpCode::generate(brand.limits.code_length);
            let hash = self.hasher.hash(id, &code);
            if self.store.replace_code(id, &hash).await? {
                tracing::info!(verification_id = %id, brand = %brand.id, "resumed start: sending its code");
                self.send_code(brand, &record, &code).await?;
            }
        }
        Ok(Some(record))
    }

    /// Sends a new code (the previous one stops working), within the send limit and cooldown.
    pub async fn resend(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<VerificationRecord, VerifyError> {
        // A resend is one more SMS to the number: it counts toward the number's limits.
        if let Some(record) = self.store.get_verification(&brand.id, id).await?
            && record.status == Status::Pending
        {
            let facts = crate::fraud::StartFacts {
                phone: &record.phone,
                customer_reference: None,
                client_ip: None,
                order_reference: &record.order_reference,
                resend: true,
            };
            let verdict = self.fraud.evaluate(brand, &facts, self.now()).await?;
            if let Some(refusal) = verdict.refusal {
                let mut event =
                    self.events
                        .verification(&record, EventType::VerificationBlocked, self.now());
                event.outcome = "blocked".to_owned();
                event.reason = refusal.rule.to_owned();
                event.rule = refusal.rule.to_owned();
                event.key_type = refusal.key_type.to_owned();
                self.store.append_events(&[event]).await?;
                return Err(VerifyError::Refused(refusal));
            }
        }
        let code = OtpCode::generate(brand.limits.code_length);
        let now = self.now();
        let resent = |record: &VerificationRecord| {
            let mut event = self.events.verification(record, EventType::CodeResent, now);
            event.attempt = u16::try_from(record.sends).unwrap_or(u16::MAX);
            vec![event]
        };
        let code_hash = self.hasher.hash(id, &code);
        match self
            .store
            .reserve_send(
                &brand.id,
                id,
                &code_hash,
                brand.limits.code_length,
                now,
                &resent,
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

    /// Applies a delivery receipt from a provider.
    pub async fn sms_receipt(
        &self,
        provider: &str,
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
            .sms_receipt(reference, delivered, now, &events)
            .await?;
        let result = match outcome {
            crate::store::ReceiptOutcome::Recorded => ReceiptResult::Recorded,
            crate::store::ReceiptOutcome::AlreadyFinal => ReceiptResult::Duplicate,
            crate::store::ReceiptOutcome::UnknownMessage => ReceiptResult::UnknownMessage,
        };
        self.metrics.sms_receipt(provider, result.as_str());
        Ok(result)
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

    /// Sends the code (never inside a transaction), then records the SMS and its event.
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
            text: self.sms_text(brand, record, code.expose())?,
        };
        let segments = u8::try_from(segments::count(&message.text).segments).unwrap_or(u8::MAX);
        let result = self.sms.send(&message).await;
        let now = self.now();
        let (kind, provider, provider_reference, status, reason) = match &result {
            Ok(delivery) => (
                EventType::SmsSent,
                delivery.provider.clone(),
                delivery.provider_reference.clone(),
                "sent",
                String::new(),
            ),
            Err(failed) => (
                EventType::SmsFailed,
                failed.last_provider.clone(),
                None,
                "failed",
                failed.reason(),
            ),
        };
        let mut event = self.events.verification(record, kind, now);
        event.sms_provider = provider.clone();
        event.sms_segments = segments;
        event.attempt = u16::try_from(record.sends).unwrap_or(u16::MAX);
        event.reason = reason;
        let sms = SmsRecord {
            message_id: message.message_id.to_string(),
            verification_id: record.id,
            brand: record.brand.clone(),
            provider,
            provider_reference,
            segments,
            status: status.to_owned(),
            sent_at: now,
        };
        // A send no provider can have delivered (refused connections, 5xx, 429) does not use
        // up the buyer's sends: an SMS outage must not leave them at `send_limit_reached`.
        let refund_send = matches!(&result, Err(failed) if !failed.may_have_been_delivered);
        self.store.record_sms(&sms, refund_send, &[event]).await?;
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(verification_id = %record.id, brand = %brand.id, %error, "sending the code failed");
                Err(VerifyError::SmsFailed {
                    verification_id: record.id,
                    order_id: None,
                })
            }
        }
    }

    /// The SMS in the buyer's locale (the brand's default if none was given), within the
    /// brand's segment budget: a long order reference is shortened; a text that cannot fit
    /// is `SmsTextTooLong`.
    fn sms_text(
        &self,
        brand: &Brand,
        record: &VerificationRecord,
        code: &str,
    ) -> Result<String, VerifyError> {
        let locale = brand.pick_locale(record.locale.as_deref(), None);
        let amount = record.amount.localized(locale);
        let sms = crate::sms::CodeSms {
            brand: &brand.display_name,
            amount: &amount,
            order_reference: &record.order_reference,
            minutes: ((record.expires_at - record.created_at) / 60_000).max(1),
            code,
            otp_host: &self.otp_host,
        };
        crate::sms::compose_within(
            brand.text(locale, "sms.text"),
            &sms,
            usize::from(brand.sms_max_segments),
        )
        .ok_or(VerifyError::SmsTextTooLong)
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

fn validate_ip(ip: &str) -> Result<String, VerifyError> {
    ip.trim()
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| VerifyError::InvalidField {
            field: "client_ip",
            message: "must be an IPv4 or IPv6 address".to_owned(),
        })
}
