//! What the beat counts: each claimed run's fate, in-process task outcomes,
//! and how late runs were handed over. Written by the scheduler, the
//! dispatcher and the workers; read as [`Stats`] through the handles.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The longest lateness the histogram tells apart (a day, in
/// microseconds); later runs count as this late.
const LATENESS_MAX_MICROS: u64 = 86_400 * 1_000_000;

/// Counters and the lateness histogram of one beat.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) fired: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    /// Due time to hand-over (in Redis, or in the worker queue), in µs.
    /// Two significant digits: within 1% of the true value.
    lateness: Mutex<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            fired: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            lateness: Mutex::new(
                Histogram::new_with_bounds(1, LATENESS_MAX_MICROS, 2)
                    .expect("constant histogram bounds are valid"),
            ),
        }
    }
}

/// How many claimed runs met each fate (one claimer's batch, one pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) fired: usize,
    pub(crate) skipped: usize,
    pub(crate) missed: usize,
    pub(crate) invalid: usize,
    pub(crate) abandoned: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, other: Counts) {
        self.fired += other.fired;
        self.skipped += other.skipped;
        self.missed += other.missed;
        self.invalid += other.invalid;
        self.abandoned += other.abandoned;
    }

    /// Whether any claimed row was dealt with.
    pub(crate) fn any(&self) -> bool {
        self.fired + self.skipped + self.missed + self.invalid + self.abandoned > 0
    }
}

impl Metrics {
    /// Adds a claimer's or a pass's counts to the totals.
    pub(crate) fn add(&self, counts: Counts) {
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        add(&self.fired, counts.fired);
        add(&self.skipped, counts.skipped);
        add(&self.missed, counts.missed);
        add(&self.invalid, counts.invalid);
        add(&self.abandoned, counts.abandoned);
    }

    /// Counts one more `counter` event.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how late a run was handed over.
    pub(crate) fn record_lateness(&self, late: Duration) {
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.lateness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros.max(1));
    }

    /// A snapshot of everything counted so far.
    pub(crate) fn stats(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let lateness = {
            let h = self.lateness.lock().unwrap_or_else(PoisonError::into_inner);
            let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
            Lateness {
                count: h.len(),
                p50: if h.is_empty() {
                    Duration::ZERO
                } else {
                    at(0.5)
                },
                p99: if h.is_empty() {
                    Duration::ZERO
                } else {
                    at(0.99)
                },
                max: if h.is_empty() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(h.max())
                },
            }
        };
        Stats {
            fired: load(&self.fired),
            skipped: load(&self.skipped),
            missed: load(&self.missed),
            invalid: load(&self.invalid),
            lateness,
            succeeded: load(&self.succeeded),
            failed: load(&self.failed),
            gave_up: load(&self.gave_up),
            abandoned: load(&self.abandoned),
        }
    }
}

/// Counts since the beat started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Routine runs dispatched.
    pub fired: u64,
    /// Due runs skipped because the routine's previous run was still going.
    pub skipped: u64,
    /// Runs not made under the `skip` misfire policy.
    pub missed: u64,
    /// Rows found invalid.
    pub invalid: u64,
    /// How late runs were handed over (to Redis or the worker queue).
    pub lateness: Lateness,
    /// In-process task attempts that succeeded.
    pub succeeded: u64,
    /// In-process task attempts that failed (each retry counts).
    pub failed: u64,
    /// Runs that failed on every attempt.
    pub gave_up: u64,
    /// Claimed runs that never started because the beat stopped first
    /// (waiting in the queue or for a retry at the stop's deadline, or not
    /// queued at all), each logged by routine.
    pub abandoned: u64,
}

/// How late runs were handed over, since start: due time to the moment a
/// message was in Redis or a job in the worker queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lateness {
    /// Runs measured.
    pub count: u64,
    /// Median (to within 1%).
    pub p50: Duration,
    /// 99th percentile (to within 1%).
    pub p99: Duration,
    /// The latest (to within 1%).
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_quantiles_are_within_one_percent() {
        let m = Metrics::default();
        assert_eq!(m.stats().lateness, Lateness::default());
        for ms in 1..=100u64 {
            m.record_lateness(Duration::from_millis(ms));
        }
        let l = m.stats().lateness;
        assert_eq!(l.count, 100);
        let close = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.01;
        assert!(close(l.p50, 50.0), "{:?}", l.p50);
        assert!(close(l.p99, 99.0), "{:?}", l.p99);
        assert!(close(l.max, 100.0), "{:?}", l.max);
    }

    #[test]
    fn lateness_beyond_a_day_counts_as_a_day() {
        let m = Metrics::default();
        m.record_lateness(Duration::from_secs(10 * 86_400));
        let max = m.stats().lateness.max;
        assert!(
            max >= Duration::from_secs(86_000) && max <= Duration::from_secs(87_000),
            "{max:?}"
        );
    }
}
