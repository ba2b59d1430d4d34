//! One worker thread: runs in-process tasks (async ones on its own
//! current-thread tokio runtime), catches their panics, and hands failed
//! runs to the retry timer.

use super::{Abandon, Happened, InFlight, Job, Reporter, RetryPolicy, Running};
use crate::metrics::{Counted, Metrics, Target};
use crate::task::{Registered, TaskRegistry};
use crossbeam_channel::{Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

/// One worker thread: runs the jobs it takes from the queue, one at a
/// time, and hands a failed run to the retry timer.
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) running: Arc<Running>,
    pub(super) jobs: Receiver<Job>,
    pub(super) retries: Sender<(Instant, Job)>,
    pub(super) registry: Arc<TaskRegistry>,
    pub(super) retry: RetryPolicy,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) abandon: Arc<Abandon>,
    pub(super) exited: Sender<()>,
    pub(super) reporter: Reporter,
}

impl Worker {
    /// The thread's loop: runs jobs until the queue is closed and empty;
    /// past a stop's deadline, abandons them instead.
    pub(super) fn run(self) {
        let mut runtime = None;
        for job in self.jobs.iter() {
            if self.abandon.started() {
                self.abandon.job(&job);
                continue;
            }
            self.set_running(Some((job.ctx.routine.clone(), job.ctx.scheduled_at)));
            self.run_job(job, &mut runtime);
            self.set_running(None);
        }
        let _ = self.exited.send(());
    }

    fn set_running(&self, run: Option<(String, chrono::DateTime<chrono::Utc>)>) {
        if let Some(slot) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(self.index)
        {
            *slot = run;
        }
    }

    fn run_job(&self, job: Job, runtime: &mut Option<tokio::runtime::Runtime>) {
        self.reporter.report(&job, Happened::Started);
        let ctx = &job.ctx;
        let outcome = match self.registry.get(&ctx.task) {
            None => Err(format!("task {} is not registered", ctx.task)),
            Some(Registered::Sync(task)) => {
                let task = Arc::clone(task);
                catch_unwind(AssertUnwindSafe(|| task.run(ctx)))
                    .map_err(panic_message)
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Some(Registered::Async(task)) => {
                let task = Arc::clone(task);
                match runtime_for(runtime) {
                    Err(e) => Err(format!("cannot start a tokio runtime: {e}")),
                    Ok(rt) => {
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            rt.block_on(task.run_boxed(ctx.clone()))
                        }));
                        if result.is_err() {
                            // A panic may leave the runtime's tasks in any
                            // state: the next run gets a fresh one.
                            *runtime = None;
                        }
                        result
                            .map_err(panic_message)
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    }
                }
            }
        };
        match outcome {
            Ok(()) => {
                log::debug!("routine {}: task {} succeeded", ctx.routine, ctx.task);
                // Released before counted: whoever sees the count may fire
                // again. Recorded before released: another beat learns of
                // the end from the record.
                self.reporter.report(&job, Happened::Succeeded);
                self.in_flight.end(&job);
                Metrics::bump(&self.metrics.succeeded);
                self.metrics
                    .count_runs(&ctx.task, Target::InProcess, Counted::Succeeded, 1);
            }
            Err(reason) => self.failed(job, reason),
        }
    }

    fn failed(&self, mut job: Job, reason: String) {
        Metrics::bump(&self.metrics.failed);
        let ctx = &job.ctx;
        self.metrics
            .count_runs(&ctx.task, Target::InProcess, Counted::Failed, 1);
        if ctx.attempt >= self.retry.max_retries {
            Metrics::bump(&self.metrics.gave_up);
            self.metrics
                .count_runs(&ctx.task, Target::InProcess, Counted::GaveUp, 1);
            log::error!(
                "routine {}: task {} failed (attempt {} of {}), giving up: {reason}",
                ctx.routine,
                ctx.task,
                ctx.attempt + 1,
                self.retry.max_retries + 1
            );
            self.reporter.report(&job, Happened::Failed(reason));
            self.in_flight.end(&job);
            return;
        }
        log::warn!(
            "routine {}: task {} failed (attempt {} of {}), retrying in {:?}: {reason}",
            ctx.routine,
            ctx.task,
            ctx.attempt + 1,
            self.retry.max_retries + 1,
            self.retry.delay
        );
        self.reporter.report(&job, Happened::Retrying(reason));
        job.ctx.attempt += 1;
        if let Err(e) = self.retries.send((Instant::now() + self.retry.delay, job)) {
            // The timer is gone: the beat is stopping.
            let job = e.into_inner().1;
            self.reporter.report(&job, Happened::Abandoned);
            self.in_flight.end(&job);
        }
    }
}

fn runtime_for(
    slot: &mut Option<tokio::runtime::Runtime>,
) -> std::io::Result<&tokio::runtime::Runtime> {
    if slot.is_none() {
        *slot = Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
    }
    // Just filled above.
    slot.as_ref()
        .ok_or_else(|| std::io::Error::other("runtime missing"))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("panicked: {text}")
}
