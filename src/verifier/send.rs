//! Sending codes: the first one, resends within the send limit and cooldown, and the SMS text
//! within the brand's segment budget.

use super::{Verifier, VerifyError};
use crate::brands::Brand;
use crate::domain::{OtpCode, SmsRecord, Status, VerificationId, VerificationRecord};
use crate::events::EventType;
use crate::sms::{SmsMessage, segments};
use crate::store::SendReservation;

impl Verifier {
    /// Sends a new code (the previous one stops working), within the send limit and cooldown.
    /// `client_ip`: the buyer's address when the buyer's browser asked (the code page).
    pub async fn resend(
        &self,
        brand: &Brand,
        id: &VerificationId,
        client_ip: Option<&str>,
    ) -> Result<VerificationRecord, VerifyError> {
        // A resend is one more SMS to the number: it counts toward the number's limits.
        if let Some(record) = self.store.get_verification(&brand.id, id).await?
            && record.status == Status::Pending
        {
            let facts = crate::fraud::StartFacts {
                phone: &record.phone,
                customer_reference: None,
                client_ip,
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
                return Err(self.refused(refusal));
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

    /// Sends the code (never inside a transaction), then records the SMS and its event.
    pub(super) async fn send_code(
        &self,
        brand: &Brand,
        record: &VerificationRecord,
        code: &OtpCode,
    ) -> Result<(), VerifyError> {
        let message = SmsMessage {
            message_id: crate::domain::id::new_v7(),
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
    pub(super) fn sms_text(
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
