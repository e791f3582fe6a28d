//! Hot reload: polls the brands folder and swaps in what changed. Polling (not file
//! notifications) also sees Kubernetes ConfigMap updates, which replace symlinks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::BrandRegistry;
use crate::metrics::Metrics;

/// Reloads every `interval` until `stop` turns true.
pub async fn run(
    registry: Arc<BrandRegistry>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let registry = registry.clone();
        let report = match tokio::task::spawn_blocking(move || registry.reload()).await {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "brand reload task failed");
                continue;
            }
        };
        for brand in &report.applied {
            metrics.brand_reload("applied");
            tracing::info!(brand, "brand reloaded");
        }
        for brand in &report.removed {
            metrics.brand_reload("removed");
            tracing::info!(brand, "brand removed");
        }
        for (brand, problems) in &report.rejected {
            metrics.brand_reload("rejected");
            tracing::error!(brand, problems = %problems.join("; "), "brand change refused; the last good version keeps serving");
        }
    }
}
