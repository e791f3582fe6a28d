//! Sending SMS: a provider trait, the providers, and failover across an ordered list.
//!
//! Sending happens outside any database transaction: a slow provider must never hold a lock.

mod http;
mod inbox;
mod receipts;
pub mod segments;
mod smpp;
pub mod twilio;

pub use http::HttpProvider;
pub use inbox::{DevInbox, InboxMessage, LogProvider};
pub use receipts::{HttpReceipts, ReceiptRoutes};
pub use smpp::{DeliveryReceipt, SmppProvider};
pub use twilio::TwilioProvider;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{PhoneNumber, VerificationId};
use crate::metrics::Metrics;
use crate::settings::ProviderSettings;

/// The values of a code SMS.
#[derive(Debug, Clone, Copy)]
pub struct CodeSms<'a> {
    pub brand: &'a str,
    /// The amount as the buyer's locale writes it.
    pub amount: &'a str,
    pub order_reference: &'a str,
    pub minutes: i64,
    pub code: &'a str,
    /// The host of the WebOTP line.
    pub otp_host: &'a str,
}

/// The code SMS: the brand's text for the locale with its placeholders filled, then a blank
/// line and the WebOTP line `@host #code` that browsers use to fill the code in. No-break
/// spaces become spaces, so a localized amount does not force UCS-2.
///
/// Placeholders are filled in one pass over the brand's text: a value is never scanned again,
/// so a `{code}` typed into an order reference stays literal text.
pub fn compose(text: &str, sms: &CodeSms<'_>) -> String {
    let amount = sms.amount.replace('\u{a0}', " ");
    let minutes = sms.minutes.to_string();
    let mut body = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        body.push_str(&rest[..open]);
        let after = &rest[open..];
        let value = [
            ("{brand}", sms.brand),
            ("{amount}", amount.as_str()),
            ("{order_reference}", sms.order_reference),
            ("{minutes}", minutes.as_str()),
            ("{code}", sms.code),
        ]
        .into_iter()
        .find(|(placeholder, _)| after.starts_with(placeholder));
        match value {
            Some((placeholder, value)) => {
                body.push_str(value);
                rest = &after[placeholder.len()..];
            }
            None => {
                body.push('{');
                rest = &after[1..];
            }
        }
    }
    body.push_str(rest);
    format!("{body}\n\n@{} #{}", sms.otp_host, sms.code)
}

/// [`compose`] within `max_segments`: the order reference, the only part the buyer's shop
/// chooses, is shortened (ending in an ellipsis) until the text fits. `None` if it cannot fit
/// even without the reference.
pub fn compose_within(text: &str, sms: &CodeSms<'_>, max_segments: usize) -> Option<String> {
    let fits = |candidate: &str| segments::count(candidate).segments <= max_segments;
    let full = compose(text, sms);
    if fits(&full) {
        return Some(full);
    }
    // "…" is not GSM-7: use three dots unless the text is UCS-2 anyway.
    let bare = compose(
        text,
        &CodeSms {
            order_reference: "",
            ..*sms
        },
    );
    let bare_gsm7 = segments::count(&bare).encoding == segments::Encoding::Gsm7;
    let chars: Vec<char> = sms.order_reference.chars().collect();
    (0..chars.len()).rev().find_map(|keep| {
        let reference = if keep == 0 {
            String::new()
        } else {
            let mut shortened: String = chars[..keep].iter().collect();
            let gsm7 = bare_gsm7 && shortened.chars().all(segments::is_gsm7);
            shortened.push_str(if gsm7 { "..." } else { "\u{2026}" });
            shortened
        };
        let candidate = compose(
            text,
            &CodeSms {
                order_reference: &reference,
                ..*sms
            },
        );
        fits(&candidate).then_some(candidate)
    })
}

