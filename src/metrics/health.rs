//! How the beat is: its last good pass, outages of the database and the
//! broker, read through a [`Monitor`] (`/healthz`, `/readyz`, the
//! dashboard, `beat_*_up`).

use super::{Metrics, Stats};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A failure in progress: since when, and the last error (no secrets: the
/// errors carry masked URLs).
#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    error: String,
}

/// How the beat is, as its threads last found it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The scheduler thread is running (set by the thread itself).
    scheduler_running: AtomicBool,
    /// The last pass that succeeded: when, on this machine's clocks.
    last_pass: Mutex<Option<(Instant, DateTime<Utc>)>>,
    database: Mutex<Option<Failing>>,
    broker: Mutex<Option<Failing>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// The scheduler thread started (`true`) or ended (`false`).
    pub(crate) fn set_running(&self, running: bool) {
        self.scheduler_running.store(running, Ordering::Relaxed);
    }

    /// A pass succeeded: the database answered.
    pub(crate) fn pass_succeeded(&self) {
        *lock(&self.last_pass) = Some((Instant::now(), Utc::now()));
        lock(&self.database).take();
    }

    /// A pass failed on the database.
    pub(crate) fn database_failed(&self, error: &dyn std::fmt::Display) {
        Self::failed(&self.database, error);
    }

    pub(crate) fn broker_failed(&self, error: &dyn std::fmt::Display) {
        Self::failed(&self.broker, error);
    }

    pub(crate) fn broker_succeeded(&self) {
        lock(&self.broker).take();
    }

    fn failed(slot: &Mutex<Option<Failing>>, error: &dyn std::fmt::Display) {
        // One line: drivers' messages run over several.
        let error = error
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut slot = lock(slot);
        match &mut *slot {
            Some(failing) => failing.error = error,
            None => {
                *slot = Some(Failing {
                    since: Instant::now(),
                    error,
                })
            }
        }
    }
}

/// Watches a running beat: its counts and its health, for metrics and
/// probes (the `http` feature serves them). Cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    /// How long the database or the broker may fail before the beat is
    /// unhealthy.
    pub(crate) bound: Duration,
    pub(crate) has_broker: bool,
    pub(crate) beat_id: String,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("beat_id", &self.beat_id)
            .field("bound", &self.bound)
            .finish()
    }
}

/// How a beat is (see [`Monitor::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Passes succeed within the bound, neither the database nor the
    /// broker has been failing longer than the bound, and the scheduler
    /// thread runs.
    pub healthy: bool,
    /// Why not, in one line.
    pub reason: Option<String>,
    /// The first pass has succeeded (the tables were migrated before it)
    /// and the beat is healthy.
    pub ready: bool,
    /// The last pass succeeded (the database answered it).
    pub database_up: bool,
    /// The last publish to the broker succeeded (`None`: no broker).
    pub broker_up: Option<bool>,
    /// When the last pass succeeded.
    pub last_pass: Option<DateTime<Utc>>,
    /// The last database or broker error, while failing.
    pub last_error: Option<String>,
}

impl Monitor {
    /// Counts since the beat started.
    pub fn stats(&self) -> Stats {
        self.metrics.stats()
    }

    /// This beat's id in the `beats` table.
    pub fn beat_id(&self) -> &str {
        &self.beat_id
    }

    /// How long the database or the broker may fail before the beat is
    /// unhealthy: 20 watch intervals, at least 10 s.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// How the beat is now.
    pub fn health(&self) -> HealthReport {
        let h = &self.health;
        let last_pass = *lock(&h.last_pass);
        let database = lock(&h.database).clone();
        let broker = lock(&h.broker).clone();
        let running = h.scheduler_running.load(Ordering::Relaxed);
        let bound = self.bound;
        let over = |f: &Option<Failing>| -> Option<Failing> {
            f.clone().filter(|f| f.since.elapsed() > bound)
        };
        let secs = |f: &Failing| f.since.elapsed().as_secs();
        let reason = if !running {
            Some("the scheduler thread is not running".to_owned())
        } else if let Some(f) = over(&database) {
            Some(format!("database failing for {}s: {}", secs(&f), f.error))
        } else if let Some(f) = over(&broker) {
            Some(format!("broker failing for {}s: {}", secs(&f), f.error))
        } else {
            match last_pass {
                Some((at, _)) if at.elapsed() > self.bound => Some(match &database {
                    Some(f) => format!(
                        "database failing for {}s (no pass has succeeded for {}s): {}",
                        secs(f),
                        at.elapsed().as_secs(),
                        f.error
                    ),
                    None => format!(
                        "no scheduler pass has succeeded for {}s (one may be waiting on the database)",
                        at.elapsed().as_secs()
                    ),
                }),
                _ => None,
            }
        };
        HealthReport {
            healthy: reason.is_none(),
            ready: reason.is_none() && last_pass.is_some(),
            reason,
            database_up: database.is_none() && last_pass.is_some(),
            broker_up: self.has_broker.then_some(broker.is_none()),
            last_pass: last_pass.map(|(_, at)| at),
            last_error: database.or(broker).map(|f| f.error),
        }
    }
}

