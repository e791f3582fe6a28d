//! Forwards approved orders to the brand's upstream order API, exactly once: the order id is
//! the upstream `Idempotency-Key`, each attempt is recorded by the lease holder only, and an
//! attempt interrupted by a crash is resumed (same key) once its lease runs out.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::{Notify, watch};

use super::{backoff, truncate};
use crate::approval::ApprovalSigner;
use crate::brands::BrandRegistry;
use crate::directory::BrandSecrets;
use crate::domain::OrderRecord;
use crate::events::{EventFactory, EventType};
use crate::metrics::Metrics;
use crate::settings::GateSettings;
use crate::store::{ForwardOutcome, LeasedWork, Store};

pub struct Forwarder {
    pub store: Arc<dyn Store>,
    pub brands: Arc<BrandRegistry>,
    pub approval: Arc<ApprovalSigner>,
    pub secrets: BrandSecrets,
    pub events: EventFactory,
    pub metrics: Arc<Metrics>,
    pub settings: GateSettings,
    pub owner: String,
    /// Woken on approval, so a forward starts at once instead of at the next poll.
    pub wake: Arc<Notify>,
    pub client: reqwest::Client,
    pub clock: Arc<crate::clock::Clock>,
}

impl Forwarder {
    /// Forwards due orders until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let poll = self.settings.poll_interval();
        loop {
            let worked = match self.forward_due().await {
                Ok(count) => count > 0,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "forwarding orders failed; retrying");
                    false
                }
            };
            if worked {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = self.wake.notified() => {}
                _ = stop.changed() => break,
            }
        }
        tracing::info!("forwarder stopped");
    }

    /// Claims the due orders and forwards them concurrently; returns how many.
    pub async fn forward_due(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let lease_until = now + self.settings.lease_ms as i64;
        let orders = self
            .store
            .claim_forwards(&self.owner, now, lease_until, 16)
            .await?;
        let count = orders.len();
        let attempts = orders.into_iter().map(|order| self.forward(order));
        for result in futures_util::future::join_all(attempts).await {
            if let Err(error) = result {
                tracing::error!(error = %format!("{error:#}"), "recording a forward failed");
            }
        }
        Ok(count)
    }

    async fn forward(&self, order: OrderRecord) -> anyhow::Result<()> {
        let lease = self.settings.lease();
        let attempt = self.attempt(&order);
        let leased = LeasedWork::Forward(&order.id);
        let Some(outcome) = super::while_leased(
            &*self.store,
            &self.clock,
            leased,
            &self.owner,
            lease,
            attempt,
        )
        .await?
        else {
            tracing::warn!(order_id = %order.id, "lost the order's lease before sending; another instance has it");
            return Ok(());
        };
        let now = self.clock.now();
        let record = self.store.find_verification(&order.verification_id).await?;
        let (kind, result, reason) = match &outcome {
            ForwardOutcome::Forwarded { status, .. } => (
                Some(EventType::OrderForwarded),
                "forwarded",
                status.to_string(),
            ),
            ForwardOutcome::Rejected { status, .. } => (
                Some(EventType::OrderForwardFailed),
                "rejected",
                status.to_string(),
            ),
            ForwardOutcome::Failed { error, .. } => {
                (Some(EventType::OrderForwardFailed), "failed", error.clone())
            }
            ForwardOutcome::Retry { error, .. } => (None, "retry", error.clone()),
        };
        let events: Vec<_> = match (kind, &record) {
            (Some(kind), Some(record)) => {
                let mut event = self.events.verification(record, kind, now);
                event.order_id = *order.id.as_uuid();
                event.attempt = u16::try_from(order.attempts + 1).unwrap_or(u16::MAX);
                event.outcome = result.to_owned();
                event.reason = reason.chars().take(200).collect();
                vec![event]
            }
            _ => Vec::new(),
        };
        let recorded = self
            .store
            .complete_forward(&order.id, &self.owner, &outcome, now, &events)
            .await?;
        self.metrics.order_forward(&order.brand, result);
        if recorded {
            tracing::info!(order_id = %order.id, brand = order.brand, attempt = order.attempts + 1, result, reason, "order forward attempt");
        } else {
            tracing::warn!(order_id = %order.id, "lost the order's lease before recording; another instance resumes it");
        }
        Ok(())
    }

    /// One POST to the upstream; never fails, it says what happened.
    async fn attempt(&self, order: &OrderRecord) -> ForwardOutcome {
        let retry_or_fail = |status: Option<u16>, body: Option<String>, error: String| {
            let attempts = order.attempts + 1;
            if attempts >= self.settings.forward_max_attempts {
                ForwardOutcome::Failed {
                    status,
                    body,
                    error: format!("{error} (after {attempts} attempts)"),
                }
            } else {
                let next_attempt_at =
                    self.clock.now() + backoff(&self.settings, attempts).as_millis() as i64;
                ForwardOutcome::Retry {
                    status,
                    body,
                    error,
                    next_attempt_at,
                }
            }
        };
        let Some(brand) = self.brands.get(&order.brand) else {
            return retry_or_fail(None, None, format!("brand {} is not loaded", order.brand));
        };
        let Some(upstream) = brand.upstream.clone() else {
            return ForwardOutcome::Failed {
                status: None,
                body: None,
                error: "the brand has no [upstream] configured".to_owned(),
            };
        };
        let token = match self.store.find_verification(&order.verification_id).await {
            Ok(Some(record)) => self.approval.token(
                &record,
                Some(crate::approval::OrderBinding {
                    order_id: &order.id,
                    payload: order.payload.as_bytes(),
                }),
            ),
            Ok(None) => None,
            Err(error) => {
                return retry_or_fail(None, None, format!("reading the verification: {error:#}"));
            }
        };
        let Some(token) = token else {
            return ForwardOutcome::Failed {
                status: None,
                body: None,
                error: "the verification is not approved".to_owned(),
            };
        };
        let mut request = self
            .client
            .post(&upstream.url)
            .timeout(Duration::from_millis(upstream.timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", order.id.to_string())
            .header("Orderguard-Order-Id", order.id.to_string())
            .header("Orderguard-Approval", token)
            .body(order.payload.clone());
        if let (Some(header), Some(name)) = (&upstream.auth_header, &upstream.auth_secret) {
            match self.secrets.get(name) {
                Some(secret) => request = request.header(header.as_str(), secret.expose_secret()),
                None => {
                    return retry_or_fail(
                        None,
                        None,
                        format!("brand secret {name} is not configured"),
                    );
                }
            }
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return retry_or_fail(None, None, "timed out".to_owned());
            }
            Err(error) => {
                return retry_or_fail(
                    None,
                    None,
                    format!("transport error: {}", error.without_url()),
                );
            }
        };
        let status = response.status();
        let body = truncate(
            &response.text().await.unwrap_or_default(),
            self.settings.upstream_body_limit_bytes,
        );
        let code = status.as_u16();
        if status.is_success() {
            ForwardOutcome::Forwarded { status: code, body }
        } else if status.is_server_error() || code == 408 || code == 429 {
            retry_or_fail(Some(code), Some(body), format!("upstream answered {code}"))
        } else {
            ForwardOutcome::Rejected { status: code, body }
        }
    }
}
