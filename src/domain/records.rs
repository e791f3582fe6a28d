//! The records the application works with: verifications, held orders and SMS, as the store
//! keeps them. The store maps its rows to these; nothing here knows SQL.

use super::{Limits, Millis, Money, OrderId, OrderStatus, PhoneNumber, Status, VerificationId};
use crate::brands::BrandId;

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
    /// The number's pseudonym and prefix, computed once at start: events read them from
    /// here, so they stay the same after a retention purge blanks the number.
    pub phone_pseudonym: String,
    pub number_prefix: String,
    pub customer_pseudonym: String,
    pub ip_pseudonym: String,
    pub ip_range_pseudonym: String,
    pub user_agent_family: String,
    /// Whether a held order (gate mode) belongs to it.
    pub has_order: bool,
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
    pub phone_pseudonym: String,
    pub number_prefix: String,
    pub customer_pseudonym: String,
    pub ip_pseudonym: String,
    /// The pseudonym of the buyer's /24 (IPv4) or /64 (IPv6).
    pub ip_range_pseudonym: String,
    pub user_agent_family: String,
    /// Gate mode: the order held until this verification is approved.
    pub order: Option<NewOrder>,
}

/// An order held with a new verification (gate mode).
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: OrderId,
    /// The upstream order payload, stored and forwarded as is (JSON text).
    pub payload: String,
    pub callback_url: Option<String>,
}

/// A held order as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub id: OrderId,
    pub brand: String,
    pub verification_id: VerificationId,
    pub status: OrderStatus,
    pub order_reference: String,
    pub amount: Money,
    pub payload: String,
    pub callback_url: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    pub upstream_status: Option<u16>,
    pub upstream_body: Option<String>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
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
            phone_pseudonym: new.phone_pseudonym.clone(),
            number_prefix: new.number_prefix.clone(),
            customer_pseudonym: new.customer_pseudonym.clone(),
            ip_pseudonym: new.ip_pseudonym.clone(),
            ip_range_pseudonym: new.ip_range_pseudonym.clone(),
            user_agent_family: new.user_agent_family.clone(),
            has_order: new.order.is_some(),
        }
    }
}

/// One SMS as stored for delivery receipts.
#[derive(Debug, Clone)]
pub struct SmsRecord {
    pub message_id: String,
    pub verification_id: VerificationId,
    pub brand: String,
    pub provider: String,
    pub provider_reference: Option<String>,
    pub segments: u8,
    /// `sent`, `failed`, `delivered` or `undelivered`.
    pub status: String,
    pub sent_at: Millis,
}
