//! The verification domain: validated values and the rules of the lifecycle.
//! Nothing here knows about HTTP or SQL.

pub mod code;
pub mod event;
pub mod id;
pub mod money;
pub mod order;
pub mod phone;
pub mod records;
pub mod verification;

pub use code::{CodeHasher, OtpCode};
pub use event::{Event, EventType};
pub use money::Money;
pub use order::{OrderId, OrderStatus};
pub use phone::{PhoneError, PhoneNumber};
pub use records::{NewOrder, NewVerification, OrderRecord, SmsRecord, VerificationRecord};
pub use verification::{Limits, Status, VerificationId};

/// Milliseconds since the Unix epoch, the one time unit stored and compared everywhere.
pub type Millis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
