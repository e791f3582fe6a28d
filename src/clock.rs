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
}

impl Clock {
    /// A clock `offset_ms` ahead of the system clock.
    pub fn with_offset(offset_ms: Millis) -> Self {
        Self {
            offset: AtomicI64::new(offset_ms),
        }
    }

    pub fn now(&self) -> Millis {
        now_millis() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward by `ms` (tests).
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::Relaxed);
    }
}
