//! One due run, from the claim to its hand-over.
//!
//! The scheduler claims due rows in a transaction (`scheduler::claim`)
//! and hands each to [`Dispatcher::fire`], which takes the first three
//! steps of the path of a run, each in its own function:
//!
//! 1. **route** ([`Router::check`]): the row's schedule, kwargs and options
//!    are valid, and its task runs in-process (registered here) or on a
//!    Celery worker (a broker is configured); otherwise the row is invalid;
//! 2. **decide** (`decide`): the misfire policy, a previous run still
//!    going, and the advance (`last_run_at`, `next_run_at`);
//! 3. **record** (`record`): the run's row in `routine_runs`.
//!
//! The scheduler then **publishes** the Celery messages
//! ([`Dispatcher::publish`], inside the claim, so that a failed publish
//! rolls it back and the rows stay due), writes the records and the
//! advances, commits, and **hands over** ([`Dispatcher::hand_over`]): the
//! in-process runs go to the worker queue.
//!
//! A run on demand (`on_demand`: `beat send`, the dashboard's "Run now",
//! `BeatHandle::send_now`) takes the same steps but decide, and leaves its
//! row's schedule as it is.

use crate::broker::{Broker, BrokerError, Delivery, Message};
use crate::clock::Clock;
use crate::metrics::{Counted, Counts, Metrics, Target};
use crate::routine::Invalid;
use crate::schedule::MisfirePolicy;
use crate::shutdown::Shutdown;
use crate::store::{NewRun, Plan, RoutineRow, RunOutcome};
use crate::worker::{InFlight, Job, JobQueue, RunEvent};
use chrono::{DateTime, Utc};
use crossbeam_channel::Sender;
use decide::Verdict;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

mod decide;
mod notes;
mod on_demand;
mod record;
mod route;

pub(crate) use decide::advance;
pub(crate) use notes::Note;
pub(crate) use record::Touched;
use route::Outgoing;
pub(crate) use route::Router;

/// A claimed row's fate.
pub(crate) enum Fate {
    /// Queue this job after commit.
    Run(Job),
    /// Published to the broker within the transaction (for this due time).
    Sent(Message),
    /// The broker cannot take its message where it goes (RabbitMQ: the
    /// exchange does not exist), for this reason: the routine moves on, as
    /// Celery's beat does after a failed send, with the reason as its
    /// `last_error`.
    Refused(String),
    /// Its previous run is still going.
    Skip,
    /// Missed by more than its grace time, under the skip policy.
    Missed,
    /// The row is invalid.
    Invalid,
}

/// One claimed row, decided: its advance (written in the claim), its
/// outcome, and its record in `routine_runs` (written in the claim too).
pub(crate) struct Fired {
    pub(crate) plan: Plan,
    pub(crate) outcome: Outcome,
    pub(crate) run: Option<NewRun>,
}

/// What a claimed row comes to, carried out of its claim: its fate, and
/// what is worth a log line once the claim has committed.
pub(crate) struct Outcome {
    routine: String,
    /// The task and where it goes, for the metrics.
    task: String,
    target: Target,
    /// When it was to be dispatched (its due time, or later by a jitter):
    /// how late it is counts from here.
    dispatch_at: DateTime<Utc>,
    pub(crate) fate: Fate,
    notes: Vec<Note>,
}

