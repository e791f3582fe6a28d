//! Runs the background workers (relay, sweeper, forwarder, webhook sender, brand watcher) as
//! named tasks. A worker that dies — a panic, or a return before shutdown — is logged with its
//! name, counted, reported by `/readyz` while it is down, and restarted with capped backoff.
//! Shutdown stops them all and waits for each to drain.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// One run of a worker, until `stop` turns true.
/// Every background worker's name, as it appears in `/readyz` and in
/// `orderguard_worker_restarts_total{worker}`.
pub const WORKERS: [&str; 6] = [
    "relay",
    "sweeper",
    "forwarder",
    "webhooks",
    "brand_watcher",
    "privacy",
];

pub type WorkerRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Which workers are down right now (between a death and their restart).
#[derive(Debug, Default)]
pub struct WorkerHealth {
    down: Mutex<BTreeSet<&'static str>>,
}

impl WorkerHealth {
    /// The names of the workers that are down, sorted.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn set(&self, name: &'static str, down: bool) {
        let mut set = self.lock();
        if down {
            set.insert(name);
        } else {
            set.remove(name);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts, watches and restarts workers; stops them together.
pub struct Supervisor {
    health: Arc<WorkerHealth>,
    metrics: Arc<Metrics>,
    stop_tx: watch::Sender<bool>,
    first_backoff: Duration,
    max_backoff: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(health: Arc<WorkerHealth>, metrics: Arc<Metrics>) -> Self {
        Self {
            health,
            metrics,
            stop_tx: watch::channel(false).0,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            tasks: Vec::new(),
        }
    }

    /// The restart backoff: `first`, doubling up to `max`.
    #[must_use]
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max;
        self
    }

    /// Runs `start(stop)` as the worker `name`, again after each death.
    pub fn spawn(
        &mut self,
        name: &'static str,
        start: impl Fn(watch::Receiver<bool>) -> WorkerRun + Send + Sync + 'static,
    ) {
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        let mut stop = self.stop_tx.subscribe();
        let (first, max) = (self.first_backoff, self.max_backoff);
        self.tasks.push(tokio::spawn(async move {
            let mut deaths: u32 = 0;
            loop {
                let outcome = tokio::spawn(start(stop.clone())).await;
                if *stop.borrow() {
                    break;
                }
                deaths = deaths.saturating_add(1);
                match outcome {
                    Ok(()) => tracing::error!(
                        worker = name,
                        deaths,
                        "worker returned before shutdown; restarting"
                    ),
                    Err(error) => tracing::error!(
                        worker = name,
                        deaths,
                        error = %error,
                        "worker died; restarting"
                    ),
                }
                metrics.worker_restart(name);
                health.set(name, true);
                let pause = crate::backoff::delay(first, max, deaths);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
                health.set(name, false);
                if *stop.borrow() {
                    break;
                }
            }
        }));
    }

    /// Tells every worker to stop and waits until all have.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a supervisor task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn supervisor() -> (Supervisor, Arc<WorkerHealth>, Arc<Metrics>) {
        let health = Arc::new(WorkerHealth::default());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let supervisor = Supervisor::new(health.clone(), metrics.clone())
            .with_backoff(Duration::from_millis(50), Duration::from_millis(50));
        (supervisor, health, metrics)
    }

    async fn until(mut ready: impl FnMut() -> bool) {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_worker_that_panics_is_reported_down_counted_and_restarted() {
        let (mut supervisor, health, metrics) = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        let (release_tx, release) = watch::channel(false);
        let counted = runs.clone();
        supervisor.spawn("relay", move |mut stop| {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let mut release = release.clone();
            Box::pin(async move {
                // The first two runs die once the test lets them; the third keeps running.
                if run <= 2 {
                    let _ = release.wait_for(|go| *go).await;
                    panic!("injected failure {run}");
                }
                let _ = stop.wait_for(|stop| *stop).await;
            })
        });
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        assert!(health.down().is_empty(), "up while the first run lives");
        release_tx.send(true).expect("release");
        until(|| runs.load(Ordering::SeqCst) == 3).await;
        until(|| health.down().is_empty()).await;
        let rendered = metrics.render();
        assert!(
            rendered.contains(r#"orderguard_worker_restarts_total{worker="relay"} 2"#),
            "{rendered}"
        );
        supervisor.shutdown().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart after shutdown");
    }

    #[tokio::test]
    async fn a_worker_down_between_death_and_restart_is_named() {
        let health = Arc::new(WorkerHealth::default());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        // A long backoff keeps the worker down long enough to see it.
        let mut supervisor = Supervisor::new(health.clone(), metrics)
            .with_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
        supervisor.spawn("forwarder", |_stop| Box::pin(async {}));
        until(|| health.down() == ["forwarder"]).await;
        // Shutdown ends the backoff at once.
        supervisor.shutdown().await;
        assert!(health.down().is_empty());
    }
}
