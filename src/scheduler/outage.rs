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