/// Everything a due run needs besides its row.
pub(crate) struct Dispatcher {
    pub(crate) router: Router,
    /// Where Celery messages go (none without `broker_url`).
    pub(crate) broker: Option<Arc<Broker>>,
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

impl Dispatcher {
    /// A claimed row's run at `now`: routed, decided and recorded (see the
    /// module). A routine in `busy` has a run going on another beat.
    pub(crate) fn fire(
        &self,
        row: &RoutineRow,
        now: DateTime<Utc>,
        busy: &HashSet<String>,
    ) -> Fired {
        // Claimed rows are due, so next_run_at is set; `now` is a safe stand-in.
        let due = row.next_due_at_utc().unwrap_or(now);
        let checked = match self.router.check(row) {
            Ok((checked, _)) => checked,
            Err(reason) => return Fired::invalid(row, reason),
        };
        let decision = self.decide(row, &checked, (due, now), busy);
        let id = crate::broker::message::task_id(&row.id, due);
        let (fate, error) = match decision.verdict {
            Verdict::Missed(why) => (Fate::Missed, Some(why)),
            Verdict::Overlap(why) => (Fate::Skip, Some(why.to_owned())),
            Verdict::Go => match self.router.outgoing(row, &checked, due, &id, now) {
                Outgoing::Local(job) => (Fate::Run(job), None),
                Outgoing::Celery(message) => (Fate::Sent(message), None),
            },
        };
        let run = self.record(row, (due, &id), checked.send.is_none(), (&fate, error));
        Fired {
            plan: decision.plan,
            outcome: Outcome {
                routine: row.name.clone(),
                task: row.task.clone(),
                target: Target::of(checked.send.is_none()),
                dispatch_at: row.next_run_at_utc().unwrap_or(due),
                fate,
                notes: decision.notes,
            },
            run,
        }
    }

    /// Publishes the Celery messages among `outcomes` on claimer
    /// `claimer`'s connection (`None`: runs on demand, on a connection of
    /// their own). Inside a claim: if this fails, the claim rolls back. A
    /// message the broker refuses turns its outcome into
    /// [`Fate::Refused`], and its record (among `runs`) into a failure.
    pub(crate) fn publish(
        &self,
        claimer: Option<usize>,
        outcomes: &mut [Outcome],
        runs: &mut [NewRun],
    ) -> Result<(), BrokerError> {
        let sent: Vec<(&str, &Message, DateTime<Utc>)> = outcomes
            .iter()
            .filter_map(|o| match &o.fate {
                Fate::Sent(message) => Some((o.routine.as_str(), message, o.dispatch_at)),
                _ => None,
            })
            .collect();
        // Router::check sends nothing to Celery without a broker.
        let (Some(broker), false) = (&self.broker, sent.is_empty()) else {
            return Ok(());
        };
        let messages: Vec<&Message> = sent.iter().map(|(_, m, _)| *m).collect();
        let delivered = match claimer {
            Some(claimer) => broker.publish(claimer, &messages)?,
            None => broker.publish_on_demand(&messages)?,
        };
        if claimer.is_some() {
            // A due run's lateness ends here (the worker queue's, at its push).
            let published_at = self.clock.now();
            for (_, _, dispatch_at) in &sent {
                let late = (published_at - *dispatch_at).to_std();
                self.metrics.record_lateness(late.unwrap_or_default());
            }
        }
        log_deliveries(&sent, &delivered);
        let refused: Vec<(String, String)> = sent
            .iter()
            .zip(delivered)
            .filter_map(|((_, message, _), delivery)| match delivery {
                Delivery::Refused(reason) => Some((message.id.clone(), reason)),
                _ => None,
            })
            .collect();
        for (id, reason) in refused {
            refuse(outcomes, runs, &id, reason);
        }
        Ok(())
    }

    /// The claim that published these outcomes' messages did not commit:
    /// the broker is told, so that claiming them again does not publish
    /// them twice (see [`Broker::not_committed`]).
    pub(crate) fn not_committed(&self, outcomes: &[Outcome]) {
        if let Some(broker) = &self.broker {
            broker.not_committed(outcomes.iter().filter_map(|o| match &o.fate {
                Fate::Sent(message) => Some(message),
                _ => None,
            }));
        }
    }

