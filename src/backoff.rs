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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The default: 250 ms doubling to the 5 s cap, and there it stays.
    #[test]
    fn waits_double_from_the_first_to_the_cap_and_stay_there() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| b.failed()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 5000, 5000, 5000, 5000].map(ms)
        );
    }

    #[test]
    fn a_reset_starts_again_from_the_first_wait() {
        let mut b = Backoff::new(ms(10), ms(1000));
        let before: Vec<Duration> = (0..4).map(|_| b.failed()).collect();
        assert_eq!(before, [10, 20, 40, 80].map(ms));
        b.reset();
        let after: Vec<Duration> = (0..3).map(|_| b.failed()).collect();
        assert_eq!(after, [10, 20, 40].map(ms));
    }

    /// A cap that is not a power-of-two multiple of the first wait is
    /// reached exactly; a cap below the first wait is the first wait.
    #[test]
    fn the_cap_is_exact_and_never_below_the_first_wait() {
        let mut b = Backoff::new(ms(300), ms(1000));
        let waits: Vec<Duration> = (0..4).map(|_| b.failed()).collect();
        assert_eq!(waits, [300, 600, 1000, 1000].map(ms));
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!([b.failed(), b.failed()], [ms(300), ms(300)]);
    }
}