/// The HTTP client of an HTTP provider: gives up (and fails over) after `timeout_ms`.
fn provider_client(timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let timeout = std::time::Duration::from_millis(timeout_ms);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// One SMS to send. `Debug` leaves the text out: it carries the code.
pub struct SmsMessage {
    pub message_id: uuid::Uuid,
    pub verification_id: VerificationId,
    pub to: PhoneNumber,
    pub sender: String,
    pub text: String,
}

impl std::fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsMessage")
            .field("message_id", &self.message_id)
            .field("to", &self.to)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Why a provider did not take a message. Whether the message may still have reached the
/// phone decides whether the attempt uses up one of the buyer's sends.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Not taken, worth trying the next provider: connection refused, 5xx, 429.
    #[error("{0}")]
    Unavailable(String),
    /// No answer in time: the message may have been delivered. The next provider is tried.
    #[error("timed out")]
    TimedOut,
    /// The connection broke after the request went out: it may have been delivered.
    #[error("{0}")]
    Broken(String),
    /// The provider refused the message itself (4xx); another provider is not tried.
    #[error("{0}")]
    Refused(String),
}

impl SendError {
    /// An HTTP provider's transport error, described without the URL (its query may carry
    /// secrets): a timeout or a broken connection may have delivered; a refused connect not.
    pub(crate) fn transport(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::TimedOut
        } else if error.is_connect() {
            Self::Unavailable(format!("connection failed: {}", error.without_url()))
        } else {
            Self::Broken(format!("transport error: {}", error.without_url()))
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::TimedOut => "timeout",
            Self::Unavailable(_) | Self::Broken(_) => "error",
            Self::Refused(_) => "refused",
        }
    }

    /// Whether the message may have reached the phone despite the error.
    fn may_have_been_delivered(&self) -> bool {
        matches!(self, Self::TimedOut | Self::Broken(_))
    }
}

#[async_trait]
pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &str;
    /// Whether the provider can take a message now (an SMPP session is bound).
    fn is_available(&self) -> bool {
        true
    }
    /// Hands the message to the provider; returns the provider's message reference if any.
    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError>;
}

/// Which provider took a message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: String,
    pub provider_reference: Option<String>,
}

/// Every provider failed.
#[derive(Debug, thiserror::Error)]
#[error("no SMS provider accepted the message: {}", .failures.join("; "))]
pub struct SendFailed {
    /// `provider: cause` for each provider tried.
    pub failures: Vec<String>,
    /// The provider tried last.
    pub last_provider: String,
    /// Whether any provider may have delivered it after all (a timeout, a broken
    /// connection): only then does the attempt use up one of the buyer's sends.
    pub may_have_been_delivered: bool,
}

impl SendFailed {
    /// The causes, without provider URLs or message content, for events.
    pub fn reason(&self) -> String {
        self.failures.join("; ").chars().take(200).collect()
    }
}

/// What providers need beside their settings.
pub struct ProviderContext {
    /// Backs the `log` provider (dev mode only).
    pub inbox: Option<Arc<DevInbox>>,
    /// Where providers post their receipts (`http.public_url`).
    pub public_url: String,
    /// Where SMPP sessions hand their delivery receipts.
    pub receipts: tokio::sync::mpsc::UnboundedSender<DeliveryReceipt>,
}

/// Sends through the first provider that accepts, in configured order.
pub struct SmsSender {
    providers: Vec<Arc<dyn SmsProvider>>,
    metrics: Arc<Metrics>,
}

impl SmsSender {
    /// Builds the providers from settings (SMPP sessions start binding in the background).
    pub fn from_settings(
        settings: &[ProviderSettings],
        context: &ProviderContext,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let inbox = &context.inbox;
        let mut providers: Vec<Arc<dyn SmsProvider>> = Vec::new();
        for provider in settings {
            providers.push(match provider {
                ProviderSettings::Log { name } => {
                    let inbox = inbox.clone().ok_or_else(|| {
                        anyhow::anyhow!("the `log` SMS provider is only available in dev mode")
                    })?;
                    Arc::new(LogProvider::new(name.clone(), inbox))
                }
                ProviderSettings::Http { .. } => Arc::new(HttpProvider::from_settings(provider)?),
                ProviderSettings::Twilio { .. } => Arc::new(TwilioProvider::from_settings(
                    provider,
                    &context.public_url,
                )?),
                ProviderSettings::Smpp { .. } => Arc::new(SmppProvider::start(
                    provider,
                    context.receipts.clone(),
                    metrics.clone(),
                )?),
            });
        }
        anyhow::ensure!(!providers.is_empty(), "no SMS provider configured");
        Ok(Self { providers, metrics })
    }

