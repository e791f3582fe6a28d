//! Gate mode's workers: forwarding approved orders upstream exactly once, and telling shops
//! the outcome by signed webhook. Both claim work with a lease, so several instances share it
//! and a crashed instance's work is resumed by another once the lease runs out.

pub mod callback;
pub mod forwarder;
pub mod hold;
pub mod webhooks;

use std::time::Duration;

use crate::settings::GateSettings;
use crate::store::{LeasedWork, Store};

/// Runs `work` while keeping `owner`'s lease on it alive: first checks that the lease is still
/// held (`None` if not: the work must not be done), then renews it every third of `lease`
/// until `work` ends, however long a slow peer keeps it. A crashed holder stops renewing, so
/// its work is resumed once the last renewal runs out.
pub async fn while_leased<T>(
    store: &dyn Store,
    clock: &crate::clock::Clock,
    work: LeasedWork<'_>,
    owner: &str,
    lease: Duration,
    task: impl Future<Output = T>,
) -> anyhow::Result<Option<T>> {
    let lease_ms = lease.as_millis() as i64;
    if !store
        .renew_lease(work, owner, clock.now() + lease_ms)
        .await?
    {
        return Ok(None);
    }
    let mut task = std::pin::pin!(task);
    let mut ticks = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
    ticks.tick().await;
    loop {
        tokio::select! {
            output = &mut task => return Ok(Some(output)),
            _ = ticks.tick() => {
                // A failed renewal is not fatal: the attempt finishes, and its record is
                // refused if another instance took the work over meanwhile.
                if let Err(error) = store.renew_lease(work, owner, clock.now() + lease_ms).await {
                    tracing::warn!(error = %format!("{error:#}"), "renewing a lease failed");
                }
            }
        }
    }
}

/// The delay before retry `attempts` (1 = the first retry): the shared backoff with the
/// gate's settings.
pub fn backoff(settings: &GateSettings, attempts: u32) -> Duration {
    crate::backoff::delay(settings.retry_initial(), settings.retry_max(), attempts)
}

/// Cuts `body` to `limit` bytes at a character boundary.
pub fn truncate(body: &str, limit: usize) -> String {
    if body.len() <= limit {
        return body.to_owned();
    }
    let mut end = limit;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_backs_off_with_its_settings_and_truncates_at_char_boundaries() {
        let settings = GateSettings {
            retry_initial_ms: 100,
            retry_max_ms: 1_000,
            ..GateSettings::default()
        };
        let delay = backoff(&settings, 30).as_millis() as u64;
        assert!((500..=1_000).contains(&delay), "{delay} ms");
        assert_eq!(truncate("äbc", 1), "");
        assert_eq!(truncate("äbc", 2), "ä");
    }
}
