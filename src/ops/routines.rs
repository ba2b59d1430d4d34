//! Reading and editing routines: list, show, add, edit, enable, disable,
//! remove, check.

use super::{words, Operator};
use crate::error::Error;
use crate::routine::{check_name, Routine, RoutineError};
use crate::schedule::{End, Next, Schedule, ScheduleError, Timing};
use crate::store::{
    Actor, EditFilter, EditRow, NewRoutine, RoutineCounts, RoutineQuery, RoutineRow, RunFilter,
    RunRow,
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

/// Routines read per page by [`Operator::list`].
const PAGE: usize = 1000;

/// A routine as an operator sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RoutineView {
    /// The row.
    pub row: RoutineRow,
    /// Its schedule with its misfire settings and bounds, if it parses.
    pub timing: Option<Timing>,
    /// Why its runs are over, for an inactive routine that has ended (a
    /// one-off or clocked routine that ran, one past its `end_at` or its
    /// `max_runs`).
    pub over: Option<End>,
    /// The schedule in words (or why it does not parse).
    pub words: String,
    /// The zone its times are shown in: a crontab's own, else `timezone`.
    pub zone: Tz,
}

impl RoutineView {
    /// `t` on the wall clock of the routine's zone.
    pub fn local(&self, t: DateTime<Utc>) -> String {
        words::local(t, self.zone)
    }
}

/// One routine in full (`beat show`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Shown {
    /// The routine.
    pub view: RoutineView,
    /// Its next fire times (none while it is disabled or invalid).
    pub next: Vec<DateTime<Utc>>,
    /// Its last runs, newest first.
    pub runs: Vec<RunRow>,
    /// Its last edits, newest first (the audit trail).
    pub edits: Vec<EditRow>,
}

/// What is wrong with a routine (`beat check`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// The routine's name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// The beat's reason (what it writes to `last_error`).
    pub reason: String,
}

/// A routine to add.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewRoutineSpec {
    /// Its name (unique).
    pub name: String,
    /// The task it runs.
    pub task: String,
    /// The schedule JSON, as the kit writes it.
    pub schedule: Value,
    /// Positional args (a JSON array); `None`: none (the column stays
    /// NULL).
    pub args: Option<Value>,
    /// kwargs (a JSON object).
    pub kwargs: Value,
    /// Celery options (a JSON object).
    pub options: Value,
    /// Whether it runs.
    pub active: bool,
}

impl NewRoutineSpec {
    /// An active routine without args, kwargs or options.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Value) -> Self {
        NewRoutineSpec {
            name: name.into(),
            task: task.into(),
            schedule,
            args: None,
            kwargs: Value::Object(Default::default()),
            options: Value::Object(Default::default()),
            active: true,
        }
    }
}

/// Changes to a routine; `None` keeps what it has.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Change {
    /// A new task.
    pub task: Option<String>,
    /// A new schedule JSON (its misfire keys are kept unless it has its own).
    pub schedule: Option<Value>,
    /// A zone for the (new or kept) crontab.
    pub timezone: Option<String>,
    /// New kwargs.
    pub kwargs: Option<Value>,
    /// New options.
    pub options: Option<Value>,
    /// New positional args (a JSON array; `[]` for none).
    pub args: Option<Value>,
}

impl Operator {
    fn view(&self, row: RoutineRow) -> RoutineView {
        let parsed = serde_json::from_str::<Value>(&row.schedule)
            .map_err(|e| ScheduleError::NotJson(e.to_string()))
            .and_then(|json| Timing::from_json_in(&json, self.zone).map(|t| (json, t)));
        let (timing, words, zone) = match parsed {
            Ok((json, timing)) => {
                let zone = timing
                    .schedule
                    .timezone()
                    .and_then(|z| crate::schedule::zone(z).ok())
                    .unwrap_or(self.zone);
                (Some(timing), words::describe(&json), zone)
            }
            Err(e) => (None, format!("invalid: {e}"), self.zone),
        };
        let over = match (&timing, row.active) {
            (Some(timing), false) => over(timing, &row, Utc::now()),
            _ => None,
        };
        RoutineView {
            row,
            timing,
            over,
            words,
            zone,
        }
    }

    /// Every routine in name order, a page at a time: `each` gets each page
    /// (up to 1,000 routines) and returns whether to go on. Memory stays
    /// that of one page, however large the table.
    pub fn list(&self, mut each: impl FnMut(Vec<RoutineView>) -> bool) -> Result<(), Error> {
        let mut after: Option<(String, String)> = None;
        loop {
            let rows = self
                .store
                .routines_after(after.as_ref().map(|(n, i)| (n.as_str(), i.as_str())), PAGE)?;
            let full = rows.len() == PAGE;
            after = rows.last().map(|r| (r.name.clone(), r.id.clone()));
            let views = rows.into_iter().map(|row| self.view(row)).collect();
            if !each(views) || !full {
                return Ok(());
            }
        }
    }

