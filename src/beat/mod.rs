//! The beat: builder, start-up (`start`), and the handles that stop it.

mod start;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::metrics::{Metrics, Monitor, Stats};
use crate::routine::{Routine, RoutineError};
use crate::scheduler::{Scheduler, Tick};
use crate::shutdown::Trigger;
use crate::store::RoutineStore;
use crate::task::{AsyncTask, SyncTask, TaskRegistry};
use crate::worker::WorkerPool;
use chrono::{DateTime, Utc};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Builds a beat: tasks, declared routines, then [`BeatBuilder::start`].
pub struct BeatBuilder {
    config: Config,
    registry: TaskRegistry,
    routines: Vec<Routine>,
    /// Names the start-up sync must not delete though not declared.
    kept: Vec<String>,
    clock: Arc<dyn Clock>,
}

/// The entry point.
///
/// ```no_run
/// use celery_diesel_kit::{Beat, Config, Routine, Schedule, SyncTask, TaskContext, TaskResult};
/// use std::time::Duration;
///
/// struct Hello;
/// impl SyncTask for Hello {
///     fn name(&self) -> &str { "hello" }
///     fn run(&self, ctx: &TaskContext) -> TaskResult {
///         println!("hello from {}", ctx.routine);
///         Ok(())
///     }
/// }
///
/// let beat = Beat::builder(Config::from_env()?)
///     .task(Hello)
///     .routine(Routine::new("hello", "hello", Schedule::every(Duration::from_secs(15))?))
///     .start()?;
/// // ... until the service stops:
/// beat.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Beat;

impl Beat {
    /// A builder for a beat with `config`.
    pub fn builder(config: Config) -> BeatBuilder {
        BeatBuilder {
            config,
            registry: TaskRegistry::default(),
            routines: Vec::new(),
            kept: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl BeatBuilder {
    /// Registers a blocking task.
    pub fn task(mut self, task: impl SyncTask) -> Self {
        self.registry.add_sync(task);
        self
    }

    /// Registers an async task.
    pub fn async_task(mut self, task: impl AsyncTask) -> Self {
        self.registry.add_async(task);
        self
    }

    /// Declares a routine. At start the kit's rules apply: a declared
    /// routine missing from the table is inserted, one present keeps the
    /// table's version, and rows of routines no longer declared are deleted
    /// (unless nothing at all is declared).
    pub fn routine(mut self, routine: Routine) -> Self {
        self.routines.push(routine);
        self
    }

    /// Declares several routines.
    pub fn routines(mut self, routines: impl IntoIterator<Item = Routine>) -> Self {
        self.routines.extend(routines);
        self
    }

    /// Names of routines the code means but could not declare (a schedule
    /// the beat cannot represent, say): the start-up sync leaves their rows
    /// alone instead of deleting them as no longer declared.
    pub fn keep(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.kept.extend(names);
        self
    }

    /// Replaces the clock (tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Connects, prepares the table, syncs declared routines, starts the
    /// worker pool and the scheduler thread.
    pub fn start(self) -> Result<BeatHandle, Error> {
        let (parts, scheduler) = self.prepare()?;
        let thread = std::thread::Builder::new()
            .name("beat-scheduler".into())
            .spawn(move || scheduler.run())
            .map_err(|source| Error::Thread {
                what: "scheduler",
                source,
            })?;
        Ok(BeatHandle {
            parts,
            scheduler: Some(thread),
        })
    }

    /// Like [`start`](Self::start), but without the scheduler thread: the
    /// caller runs each pass with [`ManualBeat::tick`] at a time of its
    /// choosing. For tests of schedule behaviour against a real database,
    /// and for embedding the beat in a loop of one's own.
    pub fn start_manual(self) -> Result<ManualBeat, Error> {
        let (parts, scheduler) = self.prepare()?;
        Ok(ManualBeat {
            parts,
            scheduler: Some(scheduler),
        })
    }
}

/// How long a stop waits beyond its deadline for the scheduler thread to
/// abandon the runs it still holds (each is counted, logged and recorded:
/// milliseconds for a whole batch). A pass held up by the database longer
/// is not waited for.
const SCHEDULER_GRACE: Duration = Duration::from_millis(500);

/// How long a stop waits for the housekeeper's last writes beyond the
/// stop's deadline (it marks the beat stopped: worth a moment).
const HOUSEKEEPER_GRACE: Duration = Duration::from_secs(2);

/// What a running beat owns besides its scheduler.
struct Parts {
    store: Arc<RoutineStore>,
    /// This beat's id in the `beats` table.
    beat_id: String,
    /// For on-demand runs; dropped at stop, as it holds the job queue open.
    dispatcher: Option<Arc<Dispatcher>>,
    pool: Option<WorkerPool>,
    /// Its stop (dropping the sender) and its thread.
    housekeeper: Option<(Sender<()>, JoinHandle<()>)>,
    metrics: Arc<Metrics>,
    monitor: Monitor,
    trigger: Option<Trigger>,
    shutdown_timeout: Duration,
}

impl Parts {
    fn send_now(&self, name: &str) -> Result<String, Error> {
        let row = self
            .store
            .routine(name)?
            .ok_or_else(|| Error::NoSuchRoutine(name.to_owned()))?;
        let dispatcher = self
            .dispatcher
            .as_ref()
            .ok_or_else(|| RoutineError::new(name, "the beat is stopping"))?;
        dispatcher.send_now(&row, &self.store)
    }

    /// Stops claiming, then gives running and queued tasks until the
    /// deadline.
    fn stop(&mut self, scheduler: Option<JoinHandle<()>>, timeout: Duration) -> StopReport {
        let deadline = Instant::now() + timeout;
        if let Some(trigger) = self.trigger.take() {
            trigger.fire(deadline);
        }
        if let Some(thread) = scheduler {
            // A pass in progress finishes its transaction (claims are
            // atomic), then the thread sees the shutdown. A pass handing
            // runs to a full queue waits until the deadline, then abandons
            // the rest (each counted, logged and recorded), which takes a
            // moment past it: without a grace, the stop would report and
            // record fewer abandoned runs than there are. A pass held up
            // by the database past the grace is left to end on its own.
            let grace = deadline + SCHEDULER_GRACE;
            while !thread.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::warn!("beat: the scheduler is still in a database call past the stop deadline; not waiting for it");
            }
        }
        drop(self.dispatcher.take());
        let busy_workers = self.pool.take().map_or(0, |pool| pool.stop(deadline));
        if let Some((stop, thread)) = self.housekeeper.take() {
            drop(stop);
            let until = deadline.max(Instant::now()) + HOUSEKEEPER_GRACE;
            while !thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::warn!("beat: the housekeeper is still writing to the database at the stop deadline; not waiting for it");
            }
        }
        let report = StopReport {
            stats: self.metrics.stats(),
            busy_workers,
        };
        log::info!(
            "beat: stopped ({} fired, {} abandoned, {} busy workers left)",
            report.stats.fired,
            report.stats.abandoned,
            busy_workers
        );
        report
    }
}

/// How a stop went. A stop returns within its timeout (and a moment):
/// runs that had not started by then are abandoned (`stats.abandoned`),
/// and tasks still running are left to finish on their own
/// (`busy_workers`); each is logged by routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// Final counts.
    pub stats: Stats,
    /// Worker threads still running a task at the deadline.
    pub busy_workers: usize,
}

