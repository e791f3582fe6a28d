//! The time the fraud rules (and the verifier) read.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::{Millis, now_millis};

/// The time the fraud rules read: the system clock plus an offset that tests move forward,
/// so windows and cool-downs are tested without waiting.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> Millis {
        now_millis() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward by `ms` (tests).
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::Relaxed);
    }
}
