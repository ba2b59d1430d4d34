//! Recording a run: which runs `routine_runs` gets, and which routines
//! the pruning by count should look at.

use super::{Dispatcher, Fate};
use crate::metrics::Target;
use crate::routine::Invalid;
use crate::store::{NewRun, RoutineRow, RunOutcome};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

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

impl Dispatcher {
    /// The record of a run of `row` due at `due` with task id `id`, going
    /// in-process if `local`, if it is recorded: with `history` every run
    /// is; without it only the in-process runs of the schedule, while they
    /// last, so that no other beat starts one beside them.
    pub(super) fn record(
        &self,
        row: &RoutineRow,
        (due, id): (DateTime<Utc>, &str),
        local: bool,
        (fate, error): (&Fate, Option<String>),
    ) -> Option<NewRun> {
        let recorded = self.history || matches!(fate, Fate::Run(job) if job.scheduled);
        let outcome = match fate {
            Fate::Run(_) => RunOutcome::Queued,
            Fate::Sent(..) => RunOutcome::Published,
            // Refused only once published (`Dispatcher::publish`).
            Fate::Refused(..) => RunOutcome::Failed,
            Fate::Skip => RunOutcome::Skipped,
            Fate::Missed => RunOutcome::Missed,
            Fate::Invalid => return None,
        };
        recorded.then(|| NewRun::of(row, due, id, Target::of(local), outcome, error))
    }

    /// The record of a run on demand of `row` that cannot run, with
    /// `history`: so that the operator who asked sees why.
    pub(super) fn record_failed_on_demand(
        &self,
        row: &RoutineRow,
        (now, id): (DateTime<Utc>, &str),
        reason: &Invalid,
    ) -> Option<NewRun> {
        self.history.then(|| {
            let error = Some(format!("cannot run: {reason}"));
            let mut run = NewRun::of(row, now, id, Target::Unrouted, RunOutcome::Failed, error);
            run.on_demand = 1;
            run
        })
    }
}