    /// A page of routines, as `query` asks: a search in names and tasks, a
    /// state, after the last of the page before (see [`RoutineStore::find`]
    /// for its cost).
    ///
    /// [`RoutineStore::find`]: crate::RoutineStore::find
    pub fn find(&self, query: &RoutineQuery) -> Result<Vec<RoutineView>, Error> {
        let rows = self.store.find(query)?;
        Ok(rows.into_iter().map(|row| self.view(row)).collect())
    }

    /// How many routines are in each state (one scan of the table).
    pub fn counts(&self) -> Result<RoutineCounts, Error> {
        Ok(self.store.count_by_state()?)
    }

    /// The routine called `name`, its next `n` fire times, its last `runs`
    /// runs and its last `edits` edits.
    pub fn show(
        &self,
        name: &str,
        n: usize,
        runs: usize,
        edits: usize,
        now: DateTime<Utc>,
    ) -> Result<Shown, Error> {
        let row = self.existing(name)?;
        let view = self.view(row);
        let runs_made = view.row.runs_made();
        let next = match &view.timing {
            Some(timing) if view.row.active && view.row.last_error.is_none() => {
                match view.row.next_due_at_utc() {
                    Some(first) => {
                        let mut times = vec![first];
                        let made = runs_made.saturating_add(1);
                        times.extend(timing.next_runs(first, n.saturating_sub(1), made));
                        times
                    }
                    None => {
                        let after = view.row.last_run_at_utc().unwrap_or(now);
                        timing.next_runs(after, n, runs_made)
                    }
                }
            }
            _ => Vec::new(),
        };
        let runs = self.store.runs().list(&RunFilter {
            routine_id: Some(view.row.id.clone()),
            limit: runs,
            ..RunFilter::default()
        })?;
        let edits = match edits {
            0 => Vec::new(),
            limit => self.store.edits().list(&EditFilter {
                routine_id: Some(view.row.id.clone()),
                limit,
                ..EditFilter::default()
            })?,
        };
        Ok(Shown {
            view,
            next,
            runs,
            edits,
        })
    }

    pub(super) fn existing(&self, name: &str) -> Result<RoutineRow, Error> {
        self.store
            .routine(name)?
            .ok_or_else(|| Error::NoSuchRoutine(name.to_owned()))
    }

    /// Adds a routine, as `by`'s edit, checked as the beat checks rows: a
    /// routine the beat would refuse is refused here, with the beat's words.
    pub fn add(&self, by: &Actor, spec: &NewRoutineSpec) -> Result<(), Error> {
        let invalid = |reason: String| Error::from(RoutineError::new(&spec.name, reason));
        check_name("name", &spec.name).map_err(|e| invalid(e.0))?;
        check_name("task", &spec.task).map_err(|e| invalid(e.0))?;
        let args = spec
            .args
            .as_ref()
            .map(args_column)
            .transpose()
            .map_err(invalid)?;
        let mut row = RoutineRow::draft(
            &spec.name,
            &spec.task,
            &spec.schedule.to_string(),
            &spec.kwargs.to_string(),
            &spec.options.to_string(),
        );
        row.args = args.clone();
        self.checker()?
            .router
            .check(&row)
            .map_err(|e| invalid(e.0))?;
        let new = NewRoutine {
            id: uuid::Uuid::new_v4(),
            name: row.name,
            task: row.task,
            schedule: row.schedule,
            kwargs: spec.kwargs.to_string(),
            options: spec.options.to_string(),
            args,
            active: spec.active,
        };
        if !self.store.insert_new(by, &new)? {
            return Err(invalid("a routine of this name exists".into()));
        }
        Ok(())
    }

