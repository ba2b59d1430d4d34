//! What the beat counts: each claimed run's fate, in-process task outcomes,
//! how late runs were handed over, and how long passes and claims took; and
//! how the beat is (`Health`: its last good pass, outages of the database
//! and the broker). Written by the scheduler, the dispatcher and the
//! workers; read as [`Stats`] and [`Monitor`] through the handles.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

mod health;

pub(crate) use health::{health_bound, Health};
pub use health::{HealthReport, Monitor};

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
    pub(crate) refused: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    /// Due time to hand-over (in Redis, or in the worker queue), in µs.
    /// Two significant digits: within 1% of the true value.
    lateness: Mutex<Histogram<u64>>,
    /// The same, in Prometheus' fixed buckets.
    pub(crate) lateness_buckets: Buckets,
    /// Scheduler passes (the main loop's), start to end.
    pub(crate) pass_seconds: Buckets,
    /// Claim transactions, start to commit.
    pub(crate) claim_seconds: Buckets,
    /// Runs by task, target and outcome.
    by_task: Mutex<HashMap<String, TaskCounts>>,
}

/// Where a run goes: to a Celery worker through the broker, or to this
/// beat's worker pool; or nowhere (its row is invalid). One name each in
/// the run history (`routine_runs.target`), the metrics' `target` label,
/// the command line and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Published to the broker, for a Celery worker.
    Celery,
    /// Queued for this beat's worker pool.
    InProcess,
    /// Not routed: the row was invalid.
    Unrouted,
}

impl Target {
    pub(crate) const ALL: [Target; 3] = [Target::Celery, Target::InProcess, Target::Unrouted];

    /// A routed run's target: in-process if `local`, else Celery.
    pub(crate) fn of(local: bool) -> Self {
        match local {
            true => Target::InProcess,
            false => Target::Celery,
        }
    }

    /// Its name: `celery`, `in_process` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Celery => "celery",
            Target::InProcess => "in_process",
            Target::Unrouted => "none",
        }
    }

    /// The target of this name (`local` is what versions before 0.3 wrote
    /// for `in_process`); anything else is unrouted.
    pub fn from_name(name: &str) -> Self {
        match name {
            "celery" => Target::Celery,
            "in_process" | "local" => Target::InProcess,
            _ => Target::Unrouted,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        self.as_str()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Target {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// What the metrics count of runs (the `outcome` label): a run
/// dispatched, and the ends of in-process attempts. Where a name is also a
/// `RunOutcome` of the history, it means the same thing,
/// except `failed`: here one failed attempt (a retry may follow), there a
/// run that failed for good (`gave_up` here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Published to the broker, or queued for a worker.
    Dispatched,
    Skipped,
    Missed,
    Invalid,
    /// The broker could not take its message where it goes.
    Refused,
    Abandoned,
    Succeeded,
    /// An attempt failed (each retry counts).
    Failed,
    GaveUp,
}

impl Counted {
    pub(crate) const ALL: [Counted; 9] = [
        Counted::Dispatched,
        Counted::Skipped,
        Counted::Missed,
        Counted::Invalid,
        Counted::Refused,
        Counted::Abandoned,
        Counted::Succeeded,
        Counted::Failed,
        Counted::GaveUp,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Counted::Dispatched => "dispatched",
            Counted::Skipped => "skipped",
            Counted::Missed => "missed",
            Counted::Invalid => "invalid",
            Counted::Refused => "refused",
            Counted::Abandoned => "abandoned",
            Counted::Succeeded => "succeeded",
            Counted::Failed => "failed",
            Counted::GaveUp => "gave_up",
        }
    }
}

/// One task's counts, by target and outcome.
type TaskCounts = [[u64; Counted::ALL.len()]; Target::ALL.len()];

/// Distinct task names counted apart; the rest are counted together under
/// [`OTHER_TASKS`], so that a table of a million distinct task names cannot
/// make a million series.
pub(crate) const MAX_TASK_SERIES: usize = 1000;
/// The task label of runs beyond [`MAX_TASK_SERIES`].
pub(crate) const OTHER_TASKS: &str = "(other)";

/// Bucket bounds in seconds: lateness and durations, 1 ms to 5 minutes.
pub(crate) const SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

/// A histogram in fixed buckets (Prometheus' kind), lock-free.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Observations at or under each bound (not cumulative), then above all.
    counts: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// A [`Buckets`] read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BucketsSnapshot {
    /// `(upper bound, observations in this bucket)`: not cumulative, each
    /// above the bound before; the last bound is `f64::MAX` (`+Inf`).
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) count: u64,
    pub(crate) sum_seconds: f64,
}

