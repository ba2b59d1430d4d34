//! The beat: builder, start-up, and the handle that stops it.

use crate::celery::{Publisher, Sender as CelerySender};
use crate::config::Config;
use crate::error::Error;
use crate::schedule::{truncated, Misfire, Schedule};
use crate::scheduler::{
    Clock, Lateness, Outgoing, Router, Scheduler, Settings, SystemClock, Tick, Totals,
};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::store::{NewRoutine, RoutineStore};
use crate::task::{AsyncTask, SyncTask, TaskRegistry};
use crate::worker::{Counters, JobQueue, RetryPolicy, WorkerPool};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Claimers sharing a burst of due routines on PostgreSQL and MySQL (see
/// `Scheduler::claim`); the pool has room for them and one more.
const CLAIMERS: usize = 3;

/// The longest name or task the kit's table holds (`varchar(50)`).
const MAX_NAME_LEN: usize = 50;

/// A routine declared in code: a task on a schedule.
///
/// ```
/// use celery_diesel_kit::{Routine, Schedule};
/// use std::time::Duration;
///
/// let nightly = Routine::new("nightly report", "reports.send",
///     Schedule::crontab("30", "2", "*", "*", "*").unwrap())
///     .kwargs(serde_json::json!({"recipient": "ops@example.com"}));
/// let heartbeat = Routine::new("heartbeat", "ping",
///     Schedule::every(Duration::from_secs(15)).unwrap());
/// # let _ = (nightly, heartbeat);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Routine {
    name: String,
    task: String,
    schedule: Schedule,
    misfire: Misfire,
    kwargs: Value,
    options: Value,
    active: bool,
}

impl Routine {
    /// A routine called `name` running `task` on `schedule`, with no kwargs.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Self {
        Routine {
            name: name.into(),
            task: task.into(),
            schedule,
            misfire: Misfire::default(),
            kwargs: Value::Object(Map::new()),
            options: Value::Object(Map::new()),
            active: true,
        }
    }

    /// The task's kwargs (a JSON object).
    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Celery `apply_async` options (a JSON object), stored in `options`.
    pub fn options(mut self, options: Value) -> Self {
        self.options = options;
        self
    }

    /// Its own misfire policy and grace time (stored in its schedule JSON).
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// Whether the routine runs when first inserted (default true). The
    /// table decides afterwards.
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// The routine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads a routine from JSON: `{"name", "task", "schedule", "kwargs"?,
    /// "options"?, "active"?}` with the schedule in the kit's form.
    pub fn from_json(value: &Value) -> Result<Self, Error> {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |reason: String| Error::Routine {
            routine: if name.is_empty() {
                truncated(value.to_string())
            } else {
                name.clone()
            },
            reason,
        };
        let task = value
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("\"task\" must be a string".into()))?;
        let schedule_json = value.get("schedule").unwrap_or(&Value::Null);
        let schedule = Schedule::from_json(schedule_json).map_err(|e| invalid(e.to_string()))?;
        let misfire = Misfire::from_json(schedule_json).map_err(|e| invalid(e.to_string()))?;
        let mut routine = Routine::new(name.clone(), task, schedule).misfire(misfire);
        if let Some(kwargs) = value.get("kwargs") {
            routine.kwargs = kwargs.clone();
        }
        if let Some(options) = value.get("options") {
            routine.options = options.clone();
        }
        if let Some(active) = value.get("active") {
            routine.active = active
                .as_bool()
                .ok_or_else(|| invalid("\"active\" must be true or false".into()))?;
        }
        routine.validate()?;
        Ok(routine)
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::Routine {
            routine: self.name.clone(),
            reason,
        };
        for (what, value) in [("name", &self.name), ("task", &self.task)] {
            if value.trim().is_empty() {
                return Err(invalid(format!("{what} must not be empty")));
            }
            if value.chars().count() > MAX_NAME_LEN {
                return Err(invalid(format!(
                    "{what} is longer than {MAX_NAME_LEN} characters"
                )));
            }
        }
        for (what, value) in [("kwargs", &self.kwargs), ("options", &self.options)] {
            if !value.is_object() {
                return Err(invalid(format!("{what} must be a JSON object")));
            }
        }
        Ok(())
    }

    fn to_row(&self) -> NewRoutine {
        NewRoutine {
            id: uuid::Uuid::new_v4(),
            name: self.name.clone(),
            task: self.task.clone(),
            schedule: {
                let mut json = self.schedule.to_json();
                self.misfire.write_into(&mut json);
                json.to_string()
            },
            kwargs: self.kwargs.to_string(),
            options: self.options.to_string(),
            active: self.active,
        }
    }
}

