//! Expires pending verifications whose TTL has passed, and counts the prefix blocks in force
//! for the metrics. Safe on several instances at once:
//! each expiry is a conditional update, so only one instance marks a given verification.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::verifier::Verifier;

/// Runs until `stop` turns true.
pub async fn run(verifier: Arc<Verifier>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        // The blocks in force, for `orderguard_prefix_blocks_active`: blocks end by themselves.
        if let Err(error) = verifier.count_blocks().await {
            tracing::debug!(error = %format!("{error:#}"), "counting prefix blocks failed");
        }
        // Drain in batches so a backlog clears in one tick.
        loop {
            match verifier.expire_due().await {
                Ok(0) => break,
                Ok(count) => tracing::debug!(count, "expired verifications"),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "expiry sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
    tracing::info!("sweeper stopped");
}
