//! The audit trail (`routine_edits`): who changed which routine, when, and
//! what each changed column was before and after.
//!
//! The rows are written by the database's own triggers, for every insert,
//! update and delete of a routine by any means, plain SQL included; the
//! beat's bookkeeping columns are not edits and write nothing. What the
//! crate adds is who acts: [`Actor`], set around its own edits (see
//! `WriteTransaction::acting_as`). This module reads the trail and prunes
//! it by age and by count per routine, a small batch at a time.

use super::models::{format_timestamp, parse_timestamp};
use super::pool::Pools;
use super::sql::history::millis;
use super::{RoutineStore, StoreError};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};
use serde_json::Value;
use std::time::Duration;

/// How a change reached the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Via {
    /// A `beat` subcommand.
    Cli,
    /// The dashboard.
    Dashboard,
    /// A beat syncing the routines declared in its code.
    Beat,
    /// A program calling the library.
    Library,
    /// Plain SQL (any session that did not say who it is).
    Sql,
}

impl Via {
    /// Its name in `routine_edits.via`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Dashboard => "dashboard",
            Via::Beat => "beat",
            Via::Library => "library",
            Via::Sql => "sql",
        }
    }

    fn parse(text: &str) -> Via {
        match text {
            "cli" => Via::Cli,
            "dashboard" => Via::Dashboard,
            "beat" => Via::Beat,
            "library" => Via::Library,
            // A session that set the setting by hand is plain SQL too.
            _ => Via::Sql,
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest name an actor keeps (longer ones are cut).
const MAX_ACTOR_CHARS: usize = 64;

/// Who changes routines, as the audit trail names them: an operator (by
/// the name given to `beat --as`, their dashboard token, or their OS
/// user), or a beat (by its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    name: String,
    via: Via,
}

impl Actor {
    /// `name` acting through `via`. Control characters become `?` and the
    /// name is cut to 64 characters; an empty name is `unknown`.
    pub fn new(name: &str, via: Via) -> Actor {
        let mut clean: String = name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(MAX_ACTOR_CHARS)
            .collect();
        if clean.trim().is_empty() {
            clean = "unknown".to_owned();
        }
        Actor { name: clean, via }
    }

    /// The operating-system user running this process (`$USER`, else
    /// `$LOGNAME`, else its uid), acting through `via`.
    pub fn os_user(via: Via) -> Actor {
        let name = ["USER", "LOGNAME"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_else(uid);
        Actor::new(&name, via)
    }

    /// The beat `beat_id`, syncing its declared routines.
    pub(crate) fn beat(beat_id: &str) -> Actor {
        Actor::new(beat_id, Via::Beat)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it acts.
    pub fn via(&self) -> Via {
        self.via
    }
}

/// This process's user id, as a name (`uid 1000`).
fn uid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map_or_else(|_| "unknown".to_owned(), |m| format!("uid {}", m.uid()))
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EditAction {
    /// The routine was inserted.
    Insert,
    /// Some of its columns changed.
    Update,
    /// It was deleted.
    Delete,
}

impl EditAction {
    /// Its name in `routine_edits.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            EditAction::Insert => "insert",
            EditAction::Update => "update",
            EditAction::Delete => "delete",
        }
    }
}

impl std::fmt::Display for EditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One column's change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FieldChange {
    /// The column (`name`, `task`, `schedule`, `active`, `kwargs`,
    /// `options`, or `id`).
    pub column: String,
    /// Its value before (`None` for an insert).
    pub old: Option<Value>,
    /// Its value after (`None` for a delete).
    pub new: Option<Value>,
}

/// One edit, as `routine_edits` records it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EditRow {
    /// The record's number (newer edits have larger ones).
    pub id: i64,
    /// The routine's id.
    pub routine_id: String,
    /// The routine's name after the edit (before it, for a delete).
    pub routine: String,
    /// When (the database's clock, naive UTC).
    pub edited_at: Option<NaiveDateTime>,
    /// What the edit did.
    pub action: EditAction,
    /// Who: an operator's name, a beat's id, or (plain SQL) the database
    /// user; `None` for plain SQL on SQLite, which has no users.
    pub actor: Option<String>,
    /// How it came.
    pub via: Via,
    /// Plain SQL on PostgreSQL: the session's `application_name`.
    pub application: Option<String>,
    /// The columns that changed, in the table's order.
    pub changes: Vec<FieldChange>,
}

