//! Deciding a claimed run: the misfire policy, a previous run still
//! going, and the row's advance (`last_run_at`, `next_run_at`, or the
//! routine's end).

use super::notes::Note;
use super::route::{storable, Checked};
use super::Dispatcher;
use crate::schedule::{MisfirePolicy, Next, Timing};
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
    /// routine in `busy` has a run going on another beat. How late a run
    /// is counts from its dispatch time (`next_run_at`): a jittered run is
    /// not late by its jitter.
    pub(super) fn decide(
        &self,
        row: &RoutineRow,
        checked: &Checked,
        (due, now): (DateTime<Utc>, DateTime<Utc>),
        busy: &HashSet<String>,
    ) -> Decision {
        let timing = &checked.timing;
        let mut notes = Vec::new();
        let policy = timing.misfire.policy.unwrap_or(self.misfire.0);
        let grace = timing.misfire.grace_time.unwrap_or(self.misfire.1);
        let dispatch = row.next_run_at_utc().unwrap_or(due);
        let late = (now - dispatch).to_std().unwrap_or_default();
        let missed = late > grace && policy == MisfirePolicy::Skip;
        let local = checked.send.is_none();
        let here = local && self.in_flight.contains(&row.id);
        let overlap = !missed && (here || (local && busy.contains(&row.id)));
        let ran = (!missed && !overlap).then_some(row.runs_made().saturating_add(1));
        let mut plan = Plan::keep(row);
        let next = timing.after(due, now, ran);
        advance(&mut plan, &row.id, timing, next, &mut notes);
        if missed {
            notes.push(Note::Missed {
                due,
                late,
                grace,
                next: plan.next_run_at,
            });
            let why = format!("{late:.1?} late (misfire grace time {grace:?}, policy skip)");
            return Decision {
                verdict: Verdict::Missed(why),
                plan,
                notes,
            };
        }
        if next == Next::Never && plan.last_error.is_none() {
            notes.push(Note::Last(now));
        }
        let on_time = timing
            .schedule
            .next_after(due)
            .is_none_or(|next| next > now);
        if !on_time {
            notes.push(Note::CaughtUp {
                due,
                next: plan.next_run_at,
            });
        }
        if overlap {
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

/// Writes `next` into `plan` for routine `id`: the next run's dispatch
/// time (and its due time, when a jitter sets them apart), or the
/// routine's end, or the error of a time the table cannot hold.
pub(crate) fn advance(
    plan: &mut Plan,
    id: &str,
    timing: &Timing,
    next: Next,
    notes: &mut Vec<Note>,
) {
    match next {
        Next::At(due) => {
            let dispatch = timing.dispatch_at(id, due);
            match storable(Some(dispatch)) {
                Ok(_) => {
                    plan.next_run_at = Some(dispatch);
                    plan.next_due_at = (dispatch != due).then_some(due);
                }
                Err(reason) => {
                    // This run still happens; the row then waits for an edit.
                    plan.last_error = Some(reason.to_string());
                    notes.push(Note::Unstorable(reason));
                }
            }
        }
        Next::Ends(end) => {
            plan.ends = Some(id.to_owned());
            notes.push(Note::Ended(end));
        }
        Next::Never => {}
    }
}
