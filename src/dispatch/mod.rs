//! One due run, from the claim to its hand-over.
//!
//! The scheduler claims due rows in a transaction and hands each to
//! [`Dispatcher::fire`]; this module is the whole path of a run, in order:
//!
//! 1. **route** ([`Router::check`]): the row's schedule, kwargs and options
//!    are valid, and its task runs in-process (registered here) or on a
//!    Celery worker (a broker is configured); otherwise the row is invalid;
//! 2. **decide** ([`Dispatcher::fire`]): the misfire policy, a previous
//!    run still going, and the advance (`last_run_at`, `next_run_at`);
//! 3. **publish** ([`Dispatcher::publish`]): Celery messages are pushed to
//!    Redis inside the claim's transaction, so a failed push rolls the
//!    claim back and the rows stay due;
//! 4. **queue** ([`Dispatcher::hand_over`]): after the commit, in-process
//!    runs go to the worker queue.
//!
//! On-demand runs ([`Dispatcher::send_now`]) take steps 1, 3 and 4, and
//! leave the row as it is.

use crate::celery::{self, Message, Publisher, Pushed};
use crate::clock::Clock;
use crate::error::Error;
use crate::metrics::{Counts, Metrics, RunOutcome, Target};
use crate::routine::RoutineError;
use crate::schedule::MisfirePolicy;
use crate::shutdown::Shutdown;
use crate::store::{NewRun, Plan, RoutineRow, RoutineStore};
use crate::worker::{InFlight, Job, JobQueue, RunEvent};
use chrono::{DateTime, Utc};
use crossbeam_channel::Sender;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod route;

use route::Outgoing;
pub(crate) use route::{storable, Router};

/// A claimed row's fate, decided inside the claim transaction.
pub(crate) enum Fate {
    /// Queue this job after commit.
    Run(Job),
    /// Published to the broker within the transaction (for this due time).
    Sent(Message, DateTime<Utc>),
    /// Its previous run is still going.
    Skip,
    /// Missed by more than its grace time, under the skip policy.
    Missed,
    /// The row is invalid.
    Invalid,
}

/// One claimed row, decided: its advance (written in the claim), its fate,
/// and what is worth a log line once the claim has committed. A claim that
/// rolls back (the broker is away) is tried again, and must not fill the
/// log with the same lines at every try.
pub(crate) struct Fired {
    pub(crate) plan: Plan,
    pub(crate) outcome: Outcome,
    /// Its record in `routine_runs`, written in the same transaction.
    pub(crate) run: Option<NewRun>,
}

/// What a claimed row comes to, carried out of its claim.
pub(crate) struct Outcome {
    routine: String,
    /// The task and where it goes, for the metrics.
    task: String,
    target: Target,
    pub(crate) fate: Fate,
    notes: Vec<Note>,
}

impl Outcome {
    /// `row`'s outcome before anything is decided: invalid, not routed.
    fn of(row: &RoutineRow) -> Self {
        Outcome {
            routine: row.name.clone(),
            task: row.task.clone(),
            target: Target::Unrouted,
            fate: Fate::Invalid,
            notes: Vec::new(),
        }
    }
}

/// Something to say about a run.
enum Note {
    Invalid(String),
    Missed {
        due: DateTime<Utc>,
        late: Duration,
        grace: Duration,
        next: Option<DateTime<Utc>>,
    },
    CaughtUp {
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    },
    /// The previous run is still going: here, or (`true`) on another beat.
    Overlap(DateTime<Utc>, bool),
    Last(DateTime<Utc>),
    /// The next run is later than the table can hold.
    Unstorable(String),
}

impl Note {
    fn log(&self, routine: &str) {
        let next = |t: &Option<DateTime<Utc>>| t.map_or("never".to_owned(), |t| t.to_string());
        match self {
            Note::Invalid(reason) | Note::Unstorable(reason) => log::error!(
                "routine {routine}: {reason}; it will not run until its row is fixed"
            ),
            Note::Missed {
                due,
                late,
                grace,
                next: n,
            } => log::warn!(
                "routine {routine}: skipped the run due {due}, {late:.1?} late (misfire grace time {grace:?}, policy skip); next at {}",
                next(n)
            ),
            Note::CaughtUp { due, next: n } => log::warn!(
                "routine {routine}: was due at {due}, missed later due times; firing once now, next at {}",
                next(n)
            ),
            Note::Overlap(due, false) => log::warn!(
                "routine {routine}: previous run still queued or running; skipping the run due {due}"
            ),
            Note::Overlap(due, true) => log::warn!(
                "routine {routine}: previous run still going on another beat; skipping the run due {due}"
            ),
            Note::Last(now) => log::warn!(
                "routine {routine}: schedule has no run after {now}; this was its last"
            ),
        }
    }
}

