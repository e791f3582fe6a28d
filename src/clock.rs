//! The time the application reads: the verifier, the fraud rules and the workers (relay,
//! forwarder, webhook sender). The system clock plus an offset that tests move forward (and
//! `testing.clock_offset_ms` sets for a test of the real binary; refused in production), so
//! windows, cool-downs, retries and retention are tested without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::{Millis, now_millis};

/// The application's clock.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
    /// 0, or the system time at which a test stopped the clock: from then on the time is that
    /// plus the offset, and only [`Clock::advance`] moves it. One atomic, so a worker reading
    /// the clock while it is stopped sees either the running or the stopped time.
    stopped_at: AtomicI64,
}

impl Clock {
    /// A clock `offset_ms` ahead of the system clock.
    pub fn with_offset(offset_ms: Millis) -> Self {
        Self {
            offset: AtomicI64::new(offset_ms),
            stopped_at: AtomicI64::new(0),
        }
    }

    pub fn now(&self) -> Millis {
        let stopped_at = self.stopped_at.load(Ordering::Relaxed);
        let base = if stopped_at == 0 {
            now_millis()
        } else {
            stopped_at
        };
        base + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward by `ms` (tests).
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::Relaxed);
    }

    /// Stops this clock at the present (tests): from now on only [`Clock::advance`] moves it,
    /// so a replay of traffic measured in simulated seconds is not stretched by a busy
    /// machine's real ones.
    pub fn freeze(&self) {
        let _ =
            self.stopped_at
                .compare_exchange(0, now_millis(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = Clock::with_offset(5_000);
        clock.freeze();
        let at = clock.now();
        assert!((at - now_millis() - 5_000).abs() < 60_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(clock.now(), at);
        clock.advance(1_000);
        assert_eq!(clock.now(), at + 1_000);
    }
}