/// Which edits to list (`beat log`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct EditFilter {
    /// Edits of this routine id.
    pub routine_id: Option<String>,
    /// Edits recorded under this routine name (for a routine since deleted).
    pub routine: Option<String>,
    /// Only edits made at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// The audited columns, in the order edits show them.
const COLUMNS: [&str; 8] = [
    "id", "name", "task", "schedule", "active", "kwargs", "options", "args",
];

#[derive(QueryableByName)]
struct RawEdit {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    routine_id: String,
    #[diesel(sql_type = Text)]
    routine: String,
    #[diesel(sql_type = Nullable<Text>)]
    edited_at: Option<String>,
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Nullable<Text>)]
    actor: Option<String>,
    #[diesel(sql_type = Text)]
    via: String,
    #[diesel(sql_type = Nullable<Text>)]
    application: Option<String>,
    #[diesel(sql_type = Text)]
    changes: String,
}

impl From<RawEdit> for EditRow {
    fn from(raw: RawEdit) -> Self {
        let action = match raw.action.as_str() {
            "insert" => EditAction::Insert,
            "delete" => EditAction::Delete,
            _ => EditAction::Update,
        };
        EditRow {
            id: raw.id,
            routine_id: raw.routine_id,
            routine: raw.routine,
            edited_at: raw.edited_at.as_deref().and_then(parse_timestamp),
            action,
            actor: raw.actor,
            via: Via::parse(&raw.via),
            application: raw.application,
            changes: changes(&raw.changes),
        }
    }
}

/// The changes recorded as `{"column": {"old": …, "new": …}}`, in the
/// table's order. MySQL and SQLite keep `active` as 0 or 1: it is shown
/// as the boolean it is.
fn changes(text: &str) -> Vec<FieldChange> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return vec![FieldChange {
            column: "(unreadable)".to_owned(),
            old: None,
            new: Some(Value::String(text.to_owned())),
        }];
    };
    let order = |column: &str| {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .unwrap_or(COLUMNS.len())
    };
    let mut changes: Vec<FieldChange> = map
        .into_iter()
        .map(|(column, change)| {
            let side = |key: &str| {
                change
                    .get(key)
                    .cloned()
                    .map(|value| match (&*column, value) {
                        ("active", Value::Number(n)) => Value::Bool(n.as_f64() != Some(0.0)),
                        (_, value) => value,
                    })
            };
            FieldChange {
                old: side("old"),
                new: side("new"),
                column,
            }
        })
        .collect();
    changes.sort_by_key(|c| order(&c.column));
    changes
}

#[derive(QueryableByName)]
struct EditId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct EditOf {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    routine_id: String,
}

/// The audit trail (`routine_edits`), from [`RoutineStore::edits`].
#[derive(Debug, Clone, Copy)]
pub struct Edits<'s>(&'s RoutineStore);

impl RoutineStore {
    /// The audit trail (`routine_edits`).
    pub fn edits(&self) -> Edits<'_> {
        Edits(self)
    }
}

