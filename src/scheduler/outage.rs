//! Outages of the database and the broker. An outage is a state, not a
//! stream of errors: one line when it starts, one when it ends, and a
//! capped exponential back-off in between.

use crate::celery::BrokerError;
use crate::metrics::Health;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Back-off after a failure: doubles from the first to the last. The cap is
/// short because a failing pass already waits up to the pool's checkout
/// timeout (5 s) before it fails.
pub(super) const BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(5));

/// Waits that double after each failure, from a first wait up to a cap
/// ([`BACKOFF`] by default).
#[derive(Debug)]
pub(super) struct Backoff {
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
    pub(super) fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap: cap.max(first),
            next: first,
        }
    }

    /// The wait after one more failure.
    pub(super) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

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

/// A broker outage in progress.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Backoff,
}

/// The broker as every claimer sees it. While it is failing, claims leave
/// its routines due until the next retry.
#[derive(Debug)]
pub(super) struct Broker {
    outage: Mutex<Option<Outage>>,
    health: Arc<Health>,
}

impl Broker {
    pub(super) fn new(health: Arc<Health>) -> Self {
        Broker {
            outage: Mutex::new(None),
            health,
        }
    }

    /// Whether claims must leave the broker's routines alone for now.
    pub(super) fn paused(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|o| Instant::now() < o.retry_at)
    }

    /// When the broker is next tried, during an outage.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.lock().as_ref().map(|o| o.retry_at)
    }

    /// A publish failed.
    pub(super) fn failed(&self, e: &BrokerError) {
        self.health.broker_failed(e);
        let now = Instant::now();
        let mut outage = self.lock();
        match &mut *outage {
            Some(outage) => {
                outage.retry_at = now + outage.backoff.failed();
                log::debug!("broker still unavailable: {e}");
            }
            None => {
                log::error!(
                    "{e}; routines sent to Celery stay due and are retried with back-off; in-process routines go on"
                );
                let mut backoff = Backoff::default();
                *outage = Some(Outage {
                    since: now,
                    retry_at: now + backoff.failed(),
                    backoff,
                });
            }
        }
    }

    /// A publish succeeded: only that proves the broker is back.
    pub(super) fn succeeded(&self) {
        self.health.broker_succeeded();
        if let Some(outage) = self.lock().take() {
            log::info!(
                "broker reachable again after {:.1?}",
                outage.since.elapsed()
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
