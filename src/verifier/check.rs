//! Checking a code: the counter is raised in the same statement that tests the limit, before
//! the code is compared (in constant time, against its keyed hash).

use super::{Verifier, VerifyError};
use crate::brands::Brand;
use crate::domain::{OtpCode, Status, VerificationId, VerificationRecord};
use crate::events::EventType;
use crate::store::{CheckCount, CheckDecision};

impl Verifier {
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
            let approval = if correct {
                self.fraud.approval_signals(brand, record)
            } else {
                None
            };
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
            CheckDecision {
                finish,
                events,
                approval,
            }
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
                self.fraud.approved(brand, &record);
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
}
