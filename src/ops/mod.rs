//! Operations on the routines, their runs and the beats, for the `beat`
//! command line (and any other front end): list, show, add, edit, enable,
//! disable, remove, send, backfill, check, history, beats, migrate, and
//! previews of schedules.
//!
//! Every change is an ordinary edit of the table, which the serving beats
//! see within their watch interval; every check is the beat's own
//! (the routing check of `dispatch`), so a routine refused here
//! is refused with the text the beat would write to its `last_error`.

mod backfill;
mod routines;
mod runs;
mod words;

pub use backfill::{BackfillRun, Backfilled, Cut, BACKFILL_LIMIT};
pub use routines::{Change, NewRoutineSpec, Problem, RoutineView, Shown};
pub use runs::Sent;
pub use words::{describe, parse_time};

use crate::config::Config;
use crate::dispatch::Router;
use crate::error::Error;
use crate::schedule::{self, Schedule};
use crate::store::{BeatRow, RoutineStore};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// An operator's view of one database.
pub struct Operator {
    store: RoutineStore,
    config: Config,
    zone: Tz,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("store", &self.store)
            .finish()
    }
}

/// How the routines are checked: as the live beats would check them.
struct Checker {
    router: Router,
    /// Whether task names could be checked (some beat is alive, or a
    /// broker is configured): with neither, any task passes.
    tasks_known: bool,
}

impl Operator {
    /// Connects to `config.scheduler_db_uri`, whose tables must be those of
    /// this version (nothing is created: see [`Operator::migrate`]).
    pub fn connect(config: Config) -> Result<Self, Error> {
        let op = Self::open(config)?;
        op.store.check_schema()?;
        Ok(op)
    }

    /// Connects to `config.scheduler_db_uri` and creates or upgrades the
    /// tables (what a beat does at start with `create_table`).
    pub fn migrate(config: Config) -> Result<Self, Error> {
        let op = Self::open(config)?;
        op.store.migrate()?;
        Ok(op)
    }

    fn open(config: Config) -> Result<Self, Error> {
        let zone = config.timezone;
        let store =
            RoutineStore::open_briefly(&config.scheduler_db_uri, config.scheduler_db_timeout)?;
        Ok(Operator {
            store,
            config,
            zone,
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &RoutineStore {
        &self.store
    }

    /// The default zone of crontabs (`timezone`).
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Every beat recorded, newest first.
    pub fn beats(&self) -> Result<Vec<BeatRow>, Error> {
        Ok(self.store.beats().list()?)
    }

    /// Whether `beat` is alive by `scheduler_dead_after`.
    pub fn is_alive(&self, beat: &BeatRow) -> bool {
        beat.is_alive(self.config.scheduler_dead_after)
    }

    pub(super) fn live_beats(&self) -> Result<Vec<BeatRow>, Error> {
        Ok(self
            .beats()?
            .into_iter()
            .filter(|b| self.is_alive(b))
            .collect())
    }

    /// The live beats' view of tasks: theirs run in-process, the rest go
    /// to Celery if any of them (or this configuration) has a broker.
    fn checker(&self) -> Result<Checker, Error> {
        let live = self.live_beats()?;
        let has_broker = self.config.broker_url.is_some() || live.iter().any(|b| b.broker);
        let tasks_known = has_broker || !live.is_empty();
        let tasks: Vec<String> = live.into_iter().flat_map(|b| b.tasks).collect();
        Ok(Checker {
            // Unknown tasks pass when nothing is known of the beats.
            router: Router::for_tasks(tasks, has_broker || !tasks_known, self.zone),
            tasks_known,
        })
    }
}

/// What an operator typed for a JSON field, when it is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("not valid JSON: {0}")]
pub struct NotJson(serde_json::Error);

/// A JSON value an operator typed (kwargs, options, a schedule).
pub fn parse_json(text: &str) -> Result<serde_json::Value, NotJson> {
    serde_json::from_str(text).map_err(NotJson)
}

/// Positional args an operator typed for the routine `routine`: a JSON
/// array, else refused naming the routine, in the words the beat writes to
/// the `last_error` of a row holding that text.
///
/// ```
/// use celery_diesel_kit::ops::parse_args;
/// assert_eq!(parse_args("r", "[1, \"a\"]").unwrap(), serde_json::json!([1, "a"]));
/// assert_eq!(parse_args("r", r#"{"a": 1}"#).unwrap_err().to_string(),
///     r#"routine r: args must be a JSON array, got {"a":1}"#);
/// assert!(parse_args("r", "nope").unwrap_err().to_string()
///     .starts_with("routine r: args is not valid JSON: "));
/// ```
pub fn parse_args(routine: &str, text: &str) -> Result<serde_json::Value, Error> {
    let invalid = |reason: String| Error::from(crate::routine::RoutineError::new(routine, reason));
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(args @ serde_json::Value::Array(_)) => Ok(args),
        Ok(other) => Err(invalid(format!(
            "args must be a JSON array, got {}",
            schedule::truncated(other.to_string())
        ))),
        Err(e) => Err(invalid(format!("args is not valid JSON: {e}"))),
    }
}

/// The next `n` fire times of a schedule after `from`, within its bounds
/// (`start_at`, `end_at`, `max_runs`, `one_off`), without a database (`beat
/// next`). Crontabs without a `timezone` key match `zone`.
pub fn preview(
    schedule_json: &str,
    zone: Tz,
    n: usize,
    from: DateTime<Utc>,
) -> Result<(Schedule, Vec<DateTime<Utc>>), Error> {
    let json: serde_json::Value = serde_json::from_str(schedule_json).map_err(|e| {
        crate::routine::RoutineError::new(
            "(preview)",
            schedule::ScheduleError::NotJson(e.to_string()).to_string(),
        )
    })?;
    let timing = schedule::Timing::from_json_in(&json, zone)
        .map_err(|e| crate::routine::RoutineError::new("(preview)", e.to_string()))?;
    // Within its bounds, as a routine that has not run yet.
    let runs = timing.next_runs(from, n, 0);
    Ok((timing.schedule, runs))
}