impl Buckets {
    pub(crate) fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let at = SECONDS_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BucketsSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            let n = count.load(Ordering::Relaxed);
            total += n;
            buckets.push((SECONDS_BUCKETS.get(i).copied().unwrap_or(f64::MAX), n));
        }
        BucketsSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            fired: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            lateness: Mutex::new(
                Histogram::new_with_bounds(1, LATENESS_MAX_MICROS, 2)
                    .expect("constant histogram bounds are valid"),
            ),
            lateness_buckets: Buckets::default(),
            pass_seconds: Buckets::default(),
            claim_seconds: Buckets::default(),
            by_task: Mutex::new(HashMap::new()),
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
    pub(crate) refused: usize,
    pub(crate) abandoned: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, other: Counts) {
        self.fired += other.fired;
        self.skipped += other.skipped;
        self.missed += other.missed;
        self.invalid += other.invalid;
        self.refused += other.refused;
        self.abandoned += other.abandoned;
    }

    /// Whether any claimed row was dealt with.
    pub(crate) fn any(&self) -> bool {
        self.fired + self.skipped + self.missed + self.invalid + self.refused + self.abandoned > 0
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
        add(&self.refused, counts.refused);
        add(&self.abandoned, counts.abandoned);
    }

    /// Counts one more `counter` event.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` runs of `task` that went to `target` and came to `outcome`.
    pub(crate) fn count_runs(&self, task: &str, target: Target, outcome: Counted, n: u64) {
        self.count_many([(task, target, outcome)].into_iter(), n);
    }

    /// Counts `n` runs for each of `runs` (a claim's batch: one lock).
    pub(crate) fn count_many<'a>(
        &self,
        runs: impl Iterator<Item = (&'a str, Target, Counted)>,
        n: u64,
    ) {
        let mut by_task = self.by_task.lock().unwrap_or_else(PoisonError::into_inner);
        for (task, target, outcome) in runs {
            let counts = match by_task.get_mut(task) {
                Some(counts) => counts,
                None => {
                    let key = match by_task.len() < MAX_TASK_SERIES {
                        true => task,
                        false => OTHER_TASKS,
                    };
                    by_task.entry(key.to_owned()).or_default()
                }
            };
            counts[target as usize][outcome as usize] += n;
        }
    }

    /// Every non-zero count of runs: `(task, target, outcome, runs)`, by task.
    pub(crate) fn runs_by_task(&self) -> Vec<(String, Target, Counted, u64)> {
        let by_task = self.by_task.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = Vec::new();
        for (task, counts) in by_task.iter() {
            for target in Target::ALL {
                for outcome in Counted::ALL {
                    let n = counts[target as usize][outcome as usize];
                    if n > 0 {
                        all.push((task.clone(), target, outcome, n));
                    }
                }
            }
        }
        all.sort_by(|a, b| (&a.0, a.1 as u8, a.2 as u8).cmp(&(&b.0, b.1 as u8, b.2 as u8)));
        all
    }

    /// Records how late a run was handed over.
    pub(crate) fn record_lateness(&self, late: Duration) {
        self.lateness_buckets.observe(late);
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
            refused: load(&self.refused),
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
    /// Runs whose message the broker could not take where it goes
    /// (RabbitMQ: the exchange does not exist); each routine moved on.
    pub refused: u64,
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
