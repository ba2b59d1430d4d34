//! Backfill (`beat backfill`): a routine's past due times that have no
//! run in the history, dispatched once each, as the schedule would have
//! dispatched them.
//!
//! A backfilled run is the scheduled run it stands for: the same task id
//! (`message::task_id` of the routine and the due time), so a Celery
//! worker that deduplicates by id sees nothing new, and on Redis the same
//! due second, so the broker's own memory of published runs stops a
//! repeat too. Its record says `backfill`, and the routine's row is left
//! as it is: `last_run_at`, `total_run_count` and `next_run_at` stay the
//! schedule's.
//!
//! The beats and a backfill never dispatch the same due time: a backfill
//! takes only due times strictly before the routine's next planned one
//! (the beats' from there on) and not after now. Each batch is checked,
//! published and recorded in one write transaction that locks the
//! routine's row, so two backfills of a routine take turns, and the
//! second finds the first's records.

use super::Operator;
use crate::broker::{self, Delivery, Message};
use crate::dispatch::Router;
use crate::error::Error;
use crate::metrics::Target;
use crate::routine::RoutineError;
use crate::schedule::{Next, Timing};
use crate::store::{NewRun, RoutineRow, RunOutcome};
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashSet;

/// The most due times one backfill dispatches (a longer range is refused:
/// split it).
pub const BACKFILL_LIMIT: usize = 10_000;

/// Due times checked, published and recorded per transaction: the
/// routine's row is locked (on SQLite, the database) for as long as one
/// batch takes, which a beat's claim of the routine waits out.
const BATCH: usize = 500;

/// Where a backfill's range was cut short of what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// Before the routine's next planned due time: the beats dispatch that
    /// one and those after it.
    NextDue(DateTime<Utc>),
    /// At now: later due times are the schedule's to come.
    Now(DateTime<Utc>),
}

impl Cut {
    /// The instant the range was cut at.
    pub fn at(self) -> DateTime<Utc> {
        match self {
            Cut::NextDue(t) | Cut::Now(t) => t,
        }
    }
}

/// One due time a backfill dispatched (or, dry, would dispatch).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackfillRun {
    /// The due time it stands for.
    pub due_at: DateTime<Utc>,
    /// Its Celery task id: the scheduled run's.
    pub task_id: String,
}

/// What a backfill did (or, dry, would do).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Backfilled {
    /// The routine's name.
    pub routine: String,
    /// The range asked for.
    pub from: DateTime<Utc>,
    /// The range asked for (included).
    pub to: DateTime<Utc>,
    /// Where the range was cut short, if it was.
    pub cut: Option<Cut>,
    /// The due times in the range (as cut).
    pub due: usize,
    /// How many of them had run (a dispatch in the history).
    pub already_run: usize,
    /// The due times dispatched (dry: to dispatch), earliest first.
    pub runs: Vec<BackfillRun>,
    /// Nothing was sent: `runs` is a preview.
    pub dry_run: bool,
}

