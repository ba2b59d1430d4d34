//! Finding routines for operators: a page of a search by name or task,
//! filtered by state, and the routines counted by state. Neither is the
//! scheduler's: they serve the dashboard and the metrics.

use super::models::RawRow;
use super::pool::Pools;
use super::sql;
use super::{Backend, RoutineRow, RoutineStore, StoreError};
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl};

/// A routine's state, as operators filter by it. The three are disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoutineState {
    /// Active, without an error: it runs.
    Active,
    /// Disabled (`active` false).
    Inactive,
    /// Active, with an error in `last_error`: it waits for a fix.
    Error,
}

impl RoutineState {
    /// `active`, `inactive` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutineState::Active => "active",
            RoutineState::Inactive => "inactive",
            RoutineState::Error => "error",
        }
    }

    /// The state named `name` (see [`Self::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Active, Self::Inactive, Self::Error]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    fn condition(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (RoutineState::Active, Backend::Postgres) => {
                "routines.active AND routines.last_error IS NULL"
            }
            (RoutineState::Active, _) => "routines.active = 1 AND routines.last_error IS NULL",
            (RoutineState::Inactive, Backend::Postgres) => "NOT routines.active",
            (RoutineState::Inactive, _) => "routines.active = 0",
            (RoutineState::Error, Backend::Postgres) => {
                "routines.active AND routines.last_error IS NOT NULL"
            }
            (RoutineState::Error, _) => "routines.active = 1 AND routines.last_error IS NOT NULL",
        }
    }
}

/// A page of routines to find, in name order.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RoutineQuery {
    /// Text the name or the task contains (any case); empty: every routine.
    pub search: String,
    /// Only routines in this state.
    pub state: Option<RoutineState>,
    /// Only routines after this `(name, id)` (the last of the page before).
    pub after: Option<(String, String)>,
    /// At most this many.
    pub limit: usize,
}

/// How many routines are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutineCounts {
    /// Active without an error.
    pub active: u64,
    /// Disabled.
    pub inactive: u64,
    /// Active with an error.
    pub error: u64,
}

#[derive(QueryableByName)]
struct CountsRow {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    inactive: i64,
    #[diesel(sql_type = BigInt)]
    errors: i64,
}

/// `text` as a LIKE pattern matching any text that contains it (in lower
/// case), with `!` as the escape character.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl RoutineStore {
    /// A page of the routines `query` asks for, in name and id order. The
    /// name index walks the table in order and the page ends at `limit`
    /// matches: a page of common matches reads about a page of rows; a
    /// search that matches little may read the whole table to fill one.
    pub fn find(&self, query: &RoutineQuery) -> Result<Vec<RoutineRow>, StoreError> {
        let backend = self.backend;
        let mut binds: Vec<String> = Vec::new();
        let mut param = |value: String| {
            binds.push(value);
            match backend {
                Backend::Postgres => format!("${}", binds.len()),
                _ => "?".to_owned(),
            }
        };
        let mut conditions: Vec<String> = Vec::new();
        if let Some((name, id)) = &query.after {
            let id_cast = match backend {
                Backend::Postgres => "::uuid",
                _ => "",
            };
            // `>=` first, so that the name index bounds the scan.
            conditions.push(format!(
                "routines.name >= {} AND (routines.name > {} OR routines.id > {}{id_cast})",
                param(name.clone()),
                param(name.clone()),
                param(id.clone()),
            ));
        }
        if !query.search.is_empty() {
            let pattern = contains_pattern(&query.search);
            conditions.push(format!(
                "(LOWER(routines.name) LIKE {} ESCAPE '!' OR LOWER(routines.task) LIKE {} ESCAPE '!')",
                param(pattern.clone()),
                param(pattern),
            ));
        }
        if let Some(state) = query.state {
            conditions.push(state.condition(backend).to_owned());
        }
        let columns = match backend {
            Backend::Postgres => sql::PG_COLUMNS,
            Backend::Sqlite => sql::SQLITE_COLUMNS,
            #[cfg(feature = "mysql")]
            Backend::Mysql => sql::MYSQL_COLUMNS,
        };
        let filter = match conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", conditions.join(" AND ")),
        };
        let statement = format!(
            "SELECT {columns} FROM routines {filter} ORDER BY routines.name, routines.id LIMIT {}",
            query.limit
        );
        with_conn!(self, |conn, _sql| {
            let mut q = diesel::sql_query(&statement).into_boxed();
            for value in &binds {
                q = q.bind::<Text, _>(value.clone());
            }
            let rows: Vec<RawRow> = q.load(conn).map_err(|e| StoreError::query("find", e))?;
            Ok(rows.into_iter().map(RoutineRow::from).collect())
        })
    }

    /// The routines counted by state: one scan of the table (about 0.1 s a
    /// million rows on PostgreSQL), so callers should not ask often.
    pub fn count_by_state(&self) -> Result<RoutineCounts, StoreError> {
        let (yes, no) = match self.backend {
            Backend::Postgres => ("active", "NOT active"),
            _ => ("active = 1", "active = 0"),
        };
        let statement = format!(
            "SELECT COUNT(*) AS total, COUNT(CASE WHEN {no} THEN 1 END) AS inactive, \
             COUNT(CASE WHEN {yes} AND last_error IS NOT NULL THEN 1 END) AS errors \
             FROM routines"
        );
        with_conn!(self, |conn, _sql| {
            let row: CountsRow = diesel::sql_query(&statement)
                .get_result(conn)
                .map_err(|e| StoreError::query("count by state", e))?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(RoutineCounts {
                active: n(row.total - row.inactive - row.errors),
                inactive: n(row.inactive),
                error: n(row.errors),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_text_itself() {
        assert_eq!(contains_pattern("Ab"), "%ab%");
        assert_eq!(contains_pattern("50%_off!"), "%50!%!_off!!%");
    }

    #[test]
    fn states_round_trip_by_name() {
        for state in [
            RoutineState::Active,
            RoutineState::Inactive,
            RoutineState::Error,
        ] {
            assert_eq!(RoutineState::parse(state.as_str()), Some(state));
        }
        assert_eq!(RoutineState::parse("bogus"), None);
    }
}
