//! Tells shops the outcome of their held orders: a signed POST to the order's `callback_url`
//! (`Orderguard-Signature: t=…,v1=…`, see [`crate::signature`]), retried with backoff.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::watch;

use super::backoff;
use crate::brands::BrandRegistry;
use crate::directory::BrandSecrets;
use crate::domain::OrderRecord;
use crate::metrics::Metrics;
use crate::settings::GateSettings;
use crate::store::{LeasedWork, Store, WebhookJob, WebhookOutcome};

pub struct WebhookSender {
    pub store: Arc<dyn Store>,
    pub brands: Arc<BrandRegistry>,
    pub secrets: BrandSecrets,
    pub metrics: Arc<Metrics>,
    pub settings: GateSettings,
    pub owner: String,
    /// Checked again before every send; `client` resolves names through it.
    pub policy: super::callback::CallbackPolicy,
    pub client: reqwest::Client,
    pub clock: Arc<crate::clock::Clock>,
}

/// The webhook body: what became of the order.
pub fn body(order: &OrderRecord, occurred_at: &str) -> serde_json::Value {
    json!({
        "type": format!("order.{}", order.status.as_str()),
        "order_id": order.id.to_string(),
        "verification_id": order.verification_id.to_string(),
        "brand": order.brand,
        "order_reference": order.order_reference,
        "status": order.status.as_str(),
        "upstream_status": order.upstream_status,
        "occurred_at": occurred_at,
    })
}

impl WebhookSender {
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let poll = self.settings.poll_interval();
        loop {
            let worked = match self.send_due().await {
                Ok(count) => count > 0,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "sending webhooks failed; retrying");
                    false
                }
            };
            if worked {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => break,
            }
        }
        tracing::info!("webhook sender stopped");
    }

    pub async fn send_due(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let jobs = self
            .store
            .claim_webhooks(&self.owner, now, now + self.settings.lease_ms as i64, 16)
            .await?;
        let count = jobs.len();
        // A batch is sent concurrently, each under its own renewed lease: a slow receiver
        // neither holds the rest back nor lets another instance send them again.
        let sends = jobs.iter().map(|job| self.send(job));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(count)
    }

    async fn send(&self, job: &WebhookJob) -> anyhow::Result<()> {
        let lease = self.settings.lease();
        let leased = LeasedWork::Webhook(job.webhook_id);
        let delivery = self.deliver(job);
        let Some(outcome) = super::while_leased(
            &*self.store,
            &self.clock,
            leased,
            &self.owner,
            lease,
            delivery,
        )
        .await?
        else {
            tracing::warn!(order_id = %job.order.id, "lost a webhook's lease before sending; another instance has it");
            return Ok(());
        };
        let result = match &outcome {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retry { .. } => "retry",
            WebhookOutcome::Failed { .. } => "failed",
        };
        self.metrics.webhook(&job.order.brand, result);
        tracing::info!(order_id = %job.order.id, attempt = job.attempts + 1, result, "webhook attempt");
        self.store
            .complete_webhook(job.webhook_id, &self.owner, &outcome, self.clock.now())
            .await?;
        Ok(())
    }

    async fn deliver(&self, job: &WebhookJob) -> WebhookOutcome {
        let attempts = job.attempts + 1;
        let retry = |error: String| {
            if attempts >= self.settings.webhook_max_attempts {
                WebhookOutcome::Failed { error }
            } else {
                WebhookOutcome::Retry {
                    error,
                    next_attempt_at: self.clock.now()
                        + backoff(&self.settings, attempts).as_millis() as i64,
                }
            }
        };
        let order = &job.order;
        let Some(url) = &order.callback_url else {
            return WebhookOutcome::Failed {
                error: "the order has no callback_url".to_owned(),
            };
        };
        let brand = self.brands.get(&order.brand);
        let hosts = brand
            .as_ref()
            .map(|brand| brand.webhooks.hosts.clone())
            .unwrap_or_default();
        // Checked again at send time: the settings or the brand's allow-list may have changed
        // since the order was held. Names are checked by the client's resolver.
        if let Err(problem) = self.policy.check_static(url, &hosts) {
            return WebhookOutcome::Failed {
                error: format!("callback_url {problem}"),
            };
        }
        let secret = brand
            .and_then(|brand| brand.webhooks.secret.clone())
            .and_then(|name| self.secrets.get(&name).cloned());
        let Some(secret) = secret else {
            return retry(
                "no webhook secret configured for the brand (webhooks.secret)".to_owned(),
            );
        };
        let occurred_at = crate::http::rfc3339(order.finished_at.unwrap_or(order.updated_at));
        let payload = serde_json::to_vec(&body(order, &occurred_at)).unwrap_or_default();
        let signature = crate::signature::sign(
            secret.expose_secret().as_bytes(),
            self.clock.now() / 1000,
            &payload,
        );
        let sent = self
            .client
            .post(url)
            .timeout(self.settings.webhook_timeout())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Orderguard-Signature", signature)
            .header("Orderguard-Webhook-Id", job.webhook_id.to_string())
            .body(payload)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => WebhookOutcome::Delivered,
            Ok(response) => retry(format!("the receiver answered {}", response.status())),
            Err(error) if error.is_timeout() => retry("timed out".to_owned()),
            Err(error) => retry(format!("transport error: {}", error.without_url())),
        }
    }
}