/// The health bound for a watch interval: 20 of them, at least 10 s (a
/// failing pass may wait seconds for a connection before it fails, and a
/// pass in a burst of a million due rows takes seconds).
pub(crate) fn health_bound(watch_interval: Duration) -> Duration {
    (watch_interval * 20).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    fn monitor(has_broker: bool) -> Monitor {
        let health = Health::default();
        health.set_running(true);
        Monitor {
            metrics: Arc::default(),
            health: Arc::new(health),
            bound: BOUND,
            has_broker,
            beat_id: "b".into(),
        }
    }

    fn ago(d: Duration) -> Instant {
        Instant::now().checked_sub(d).expect("uptime")
    }

    /// Makes a failure in `slot` (or the last pass) `age` old.
    fn age(slot: &Mutex<Option<Failing>>, age: Duration) {
        lock(slot).as_mut().expect("failing").since = ago(age);
    }

    #[test]
    fn ready_after_the_first_pass_and_healthy_while_the_scheduler_runs() {
        let m = monitor(false);
        let r = m.health();
        assert_eq!(
            (r.healthy, r.ready, r.database_up, r.broker_up, r.last_pass),
            (true, false, false, None, None),
            "running, no pass yet"
        );
        m.health.pass_succeeded();
        let r = m.health();
        assert_eq!(
            (r.healthy, r.ready, r.database_up, r.broker_up),
            (true, true, true, None)
        );
        assert!(r.last_pass.is_some() && r.reason.is_none() && r.last_error.is_none());
        m.health.set_running(false);
        let r = m.health();
        assert_eq!((r.healthy, r.ready), (false, false));
        assert_eq!(
            r.reason.as_deref(),
            Some("the scheduler thread is not running")
        );
    }

    #[test]
    fn a_database_failure_turns_unhealthy_only_past_the_bound() {
        let m = monitor(true);
        m.health.pass_succeeded();
        m.health
            .database_failed(&"connection refused\n   is the server up?");
        let r = m.health();
        assert_eq!((r.healthy, r.ready, r.database_up), (true, true, false));
        assert_eq!(
            r.last_error.as_deref(),
            Some("connection refused is the server up?"),
            "one line"
        );
        // The pass is as old as the failure: both just inside the bound.
        age(&m.health.database, BOUND - Duration::from_secs(1));
        lock(&m.health.last_pass).as_mut().unwrap().0 = ago(BOUND - Duration::from_secs(1));
        assert!(m.health().healthy, "{:?}", m.health().reason);
        // Just past it.
        age(&m.health.database, BOUND + Duration::from_secs(1));
        let r = m.health();
        assert_eq!((r.healthy, r.ready), (false, false));
        assert_eq!(
            r.reason.as_deref(),
            Some("database failing for 11s: connection refused is the server up?")
        );
        // A pass succeeds: healthy again at once.
        m.health.pass_succeeded();
        let r = m.health();
        assert_eq!((r.healthy, r.database_up, r.last_error), (true, true, None));
    }

    #[test]
    fn a_broker_failure_turns_unhealthy_only_past_the_bound() {
        let m = monitor(true);
        m.health.pass_succeeded();
        assert_eq!(m.health().broker_up, Some(true));
        m.health.broker_failed(&"broker unavailable: refused");
        age(&m.health.broker, BOUND - Duration::from_secs(1));
        let r = m.health();
        assert_eq!((r.healthy, r.broker_up), (true, Some(false)));
        assert_eq!(r.last_error.as_deref(), Some("broker unavailable: refused"));
        m.health.broker_failed(&"broker unavailable: timed out");
        age(&m.health.broker, BOUND + Duration::from_secs(1));
        let r = m.health();
        assert_eq!(
            r.reason.as_deref(),
            Some("broker failing for 11s: broker unavailable: timed out"),
            "the outage keeps its start, the error is the latest"
        );
        m.health.broker_succeeded();
        let r = m.health();
        assert_eq!((r.healthy, r.broker_up), (true, Some(true)));
    }

    #[test]
    fn no_pass_for_longer_than_the_bound_is_unhealthy_even_without_an_error() {
        let m = monitor(false);
        m.health.pass_succeeded();
        lock(&m.health.last_pass).as_mut().unwrap().0 = ago(BOUND - Duration::from_secs(1));
        assert!(m.health().healthy);
        lock(&m.health.last_pass).as_mut().unwrap().0 = ago(BOUND + Duration::from_secs(2));
        let r = m.health();
        assert!(!r.healthy && !r.ready);
        assert_eq!(
            r.reason.as_deref(),
            Some("no scheduler pass has succeeded for 12s (one may be waiting on the database)")
        );
        // A database failure younger than the bound, but no pass since
        // long before it: unhealthy, and the failure named.
        m.health.database_failed(&"timed out");
        age(&m.health.database, Duration::from_secs(5));
        let r = m.health();
        assert!(!r.healthy);
        assert_eq!(
            r.reason.as_deref(),
            Some("database failing for 5s (no pass has succeeded for 12s): timed out")
        );
    }

    #[test]
    fn the_bound_is_twenty_watch_intervals_and_at_least_ten_seconds() {
        assert_eq!(health_bound(Duration::from_millis(100)), BOUND);
        assert_eq!(health_bound(Duration::from_millis(500)), BOUND);
        assert_eq!(
            health_bound(Duration::from_secs(1)),
            Duration::from_secs(20)
        );
    }
}
