//! The broker's health: up, or failing since when. Every publish and every
//! check (`Broker`'s watch, when nothing was published for a while)
//! reports here, and this reports on to the beat's [`Health`] (up or down, and the
//! last error, for `/healthz`, `/readyz` and `beat_broker_up`). While the
//! broker fails, claims leave its routines due until the next retry, with
//! a capped exponential back-off; one log line when an outage starts, one
//! when it ends.

use super::BrokerError;
use crate::backoff::Backoff;
use crate::metrics::Health;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A broker outage in progress.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Backoff,
}

/// The broker's outages, as every claimer sees them.
#[derive(Debug)]
pub(super) struct Outages {
    outage: Mutex<Option<Outage>>,
    /// When the broker last answered.
    answered: Mutex<Instant>,
    health: Arc<Health>,
}

impl Outages {
    pub(super) fn new(health: Arc<Health>) -> Self {
        Outages {
            outage: Mutex::new(None),
            answered: Mutex::new(Instant::now()),
            health,
        }
    }

    /// Whether the broker is due a check: it has not answered for
    /// `interval`, and during an outage, its next retry has come.
    pub(super) fn check_due(&self, interval: Duration) -> bool {
        let now = Instant::now();
        match self.retry_at() {
            Some(retry_at) => now >= retry_at,
            None => {
                let answered = *self.answered.lock().unwrap_or_else(PoisonError::into_inner);
                now >= answered + interval
            }
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

    /// A publish or a check failed.
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

    /// A publish or a check succeeded: the broker is up (again).
    pub(super) fn succeeded(&self) {
        self.health.broker_succeeded();
        *self.answered.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Each failed publish puts the next try the next back-off wait away
    /// (250 ms doubling to 5 s), measured from the failure; a success ends
    /// the outage, and the next starts again from 250 ms.
    #[test]
    fn retries_back_off_doubling_to_the_cap_and_a_success_resets_them() {
        let outages = Outages::new(Arc::new(Health::default()));
        let error = BrokerError::Unavailable("connection refused".into());
        assert!(!outages.paused());
        assert_eq!(outages.retry_at(), None);
        for wait in [250, 500, 1000, 2000, 4000, 5000, 5000].map(ms) {
            let before = Instant::now();
            outages.failed(&error);
            let after = Instant::now();
            let retry_at = outages.retry_at().expect("in an outage");
            assert!(
                retry_at >= before + wait && retry_at <= after + wait,
                "retry {:?} after the failure, expected {wait:?}",
                retry_at - before
            );
            assert!(outages.paused());
        }
        outages.succeeded();
        assert_eq!(outages.retry_at(), None);
        assert!(!outages.paused());
        let before = Instant::now();
        outages.failed(&error);
        let retry_at = outages.retry_at().unwrap();
        assert!(retry_at >= before + ms(250) && retry_at <= Instant::now() + ms(250));
    }
}
