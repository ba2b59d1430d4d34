//! What the store reads and writes: rows of `routines` and the beat's
//! updates to them.

use crate::metrics::Target;
use crate::routine::Routine;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sql_types::{Bool, Integer, Nullable, Text};
use diesel::QueryableByName;
use serde::Serialize;

/// One row of `routines`, every column as the beat sees it. JSON columns
/// arrive as their text, so that a malformed value is the beat's error to
/// report for that row, not a query failure for every row.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutineRow {
    /// The routine's uuid, as text.
    pub id: String,
    /// The routine's name, unique among the rows that run (a row adopted
    /// with a name another row has never runs, and its `last_error` says
    /// so).
    pub name: String,
    /// The task it runs: a registered in-process task or a Celery task name.
    pub task: String,
    /// The schedule JSON, unparsed.
    pub schedule: String,
    /// The kwargs JSON, unparsed.
    pub kwargs: Option<String>,
    /// The options JSON, unparsed.
    pub options: Option<String>,
    /// The positional args JSON (an array), unparsed; `None`: no args.
    pub args: Option<String>,
    /// Inactive routines are kept but never run.
    pub active: bool,
    /// The due time of the last fire (naive UTC); `None` also when the
    /// column holds what no time can be (the row is then in error).
    pub last_run_at: Option<NaiveDateTime>,
    /// How many times the routine has fired.
    pub total_run_count: Option<i32>,
    /// When its next run is dispatched (naive UTC); `None` while not
    /// planned. That is its due time, unless the schedule has a `jitter`.
    pub next_run_at: Option<NaiveDateTime>,
    /// The due time of the next run when it is dispatched later than due
    /// (a `jitter`); `None`: `next_run_at` is the due time.
    pub next_due_at: Option<NaiveDateTime>,
    /// Edited since the beat last planned it.
    pub(crate) needs_sync: bool,
    /// Why the beat does not run it, if it does not.
    pub last_error: Option<String>,
    /// Another row has the same name and runs in its stead: this one never
    /// runs (rows adopted from a table that had duplicate names).
    pub(crate) duplicate_name: bool,
    /// When `beat send` (or an `UPDATE`) asked for a run now; the beat that
    /// plans the row runs it and clears this.
    pub run_requested_at: Option<NaiveDateTime>,
    /// A column the beat could not read (a timestamp out of range, say).
    pub(crate) unreadable: Option<String>,
    /// Where the row is, for writes in the transaction that locked it:
    /// PostgreSQL's `ctid`, SQLite's `rowid`, else the id.
    pub(crate) locator: String,
}

impl RoutineRow {
    /// A row not yet written, for checking it as the beat would.
    pub(crate) fn draft(
        name: &str,
        task: &str,
        schedule: &str,
        kwargs: &str,
        options: &str,
    ) -> Self {
        RoutineRow {
            id: String::new(),
            name: name.to_owned(),
            task: task.to_owned(),
            schedule: schedule.to_owned(),
            kwargs: Some(kwargs.to_owned()),
            options: Some(options.to_owned()),
            args: None,
            active: true,
            last_run_at: None,
            total_run_count: None,
            next_run_at: None,
            next_due_at: None,
            needs_sync: true,
            last_error: None,
            duplicate_name: false,
            run_requested_at: None,
            unreadable: None,
            locator: String::new(),
        }
    }

    /// Whether it was edited since a beat last planned it: the serving
    /// beats have not taken the edit in yet.
    pub fn awaits_planning(&self) -> bool {
        self.needs_sync
    }

    /// `last_run_at` as a UTC instant.
    pub fn last_run_at_utc(&self) -> Option<DateTime<Utc>> {
        self.last_run_at.map(|t| t.and_utc())
    }

    /// How many runs it has made (`total_run_count`; 0 when NULL).
    pub fn runs_made(&self) -> u32 {
        u32::try_from(self.total_run_count.unwrap_or(0).max(0)).unwrap_or(0)
    }

    /// `next_run_at` as a UTC instant: when the next run is dispatched.
    pub fn next_run_at_utc(&self) -> Option<DateTime<Utc>> {
        self.next_run_at.map(|t| t.and_utc())
    }

    /// The due time of the next run (what its task id and `last_run_at`
    /// name): `next_due_at` if the run is jittered, else `next_run_at`.
    pub fn next_due_at_utc(&self) -> Option<DateTime<Utc>> {
        self.next_due_at.or(self.next_run_at).map(|t| t.and_utc())
    }
}

