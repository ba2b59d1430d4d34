//! A routine as code declares it: a named task on a schedule, with its
//! args, kwargs and Celery options, validated before it reaches the table.

use crate::schedule::{truncated, Bounds, Misfire, Schedule, Timing};
use serde_json::{Map, Value};

/// The longest name or task the kit's table holds (`varchar(50)`).
const MAX_NAME_LEN: usize = 50;

/// Why a routine was rejected, or an operation on it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routine {routine}: {reason}")]
#[non_exhaustive]
pub struct RoutineError {
    /// The routine's name (or, without one, its JSON).
    pub routine: String,
    /// What is wrong.
    pub reason: String,
}

impl RoutineError {
    /// An error about the routine called `routine`.
    pub fn new(routine: impl Into<String>, reason: impl Into<String>) -> Self {
        RoutineError {
            routine: routine.into(),
            reason: reason.into(),
        }
    }
}

/// Why a row or a routine cannot run, in words: its `last_error`, the
/// log's line, the reason of a [`RoutineError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Invalid(pub(crate) String);

impl Invalid {
    /// The reason an error gives.
    pub(crate) fn of(error: impl std::fmt::Display) -> Self {
        Invalid(error.to_string())
    }
}

impl From<Invalid> for String {
    fn from(invalid: Invalid) -> Self {
        invalid.0
    }
}

/// A routine declared in code: a task on a schedule.
///
/// ```
/// use celery_diesel_kit::{Routine, Schedule};
/// use std::time::Duration;
///
/// let nightly = Routine::new("nightly report", "reports.send",
///     Schedule::crontab("30", "2", "*", "*", "*").unwrap())
///     .kwargs(serde_json::json!({"recipient": "ops@example.com"}));
/// let resize = Routine::new("resize", "images.resize",
///     Schedule::every(Duration::from_secs(300)).unwrap())
///     .args(serde_json::json!(["thumbnails", 128]));
/// let heartbeat = Routine::new("heartbeat", "ping",
///     Schedule::every(Duration::from_secs(15)).unwrap());
/// # let _ = (nightly, resize, heartbeat);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Routine {
    name: String,
    task: String,
    schedule: Schedule,
    misfire: Misfire,
    bounds: Bounds,
    /// `None`: no args (the column stays NULL, as the kit leaves it).
    args: Option<Value>,
    kwargs: Value,
    options: Value,
    active: bool,
}