/// Builds a beat: tasks, declared routines, then [`BeatBuilder::start`].
pub struct BeatBuilder {
    config: Config,
    registry: TaskRegistry,
    routines: Vec<Routine>,
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

    fn prepare(self) -> Result<(Parts, Scheduler), Error> {
        for routine in &self.routines {
            routine.validate()?;
        }
        let config = self.config;
        log::info!(
            "beat: database {}",
            crate::config::redact_url(&config.scheduler_db_uri)
        );
        let store = Arc::new(RoutineStore::connect(&config.scheduler_db_uri)?);
        if config.create_table {
            store.migrate()?;
        } else {
            store.check_schema()?;
        }
        let declared: Vec<NewRoutine> = self.routines.iter().map(Routine::to_row).collect();
        let (inserted, deleted) = store.sync_declared(&declared)?;
        for name in &inserted {
            log::info!("routine {name}: declared in code, inserted");
        }
        if deleted > 0 {
            log::info!("beat: deleted {deleted} routine(s) no longer declared in code");
        }

        // Claimers share a burst; SQLite lets one writer in at a time.
        let claimers = match store.backend() {
            crate::store::Backend::Sqlite => 1,
            _ => CLAIMERS,
        };
        let publishers = match &config.broker_url {
            Some(url) => {
                log::info!("beat: broker {}", crate::config::redact_url(url));
                (0..claimers)
                    .map(|_| Publisher::new(url).map(Mutex::new))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let registry = Arc::new(self.registry);
        let router = Arc::new(Router {
            local_tasks: registry.names_json(),
            registry: Arc::clone(&registry),
            has_broker: !publishers.is_empty(),
            sender: CelerySender::this_process(),
            parsed: Default::default(),
        });
        let pool = WorkerPool::start(
            config.worker_concurrency,
            Arc::clone(&registry),
            RetryPolicy {
                max_retries: config.celery_max_retry,
                delay: config.celery_retry_delay,
            },
        )
        .map_err(|source| Error::Thread {
            what: "worker",
            source,
        })?;
        let (trigger, shutdown) = shutdown::channel();
        let totals = Arc::new(Totals::default());
        // On-demand sends use a connection of their own, so that they never
        // wait on (or disturb) the scheduler's.
        let on_demand = match &config.broker_url {
            Some(url) => Some(Mutex::new(Publisher::new(url)?)),
            None => None,
        };
        let scheduler = Scheduler {
            store: Arc::clone(&store),
            clock: self.clock,
            router: Arc::clone(&router),
            queue: pool.queue(),
            in_flight: pool.in_flight(),
            totals: Arc::clone(&totals),
            shutdown: shutdown.clone(),
            settings: Settings {
                max_interval: config.scheduler_max_interval,
                watch_interval: config.scheduler_watch_interval,
                sync_every: config.scheduler_sync_every,
                shutdown_timeout: config.shutdown_timeout,
                misfire_policy: config.scheduler_misfire_policy,
                misfire_grace_time: config.scheduler_misfire_grace_time,
            },
            last_recheck: Default::default(),
            publishers,
            claimers,
            // Measured (bench): helpers halve PostgreSQL's lateness in a busy
            // second; on MariaDB, whose row updates cost twice as much, two
            // claimers at once only contend, so it claims alone but for bursts.
            helpers: store.backend() == crate::store::Backend::Postgres,
            broker_outage: Default::default(),
        };
        let parts = Parts {
            store,
            router,
            queue: Some(pool.queue()),
            shutdown,
            on_demand,
            counters: pool.counters(),
            pool: Some(pool),
            totals,
            trigger: Some(trigger),
            shutdown_timeout: config.shutdown_timeout,
        };
        Ok((parts, scheduler))
    }
}

/// What a running beat owns besides its scheduler.
struct Parts {
    store: Arc<RoutineStore>,
    router: Arc<Router>,
    /// For on-demand runs; dropped at stop, as it holds the job queue open.
    queue: Option<JobQueue>,
    shutdown: Shutdown,
    on_demand: Option<Mutex<Publisher>>,
    pool: Option<WorkerPool>,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    trigger: Option<Trigger>,
    shutdown_timeout: Duration,
}

impl Parts {
    /// Runs a routine's task now, outside its schedule; returns the task id.
    fn send_now(&self, name: &str) -> Result<String, Error> {
        let row = self.store.routine(name)?.ok_or_else(|| Error::Routine {
            routine: name.to_owned(),
            reason: "no such routine".into(),
        })?;
        let (checked, _) = self.router.check(&row).map_err(|reason| Error::Routine {
            routine: name.to_owned(),
            reason,
        })?;
        let now = Utc::now();
        let id = uuid::Uuid::new_v4().to_string();
        match self.router.outgoing(&row, &checked, now, &id, now) {
            Outgoing::Local(mut job) => {
                job.scheduled = false;
                let stopping = || Error::Routine {
                    routine: name.to_owned(),
                    reason: "the beat is stopping".into(),
                };
                let queue = self.queue.as_ref().ok_or_else(stopping)?;
                queue
                    .push(job, &self.shutdown, self.shutdown_timeout)
                    .map_err(|_| stopping())?;
            }
            Outgoing::Celery(message) => {
                let publisher = self.on_demand.as_ref().ok_or_else(|| Error::Routine {
                    routine: name.to_owned(),
                    reason: "no broker configured".into(),
                })?;
                let mut publisher = publisher.lock().unwrap_or_else(PoisonError::into_inner);
                publisher.publish(&[&message])?;
            }
        }
        log::info!("routine {name}: sent on demand as task {id}");
        Ok(id)
    }

    fn stats(&self) -> Stats {
        Stats {
            fired: self.totals.fired.load(Ordering::Relaxed),
            skipped: self.totals.skipped.load(Ordering::Relaxed),
            missed: self.totals.missed.load(Ordering::Relaxed),
            invalid: self.totals.invalid.load(Ordering::Relaxed),
            lateness: self.totals.lateness.snapshot(),
            succeeded: self.counters.succeeded.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            gave_up: self.counters.gave_up.load(Ordering::Relaxed),
        }
    }

    /// Stops claiming, then gives running and queued tasks until the
    /// deadline.
    fn stop(&mut self, scheduler: Option<JoinHandle<()>>, timeout: Duration) -> StopReport {
        let deadline = Instant::now() + timeout;
        if let Some(trigger) = self.trigger.take() {
            trigger.fire();
        }
        if let Some(thread) = scheduler {
            // A pass in progress finishes its transaction (claims are
            // atomic), then the thread sees the shutdown.
            let _ = thread.join();
        }
        drop(self.queue.take());
        let busy_workers = self.pool.take().map_or(0, |pool| pool.stop(deadline));
        let report = StopReport {
            stats: self.stats(),
            busy_workers,
        };
        log::info!(
            "beat: stopped ({} fired, {} busy workers left)",
            report.stats.fired,
            busy_workers
        );
        report
    }
}

/// Counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        self.parts.stats()
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

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        self.parts.stats()
    }

    /// See [`BeatHandle::send_now`].
    pub fn send_now(&self, name: &str) -> Result<String, Error> {
        self.parts.send_now(name)
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
