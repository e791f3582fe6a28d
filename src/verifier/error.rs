//! Why the verifier refused: each cause maps to its problem type at the HTTP edge.

use crate::domain::money::MoneyError;
use crate::domain::{Millis, PhoneError, VerificationId};

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
