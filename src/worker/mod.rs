//! The worker pool: threads that run in-process tasks, each with its own
//! current-thread tokio runtime for async tasks, and a timer thread that
//! hands failed runs back for a retry after `celery_retry_delay`.
//!
//! A run's life: the scheduler marks the routine in flight and queues a
//! [`Job`]; a worker runs it; a failure (an error or a panic) schedules a
//! retry on the timer thread, which frees the worker at once instead of
//! sleeping on it; the routine leaves the in-flight set when its run has
//! succeeded or used up its retries.

use crate::clock::Clock;
use crate::metrics::{Counted, Metrics, Target};
use crate::shutdown::Shutdown;
use crate::task::{TaskContext, TaskRegistry};
use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Jobs waiting for a worker, per worker thread. The queue is bounded so
/// that memory is too; the scheduler waits when it is full.
const QUEUE_PER_WORKER: usize = 64;

mod retry;
mod thread;

use retry::retry_timer;
use thread::Worker;

/// One run of a routine's task.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) ctx: TaskContext,
    /// Its id (as a Celery task's would be), which its record carries.
    pub(crate) task_id: String,
    /// A scheduled run holds its routine's in-flight mark; an on-demand run
    /// does not.
    pub(crate) scheduled: bool,
    /// It has a record in `routine_runs` to keep up to date.
    pub(crate) recorded: bool,
}

/// What became of a recorded run, for its record (see
/// `scheduler::housekeeping`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunEvent {
    pub(crate) routine_id: String,
    pub(crate) task_id: String,
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    /// Attempts made so far.
    pub(crate) attempts: u32,
    pub(crate) what: Happened,
}

/// A step in a run's life.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Happened {
    Started,
    /// Failed; a retry is waiting.
    Retrying(String),
    Succeeded,
    /// Failed for good.
    Failed(String),
    /// Never (again) started: the beat stopped first.
    Abandoned,
}

impl RunEvent {
    fn of(job: &Job, at: chrono::DateTime<chrono::Utc>, what: Happened) -> Self {
        RunEvent {
            routine_id: job.ctx.routine_id.clone(),
            task_id: job.task_id.clone(),
            at,
            attempts: job.ctx.attempt,
            what,
        }
    }

    /// `job` will not run: the beat is stopping.
    pub(crate) fn abandoned(job: &Job, at: chrono::DateTime<chrono::Utc>) -> Self {
        Self::of(job, at, Happened::Abandoned)
    }
}

/// Reports the steps of recorded runs.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) events: Sender<RunEvent>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Reporter {
    fn report(&self, job: &Job, what: Happened) {
        if job.recorded {
            // The housekeeper outlives the workers; if it has gone, there is
            // no database left to tell.
            let _ = self.events.send(RunEvent::of(job, self.clock.now(), what));
        }
    }
}

/// Routines with a run queued, running or waiting for a retry: such a
/// routine is not queued again until its run has ended for good.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    ids: Mutex<HashSet<String>>,
}

impl InFlight {
    /// Marks `id` in flight unless it already is; returns whether it was marked.
    pub(crate) fn try_mark(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned())
    }

    /// Whether `id` has a run queued, running or waiting for a retry.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// `job` has ended for good.
    pub(crate) fn end(&self, job: &Job) {
        if job.scheduled {
            self.release(&job.ctx.routine_id);
        }
    }

    /// The run of `id` has ended (or never started).
    pub(crate) fn release(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// Retry policy: `celery_max_retry` and `celery_retry_delay`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) delay: Duration,
}

/// The running pool.
pub(crate) struct WorkerPool {
    jobs: Sender<Job>,
    /// The queue's other end, for the stop to take what no worker took.
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
    /// What each worker is running (routine, due time), for the stop's log.
    running: Arc<Running>,
    abandon: Arc<Abandon>,
    workers: Vec<JoinHandle<()>>,
    /// The timer thread; it returns the retries it dropped.
    timer: Option<JoinHandle<usize>>,
    timer_stop: Option<Sender<()>>,
    exited: Receiver<()>,
}

/// The run each worker is on, by worker.
type Running = Mutex<Vec<Option<(String, chrono::DateTime<chrono::Utc>)>>>;