impl Routine {
    /// A routine called `name` running `task` on `schedule`, with no args
    /// or kwargs.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Self {
        Routine {
            name: name.into(),
            task: task.into(),
            schedule,
            misfire: Misfire::default(),
            bounds: Bounds::default(),
            args: None,
            kwargs: Value::Object(Map::new()),
            options: Value::Object(Map::new()),
            active: true,
        }
    }

    /// The task's positional args (a JSON array), stored in `args`: what
    /// Celery's `send_task(args=...)` sends, and an in-process task's
    /// `ctx.args`.
    pub fn args(mut self, args: Value) -> Self {
        self.args = Some(args);
        self
    }

    /// The task's kwargs (a JSON object).
    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Celery `apply_async` options (a JSON object), stored in `options`.
    pub fn options(mut self, options: Value) -> Self {
        self.options = options;
        self
    }

    /// Its own misfire policy and grace time (stored in its schedule JSON).
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// What bounds and spreads its runs: `start_at`, `end_at`, `max_runs`,
    /// `one_off`, `jitter` (stored in its schedule JSON; see [`Bounds`]).
    pub fn bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Whether the routine runs (default true). For a routine declared to
    /// a beat this applies when it is first inserted; the table decides
    /// afterwards.
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// The routine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task it runs.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Its schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Reads a routine from JSON: `{"name", "task", "schedule", "args"?,
    /// "kwargs"?, "options"?, "active"?}` with the schedule in the kit's
    /// form.
    pub fn from_json(value: &Value) -> Result<Self, RoutineError> {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |reason: String| {
            RoutineError::new(
                if name.is_empty() {
                    truncated(value.to_string())
                } else {
                    name.clone()
                },
                reason,
            )
        };
        let task = value
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("\"task\" must be a string".into()))?;
        let schedule_json = value.get("schedule").unwrap_or(&Value::Null);
        let schedule = Schedule::from_json(schedule_json).map_err(|e| invalid(e.to_string()))?;
        // The whole schedule JSON is checked as the beat reads it (its
        // naive times in UTC here: the beat reads them in its own zone).
        let timing = Timing::from_json_in(schedule_json, chrono_tz::UTC)
            .map_err(|e| invalid(e.to_string()))?;
        let mut routine = Routine::new(name.clone(), task, schedule)
            .misfire(timing.misfire)
            .bounds(timing.bounds);
        if let Some(args) = value.get("args") {
            routine.args = Some(args.clone());
        }
        if let Some(kwargs) = value.get("kwargs") {
            routine.kwargs = kwargs.clone();
        }
        if let Some(options) = value.get("options") {
            routine.options = options.clone();
        }
        if let Some(active) = value.get("active") {
            routine.active = active
                .as_bool()
                .ok_or_else(|| invalid("\"active\" must be true or false".into()))?;
        }
        routine.validate()?;
        Ok(routine)
    }

    /// Checks what the table would not hold or the beat would not run:
    /// empty or over-long names and tasks, args that are not a JSON array,
    /// kwargs or options that are not JSON objects.
    pub fn validate(&self) -> Result<(), RoutineError> {
        let invalid = |reason: String| RoutineError::new(self.name.clone(), reason);
        for (what, value) in [("name", &self.name), ("task", &self.task)] {
            check_name(what, value).map_err(|e| invalid(e.0))?;
        }
        for (what, value) in [("kwargs", &self.kwargs), ("options", &self.options)] {
            if !value.is_object() {
                return Err(invalid(format!("{what} must be a JSON object")));
            }
        }
        if self.args.as_ref().is_some_and(|args| !args.is_array()) {
            return Err(invalid("args must be a JSON array".into()));
        }
        Ok(())
    }

    /// The `schedule` column's JSON: the kit's keys and this beat's
    /// extension keys.
    pub(crate) fn schedule_json(&self) -> String {
        let mut json = self.schedule.to_json();
        self.misfire.write_into(&mut json);
        self.bounds.write_into(&mut json);
        json.to_string()
    }

    /// The `args` column's JSON; `None` for NULL (no args).
    pub(crate) fn args_json(&self) -> Option<String> {
        self.args.as_ref().map(Value::to_string)
    }

    pub(crate) fn kwargs_json(&self) -> String {
        self.kwargs.to_string()
    }

    pub(crate) fn options_json(&self) -> String {
        self.options.to_string()
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active
    }
}

/// A name or task the table holds: not empty, at most the kit's 50
/// characters.
pub(crate) fn check_name(what: &str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid(format!("{what} must not be empty")));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(Invalid(format!(
            "{what} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Routine;
    use serde_json::json;

    #[test]
    fn args_are_read_from_json_and_must_be_an_array() {
        let read = |args| {
            Routine::from_json(
                &json!({"name": "r", "task": "t", "schedule": {"timedelta": 5}, "args": args}),
            )
            .map(|r| r.args_json())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            read(json!([1, "a", null])),
            Ok(Some(r#"[1,"a",null]"#.into()))
        );
        assert_eq!(read(json!([])), Ok(Some("[]".into())));
        for bad in [json!({"a": 1}), json!("nope"), json!(null), json!(3)] {
            assert_eq!(
                read(bad),
                Err("routine r: args must be a JSON array".into())
            );
        }
        let plain =
            Routine::from_json(&json!({"name": "r", "task": "t", "schedule": {"timedelta": 5}}));
        assert_eq!(plain.map(|r| r.args_json()), Ok(None), "no args: NULL");
    }
}
