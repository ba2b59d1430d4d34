//! Runs on demand: `beat send` and the dashboard's "Run now" (a row's
//! `run_requested_at`, run by the plan that finds it), and
//! `BeatHandle::send_now` (run at once). One path for both: route,
//! publish, record, commit, hand over; the row's schedule is left as it
//! is.

use super::route::Outgoing;
use super::{Dispatcher, Fate, Outcome};
use crate::error::Error;
use crate::metrics::Target;
use crate::routine::{Invalid, RoutineError};
use crate::store::{NewRun, RoutineRow, RoutineStore};
use chrono::{DateTime, Utc};

impl Dispatcher {
    /// A run of `row` on demand, now, outside its schedule, with a fresh
    /// task id: routed and recorded as a due run is, but not decided (it
    /// runs even if a run is going) and not advanced. A routine that
    /// cannot run is an `Err` with the reason, and its record says so.
    pub(crate) fn on_demand(
        &self,
        row: &RoutineRow,
        now: DateTime<Utc>,
    ) -> (Result<Outcome, Invalid>, Option<NewRun>) {
        let id = uuid::Uuid::new_v4().to_string();
        log::info!("routine {}: run on demand; task {id}", row.name);
        let checked = match self.router.check(row) {
            Ok((checked, _)) => checked,
            Err(reason) => {
                let run = self.record_failed_on_demand(row, (now, &id), &reason);
                return (Err(reason), run);
            }
        };
        let fate = match self.router.outgoing(row, &checked, now, &id, now) {
            Outgoing::Local(mut job) => {
                job.scheduled = false;
                job.recorded = self.history;
                Fate::Run(job)
            }
            Outgoing::Celery(message) => Fate::Sent(message),
        };
        let run = self.record(row, (now, &id), checked.send.is_none(), (&fate, None));
        let run = run.map(|mut run| {
            run.on_demand = 1;
            run
        });
        let outcome = Outcome {
            routine: row.name.clone(),
            task: row.task.clone(),
            target: Target::of(checked.send.is_none()),
            dispatch_at: now,
            fate,
            notes: Vec::new(),
        };
        (Ok(outcome), run)
    }

    /// Runs `row` on demand now, in a transaction of its own that records
    /// the run (`BeatHandle::send_now`). Returns its task id.
    pub(crate) fn send_now(&self, row: &RoutineRow, store: &RoutineStore) -> Result<String, Error> {
        let now = self.clock.now();
        let (mut outcome, run) = self.on_demand(row, now);
        let mut runs: Vec<NewRun> = run.into_iter().collect();
        if let Ok(outcome) = &mut outcome {
            self.publish(None, std::slice::from_mut(outcome), &mut runs)?;
        }
        if !runs.is_empty() {
            let mut claim = store.begin_claim()?;
            claim.record(&runs, now)?;
            claim.commit()?;
            self.touched.note([row.id.as_str()]);
        }
        let outcome = outcome.map_err(|reason| RoutineError::new(&row.name, reason))?;
        if let Some(reason) = outcome.refused() {
            return Err(RoutineError::new(&row.name, reason.to_owned()).into());
        }
        let id = match &outcome.fate {
            Fate::Run(job) => job.task_id.clone(),
            Fate::Sent(message) => message.id.clone(),
            _ => String::new(),
        };
        if !self.hand_over_on_demand(vec![outcome]) {
            return Err(RoutineError::new(&row.name, "the beat is stopping").into());
        }
        Ok(id)
    }

    /// After the transaction that recorded them committed: queues the
    /// in-process runs on demand. Returns whether every one was queued.
    pub(crate) fn hand_over_on_demand(&self, outcomes: Vec<Outcome>) -> bool {
        let mut all = true;
        for outcome in outcomes {
            match outcome.fate {
                Fate::Run(job) => all &= self.queue(job, outcome.dispatch_at),
                Fate::Refused(reason) => {
                    log::error!(
                        "routine {}: run on demand not sent: {reason}",
                        outcome.routine
                    );
                }
                _ => {}
            }
        }
        all
    }
}