impl Operator {
    /// Dispatches, once each, the due times of the routine called `name`
    /// from `from` to `to` (both included) that have no dispatch in the
    /// run history, as of `now`: published to Celery from this process
    /// with the task ids the scheduled runs would have had, and recorded
    /// as backfill. With `dry_run`, only says which. The routine's row is
    /// not changed. See the module for what is taken and why.
    ///
    /// Refused: a range that ends before it starts or holds more than
    /// [`BACKFILL_LIMIT`] due times, the history off, a routine whose task
    /// runs in-process on the beats, an invalid routine, and (unless dry)
    /// no `broker_url`.
    pub fn backfill(
        &self,
        name: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Backfilled, Error> {
        let refuse = |reason: String| Error::from(RoutineError::new(name, reason));
        if to < from {
            return Err(refuse(format!(
                "cannot backfill: the range ends ({}) before it starts ({})",
                utc(to),
                utc(from)
            )));
        }
        if !self.config.history {
            return Err(refuse(
                "cannot backfill with the history off (history = false): the due times that \
                 ran are found in the run history"
                    .to_owned(),
            ));
        }
        let row = self.existing(name)?;
        if let Some(beat) = self
            .beats()?
            .into_iter()
            .find(|b| b.tasks.contains(&row.task))
        {
            return Err(refuse(format!(
                "cannot backfill: its task {:?} runs in-process on the beats (beat {} on {}); \
                 backfill publishes Celery tasks only",
                row.task, beat.id, beat.host
            )));
        }
        // Every task left is a Celery task: checked as a beat with a
        // broker checks it (schedule, kwargs, args, options).
        let router = Router::for_tasks(Vec::<String>::new(), true, self.zone);
        let (checked, _) = router
            .check(&row)
            .map_err(|e| refuse(format!("cannot backfill: {e}")))?;
        let (due, cut) = due_times(&row, &checked.timing, (from, to), now)
            .map_err(|reason| refuse(format!("cannot backfill: {reason}")))?;
        let mut done = Backfilled {
            routine: row.name.clone(),
            from,
            to,
            cut,
            due: due.len(),
            already_run: 0,
            runs: Vec::new(),
            dry_run,
        };
        let (Some(first), Some(last)) = (due.first().copied(), due.last().copied()) else {
            return Ok(done);
        };
        if dry_run {
            let ran = self
                .store
                .runs()
                .dispatched_between(&row.id, (first, last))?;
            done.runs = missing(&row, &due, &ran);
            done.already_run = due.len() - done.runs.len();
            return Ok(done);
        }
        let Some(url) = &self.config.broker_url else {
            return Err(refuse(
                "cannot backfill: no broker_url (CELERY_BROKER_URL) to publish to".to_owned(),
            ));
        };
        let mut transport = broker::connect(url, self.config.broker_dedup_window)?;
        for batch in due.chunks(BATCH) {
            let (runs, refused) =
                self.backfill_batch(&router, &row, batch, now, transport.as_mut())?;
            done.runs.extend(runs);
            if let Some(reason) = refused {
                return Err(refuse(format!(
                    "the broker refused the backfill ({} published before): {reason}",
                    done.runs.len()
                )));
            }
        }
        done.already_run = due.len() - done.runs.len();
        if !done.runs.is_empty() {
            log::info!(
                "routine {name}: backfilled {} due time(s) from {} to {}",
                done.runs.len(),
                utc(first),
                utc(last)
            );
        }
        Ok(done)
    }

    /// One transaction of a backfill: locks the routine's row, finds which
    /// of `batch` have not run (and are still before its next planned due
    /// time), publishes them, records them, commits. Returns what it
    /// dispatched, and the broker's reason if it refused some.
    fn backfill_batch(
        &self,
        router: &Router,
        row: &RoutineRow,
        batch: &[DateTime<Utc>],
        now: DateTime<Utc>,
        transport: &mut dyn broker::Transport,
    ) -> Result<(Vec<BackfillRun>, Option<String>), Error> {
        let (Some(first), Some(last)) = (batch.first().copied(), batch.last().copied()) else {
            return Ok((Vec::new(), None));
        };
        let refuse = |reason: String| Error::from(RoutineError::new(&row.name, reason));
        let mut claim = self.store.begin_claim()?;
        // Read again under the lock: a beat may have claimed the routine
        // (and moved its next due time) since.
        let locked = claim
            .lock_routine(&row.id)?
            .ok_or_else(|| Error::NoSuchRoutine(row.name.clone()))?;
        let (checked, _) = router
            .check(&locked)
            .map_err(|e| refuse(format!("cannot backfill: {e}")))?;
        let before = next_planned(&locked, &checked.timing, now);
        let due: Vec<DateTime<Utc>> = batch
            .iter()
            .copied()
            .filter(|t| before.is_none_or(|next| *t < next))
            .collect();
        let ran = claim.dispatched_between(&locked.id, (first, last))?;
        let runs = missing(&locked, &due, &ran);
        if runs.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut messages: Vec<Message> = Vec::with_capacity(runs.len());
        for run in &runs {
            let mut message = router
                .celery_message(&locked, now, &run.task_id)
                .map_err(|e| refuse(format!("cannot backfill: {e}")))?
                .ok_or_else(|| refuse("cannot backfill: its task runs in-process".to_owned()))?;
            // The run it stands for: the broker publishes a run once per
            // task id and due second.
            message.run_at = run.due_at;
            messages.push(message);
        }
        let refs: Vec<&Message> = messages.iter().collect();
        let deliveries = transport.publish(&refs)?;
        let mut refused = None;
        let mut sent = Vec::with_capacity(runs.len());
        let mut records = Vec::with_capacity(runs.len());
        for (run, delivery) in runs.into_iter().zip(deliveries) {
            if let Delivery::Refused(reason) = delivery {
                refused.get_or_insert(reason);
                continue;
            }
            let mut record = NewRun::of(
                &locked,
                run.due_at,
                &run.task_id,
                Target::Celery,
                RunOutcome::Published,
                None,
            );
            record.backfill = 1;
            records.push(record);
            sent.push(run);
        }
        claim.record(&records, now)?;
        claim.commit()?;
        Ok((sent, refused))
    }
}

/// The due times of `row` from `from` to `to` that a backfill may take at
/// `now` (before its next planned due time, not after now), and where the
/// range was cut; an error if they are more than [`BACKFILL_LIMIT`].
fn due_times(
    row: &RoutineRow,
    timing: &Timing,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Result<(Vec<DateTime<Utc>>, Option<Cut>), String> {
    let mut end = to;
    let mut cut = None;
    if now < end {
        end = now;
        cut = Some(Cut::Now(now));
    }
    if let Some(next) = next_planned(row, timing, now) {
        let before = next - TimeDelta::microseconds(1);
        if before < end {
            end = before;
            cut = Some(Cut::NextDue(next));
        }
    }
    if end < from {
        return Ok((Vec::new(), cut));
    }
    let anchor = row.next_due_at_utc().or_else(|| row.last_run_at_utc());
    let due = timing.due_between((from, end), anchor, BACKFILL_LIMIT + 1);
    if due.len() > BACKFILL_LIMIT {
        return Err(format!(
            "the range from {} to {} holds more than {BACKFILL_LIMIT} due times, the most one \
             backfill dispatches: split it into shorter ranges",
            utc(from),
            utc(end)
        ));
    }
    Ok((due, cut))
}

/// The routine's next planned due time: its `next_due_at` (else
/// `next_run_at`); for a routine with none planned (inactive, or edited
/// and not yet planned), the one a beat would plan for it: the first after
/// its `last_run_at`. `None`: the beats have no run of it to come.
fn next_planned(row: &RoutineRow, timing: &Timing, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(next) = row.next_due_at_utc() {
        return Some(next);
    }
    match timing.planned(row.last_run_at_utc(), row.runs_made(), now) {
        Next::At(t) => Some(t),
        Next::Ends(_) | Next::Never => None,
    }
}

/// Of `due`, the due times whose task id is not in `ran`, with their ids.
fn missing(row: &RoutineRow, due: &[DateTime<Utc>], ran: &HashSet<String>) -> Vec<BackfillRun> {
    due.iter()
        .map(|t| BackfillRun {
            due_at: *t,
            task_id: broker::message::task_id(&row.id, *t),
        })
        .filter(|run| !ran.contains(&run.task_id))
        .collect()
}

/// `t` as the messages say it: `2030-01-01 09:00:00 UTC`.
fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