    /// Whether any provider can take a message now (`/readyz`).
    pub fn any_available(&self) -> bool {
        self.providers.iter().any(|p| p.is_available())
    }

    /// The providers' names, in failover order.
    pub fn provider_names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name()).collect()
    }

    pub async fn send(&self, message: &SmsMessage) -> Result<Delivery, SendFailed> {
        let mut failures = Vec::new();
        let mut last_provider = String::new();
        let mut may_have_been_delivered = false;
        for provider in &self.providers {
            last_provider = provider.name().to_owned();
            let started = std::time::Instant::now();
            let sent = provider.send(message).await;
            let seconds = started.elapsed().as_secs_f64();
            match sent {
                Ok(provider_reference) => {
                    self.metrics.sms_sent(provider.name(), "sent", seconds);
                    tracing::info!(provider = provider.name(), to = %message.to, "SMS handed to provider");
                    return Ok(Delivery {
                        provider: provider.name().to_owned(),
                        provider_reference,
                    });
                }
                Err(error) => {
                    self.metrics
                        .sms_sent(provider.name(), error.result_label(), seconds);
                    tracing::warn!(provider = provider.name(), to = %message.to, %error, "SMS provider failed");
                    let refused = matches!(error, SendError::Refused(_));
                    may_have_been_delivered |= error.may_have_been_delivered();
                    failures.push(format!("{}: {error}", provider.name()));
                    if refused {
                        break;
                    }
                }
            }
        }
        Err(SendFailed {
            failures,
            last_provider,
            may_have_been_delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms<'a>(reference: &'a str) -> CodeSms<'a> {
        CodeSms {
            brand: "Nordwind",
            amount: "49,90\u{a0}€",
            order_reference: reference,
            minutes: 5,
            code: "123456",
            otp_host: "pay.example",
        }
    }

    #[test]
    fn a_placeholder_inside_a_buyer_value_is_never_filled() {
        let text = compose(
            "{brand}: {code} for {order_reference}",
            &sms("A-{code}-{brand}"),
        );
        assert_eq!(
            text,
            "Nordwind: 123456 for A-{code}-{brand}\n\n@pay.example #123456"
        );
        assert_eq!(
            compose("{unknown} {", &sms("x")),
            "{unknown} {\n\n@pay.example #123456"
        );
    }

    #[test]
    fn a_long_reference_is_shortened_to_the_budget_and_an_impossible_text_is_none() {
        let text = "{brand}: Code {code} bestätigt {order_reference} über {amount}.";
        let emoji = "😀".repeat(64);
        assert!(segments::count(&compose(text, &sms(&emoji))).segments > 2);
        let fitted = compose_within(text, &sms(&emoji), 2).expect("fits shortened");
        assert_eq!(segments::count(&fitted).segments, 2, "{fitted}");
        assert!(
            fitted.contains("😀\u{2026} über") && fitted.contains("123456"),
            "{fitted}"
        );
        // One segment cannot hold a single emoji beside the text: the reference goes.
        let fitted = compose_within(text, &sms(&emoji), 1).expect("fits without it");
        assert_eq!(segments::count(&fitted).segments, 1, "{fitted}");
        assert!(fitted.contains("bestätigt  über"), "{fitted}");

        let long = "A".repeat(64) + &"B".repeat(90);
        let fitted = compose_within(text, &sms(&long), 1).expect("fits shortened");
        let count = segments::count(&fitted);
        assert_eq!(
            (count.segments, count.encoding),
            (1, segments::Encoding::Gsm7)
        );
        assert!(
            fitted.contains("AAAB") && fitted.contains("B... über"),
            "{fitted}"
        );
        assert!(compose(text, &sms(&long)).len() > fitted.len());

        let short = compose_within(text, &sms("A-1"), 1).expect("fits");
        assert!(
            short.contains("A-1 über"),
            "unchanged when it fits: {short}"
        );

        let huge = "x".repeat(170) + "{code}";
        assert_eq!(compose_within(&huge, &sms("A-1"), 1), None);
    }
}
