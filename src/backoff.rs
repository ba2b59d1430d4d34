//! Waits that double after each failure, up to a cap: how the scheduler
//! retries the database, and the broker its publishes, during an outage.

use std::time::Duration;

/// Back-off after a failure: doubles from the first to the last. The cap is
/// short because a failing pass already waits up to the pool's checkout
/// timeout (5 s) before it fails.
pub(crate) const BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(5));

/// Waits that double after each failure, from a first wait up to a cap
/// ([`BACKOFF`] by default).
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF.0, BACKOFF.1)
    }
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap: cap.max(first),
            next: first,
        }
    }

    /// The wait after one more failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}
