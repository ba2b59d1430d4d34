//! Outages of the database (the broker's are the broker's: see
//! `broker::health`). An outage is a state, not a stream of errors: one
//! line when it starts, one when it ends, and a capped exponential
//! back-off in between.

use crate::backoff::{Backoff, BACKOFF};
use std::time::{Duration, Instant};

/// The database as the main loop sees it: failing since when, if at all.
#[derive(Debug, Default)]
pub(super) struct Database {
    failing_since: Option<Instant>,
    backoff: Backoff,
}

impl Database {
    /// A pass failed; returns how long to wait before the next.
    pub(super) fn failed(&mut self, e: &dyn std::fmt::Display) -> Duration {
        if self.failing_since.is_none() {
            log::error!(
                "scheduler: {e}; retrying with back-off (up to {:?})",
                BACKOFF.1
            );
            self.failing_since = Some(Instant::now());
        } else {
            log::debug!("scheduler: still failing: {e}");
        }
        self.backoff.failed()
    }

    /// A pass succeeded.
    pub(super) fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            log::info!(
                "scheduler: database reachable again after {:.1?}",
                since.elapsed()
            );
            self.backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The database outage waits [`BACKOFF`]'s doubling waits, and a pass
    /// that succeeds ends the outage: the next one starts from the first.
    #[test]
    fn an_outage_backs_off_to_the_cap_and_a_success_resets_it() {
        let mut db = Database::default();
        let error = "connection refused";
        let waits: Vec<Duration> = (0..7).map(|_| db.failed(&error)).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000].map(ms));
        assert_eq!((BACKOFF.0, BACKOFF.1), (ms(250), ms(5000)));
        assert!(db.failing_since.is_some());
        db.succeeded();
        assert!(db.failing_since.is_none());
        assert_eq!([db.failed(&error), db.failed(&error)], [ms(250), ms(500)]);
    }

    /// Successes between outages do not touch the back-off.
    #[test]
    fn successes_without_an_outage_change_nothing() {
        let mut db = Database::default();
        db.succeeded();
        db.succeeded();
        assert_eq!(db.failed(&"down"), ms(250));
        assert_eq!(db.failed(&"down"), ms(500));
    }
}
