//! Deciding a claimed run: the misfire policy, a previous run still
//! going, and the row's advance (`last_run_at`, `next_run_at`).

use super::notes::Note;
use super::route::{storable, Checked};
use super::Dispatcher;
use crate::schedule::MisfirePolicy;
use crate::store::{Plan, RoutineRow};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// Whether a claimed run goes ahead.
pub(super) enum Verdict {
    /// It runs.
    Go,
    /// Missed by more than its grace time, under the skip policy (why).
    Missed(String),
    /// Its previous run is still going (why).
    Overlap(&'static str),
}

/// A claimed run, decided: whether it goes, the row's advance, and what
/// is worth saying.
pub(super) struct Decision {
    pub(super) verdict: Verdict,
    pub(super) plan: Plan,
    pub(super) notes: Vec<Note>,
}

impl Dispatcher {
    /// Decides `row`'s run due at `due`, claimed at `now`.
    ///
    /// The row fires once for the due time it was claimed at, however late
    /// (the beat was stopped, the database away): the next run is then the
    /// first one after `now`, skipping the missed ones, as Celery's beat
    /// does. `last_run_at` records the due time, or `now` when due times
    /// were skipped (so that it says when the routine really last ran). A
    /// routine in `busy` has a run going on another beat.
    pub(super) fn decide(
        &self,
        row: &RoutineRow,
        checked: &Checked,
        (due, now): (DateTime<Utc>, DateTime<Utc>),
        busy: &HashSet<String>,
    ) -> Decision {
        let mut plan = Plan::keep(row);
        let mut notes = Vec::new();
        match storable(checked.schedule.next_after_catching_up(due, now)) {
            Ok(next) => plan.next_run_at = next,
            Err(reason) => {
                // This run still happens; the row then waits for an edit.
                plan.last_error = Some(reason.to_string());
                notes.push(Note::Unstorable(reason));
            }
        }
        let next = plan.next_run_at;
        let policy = checked.misfire.policy.unwrap_or(self.misfire.0);
        let grace = checked.misfire.grace_time.unwrap_or(self.misfire.1);
        let late = (now - due).to_std().unwrap_or_default();
        if late > grace && policy == MisfirePolicy::Skip {
            notes.push(Note::Missed {
                due,
                late,
                grace,
                next,
            });
            let why = format!("{late:.1?} late (misfire grace time {grace:?}, policy skip)");
            return Decision {
                verdict: Verdict::Missed(why),
                plan,
                notes,
            };
        }
        if next.is_none() && plan.last_error.is_none() {
            notes.push(Note::Last(now));
        }
        let on_time = checked
            .schedule
            .next_after(due)
            .is_some_and(|next| next > now);
        if !on_time {
            notes.push(Note::CaughtUp { due, next });
        }
        let local = checked.send.is_none();
        let here = local && self.in_flight.contains(&row.id);
        if here || (local && busy.contains(&row.id)) {
            notes.push(Note::Overlap(due, !here));
            let why = match here {
                false => "its previous run was still going on another beat",
                true => "its previous run was still queued or running",
            };
            return Decision {
                verdict: Verdict::Overlap(why),
                plan,
                notes,
            };
        }
        plan.fired = 1;
        plan.last_run_at = Some(if on_time { due } else { now });
        Decision {
            verdict: Verdict::Go,
            plan,
            notes,
        }
    }
}