impl Edits<'_> {
    /// Recorded edits matching `filter`, newest first.
    pub fn list(&self, filter: &EditFilter) -> Result<Vec<EditRow>, StoreError> {
        let statement = self.0.history.dialect.edits(
            filter.routine_id.is_some(),
            filter.routine.is_some(),
            filter.since.is_some(),
        );
        let texts = [filter.routine_id.clone(), filter.routine.clone()]
            .into_iter()
            .chain([filter.since.map(format_timestamp)])
            .flatten()
            .collect();
        let rows: Vec<RawEdit> = self.0.newest("edits", &statement, texts, filter.limit)?;
        Ok(rows.into_iter().map(EditRow::from).collect())
    }

    /// Deletes the edits older than `age` (by the database's clock, which
    /// dated them) among the `batch` oldest. Returns how many went (fewer
    /// than `batch`: no more are due to go).
    pub(crate) fn prune_aged(&self, age: Duration, batch: usize) -> Result<usize, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let ids: Vec<EditId> = with_conn!(self.0, |conn, _sql| {
            diesel::sql_query(&self.0.history.aged_edits)
                .bind::<BigInt, _>(batch)
                .bind::<BigInt, _>(millis(age))
                .load(conn)
                .map_err(|e| StoreError::query("prune_aged_edits", e))?
        });
        self.delete_edits(ids.iter().map(|r| r.id))
    }

    /// The routines with edits numbered after `after`, from the `batch`
    /// next edits, and the number of the last of them: the housekeeper's
    /// walk over new edits, which finds the routines to trim.
    pub(crate) fn routines_edited_after(
        &self,
        after: i64,
        batch: usize,
    ) -> Result<(Vec<String>, i64), StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let rows: Vec<EditOf> = with_conn!(self.0, |conn, _sql| {
            diesel::sql_query(&self.0.history.edits_after)
                .bind::<BigInt, _>(after)
                .bind::<BigInt, _>(batch)
                .load(conn)
                .map_err(|e| StoreError::query("routines_edited_after", e))?
        });
        let last = rows.iter().map(|r| r.id).max().unwrap_or(after);
        let mut ids: Vec<String> = rows.into_iter().map(|r| r.routine_id).collect();
        ids.sort();
        ids.dedup();
        Ok((ids, last))
    }

    /// Deletes the edits of `routine_ids` beyond each one's newest `keep`.
    /// Returns how many went.
    pub(crate) fn prune_excess(
        &self,
        routine_ids: &[String],
        keep: usize,
    ) -> Result<usize, StoreError> {
        if routine_ids.is_empty() {
            return Ok(0);
        }
        let ids_json = serde_json::Value::from(routine_ids.to_vec()).to_string();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let ids: Vec<EditId> = with_conn!(self.0, |conn, _sql| {
            diesel::sql_query(&self.0.history.excess_edits)
                .bind::<Text, _>(&ids_json)
                .bind::<BigInt, _>(keep)
                .load(conn)
                .map_err(|e| StoreError::query("prune_excess_edits", e))?
        });
        self.delete_edits(ids.iter().map(|r| r.id))
    }

    /// Deletes edits by id (each a primary-key lookup: no range locks).
    fn delete_edits(&self, ids: impl Iterator<Item = i64>) -> Result<usize, StoreError> {
        let ids: Vec<i64> = ids.collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let json = serde_json::Value::from(ids).to_string();
        with_conn!(self.0, |conn, _sql| {
            diesel::sql_query(self.0.history.json_ids_delete_edits)
                .bind::<Text, _>(&json)
                .execute(conn)
                .map_err(|e| StoreError::query("delete_edits", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_come_in_the_tables_order_with_active_as_a_boolean() {
        let read = changes(
            r#"{"schedule": {"old": {"timedelta": 5}, "new": {"minute": "*/5"}}, "active": {"old": 1, "new": 0}, "name": {"new": "a"}}"#,
        );
        assert_eq!(
            read,
            vec![
                FieldChange {
                    column: "name".into(),
                    old: None,
                    new: Some(json!("a"))
                },
                FieldChange {
                    column: "schedule".into(),
                    old: Some(json!({"timedelta": 5})),
                    new: Some(json!({"minute": "*/5"}))
                },
                FieldChange {
                    column: "active".into(),
                    old: Some(json!(true)),
                    new: Some(json!(false))
                },
            ]
        );
        let unreadable = changes("not json");
        assert_eq!(unreadable[0].column, "(unreadable)");
        assert_eq!(unreadable[0].new, Some(json!("not json")));
    }

    #[test]
    fn an_actors_name_is_cleaned_and_cut() {
        let a = Actor::new("ali\nce", Via::Cli);
        assert_eq!((a.name(), a.via()), ("ali?ce", Via::Cli));
        assert_eq!(Actor::new("  ", Via::Dashboard).name(), "unknown");
        assert_eq!(
            Actor::new(&"x".repeat(100), Via::Cli).name(),
            "x".repeat(64)
        );
        // Cut at 64 characters, not bytes.
        assert_eq!(
            Actor::new(&"é".repeat(100), Via::Cli).name(),
            "é".repeat(64)
        );
        assert_eq!(Actor::new(&"y".repeat(64), Via::Cli).name(), "y".repeat(64));
    }
}
