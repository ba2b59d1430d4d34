//! The messages a beat published, checked against each routine's grid of
//! due times and its `total_run_count`: for tests where beats die, freeze
//! or lose their database or broker, and each (routine, due time) must
//! still be dispatched once.

use super::Published;
use celery_diesel_kit::{task_id, RoutineRow};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use std::collections::HashMap;

/// What the messages say about the routines.
#[derive(Debug, Default)]
pub struct Tally {
    /// Distinct runs dispatched.
    pub runs: usize,
    /// Extra copies of a run already dispatched (same task id).
    pub repeats: usize,
    /// Due times on a routine's grid, between its first run and its next,
    /// that were never dispatched.
    pub missed: Vec<(String, DateTime<Utc>)>,
    /// Routines whose `total_run_count` differs from the runs dispatched.
    pub miscounted: Vec<String>,
    /// Messages that match no due time of their routine.
    pub strays: usize,
    /// Every dispatched run: routine name and due time.
    pub dispatched: Vec<(String, DateTime<Utc>)>,
}

/// The period of an interval routine, or a minute (the tests' only
/// crontab is every minute).
fn period_of(row: &RoutineRow) -> TimeDelta {
    let schedule: serde_json::Value = serde_json::from_str(&row.schedule).unwrap();
    match schedule.get("timedelta").and_then(|v| v.as_f64()) {
        Some(s) => TimeDelta::milliseconds((s * 1000.0) as i64),
        None => TimeDelta::minutes(1),
    }
}

/// Tallies `messages` (their routines tagged in kwargs) against `rows`.
pub fn tally(rows: &[RoutineRow], messages: &[Published]) -> Tally {
    let mut by_routine: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for m in messages {
        *by_routine
            .entry(m.routine.as_str())
            .or_default()
            .entry(m.id.as_str())
            .or_default() += 1;
    }
    let mut tally = Tally::default();
    for row in rows {
        let ids = by_routine.remove(row.name.as_str()).unwrap_or_default();
        tally.runs += ids.len();
        tally.repeats += ids.values().map(|n| n - 1).sum::<usize>();
        if row.total_run_count.unwrap_or(0) as usize != ids.len() {
            tally.miscounted.push(format!(
                "{}: {} runs, total_run_count {:?}",
                row.name,
                ids.len(),
                row.total_run_count
            ));
        }
        // Walk the grid back from the next run (always on the grid) until
        // every dispatched id is accounted for.
        let Some(next) = row.next_run_at_utc() else {
            // Every routine these tests tally is active and valid: without
            // a next run, its messages match no grid.
            tally.strays += ids.len();
            tally.miscounted.push(format!(
                "{}: no next_run_at ({:?})",
                row.name, row.last_error
            ));
            continue;
        };
        let period = period_of(row);
        let mut found = 0;
        let mut gaps = Vec::new();
        let mut t = next - period;
        while found < ids.len() && t > next - period * 100_000 {
            if ids.contains_key(task_id(&row.id, t).as_str()) {
                found += 1;
                tally.dispatched.push((row.name.clone(), t));
                tally
                    .missed
                    .extend(gaps.drain(..).map(|g| (row.name.clone(), g)));
            } else {
                gaps.push(t);
            }
            t -= period;
        }
        tally.strays += ids.len() - found;
    }
    tally.strays += by_routine.values().map(HashMap::len).sum::<usize>();
    tally
}

/// The first few items of a list, for a failure message.
pub fn first<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(5)]
}
