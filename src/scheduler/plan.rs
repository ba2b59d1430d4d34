//! Planning: edited and new rows (`needs_sync`, set by the triggers on every
//! edit) are validated and given their next run, or their error.

use super::Scheduler;
use crate::dispatch::{advance, Outcome};
use crate::error::Error;
use crate::metrics::{Counted, Target};
use crate::routine::Invalid;
use crate::schedule::Next;
use crate::store::{NewRun, Plan, RoutineRow};
use chrono::{DateTime, Utc};

/// The ids of the routines whose runs `plans` end.
pub(super) fn ended(plans: &[Plan]) -> Vec<&str> {
    plans.iter().filter_map(|p| p.ends.as_deref()).collect()
}

/// Rows planned per transaction.
const PLAN_BATCH: usize = 500;

impl Scheduler {
    /// Plans every edited row, a batch per transaction; runs asked for by
    /// `beat send` (`run_requested_at`) are dispatched and recorded in the
    /// same transaction. Returns how many rows were planned, and how many
    /// of them were found invalid.
    pub(super) fn plan_edited(&self, now: DateTime<Utc>) -> Result<(usize, usize), Error> {
        let (mut total, mut total_invalid) = (0, 0);
        loop {
            let (planned, invalid) = self.plan_batch(now)?;
            for task in &invalid {
                self.metrics
                    .count_runs(task, Target::Unrouted, Counted::Invalid, 1);
            }
            total += planned;
            total_invalid += invalid.len();
            if planned < PLAN_BATCH {
                return Ok((total, total_invalid));
            }
        }
    }

    /// One plan transaction: locks a batch of edited rows, plans each,
    /// runs those asked for on demand (publishing their messages), records
    /// those runs, writes the plans and commits; then queues the
    /// in-process runs. Returns how many rows were planned, and the tasks
    /// of those found invalid.
    fn plan_batch(&self, now: DateTime<Utc>) -> Result<(usize, Vec<String>), Error> {
        let dispatcher = &self.dispatcher;
        let mut claim = self.store.begin_claim()?;
        let rows = claim.lock_edited(PLAN_BATCH)?;
        let plans: Vec<Plan> = rows.iter().map(|row| self.plan(row, now)).collect();
        let invalid: Vec<String> = rows
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| plan.last_error.is_some())
            .map(|(row, _)| row.task.clone())
            .collect();
        let (requested, runs): (Vec<_>, Vec<_>) = rows
            .iter()
            .filter(|row| row.run_requested_at.is_some())
            .map(|row| dispatcher.on_demand(row, now))
            .unzip();
        let mut requested: Vec<Outcome> = requested.into_iter().filter_map(Result::ok).collect();
        let mut runs: Vec<NewRun> = runs.into_iter().flatten().collect();
        dispatcher.publish(None, &mut requested, &mut runs)?;
        claim.record(&runs, now)?;
        claim.plan(&plans)?;
        claim.end(&ended(&plans))?;
        claim.commit()?;
        if !runs.is_empty() {
            dispatcher
                .touched
                .note(runs.iter().map(|run| run.routine_id.as_str()));
        }
        dispatcher.hand_over_on_demand(requested);
        Ok((plans.len(), invalid))
    }

    /// Plans an edited or new row: validates it and decides its next run.
    ///
    /// A kept `next_run_at` (the edit touched only task, kwargs, args or
    /// options) stands; otherwise the next run is the first the schedule
    /// yields after `last_run_at`, or after `now` for a routine that never
    /// ran, within its bounds (a clocked routine that has not run is due
    /// at its time, even a past one). A routine whose runs are over ends.
    fn plan(&self, row: &RoutineRow, now: DateTime<Utc>) -> Plan {
        let mut plan = Plan::keep(row);
        if !row.active {
            log::info!("routine {}: inactive", row.name);
            return plan;
        }
        let checked = match self.dispatcher.router.check(row) {
            Ok((checked, ignored)) => {
                if !ignored.is_empty() {
                    log::warn!(
                        "routine {}: ignoring options Celery's beat does not pass on: {}",
                        row.name,
                        ignored.join(", ")
                    );
                }
                checked
            }
            Err(reason) => return invalid(plan, row, reason),
        };
        if let Some(kept) = row.next_run_at_utc() {
            plan.next_run_at = Some(kept);
            plan.next_due_at = row.next_due_at.map(|t| t.and_utc());
        } else {
            let next = checked
                .timing
                .planned(row.last_run_at_utc(), row.runs_made(), now);
            let mut notes = Vec::new();
            advance(&mut plan, &row.id, &checked.timing, next, &mut notes);
            for note in &notes {
                note.log(&row.name);
            }
            if next == Next::Never {
                let base = row.last_run_at_utc().unwrap_or(now);
                let reason = Invalid(format!("schedule {} has no run after {base}", row.schedule));
                return invalid(plan, row, reason);
            }
        }
        if let (Some(next), None) = (plan.next_run_at, &plan.last_error) {
            if row.last_error.is_some() {
                log::info!("routine {}: valid again, next run at {next}", row.name);
            } else {
                log::info!("routine {}: next run at {next}", row.name);
            }
        }
        plan
    }
}

/// `plan` for an invalid `row`: no next run, and why, said once.
fn invalid(mut plan: Plan, row: &RoutineRow, reason: Invalid) -> Plan {
    log::error!(
        "routine {}: {reason}; it will not run until its row is fixed",
        row.name
    );
    plan.next_run_at = None;
    plan.next_due_at = None;
    plan.last_error = Some(reason.0);
    plan
}
