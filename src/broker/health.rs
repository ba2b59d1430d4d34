//! The broker's health: up, or failing since when. Every publish reports
//! here, and this reports on to the beat's [`Health`] (up or down, and the
//! last error, for `/healthz`, `/readyz` and `beat_broker_up`). While the
//! broker fails, claims leave its routines due until the next retry, with
//! a capped exponential back-off; one log line when an outage starts, one
//! when it ends.

use super::BrokerError;
use crate::backoff::Backoff;
use crate::metrics::Health;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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
    health: Arc<Health>,
}

impl Outages {
    pub(super) fn new(health: Arc<Health>) -> Self {
        Outages {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// When the broker is next tried, as a wait from `before` (taken just
    /// before the failure): at least `wait`, and at most the moments the
    /// test itself took.
    fn retry_in(outages: &Outages, before: Instant, wait: Duration) {
        let after = Instant::now();
        let at = outages.retry_at().expect("an outage");
        assert!(
            at >= before + wait && at <= after + wait,
            "retry {:?} after the failure, expected {wait:?}",
            at - before
        );
    }

    #[test]
    fn a_broker_outage_pauses_claims_with_a_doubling_capped_wait_until_a_publish_succeeds() {
        let health = Arc::new(Health::default());
        let outages = Outages::new(Arc::clone(&health));
        let down = BrokerError::Unavailable("connection refused".into());
        assert!(!outages.paused() && outages.retry_at().is_none());
        for wait in [250, 500, 1000, 2000, 4000, 5000, 5000] {
            let before = Instant::now();
            outages.failed(&down);
            retry_in(&outages, before, Duration::from_millis(wait));
            assert!(outages.paused(), "claims leave the broker alone until then");
        }
        assert_eq!(
            broker_up(&health),
            Some(false),
            "health sees the broker down"
        );
        outages.succeeded();
        assert!(!outages.paused() && outages.retry_at().is_none());
        assert_eq!(broker_up(&health), Some(true), "health sees it up again");
        let before = Instant::now();
        outages.failed(&down);
        retry_in(&outages, before, Duration::from_millis(250));
    }

    fn broker_up(health: &Arc<Health>) -> Option<bool> {
        crate::metrics::Monitor {
            metrics: Arc::default(),
            health: Arc::clone(health),
            bound: Duration::from_secs(10),
            has_broker: true,
            beat_id: String::new(),
        }
        .health()
        .broker_up
    }
}