    /// After the claim committed: says what is worth saying, queues the
    /// in-process runs and counts every fate.
    pub(crate) fn hand_over(&self, outcomes: Vec<Outcome>) -> Counts {
        let mut counts = Counts::default();
        let mut by_task: Vec<(String, Target, Counted)> = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            for note in &outcome.notes {
                note.log(&outcome.routine);
            }
            let counted = match outcome.fate {
                Fate::Run(job) => {
                    if self.queue(job, outcome.dispatch_at) {
                        counts.fired += 1;
                        Counted::Dispatched
                    } else {
                        counts.abandoned += 1;
                        Counted::Abandoned
                    }
                }
                Fate::Sent(..) => {
                    counts.fired += 1;
                    Counted::Dispatched
                }
                Fate::Refused(reason) => {
                    log::error!(
                        "routine {}: not sent: {reason}; it moves on to its next run",
                        outcome.routine
                    );
                    counts.refused += 1;
                    Counted::Refused
                }
                Fate::Skip => {
                    counts.skipped += 1;
                    Counted::Skipped
                }
                Fate::Missed => {
                    counts.missed += 1;
                    Counted::Missed
                }
                Fate::Invalid => {
                    counts.invalid += 1;
                    Counted::Invalid
                }
            };
            by_task.push((outcome.task, outcome.target, counted));
        }
        self.metrics
            .count_many(by_task.iter().map(|(t, g, o)| (t.as_str(), *g, *o)), 1);
        counts
    }

    /// Queues a run for the workers, to be dispatched at `dispatch_at`;
    /// returns whether it was queued.
    fn queue(&self, job: Job, dispatch_at: DateTime<Utc>) -> bool {
        let scheduled = job.scheduled;
        if scheduled {
            self.in_flight.try_mark(&job.ctx.routine_id);
        }
        match self.queue.push(job, &self.shutdown) {
            Ok(()) => {
                if scheduled {
                    let lateness = (self.clock.now() - dispatch_at)
                        .to_std()
                        .unwrap_or_default();
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
}

impl Outcome {
    /// Why the broker refused this run's message, if it did.
    pub(crate) fn refused(&self) -> Option<&str> {
        match &self.fate {
            Fate::Refused(reason) => Some(reason),
            _ => None,
        }
    }
}

impl Fired {
    /// An invalid row's claim: no run, and the reason as its error.
    fn invalid(row: &RoutineRow, reason: Invalid) -> Self {
        let mut plan = Plan::keep(row);
        plan.last_error = Some(reason.to_string());
        Fired {
            plan,
            outcome: Outcome {
                routine: row.name.clone(),
                task: row.task.clone(),
                target: Target::Unrouted,
                dispatch_at: DateTime::<Utc>::MIN_UTC,
                fate: Fate::Invalid,
                notes: vec![Note::Invalid(reason)],
            },
            run: None,
        }
    }
}

/// The run of task `id` among `outcomes` and `runs` was refused by the
/// broker, for `reason`.
fn refuse(outcomes: &mut [Outcome], runs: &mut [NewRun], id: &str, reason: String) {
    if let Some(run) = runs.iter_mut().find(|run| run.task_id == id) {
        run.outcome = RunOutcome::Failed;
        run.error = Some(reason.clone());
    }
    let refused = outcomes
        .iter_mut()
        .find(|o| matches!(&o.fate, Fate::Sent(message) if message.id == id));
    if let Some(outcome) = refused {
        outcome.fate = Fate::Refused(reason);
    }
}

/// Says what became of each published message (a refusal is said after
/// the claim, once it stands).
fn log_deliveries(sent: &[(&str, &Message, DateTime<Utc>)], delivered: &[Delivery]) {
    for ((routine, message, _), delivery) in sent.iter().zip(delivered) {
        match delivery {
            Delivery::To(0) => log::error!(
                "routine {routine}: no queue is bound to {:?}: Celery would drop message {} too",
                message.destination,
                message.id
            ),
            Delivery::To(_) => log::debug!(
                "routine {routine}: sent {} as task {}",
                message.task,
                message.id
            ),
            Delivery::Before => log::info!(
                "routine {routine}: task {} was already published (by an earlier attempt at this run); not published twice",
                message.id
            ),
            Delivery::Refused(_) => {}
        }
    }
}
