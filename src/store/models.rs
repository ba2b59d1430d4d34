//! What the store reads and writes: rows of `routines` and the beat's
//! updates to them.

use crate::routine::Routine;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamp};
use diesel::QueryableByName;
use serde::Serialize;

/// One row of `routines`, every column as the beat sees it. JSON columns
/// arrive as their text, so that a malformed value is the beat's error to
/// report for that row, not a query failure for every row.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct RoutineRow {
    /// The routine's uuid, as text.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// The routine's name (unique in practice: the kit matches declared
    /// routines by name).
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The task it runs: a registered in-process task or a Celery task name.
    #[diesel(sql_type = Text)]
    pub task: String,
    /// The schedule JSON, unparsed.
    #[diesel(sql_type = Text)]
    pub schedule: String,
    /// The kwargs JSON, unparsed.
    #[diesel(sql_type = Nullable<Text>)]
    pub kwargs: Option<String>,
    /// The options JSON, unparsed.
    #[diesel(sql_type = Nullable<Text>)]
    pub options: Option<String>,
    /// Inactive routines are kept but never run.
    #[diesel(sql_type = Bool)]
    pub active: bool,
    /// The due time of the last fire (naive UTC).
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub last_run_at: Option<NaiveDateTime>,
    /// How many times the routine has fired.
    #[diesel(sql_type = Nullable<Integer>)]
    pub total_run_count: Option<i32>,
    /// When it is next due (naive UTC); `None` while not planned.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub next_run_at: Option<NaiveDateTime>,
    /// Edited since the beat last planned it.
    #[diesel(sql_type = Bool)]
    pub needs_sync: bool,
    /// Why the beat does not run it, if it does not.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// Where the row is, for writes in the transaction that locked it:
    /// PostgreSQL's `ctid`, SQLite's `rowid`, else the id.
    #[diesel(sql_type = Text)]
    pub(crate) locator: String,
}

impl RoutineRow {
    /// `last_run_at` as a UTC instant.
    pub fn last_run_at_utc(&self) -> Option<DateTime<Utc>> {
        self.last_run_at.map(|t| t.and_utc())
    }

    /// `next_run_at` as a UTC instant.
    pub fn next_run_at_utc(&self) -> Option<DateTime<Utc>> {
        self.next_run_at.map(|t| t.and_utc())
    }
}

/// A row to insert: a [`Routine`]'s columns as the table holds them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewRoutine {
    pub(crate) id: uuid::Uuid,
    pub(crate) name: String,
    pub(crate) task: String,
    pub(crate) schedule: String,
    pub(crate) kwargs: String,
    pub(crate) options: String,
    pub(crate) active: bool,
}

impl From<&Routine> for NewRoutine {
    fn from(routine: &Routine) -> Self {
        NewRoutine {
            id: uuid::Uuid::new_v4(),
            name: routine.name().to_owned(),
            task: routine.task().to_owned(),
            schedule: routine.schedule_json(),
            kwargs: routine.kwargs_json(),
            options: routine.options_json(),
            active: routine.is_active(),
        }
    }
}

/// The beat's verdict on one row it has planned or fired, written back in
/// one statement per batch. `None`s are left out of the JSON (every backend
/// reads a missing key as NULL; not every one reads JSON null so).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Plan {
    /// Where the row is (see `RoutineRow`): valid only in the transaction
    /// that locked the row.
    #[serde(rename = "id")]
    pub(crate) locator: String,
    /// New `last_run_at` when it fired; `None` keeps the old value.
    #[serde(serialize_with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub(crate) last_run_at: Option<DateTime<Utc>>,
    /// 1 if it fired (adds to `total_run_count`), else 0.
    pub(crate) fired: i32,
    /// The new `next_run_at`; `None` takes the row out of the schedule.
    #[serde(serialize_with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub(crate) next_run_at: Option<DateTime<Utc>>,
    /// The new `last_error`; `None` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

impl Plan {
    /// A plan that leaves `row` as it is, to be filled in.
    pub(crate) fn keep(row: &RoutineRow) -> Self {
        Plan {
            locator: row.locator.clone(),
            last_run_at: None,
            fired: 0,
            next_run_at: None,
            last_error: None,
        }
    }
}

/// Timestamps travel as `YYYY-MM-DD HH:MM:SS.ffffff` (naive UTC): every
/// backend parses it, and SQLite, which stores it as text, compares it in
/// time order because the width is fixed.
pub(crate) fn format_timestamp(t: DateTime<Utc>) -> String {
    crate::schedule::format_micros(t, ' ')
}

fn timestamp<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_timestamp(*t)),
        None => s.serialize_none(),
    }
}