/// Everything a due run needs besides its row.
pub(crate) struct Dispatcher {
    pub(crate) router: Router,
    /// One broker connection per claimer (none without `broker_url`).
    pub(crate) publishers: Vec<Mutex<Publisher>>,
    /// On-demand sends use a connection of their own, so that they never
    /// wait on (or disturb) the claimers'.
    pub(crate) on_demand: Option<Mutex<Publisher>>,
    pub(crate) queue: JobQueue,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The configured misfire policy and grace time (a routine may set its own).
    pub(crate) misfire: (MisfirePolicy, Duration),
    pub(crate) shutdown: Shutdown,
    /// Whether every dispatch is recorded (`history`); without it only
    /// in-process runs are, while they last, so that no beat overlaps them.
    pub(crate) history: bool,
    /// Where the ends of runs that never reached a worker are reported.
    pub(crate) events: Sender<RunEvent>,
    /// Routines with new records, for the pruning by count.
    pub(crate) touched: Arc<Touched>,
}

/// Routines with runs recorded since the pruning last looked at them.
/// Bounded: past `TOUCHED_CAPACITY` ids, more are not noted (the pruning by
/// age still bounds their history).
#[derive(Debug, Default)]
pub(crate) struct Touched {
    ids: Mutex<HashSet<String>>,
}

const TOUCHED_CAPACITY: usize = 100_000;

impl Touched {
    pub(crate) fn note<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut set = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if set.len() >= TOUCHED_CAPACITY {
                break;
            }
            if !set.contains(id) {
                set.insert(id.to_owned());
            }
        }
    }

    /// Up to `n` of the noted ids, forgetting them.
    pub(crate) fn take(&self, n: usize) -> Vec<String> {
        let mut set = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<String> = set.iter().take(n).cloned().collect();
        for id in &taken {
            set.remove(id);
        }
        taken
    }
}

/// Where a run goes, as `routine_runs.target` says.
const LOCAL: &str = "local";
const CELERY: &str = "celery";