/// A row as it comes off the wire: timestamps as text, so that a value no
/// time can be ('infinity', year 300000, a word typed into SQLite) is that
/// row's error and not a failed query for the whole batch.
#[derive(QueryableByName)]
pub(super) struct RawRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    task: String,
    #[diesel(sql_type = Text)]
    schedule: String,
    #[diesel(sql_type = Nullable<Text>)]
    kwargs: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    options: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    args: Option<String>,
    #[diesel(sql_type = Bool)]
    active: bool,
    #[diesel(sql_type = Nullable<Text>)]
    last_run_at: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    total_run_count: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    next_run_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    next_due_at: Option<String>,
    #[diesel(sql_type = Bool)]
    needs_sync: bool,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Bool)]
    duplicate_name: bool,
    #[diesel(sql_type = Nullable<Text>)]
    run_requested_at: Option<String>,
    #[diesel(sql_type = Text)]
    locator: String,
}

impl From<RawRow> for RoutineRow {
    fn from(raw: RawRow) -> Self {
        let mut unreadable = None;
        let mut time = |column: &str, text: Option<String>| {
            let text = text?;
            let parsed = parse_timestamp(&text);
            if parsed.is_none() && unreadable.is_none() {
                unreadable = Some(format!(
                    "{column} holds {:?}, which is no time the beat can read",
                    crate::schedule::truncated(text)
                ));
            }
            parsed
        };
        let last_run_at = time("last_run_at", raw.last_run_at);
        let next_run_at = time("next_run_at", raw.next_run_at);
        let next_due_at = time("next_due_at", raw.next_due_at);
        let run_requested_at = time("run_requested_at", raw.run_requested_at);
        RoutineRow {
            id: raw.id,
            name: raw.name,
            task: raw.task,
            schedule: raw.schedule,
            kwargs: raw.kwargs,
            options: raw.options,
            args: raw.args,
            active: raw.active,
            last_run_at,
            total_run_count: raw.total_run_count,
            next_run_at,
            next_due_at,
            needs_sync: raw.needs_sync,
            last_error: raw.last_error,
            duplicate_name: raw.duplicate_name,
            run_requested_at,
            unreadable,
            locator: raw.locator,
        }
    }
}

/// A timestamp column's text, as each backend writes it:
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (also with a `T`, and SQLite's values
/// with a trailing `Z` or offset `+00:00`). The common form is read by hand
/// (a claim reads two per row); anything else goes to chrono.
pub(super) fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .unwrap_or(text);
    parse_common(text.as_bytes()).or_else(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    })
}

/// `YYYY-MM-DD HH:MM:SS` with an optional fraction of up to nine digits.
fn parse_common(b: &[u8]) -> Option<NaiveDateTime> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(0..4)?).ok()?,
        number(5..7)?,
        number(8..10)?,
    )?;
    let nanos = match b.get(19) {
        None => 0,
        Some(b'.') => {
            let digits = b.get(20..)?;
            if digits.is_empty() || digits.len() > 9 {
                return None;
            }
            number(20..b.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        Some(_) => return None,
    };
    date.and_hms_nano_opt(number(11..13)?, number(14..16)?, number(17..19)?, nanos)
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
    /// The args JSON; `None` writes NULL (no args).
    pub(crate) args: Option<String>,
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
            args: routine.args_json(),
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
    /// The new `next_due_at`: the next run's due time when it is
    /// dispatched later (jitter); `None` when `next_run_at` is the due time.
    #[serde(serialize_with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub(crate) next_due_at: Option<DateTime<Utc>>,
    /// The new `last_error`; `None` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
    /// The routine's id if its runs are over: it becomes inactive (see
    /// `ClaimTx::end`).
    #[serde(skip)]
    pub(crate) ends: Option<String>,
}

impl Plan {
    /// A plan that leaves `row` as it is, to be filled in.
    pub(crate) fn keep(row: &RoutineRow) -> Self {
        Plan {
            locator: row.locator.clone(),
            last_run_at: None,
            fired: 0,
            next_run_at: None,
            next_due_at: None,
            last_error: None,
            ends: None,
        }
    }
}

/// The latest time every backend's timestamp column holds (MySQL's
/// `DATETIME` ends here, and SQLite's text keeps its time order only with
/// four-digit years).
pub(crate) const LATEST_STORABLE: DateTime<Utc> =
    match DateTime::from_timestamp_micros(253_402_300_799_999_999) {
        Some(t) => t,
        None => DateTime::<Utc>::MAX_UTC,
    };

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

#[cfg(test)]
mod tests {
    use super::parse_timestamp;

    #[test]
    fn timestamps_are_read_as_every_backend_writes_them() {
        for (text, expected) in [
            ("2030-01-02 03:04:05", Some("2030-01-02T03:04:05")),
            (
                "2030-01-02 03:04:05.000006",
                Some("2030-01-02T03:04:05.000006"),
            ),
            ("2030-01-02 03:04:05.5", Some("2030-01-02T03:04:05.500")),
            (
                "2030-01-02T03:04:05.123456Z",
                Some("2030-01-02T03:04:05.123456"),
            ),
            ("2030-01-02 03:04:05+00:00", Some("2030-01-02T03:04:05")),
            ("2030-01-02 03:04", Some("2030-01-02T03:04:00")),
            (
                "9999-12-31 23:59:59.999999",
                Some("9999-12-31T23:59:59.999999"),
            ),
            ("2030-02-30 00:00:00", None),
            ("2030-01-02 25:00:00", None),
            ("infinity", None),
            ("290000-01-01 00:00:00", None),
            ("0001-01-01 00:00:00 BC", None),
            ("yesterday", None),
            ("", None),
        ] {
            let parsed =
                parse_timestamp(text).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.f").to_string());
            let expected = expected.map(|e| {
                chrono::NaiveDateTime::parse_from_str(e, "%Y-%m-%dT%H:%M:%S%.f")
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string()
            });
            assert_eq!(parsed, expected, "{text:?}");
        }
    }
}

/// What became of a run, as `routine_runs.outcome` names it (and the
/// command line and the dashboard show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunOutcome {
    /// Published to the broker (its end is the Celery worker's to know).
    Published,
    /// Queued for this beat's workers.
    Queued,
    /// Running on a worker.
    Running,
    /// An attempt failed; it is waiting for its next.
    Retrying,
    /// It ran and succeeded.
    Succeeded,
    /// It failed (every attempt), or could not run at all.
    Failed,
    /// Not run: its previous run was still going.
    Skipped,
    /// Not run: later than its misfire grace time, under the `skip` policy.
    Missed,
    /// Left behind at a stop: not run (queued, or waiting for a retry)
    /// or still running when `shutdown_timeout` ran out.
    Abandoned,
    /// Its beat died before it ended.
    Lost,
    /// A name this version does not know (written by hand, or by a newer
    /// beat).
    Unknown,
}

