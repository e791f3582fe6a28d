//! The event row: one per state change, exactly as ClickHouse's `events` table holds it. A
//! leaf: the store writes it to the outbox, the events module builds and ships it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every kind of event. The names are the `event_type` values in ClickHouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    VerificationStarted,
    VerificationBlocked,
    SmsSent,
    SmsFailed,
    SmsDelivered,
    SmsUndelivered,
    CodeResent,
    CodeChecked,
    VerificationApproved,
    VerificationLocked,
    VerificationExpired,
    VerificationAborted,
    OrderHeld,
    OrderForwarded,
    OrderForwardFailed,
    PrefixBlockPlaced,
    PrefixBlockLifted,
    PrivacyErasure,
}

impl EventType {
    pub const ALL: [EventType; 18] = [
        Self::VerificationStarted,
        Self::VerificationBlocked,
        Self::SmsSent,
        Self::SmsFailed,
        Self::SmsDelivered,
        Self::SmsUndelivered,
        Self::CodeResent,
        Self::CodeChecked,
        Self::VerificationApproved,
        Self::VerificationLocked,
        Self::VerificationExpired,
        Self::VerificationAborted,
        Self::OrderHeld,
        Self::OrderForwarded,
        Self::OrderForwardFailed,
        Self::PrefixBlockPlaced,
        Self::PrefixBlockLifted,
        Self::PrivacyErasure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerificationStarted => "verification_started",
            Self::VerificationBlocked => "verification_blocked",
            Self::SmsSent => "sms_sent",
            Self::SmsFailed => "sms_failed",
            Self::SmsDelivered => "sms_delivered",
            Self::SmsUndelivered => "sms_undelivered",
            Self::CodeResent => "code_resent",
            Self::CodeChecked => "code_checked",
            Self::VerificationApproved => "verification_approved",
            Self::VerificationLocked => "verification_locked",
            Self::VerificationExpired => "verification_expired",
            Self::VerificationAborted => "verification_aborted",
            Self::OrderHeld => "order_held",
            Self::OrderForwarded => "order_forwarded",
            Self::OrderForwardFailed => "order_forward_failed",
            Self::PrefixBlockPlaced => "prefix_block_placed",
            Self::PrefixBlockLifted => "prefix_block_lifted",
            Self::PrivacyErasure => "privacy_erasure",
        }
    }
}

/// One event row, exactly as the ClickHouse `events` table holds it. Empty strings and zeros
/// stand for "not applicable", so dashboards never deal with NULLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ::clickhouse::Row)]
#[clickhouse(crate = "::clickhouse")]
pub struct Event {
    #[serde(with = "::clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// Milliseconds since the Unix epoch (`DateTime64(3)`).
    pub ts: i64,
    pub brand: String,
    pub event_type: String,
    #[serde(with = "::clickhouse::serde::uuid")]
    pub verification_id: Uuid,
    /// Nil when the event has no order.
    #[serde(with = "::clickhouse::serde::uuid")]
    pub order_id: Uuid,
    pub channel: String,
    pub country: String,
    /// Country code and the first national digits, e.g. `+49151`.
    pub number_prefix: String,
    /// Keyed hashes (hex); never the raw values.
    pub phone_pseudonym: String,
    pub customer_pseudonym: String,
    pub ip_pseudonym: String,
    pub attempt: u16,
    pub outcome: String,
    /// Why: the refusing rule, the failure cause.
    pub reason: String,
    pub amount_minor: i64,
    pub currency: String,
    pub ms_since_start: i64,
    pub sms_provider: String,
    pub sms_segments: u8,
    pub locale: String,
    pub user_agent_family: String,
    pub instance: String,
    /// The fraud rule that refused (or, in monitor mode, would have refused) or placed a block.
    #[serde(default)]
    pub rule: String,
    /// What the rule counted by: `phone`, `customer`, `ip`, `ip_range`, `order_reference`,
    /// `brand`, `prefix`; never the key itself.
    #[serde(default)]
    pub key_type: String,
    /// Flags on a served verification, e.g. `sim_swap_flagged`, `monitored:<rule>`.
    #[serde(default)]
    pub flags: Vec<String>,
}
