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

    #[test]
    fn a_database_outage_doubles_its_wait_to_the_cap_and_a_success_resets_it() {
        let mut db = Database::default();
        db.succeeded(); // no outage: nothing to end
        let waits: Vec<Duration> = (0..8).map(|_| db.failed(&"refused")).collect();
        assert_eq!(
            waits,
            [
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(5000),
                ms(5000),
                ms(5000)
            ],
            "250 ms doubling, capped at 5 s"
        );
        assert!(db.failing_since.is_some());
        db.succeeded();
        assert!(db.failing_since.is_none());
        assert_eq!(
            (db.failed(&"refused"), db.failed(&"refused")),
            (ms(250), ms(500)),
            "the next outage starts from the first wait"
        );
    }
}
