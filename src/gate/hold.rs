//! What an order must satisfy before it is held: the brand has an upstream order API, the
//! payload is a JSON object within the size limit, and a `callback_url` points where the
//! callback policy allows, for a brand that can sign webhooks. The HTTP edge only maps the
//! refusals to problems.

use super::callback::CallbackPolicy;
use crate::brands::Brand;

/// Why an order is not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefusal {
    /// The brand has no `[upstream]` order API.
    NotConfigured,
    /// The payload is not a JSON object.
    PayloadNotObject,
    /// The payload is larger than `gate.payload_limit_bytes`.
    PayloadTooLarge { limit: usize },
    /// The callback URL is refused by the policy (the message says why).
    CallbackUrl(String),
    /// A callback URL, but the brand has no `webhooks.secret` to sign with.
    WebhooksNotConfigured,
}

/// The gate's rules for holding an order.
#[derive(Debug, Clone)]
pub struct HoldPolicy {
    pub payload_limit_bytes: usize,
    pub callbacks: CallbackPolicy,
}

impl HoldPolicy {
    /// Checks an order of `brand` with raw JSON `payload`, in the documented order.
    pub async fn check(
        &self,
        brand: &Brand,
        payload: &str,
        callback_url: Option<&str>,
    ) -> Result<(), HoldRefusal> {
        if brand.upstream.is_none() {
            return Err(HoldRefusal::NotConfigured);
        }
        if !payload.starts_with('{') {
            return Err(HoldRefusal::PayloadNotObject);
        }
        if payload.len() > self.payload_limit_bytes {
            return Err(HoldRefusal::PayloadTooLarge {
                limit: self.payload_limit_bytes,
            });
        }
        if let Some(url) = callback_url {
            self.callbacks
                .check(url, &brand.webhooks.hosts)
                .await
                .map_err(HoldRefusal::CallbackUrl)?;
            if brand.webhooks.secret.is_none() {
                return Err(HoldRefusal::WebhooksNotConfigured);
            }
        }
        Ok(())
    }
}