    /// Writes a routine as code declares it, as `by`'s edit: inserted if
    /// no routine has its name (returns `true`), else the existing row
    /// takes its task, schedule, args, kwargs, options and state. The serving
    /// beats see the edit like any other.
    ///
    /// ```no_run
    /// use celery_diesel_kit::ops::Operator;
    /// use celery_diesel_kit::{Actor, Config, Routine, Schedule, Via};
    /// use std::time::Duration;
    ///
    /// let op = Operator::migrate(Config::default())?;
    /// let me = Actor::os_user(Via::Library);
    /// let every_minute = Schedule::every(Duration::from_secs(60))?;
    /// op.upsert(&me, &Routine::new("cleanup", "tasks.cleanup", every_minute))?;
    /// op.set_active(&me, "cleanup", false)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upsert(&self, by: &Actor, routine: &Routine) -> Result<bool, Error> {
        routine.validate()?;
        Ok(self.store.upsert(by, routine)?)
    }

    /// The kit's source-of-truth rules, as a beat applies them at start to
    /// the routines declared in code, as `by`'s edits: declared but missing
    /// → inserted; declared and present → the table's version stays;
    /// neither declared nor in `keep` → deleted (`beat sync`, which the
    /// Python package's `sync` runs). With nothing declared, nothing is
    /// touched.
    pub fn sync(
        &self,
        by: &Actor,
        declared: &[Routine],
        keep: &[String],
    ) -> Result<crate::store::Synced, Error> {
        for routine in declared {
            routine.validate()?;
        }
        Ok(self.store.sync_declared(by, declared, keep)?)
    }

    /// Changes a routine, as `by`'s edit, checked as [`Operator::add`]
    /// checks.
    pub fn edit(&self, by: &Actor, name: &str, change: &Change) -> Result<(), Error> {
        let row = self.existing(name)?;
        let invalid = |reason: String| Error::from(RoutineError::new(name, reason));
        if let Some(task) = &change.task {
            check_name("task", task).map_err(|e| invalid(e.0))?;
        }
        let schedule = match (&change.schedule, &change.timezone) {
            (None, None) => None,
            (given, zone) => {
                let old: Value = serde_json::from_str(&row.schedule).unwrap_or(Value::Null);
                let mut json = given.clone().unwrap_or_else(|| old.clone());
                if let (Some(new), Some(old)) = (json.as_object_mut(), old.as_object()) {
                    for key in ["misfire_policy", "misfire_grace_time"] {
                        if let (false, Some(value)) = (new.contains_key(key), old.get(key)) {
                            new.insert(key.to_owned(), value.clone());
                        }
                    }
                    if let Some(zone) = zone {
                        new.insert("timezone".to_owned(), Value::String(zone.clone()));
                    }
                }
                Some(json.to_string())
            }
        };
        let kwargs = change.kwargs.as_ref().map(Value::to_string);
        let options = change.options.as_ref().map(Value::to_string);
        let args = match &change.args {
            // The args the row has (NULL is `[]`) are not written again:
            // saving the dashboard's form, which holds every field, leaves
            // a row without args (the kit's) as it is, and the audit trail
            // without a change that is none.
            Some(args) if args_of(&row).as_ref() == Some(args) => None,
            Some(args) => Some(args_column(args).map_err(invalid)?),
            None => None,
        };
        let mut draft = RoutineRow::draft(
            name,
            change.task.as_deref().unwrap_or(&row.task),
            schedule.as_deref().unwrap_or(&row.schedule),
            kwargs.as_deref().or(row.kwargs.as_deref()).unwrap_or("{}"),
            options
                .as_deref()
                .or(row.options.as_deref())
                .unwrap_or("{}"),
        );
        draft.args = args.clone().or(row.args);
        self.checker()?
            .router
            .check(&draft)
            .map_err(|e| invalid(e.0))?;
        let edit = crate::store::RoutineEdit {
            task: change.task.as_deref(),
            schedule: schedule.as_deref(),
            kwargs: kwargs.as_deref(),
            options: options.as_deref(),
            args: args.as_deref(),
        };
        self.store.edit(by, name, &edit)?;
        Ok(())
    }

    /// Enables or disables a routine, as `by`'s edit.
    pub fn set_active(&self, by: &Actor, name: &str, active: bool) -> Result<(), Error> {
        if !self.store.set_active(by, name, active)? {
            return Err(Error::NoSuchRoutine(name.to_owned()));
        }
        Ok(())
    }

    /// Deletes a routine, as `by`'s edit (its history and its edits stay
    /// until pruned).
    pub fn remove(&self, by: &Actor, name: &str) -> Result<(), Error> {
        if !self.store.remove(by, name)? {
            return Err(Error::NoSuchRoutine(name.to_owned()));
        }
        Ok(())
    }

    /// Checks every row as the live beats would. Returns the problems, and
    /// whether task names could be checked (some beat is alive, or a
    /// broker is configured).
    pub fn check(&self) -> Result<(Vec<Problem>, bool), Error> {
        let checker = self.checker()?;
        let mut problems = Vec::new();
        self.list(|views| {
            for view in views {
                if let Err(reason) = checker.router.check(&view.row) {
                    problems.push(Problem {
                        name: view.row.name.clone(),
                        id: view.row.id.clone(),
                        reason: reason.0,
                    });
                }
            }
            true
        })?;
        Ok((problems, checker.tasks_known))
    }
}

/// Why an inactive routine's runs are over at `now`, if they are.
fn over(timing: &Timing, row: &RoutineRow, now: DateTime<Utc>) -> Option<End> {
    let runs = row.runs_made();
    if timing.bounds.one_off && runs > 0 {
        return Some(End::OneOff);
    }
    match (
        &timing.schedule,
        timing.planned(row.last_run_at_utc(), runs, now),
    ) {
        (_, Next::Ends(end)) => Some(end),
        // Missed under the skip policy: its time has passed unrun.
        (Schedule::Clocked(clocked), _) if clocked.at <= now => Some(End::Clocked(clocked.at)),
        _ => None,
    }
}

/// Positional args as the `args` column holds them: a JSON array, else
/// refused in the beat's words for a row that held it.
fn args_column(args: &Value) -> Result<String, String> {
    match args {
        Value::Array(_) => Ok(args.to_string()),
        other => Err(format!(
            "args must be a JSON array, got {}",
            crate::schedule::truncated(other.to_string())
        )),
    }
}

/// The args a row runs with (`[]` for NULL), if its column reads as JSON.
fn args_of(row: &RoutineRow) -> Option<Value> {
    match row.args.as_deref().map(serde_json::from_str::<Value>) {
        None | Some(Ok(Value::Null)) => Some(Value::Array(Vec::new())),
        Some(Ok(args)) => Some(args),
        Some(Err(_)) => None,
    }
}
