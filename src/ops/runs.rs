//! Runs and edits: the run history, the audit trail, and running a
//! routine now.

use super::Operator;
use crate::broker::{self, Delivery};
use crate::error::Error;
use crate::metrics::Target;
use crate::routine::RoutineError;
use crate::store::{
    Actor, BeatRow, EditFilter, EditRow, NewRun, RoutineRow, RunFilter, RunOutcome, RunRow,
};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

/// How `beat send` ran a routine.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Sent {
    /// Published to the broker by this process, with this task id.
    Published {
        /// The Celery task id.
        task_id: String,
    },
    /// Asked of the serving beats through the table, and taken by one.
    Taken {
        /// The run's record (`None` if that beat keeps no history); its
        /// outcome is `failed` if the beat could not run it.
        run: Option<Box<RunRow>>,
    },
}

/// How often `send` looks whether a beat has taken the request.
const POLL: Duration = Duration::from_millis(100);

impl Operator {
    /// Recorded runs, newest first: of the routine called `name` (also one
    /// since deleted, by the name it ran under), only failed ones, only
    /// those dispatched since `since`; at most `limit`.
    pub fn history(
        &self,
        name: Option<&str>,
        failed: bool,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<RunRow>, Error> {
        let mut filter = RunFilter {
            failed,
            since,
            limit,
            ..RunFilter::default()
        };
        if let Some(name) = name {
            match self.store.routine(name)? {
                Some(row) => filter.routine_id = Some(row.id),
                None => filter.routine = Some(name.to_owned()),
            }
        }
        Ok(self.store.runs().list(&filter)?)
    }

    /// The edits recorded in the audit trail, newest first: of the routine
    /// called `name` (also one since deleted, by the name it had), only
    /// those made since `since`; at most `limit`.
    pub fn edits(
        &self,
        name: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<EditRow>, Error> {
        let mut filter = EditFilter {
            since,
            limit,
            ..EditFilter::default()
        };
        if let Some(name) = name {
            match self.store.routine(name)? {
                Some(row) => filter.routine_id = Some(row.id),
                None => filter.routine = Some(name.to_owned()),
            }
        }
        Ok(self.store.edits().list(&filter)?)
    }

    /// Asks the serving beats to run the routine called `name` now, for
    /// `by`, and returns at once: the run appears in its history when a
    /// beat has taken the request (within its watch interval). An error if
    /// no live beat can run it.
    pub fn request(&self, by: &Actor, name: &str) -> Result<(), Error> {
        let row = self.existing(name)?;
        let live = self.live_beats()?;
        let local_somewhere = live.iter().any(|b| b.tasks.contains(&row.task));
        self.ask_beats(by, &row, &live, local_somewhere).map(drop)
    }

    /// Checks that a live beat can run `row`, and asks for the run through
    /// the table. Returns the newest run recorded before the request.
    fn ask_beats(
        &self,
        by: &Actor,
        row: &RoutineRow,
        live: &[BeatRow],
        local_somewhere: bool,
    ) -> Result<i64, Error> {
        let name = row.name.as_str();
        let invalid = |reason: String| Error::from(RoutineError::new(name, reason));
        if !local_somewhere && !live.iter().any(|b| b.broker) {
            return Err(invalid(match live.is_empty() {
                true => "no beat is alive to run it (see `beat beats`)".to_owned(),
                false => format!(
                    "no live beat runs task {:?} in-process, and none (nor this command) has a broker_url to send it to Celery",
                    row.task
                ),
            }));
        }
        self.checker()?
            .router
            .check(row)
            .map_err(|e| invalid(e.0))?;
        let before = self
            .store
            .runs()
            .list(&RunFilter {
                routine_id: Some(row.id.clone()),
                limit: 1,
                ..RunFilter::default()
            })?
            .first()
            .map_or(0, |r| r.id);
        if !self.store.request_run(by, name)? {
            return Err(Error::NoSuchRoutine(name.to_owned()));
        }
        Ok(before)
    }

    /// Runs the routine called `name` now, for `by`, outside its schedule,
    /// with a fresh task id. With a broker configured here, a Celery task
    /// is published at once; otherwise (and for in-process tasks) the
    /// serving beats are asked through the table, and this waits up to
    /// `wait` for one to take the request. An error if no live beat can
    /// run it.
    pub fn send(
        &self,
        by: &Actor,
        name: &str,
        now: DateTime<Utc>,
        wait: Duration,
    ) -> Result<Sent, Error> {
        let row = self.existing(name)?;
        let invalid = |reason: String| Error::from(RoutineError::new(name, reason));
        let live = self.live_beats()?;
        let local_somewhere = live.iter().any(|b| b.tasks.contains(&row.task));
        if let (false, Some(url)) = (local_somewhere, &self.config.broker_url) {
            let task_id = uuid::Uuid::new_v4().to_string();
            let checker = self.checker()?;
            if let Some(message) = checker
                .router
                .celery_message(&row, now, &task_id)
                .map_err(|e| invalid(e.0))?
            {
                let delivered =
                    broker::connect(url, self.config.broker_dedup_window)?.publish(&[&message])?;
                if let Some(Delivery::Refused(reason)) = delivered.into_iter().next() {
                    return Err(invalid(reason));
                }
                let mut run = NewRun::of(
                    &row,
                    now,
                    &task_id,
                    Target::Celery,
                    RunOutcome::Published,
                    None,
                );
                run.on_demand = 1;
                self.store.runs().record(&[run], now, None)?;
                return Ok(Sent::Published { task_id });
            }
        }
        let before = self.ask_beats(by, &row, &live, local_somewhere)?;
        let deadline = Instant::now() + wait;
        loop {
            let taken = self
                .store
                .routine(name)?
                .is_none_or(|r| r.run_requested_at.is_none());
            if taken {
                let run = self
                    .store
                    .runs()
                    .list(&RunFilter {
                        routine_id: Some(row.id.clone()),
                        limit: 10,
                        ..RunFilter::default()
                    })?
                    .into_iter()
                    .find(|r| r.id > before && r.on_demand);
                return Ok(Sent::Taken {
                    run: run.map(Box::new),
                });
            }
            if Instant::now() >= deadline {
                return Err(invalid(format!(
                    "requested, but no beat took the request within {wait:?}; it stays requested (run_requested_at) until one does"
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}