impl WorkerPool {
    pub(crate) fn start(
        threads: usize,
        registry: Arc<TaskRegistry>,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs_tx, jobs_rx) = bounded::<Job>(threads * QUEUE_PER_WORKER);
        let (retry_tx, retry_rx) = crossbeam_channel::unbounded::<(Instant, Job)>();
        let (exited_tx, exited) = crossbeam_channel::unbounded();
        let (timer_stop, timer_stop_rx) = bounded::<()>(0);
        let in_flight = Arc::new(InFlight::default());
        let abandon = Arc::new(Abandon {
            started: AtomicBool::new(false),
            queued: jobs_rx.clone(),
            in_flight: Arc::clone(&in_flight),
            metrics: Arc::clone(&metrics),
            reporter: reporter.clone(),
        });
        let running: Arc<Running> = Arc::new(Mutex::new(vec![None; threads]));

        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let worker = Worker {
                index,
                running: Arc::clone(&running),
                jobs: jobs_rx.clone(),
                retries: retry_tx.clone(),
                registry: Arc::clone(&registry),
                retry,
                in_flight: Arc::clone(&in_flight),
                metrics: Arc::clone(&metrics),
                abandon: Arc::clone(&abandon),
                exited: exited_tx.clone(),
                reporter: reporter.clone(),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("beat-worker-{index}"))
                    .spawn(move || worker.run())?,
            );
        }
        let timer = {
            let jobs = jobs_tx.clone();
            let in_flight = Arc::clone(&in_flight);
            let reporter = reporter.clone();
            std::thread::Builder::new()
                .name("beat-retry-timer".into())
                .spawn(move || retry_timer(retry_rx, timer_stop_rx, jobs, in_flight, reporter))?
        };
        Ok(WorkerPool {
            jobs: jobs_tx,
            in_flight,
            metrics,
            running,
            abandon,
            workers,
            timer: Some(timer),
            timer_stop: Some(timer_stop),
            exited,
        })
    }

    pub(crate) fn in_flight(&self) -> Arc<InFlight> {
        Arc::clone(&self.in_flight)
    }

    /// A handle for queueing jobs.
    pub(crate) fn queue(&self) -> JobQueue {
        JobQueue {
            jobs: self.jobs.clone(),
            abandon: Arc::clone(&self.abandon),
        }
    }

    /// Stops taking retries, lets the workers finish what is queued and
    /// running, and waits until `deadline`, not longer. Runs that never
    /// started (queued at the deadline, or waiting for a retry) are
    /// abandoned: counted and logged by routine. Returns the number of
    /// workers still running a task at the deadline (left to finish on
    /// their own, each logged by routine).
    pub(crate) fn stop(mut self, deadline: Instant) -> usize {
        drop(self.timer_stop.take());
        if let Some(timer) = self.timer.take() {
            // The timer exits as soon as it sees the stop; it never runs
            // tasks, and never waits on a full queue once stopped.
            let dropped = timer.join().unwrap_or(0);
            self.metrics
                .abandoned
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        let total = self.workers.len();
        // Closing the queue: workers drain it, then exit.
        drop(self.jobs);
        let mut exited = 0;
        while exited < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exited.recv_timeout(left) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        let busy = total - exited;
        if busy > 0 {
            self.abandon.start();
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            for (routine, due) in running.iter().flatten() {
                log::warn!(
                    "routine {routine}: the run due {due} is still running at the stop deadline; not waiting for it"
                );
            }
        }
        for handle in self.workers {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        busy
    }
}

/// Abandoning the queue once a stop's deadline has passed with workers
/// still busy: every job queued then, or queued later by a push that was
/// already under way, is abandoned (counted, logged, recorded) exactly once.
struct Abandon {
    /// Set when the deadline passed: workers drop queued jobs.
    started: AtomicBool,
    queued: Receiver<Job>,
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
    reporter: Reporter,
}

impl Abandon {
    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Sets the flag, then drains the queue. A push that lands after the
    /// drain sees the flag (it checks after sending) and drains itself.
    fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.drain();
    }

    fn drain(&self) {
        for job in self.queued.try_iter() {
            self.job(&job);
        }
    }

    /// A run that will not start: the stop came first.
    fn job(&self, job: &Job) {
        log::warn!(
            "routine {}: run due {} abandoned at stop",
            job.ctx.routine,
            job.ctx.scheduled_at
        );
        self.in_flight.end(job);
        self.reporter.report(job, Happened::Abandoned);
        Metrics::bump(&self.metrics.abandoned);
        self.metrics
            .count_runs(&job.ctx.task, Target::InProcess, Counted::Abandoned, 1);
    }
}

/// Queues jobs for the workers.
#[derive(Clone)]
pub(crate) struct JobQueue {
    jobs: Sender<Job>,
    abandon: Arc<Abandon>,
}

impl JobQueue {
    /// Queues `job`, waiting while the queue is full. Once `shutdown` has
    /// fired it waits until the stop's deadline at most: the job is a
    /// claimed run, and the workers keep draining the queue while the beat
    /// stops. Returns the job if it could not be queued.
    pub(crate) fn push(&self, job: Job, shutdown: &Shutdown) -> Result<(), Box<Job>> {
        // Past the deadline the stop drains the queue: a job queued then
        // would be neither run nor counted.
        if shutdown.deadline().is_some_and(|d| Instant::now() >= d) {
            return Err(Box::new(job));
        }
        let pushed = self.send(job, shutdown);
        // A send that ended as the stop drained the queue: the job is
        // abandoned here (the flag is set before the stop's drain, and read
        // after this send, so one of the two drains sees it).
        if pushed.is_ok() && self.abandon.started() {
            self.abandon.drain();
        }
        pushed
    }

    fn send(&self, job: Job, shutdown: &Shutdown) -> Result<(), Box<Job>> {
        let job = match self.jobs.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(job)) => return Err(Box::new(job)),
            Err(TrySendError::Full(job)) => job,
        };
        if shutdown.deadline().is_none() {
            select! {
                send(self.jobs, job.clone()) -> sent => {
                    return sent.map_err(|e| Box::new(e.into_inner()));
                }
                recv(shutdown.receiver()) -> _ => {}
            }
        }
        let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
        self.jobs
            .send_deadline(job, deadline)
            .map_err(|e| Box::new(e.into_inner()))
    }
}