impl Dispatcher {
    /// Decides a claimed row's run at `now`, and its advance.
    ///
    /// The row fires once for the due time it was claimed at, however late
    /// (the beat was stopped, the database away): the next run is then the
    /// first one after `now`, skipping the missed ones, as Celery's beat
    /// does. `last_run_at` records the due time, or `now` when due times
    /// were skipped (so that it says when the routine really last ran).
    /// A routine in `busy` has a run going on another beat.
    pub(crate) fn fire(
        &self,
        row: &RoutineRow,
        now: DateTime<Utc>,
        busy: &HashSet<String>,
    ) -> Fired {
        let mut plan = Plan::keep(row);
        let mut out = Outcome::of(row);
        // Claimed rows are due, so next_run_at is set; `now` is a safe stand-in.
        let due = row.next_run_at_utc().unwrap_or(now);
        let checked = match self.router.check(row) {
            Ok((checked, _)) => checked,
            Err(reason) => {
                out.notes.push(Note::Invalid(reason.clone()));
                plan.last_error = Some(reason);
                return Fired {
                    plan,
                    outcome: out,
                    run: None,
                };
            }
        };
        let local = checked.send.is_none();
        out.target = match local {
            true => Target::InProcess,
            false => Target::Celery,
        };
        let id = celery::message::task_id(&row.id, due);
        let record = |outcome: &'static str, error: Option<String>| {
            NewRun::of(
                row,
                due,
                &id,
                if local { LOCAL } else { CELERY },
                outcome,
                error,
            )
        };
        let on_time = checked
            .schedule
            .next_after(due)
            .is_some_and(|next| next > now);
        match storable(checked.schedule.next_after_catching_up(due, now)) {
            Ok(next) => plan.next_run_at = next,
            Err(reason) => {
                // This run still happens; the row then waits for an edit.
                out.notes.push(Note::Unstorable(reason.clone()));
                plan.last_error = Some(reason);
            }
        }
        let next = plan.next_run_at;
        let policy = checked.misfire.policy.unwrap_or(self.misfire.0);
        let grace = checked.misfire.grace_time.unwrap_or(self.misfire.1);
        let late = (now - due).to_std().unwrap_or_default();
        if late > grace && policy == MisfirePolicy::Skip {
            out.notes.push(Note::Missed {
                due,
                late,
                grace,
                next,
            });
            out.fate = Fate::Missed;
            let why = format!("{late:.1?} late (misfire grace time {grace:?}, policy skip)");
            let run = self.history.then(|| record("missed", Some(why)));
            return Fired {
                plan,
                outcome: out,
                run,
            };
        }
        if next.is_none() && plan.last_error.is_none() {
            out.notes.push(Note::Last(now));
        }
        if !on_time {
            out.notes.push(Note::CaughtUp { due, next });
        }
        if local && (self.in_flight.contains(&row.id) || busy.contains(&row.id)) {
            let elsewhere = !self.in_flight.contains(&row.id);
            out.notes.push(Note::Overlap(due, elsewhere));
            out.fate = Fate::Skip;
            let why = match elsewhere {
                true => "its previous run was still going on another beat",
                false => "its previous run was still queued or running",
            };
            let run = self
                .history
                .then(|| record("skipped", Some(why.to_owned())));
            return Fired {
                plan,
                outcome: out,
                run,
            };
        }
        plan.fired = 1;
        plan.last_run_at = Some(if on_time { due } else { now });
        let (fate, run) = match self.router.outgoing(row, &checked, due, &id, now) {
            Outgoing::Local(job) => (Fate::Run(job), Some(record("queued", None))),
            Outgoing::Celery(message) => (
                Fate::Sent(message, due),
                self.history.then(|| record("published", None)),
            ),
        };
        out.fate = fate;
        Fired {
            plan,
            outcome: out,
            run,
        }
    }

    /// Decides the run `beat send` asked for (`run_requested_at`), in the
    /// transaction that plans its row: it runs now, outside its schedule,
    /// with a fresh task id. Its record is returned whatever happens (a
    /// routine that cannot run records a failed run, so that the operator
    /// who asked sees why).
    pub(crate) fn requested(&self, row: &RoutineRow, now: DateTime<Utc>) -> (Outcome, NewRun) {
        let mut out = Outcome::of(row);
        let id = uuid::Uuid::new_v4().to_string();
        let mut run = NewRun::of(row, now, &id, LOCAL, "failed", None);
        run.on_demand = 1;
        match self.router.check(row) {
            Err(reason) => run.error = Some(format!("cannot run: {reason}")),
            Ok((checked, _)) => match self.router.outgoing(row, &checked, now, &id, now) {
                Outgoing::Local(mut job) => {
                    job.scheduled = false;
                    job.recorded = self.history;
                    out.fate = Fate::Run(job);
                    run.outcome = "queued";
                }
                Outgoing::Celery(message) => {
                    out.fate = Fate::Sent(message, now);
                    run.target = CELERY;
                    run.outcome = "published";
                }
            },
        }
        log::info!("routine {}: run requested; task {id}", row.name);
        (out, run)
    }

    /// Publishes the claimed rows' Celery messages, inside the claim
    /// transaction: if this fails, the claim rolls back. `claimer` picks
    /// the connection.
    pub(crate) fn publish(&self, claimer: usize, outcomes: &[Outcome]) -> Result<(), Error> {
        let messages: Vec<(&str, &Message)> = outcomes
            .iter()
            .filter_map(|o| match &o.fate {
                Fate::Sent(message, _) => Some((o.routine.as_str(), message)),
                _ => None,
            })
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        let Some(publisher) = self.publishers.get(claimer) else {
            // Router::check sends nothing to Celery without a broker.
            return Ok(());
        };
        let only: Vec<&Message> = messages.iter().map(|(_, m)| *m).collect();
        let delivered = publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .publish(&only)?;
        let published_at = self.clock.now();
        for outcome in outcomes {
            if let Fate::Sent(_, due) = &outcome.fate {
                self.metrics
                    .record_lateness((published_at - *due).to_std().unwrap_or_default());
            }
        }
        for ((routine, message), pushed) in messages.iter().zip(delivered) {
            match pushed {
                Pushed::To(0) => log::error!(
                    "routine {routine}: no queue is bound to {:?}: Celery would drop message {} too",
                    message.destination,
                    message.id
                ),
                Pushed::To(_) => log::debug!(
                    "routine {routine}: sent {} as task {}",
                    message.task,
                    message.id
                ),
                Pushed::Before => log::info!(
                    "routine {routine}: task {} was already pushed to Redis (by an earlier attempt at this run); not pushed twice",
                    message.id
                ),
            }
        }
        Ok(())
    }

    /// After the claim committed: says what is worth saying, queues the
    /// in-process runs and counts every fate.
    pub(crate) fn hand_over(&self, outcomes: Vec<Outcome>) -> Counts {
        let mut counts = Counts::default();
        let mut by_task: Vec<(String, Target, RunOutcome)> = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            for note in &outcome.notes {
                note.log(&outcome.routine);
            }
            let counted = match outcome.fate {
                Fate::Run(job) => {
                    if self.queue(job) {
                        counts.fired += 1;
                        RunOutcome::Dispatched
                    } else {
                        counts.abandoned += 1;
                        RunOutcome::Abandoned
                    }
                }
                Fate::Sent(..) => {
                    counts.fired += 1;
                    RunOutcome::Dispatched
                }
                Fate::Skip => {
                    counts.skipped += 1;
                    RunOutcome::Skipped
                }
                Fate::Missed => {
                    counts.missed += 1;
                    RunOutcome::Missed
                }
                Fate::Invalid => {
                    counts.invalid += 1;
                    RunOutcome::Invalid
                }
            };
            by_task.push((outcome.task, outcome.target, counted));
        }
        self.metrics
            .count_many(by_task.iter().map(|(t, g, o)| (t.as_str(), *g, *o)), 1);
        counts
    }

    /// After the plan that dispatched them committed: queues the runs
    /// `beat send` asked for.
    pub(crate) fn hand_over_requested(&self, outcomes: Vec<Outcome>) {
        for outcome in outcomes {
            if let Fate::Run(job) = outcome.fate {
                self.queue(job);
            }
        }
    }

    /// Queues a claimed run for the workers; returns whether it was queued.
    fn queue(&self, job: Job) -> bool {
        let scheduled = job.scheduled;
        if scheduled {
            self.in_flight.try_mark(&job.ctx.routine_id);
        }
        let due = job.ctx.scheduled_at;
        match self.queue.push(job, &self.shutdown) {
            Ok(()) => {
                if scheduled {
                    let lateness = (self.clock.now() - due).to_std().unwrap_or_default();
                    self.metrics.record_lateness(lateness);
                }
                true
            }
            Err(job) => {
                log::warn!(
                    "routine {}: run due {} abandoned at stop: no worker was free before the deadline",
                    job.ctx.routine,
                    job.ctx.scheduled_at
                );
                if job.scheduled {
                    self.in_flight.release(&job.ctx.routine_id);
                }
                if job.recorded {
                    let _ = self
                        .events
                        .send(RunEvent::abandoned(&job, self.clock.now()));
                }
                false
            }
        }
    }

    /// Runs `row`'s task now, outside its schedule, with a fresh task id:
    /// in-process, or as a Celery message. The row is not advanced; the run
    /// is recorded in `store` (with `history`) under `beat_id`.
    pub(crate) fn send_now(
        &self,
        row: &RoutineRow,
        store: &RoutineStore,
        beat_id: &str,
    ) -> Result<String, Error> {
        let name = row.name.as_str();
        let (checked, _) = self
            .router
            .check(row)
            .map_err(|reason| RoutineError::new(name, reason))?;
        let now = self.clock.now();
        let id = uuid::Uuid::new_v4().to_string();
        let mut run = NewRun::of(row, now, &id, LOCAL, "queued", None);
        run.on_demand = 1;
        match self.router.outgoing(row, &checked, now, &id, now) {
            Outgoing::Local(mut job) => {
                job.scheduled = false;
                job.recorded = self.history;
                if self.history {
                    store.record_runs(&[run], now, Some(beat_id))?;
                    self.touched.note([row.id.as_str()]);
                }
                self.queue.push(job, &self.shutdown).map_err(|job| {
                    if job.recorded {
                        let _ = self.events.send(RunEvent::abandoned(&job, now));
                    }
                    RoutineError::new(name, "the beat is stopping")
                })?;
            }
            Outgoing::Celery(message) => {
                let publisher = self
                    .on_demand
                    .as_ref()
                    .ok_or_else(|| RoutineError::new(name, "no broker configured"))?;
                publisher
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .publish(&[&message])?;
                if self.history {
                    run.target = CELERY;
                    run.outcome = "published";
                    store.record_runs(&[run], now, Some(beat_id))?;
                    self.touched.note([row.id.as_str()]);
                }
            }
        }
        log::info!("routine {name}: sent on demand as task {id}");
        Ok(id)
    }
}