impl RunOutcome {
    const ALL: [RunOutcome; 10] = [
        RunOutcome::Published,
        RunOutcome::Queued,
        RunOutcome::Running,
        RunOutcome::Retrying,
        RunOutcome::Succeeded,
        RunOutcome::Failed,
        RunOutcome::Skipped,
        RunOutcome::Missed,
        RunOutcome::Abandoned,
        RunOutcome::Lost,
    ];

    /// Its name in `routine_runs.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Published => "published",
            RunOutcome::Queued => "queued",
            RunOutcome::Running => "running",
            RunOutcome::Retrying => "retrying",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Missed => "missed",
            RunOutcome::Abandoned => "abandoned",
            RunOutcome::Lost => "lost",
            RunOutcome::Unknown => "unknown",
        }
    }

    /// The outcome of this name.
    pub fn from_name(name: &str) -> Self {
        RunOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == name)
            .unwrap_or(RunOutcome::Unknown)
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RunOutcome {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// A run to record, in the transaction that dispatches it. Travels as JSON
/// on SQLite and MySQL (short keys: a burst writes thousands).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NewRun {
    #[serde(rename = "r")]
    pub(crate) routine_id: String,
    #[serde(rename = "n")]
    pub(crate) routine: String,
    #[serde(rename = "t")]
    pub(crate) task: String,
    #[serde(rename = "d", serialize_with = "instant")]
    pub(crate) due_at: DateTime<Utc>,
    #[serde(rename = "i")]
    pub(crate) task_id: String,
    #[serde(rename = "g", serialize_with = "named_target")]
    pub(crate) target: Target,
    #[serde(rename = "o")]
    pub(crate) on_demand: u8,
    /// 1 for a run of `beat backfill`.
    #[serde(rename = "b")]
    pub(crate) backfill: u8,
    #[serde(rename = "x", serialize_with = "named_outcome")]
    pub(crate) outcome: RunOutcome,
    #[serde(rename = "e", skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl NewRun {
    /// A record of `row`'s run due at `due`.
    pub(crate) fn of(
        row: &RoutineRow,
        due: DateTime<Utc>,
        task_id: &str,
        target: Target,
        outcome: RunOutcome,
        error: Option<String>,
    ) -> Self {
        NewRun {
            routine_id: row.id.clone(),
            routine: row.name.clone(),
            task: row.task.clone(),
            due_at: due,
            task_id: task_id.to_owned(),
            target,
            on_demand: 0,
            backfill: 0,
            outcome,
            error,
        }
    }
}

fn named_target<S: serde::Serializer>(t: &Target, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.as_str())
}

fn named_outcome<S: serde::Serializer>(o: &RunOutcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

fn instant<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*t))
}