/// A running beat. Dropping it stops it (waiting up to `shutdown_timeout`).
pub struct BeatHandle {
    parts: Parts,
    scheduler: Option<JoinHandle<()>>,
}

impl BeatHandle {
    /// The beat's store, for operator actions and inspection.
    pub fn store(&self) -> &RoutineStore {
        &self.parts.store
    }

    /// This beat's id in the `beats` table (and in the history's `beat_id`).
    pub fn id(&self) -> &str {
        &self.parts.beat_id
    }

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        self.parts.metrics.stats()
    }

    /// Its counts and health, for metrics and probes (see `http`).
    pub fn monitor(&self) -> Monitor {
        self.parts.monitor.clone()
    }

    /// Runs the routine called `name` now, outside its schedule (its row is
    /// not advanced): in-process if its task is registered, else as a
    /// Celery message. Returns the task id.
    pub fn send_now(&self, name: &str) -> Result<String, Error> {
        self.parts.send_now(name)
    }

    /// Stops, giving running tasks `shutdown_timeout`.
    pub fn stop(mut self) -> StopReport {
        let timeout = self.parts.shutdown_timeout;
        self.parts.stop(self.scheduler.take(), timeout)
    }

    /// Stops, giving running tasks `timeout`.
    pub fn stop_within(mut self, timeout: Duration) -> StopReport {
        self.parts.stop(self.scheduler.take(), timeout)
    }
}

impl Drop for BeatHandle {
    fn drop(&mut self) {
        if self.parts.trigger.is_some() {
            let timeout = self.parts.shutdown_timeout;
            self.parts.stop(self.scheduler.take(), timeout);
        }
    }
}

/// A beat whose passes the caller runs (see [`BeatBuilder::start_manual`]).
pub struct ManualBeat {
    parts: Parts,
    /// Dropped at stop: it holds the job queue open.
    scheduler: Option<Scheduler>,
}

impl ManualBeat {
    /// Runs one scheduler pass as if the time were `now`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Result<Tick, Error> {
        match &self.scheduler {
            Some(scheduler) => scheduler.tick(now),
            None => unreachable!("a stopped ManualBeat is consumed"),
        }
    }

    /// The beat's store.
    pub fn store(&self) -> &RoutineStore {
        &self.parts.store
    }

    /// This beat's id in the `beats` table (and in the history's `beat_id`).
    pub fn id(&self) -> &str {
        &self.parts.beat_id
    }

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        self.parts.metrics.stats()
    }

    /// Its counts and health (no scheduler thread runs: the health says
    /// so).
    pub fn monitor(&self) -> Monitor {
        self.parts.monitor.clone()
    }

    /// See [`BeatHandle::send_now`]; the run's time comes from the beat's
    /// clock.
    pub fn send_now(&self, name: &str) -> Result<String, Error> {
        self.parts.send_now(name)
    }

    /// Stops, giving running tasks `shutdown_timeout`.
    pub fn stop(self) -> StopReport {
        let timeout = self.parts.shutdown_timeout;
        self.stop_within(timeout)
    }

    /// Stops, giving running tasks `timeout`.
    pub fn stop_within(mut self, timeout: Duration) -> StopReport {
        drop(self.scheduler.take());
        self.parts.stop(None, timeout)
    }
}

impl Drop for ManualBeat {
    fn drop(&mut self) {
        if self.parts.trigger.is_some() {
            drop(self.scheduler.take());
            let timeout = self.parts.shutdown_timeout;
            self.parts.stop(None, timeout);
        }
    }
}
