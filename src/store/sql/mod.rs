//! Every statement the beat issues, in each dialect.
//!
//! Statements bind only text and integers: timestamps travel as fixed-width
//! text (see `models::format_timestamp`) and batches as one JSON array, so
//! one piece of Rust code drives every backend and only the SQL differs.

pub(super) mod history;

/// The columns of a [`RoutineRow`](super::RoutineRow), as text where JSON.
/// Timestamps come as text too (see `models::RawRow`). The aliases shadow
/// the columns in ORDER BY, so statements order by `routines.next_run_at`
/// (the indexed column), never by its text.
pub(super) const PG_COLUMNS: &str = "id::text AS id, name::text AS name, task::text AS task, \
    schedule::text AS schedule, kwargs::text AS kwargs, options::text AS options, \
    args::text AS args, active, last_run_at::text AS last_run_at, total_run_count, \
    next_run_at::text AS next_run_at, next_due_at::text AS next_due_at, \
    needs_sync, last_error, (name_unique IS NULL) AS duplicate_name, run_requested_at::text AS run_requested_at, \
    ctid::text AS locator";
pub(super) const SQLITE_COLUMNS: &str = "id, name, task, schedule, kwargs, options, args, \
    active, CAST(last_run_at AS TEXT) AS last_run_at, total_run_count, \
    CAST(next_run_at AS TEXT) AS next_run_at, CAST(next_due_at AS TEXT) AS next_due_at, \
    needs_sync, last_error, \
    (name_unique IS NULL) AS duplicate_name, CAST(run_requested_at AS TEXT) AS run_requested_at, \
    CAST(rowid AS TEXT) AS locator";

/// One dialect's statements.
pub(super) struct Sql {
    /// Every routine, by name (operators and tests; never the scheduler).
    pub all: String,
    /// One routine by name: `$1` name.
    pub by_name: String,
    /// Up to `$3` routines after name `$1` and id `$2`, in name and id
    /// order (pages of `beat list`).
    pub page: String,
    /// Replaces what is given of a routine's task (`$1`), schedule (`$2`),
    /// kwargs (`$3`), options (`$4`) and args (`$5`); NULL keeps a column.
    /// `$6` name.
    pub edit: &'static str,
    /// Which of the names in the JSON array `$1` exist.
    pub existing_names: String,
    /// Inserts a routine, unplanned: `$1` id … `$7` active, `$8` args
    /// (NULL: none).
    pub insert: &'static str,
    /// The names of the routines whose name is not in the JSON array `$1`
    /// (what `delete_undeclared` deletes).
    pub undeclared_names: String,
    /// Deletes every routine whose name is not in the JSON array `$1`.
    pub delete_undeclared: String,
    /// Replaces a routine's columns by name: `$1` task, `$2` schedule,
    /// `$3` kwargs, `$4` options, `$5` args (NULL: none), `$6` active,
    /// `$7` name.
    pub update_by_name: &'static str,
    /// Sets `active` (`$1`) of the routine named `$2`.
    pub set_active: &'static str,
    /// Deletes the routine named `$1`.
    pub delete_by_name: &'static str,
    /// Marks rows with an error for another look (a redeploy may fix them).
    pub recheck_failed: &'static str,
    /// Marks active rows that lost their next run without being edited.
    pub recheck_unplanned: &'static str,
    /// Locks up to `$1` edited rows, skipping rows another beat holds.
    pub lock_edited: String,
    /// Locks up to `$2` rows due at `$1`, earliest first, skipping rows
    /// another beat holds.
    pub lock_due: String,
    /// As `lock_due`, for rows whose task is in the JSON array `$2`, at
    /// most `$3` of them.
    pub lock_due_of_tasks: String,
    /// Writes the plans in the JSON array `$1` to edited rows.
    pub write_planned: &'static str,
    /// Writes the plans in the JSON array `$1` to fired rows.
    pub write_fired: &'static str,
    /// Makes the routines whose ids are in the JSON array `$1` inactive
    /// (one-off routines that ran, routines past their end): an edit, as
    /// the triggers see it.
    pub end_routines: String,
    /// The earliest next run of any schedulable row.
    pub earliest_due: &'static str,
    /// As `earliest_due`, for rows whose task is in the JSON array `$1`.
    pub earliest_due_of_tasks: String,
}

pub(super) fn postgres() -> Sql {
    Sql {
        all: format!("SELECT {PG_COLUMNS} FROM routines ORDER BY name, id"),
        by_name: format!("SELECT {PG_COLUMNS} FROM routines WHERE name = $1 ORDER BY name_unique IS NULL, id LIMIT 1"),
        page: format!(
            "SELECT {PG_COLUMNS} FROM routines \
             WHERE routines.name >= $1 AND (routines.name > $1 OR routines.id > $2::uuid) \
             ORDER BY routines.name, routines.id LIMIT $3"
        ),
        edit: "UPDATE routines SET task = COALESCE($1, task), \
            schedule = COALESCE($2::json, schedule), kwargs = COALESCE($3::json, kwargs), \
            options = COALESCE($4::json, options), args = COALESCE($5::json, args) \
            WHERE name = $6",
        existing_names: "SELECT name::text AS name FROM routines \
            WHERE name IN (SELECT json_array_elements_text($1::json))"
            .into(),
        insert: "INSERT INTO routines \
            (id, name, task, schedule, kwargs, options, active, args, total_run_count, needs_sync) \
            VALUES ($1::uuid, $2, $3, $4::json, $5::json, $6::json, $7, $8::json, 0, true)",
        undeclared_names: "SELECT name::text AS name FROM routines \
            WHERE name NOT IN (SELECT json_array_elements_text($1::json)) ORDER BY name"
            .into(),
        delete_undeclared: "DELETE FROM routines \
            WHERE name NOT IN (SELECT json_array_elements_text($1::json))"
            .into(),
        update_by_name: "UPDATE routines SET task = $1, schedule = $2::json, kwargs = $3::json, \
            options = $4::json, args = $5::json, active = $6 WHERE name = $7",
        set_active: "UPDATE routines SET active = $1 WHERE name = $2",
        delete_by_name: "DELETE FROM routines WHERE name = $1",
        recheck_failed: "UPDATE routines SET needs_sync = true \
            WHERE last_error IS NOT NULL AND NOT needs_sync",
        recheck_unplanned: "UPDATE routines SET needs_sync = true \
            WHERE active AND next_run_at IS NULL AND last_error IS NULL AND NOT needs_sync",
        lock_edited: format!(
            "SELECT {PG_COLUMNS} FROM routines WHERE needs_sync \
             LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        lock_due: format!(
            "SELECT {PG_COLUMNS} FROM routines \
             WHERE active AND NOT needs_sync AND next_run_at <= $1::timestamp \
             ORDER BY routines.next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        lock_due_of_tasks: format!(
            "SELECT {PG_COLUMNS} FROM routines \
             WHERE active AND NOT needs_sync AND next_run_at <= $1::timestamp \
               AND task IN (SELECT json_array_elements_text($2::json)) \
             ORDER BY routines.next_run_at LIMIT $3 FOR UPDATE SKIP LOCKED"
        ),
        // Arrays bound as such, rows found by ctid: no JSON to parse and no
        // index to search (see `Plans`).
        write_planned: "UPDATE routines AS r SET \
            next_run_at = v.next_run_at, next_due_at = v.next_due_at, needs_sync = false, \
            last_error = v.last_error, run_requested_at = NULL \
            FROM unnest($1::text[]::tid[], $2::timestamp[], $3::timestamp[], $4::text[]) \
              AS v(t, next_run_at, next_due_at, last_error) \
            WHERE r.ctid = v.t",
        write_fired: "UPDATE routines AS r SET \
            last_run_at = COALESCE(v.last_run_at, r.last_run_at), \
            total_run_count = COALESCE(r.total_run_count, 0) + v.fired, \
            next_run_at = v.next_run_at, next_due_at = v.next_due_at, last_error = v.last_error \
            FROM unnest($1::text[]::tid[], $2::timestamp[], $3::int[], $4::timestamp[], \
                        $5::timestamp[], $6::text[]) \
              AS v(t, last_run_at, fired, next_run_at, next_due_at, last_error) \
            WHERE r.ctid = v.t",
        end_routines: "UPDATE routines SET active = false \
            WHERE id IN (SELECT json_array_elements_text($1::json)::uuid)"
            .into(),
        earliest_due: "SELECT CAST(next_run_at AS TEXT) AS at FROM routines \
            WHERE active AND NOT needs_sync AND next_run_at IS NOT NULL \
            ORDER BY routines.next_run_at LIMIT 1",
        earliest_due_of_tasks: "SELECT CAST(next_run_at AS TEXT) AS at FROM routines \
            WHERE active AND NOT needs_sync AND next_run_at IS NOT NULL \
              AND task IN (SELECT json_array_elements_text($1::json)) \
            ORDER BY routines.next_run_at LIMIT 1"
            .into(),
    }
}

/// SQLite has no row locks: the beat's writing transactions are
/// `BEGIN IMMEDIATE`, which serialises them across processes.
pub(super) fn sqlite() -> Sql {
    Sql {
        all: format!("SELECT {SQLITE_COLUMNS} FROM routines ORDER BY name, id"),
        by_name: format!(
            "SELECT {SQLITE_COLUMNS} FROM routines WHERE name = ? ORDER BY name_unique IS NULL, id LIMIT 1"
        ),
        page: format!(
            "SELECT {SQLITE_COLUMNS} FROM routines \
             WHERE routines.name >= ?1 AND (routines.name > ?1 OR routines.id > ?2) \
             ORDER BY routines.name, routines.id LIMIT ?3"
        ),
        edit: "UPDATE routines SET task = COALESCE(?, task), schedule = COALESCE(?, schedule), \
            kwargs = COALESCE(?, kwargs), options = COALESCE(?, options), \
            args = COALESCE(?, args) WHERE name = ?",
        existing_names: "SELECT name FROM routines \
            WHERE name IN (SELECT value FROM json_each(?))"
            .into(),
        insert: "INSERT INTO routines \
            (id, name, task, schedule, kwargs, options, active, args, total_run_count, needs_sync) \
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 1)",
        undeclared_names: "SELECT name FROM routines \
            WHERE name NOT IN (SELECT value FROM json_each(?)) ORDER BY name"
            .into(),
        delete_undeclared: "DELETE FROM routines \
            WHERE name NOT IN (SELECT value FROM json_each(?))"
            .into(),
        update_by_name: "UPDATE routines SET task = ?, schedule = ?, kwargs = ?, options = ?, \
            args = ?, active = ? WHERE name = ?",
        set_active: "UPDATE routines SET active = ? WHERE name = ?",
        delete_by_name: "DELETE FROM routines WHERE name = ?",
        recheck_failed: "UPDATE routines SET needs_sync = 1 \
            WHERE last_error IS NOT NULL AND NOT needs_sync",
        recheck_unplanned: "UPDATE routines SET needs_sync = 1 \
            WHERE active AND next_run_at IS NULL AND last_error IS NULL AND NOT needs_sync",
        lock_edited: format!("SELECT {SQLITE_COLUMNS} FROM routines WHERE needs_sync LIMIT ?"),
        lock_due: format!(
            "SELECT {SQLITE_COLUMNS} FROM routines \
             WHERE active AND NOT needs_sync AND next_run_at <= ? \
             ORDER BY routines.next_run_at LIMIT ?"
        ),
        lock_due_of_tasks: format!(
            "SELECT {SQLITE_COLUMNS} FROM routines \
             WHERE active AND NOT needs_sync AND next_run_at <= ? \
               AND task IN (SELECT value FROM json_each(?)) \
             ORDER BY routines.next_run_at LIMIT ?"
        ),
        write_planned: "UPDATE routines SET \
            next_run_at = v.next_run_at, next_due_at = v.next_due_at, needs_sync = 0, \
            last_error = v.last_error, run_requested_at = NULL \
            FROM (SELECT value ->> '$.id' AS id, value ->> '$.next_run_at' AS next_run_at, \
                         value ->> '$.next_due_at' AS next_due_at, \
                         value ->> '$.last_error' AS last_error FROM json_each(?)) AS v \
            WHERE routines.rowid = v.id",
        write_fired: "UPDATE routines SET \
            last_run_at = COALESCE(v.last_run_at, routines.last_run_at), \
            total_run_count = COALESCE(routines.total_run_count, 0) + v.fired, \
            next_run_at = v.next_run_at, next_due_at = v.next_due_at, last_error = v.last_error \
            FROM (SELECT value ->> '$.id' AS id, value ->> '$.last_run_at' AS last_run_at, \
                         value ->> '$.fired' AS fired, value ->> '$.next_run_at' AS next_run_at, \
                         value ->> '$.next_due_at' AS next_due_at, \
                         value ->> '$.last_error' AS last_error FROM json_each(?)) AS v \
            WHERE routines.rowid = v.id",
        end_routines: "UPDATE routines SET active = 0 \
            WHERE id IN (SELECT value FROM json_each(?))"
            .into(),
        earliest_due: "SELECT CAST(next_run_at AS TEXT) AS at FROM routines \
            WHERE active AND NOT needs_sync AND next_run_at IS NOT NULL \
            ORDER BY routines.next_run_at LIMIT 1",
        earliest_due_of_tasks: "SELECT CAST(next_run_at AS TEXT) AS at FROM routines \
            WHERE active AND NOT needs_sync AND next_run_at IS NOT NULL \
              AND task IN (SELECT value FROM json_each(?)) \
            ORDER BY routines.next_run_at LIMIT 1"
            .into(),
    }
}

#[cfg(feature = "mysql")]
pub(super) const MYSQL_COLUMNS: &str = "CAST(id AS CHAR) AS id, name, task, \
    CAST(schedule AS CHAR) AS schedule, CAST(kwargs AS CHAR) AS kwargs, \
    CAST(options AS CHAR) AS options, CAST(args AS CHAR) AS args, active, \
    CAST(last_run_at AS CHAR) AS last_run_at, total_run_count, \
    CAST(next_run_at AS CHAR) AS next_run_at, CAST(next_due_at AS CHAR) AS next_due_at, \
    needs_sync, last_error, \
    (name_unique IS NULL) AS duplicate_name, CAST(run_requested_at AS CHAR) AS run_requested_at, \
    CAST(id AS CHAR) AS locator";

/// JSON arrays become rows through `JSON_TABLE` (MySQL 8, MariaDB 10.6).
/// Locking reads use `SKIP LOCKED` (the same versions). Flags are compared
/// with `= 1` / `= 0` so that the composite indexes serve.
#[cfg(feature = "mysql")]
pub(super) fn mysql() -> Sql {
    const NAMES: &str =
        "SELECT v FROM JSON_TABLE(?, '$[*]' COLUMNS (v VARCHAR(255) PATH '$')) AS t";
    Sql {
        all: format!("SELECT {MYSQL_COLUMNS} FROM routines ORDER BY name, id"),
        by_name: format!("SELECT {MYSQL_COLUMNS} FROM routines WHERE name = ? ORDER BY name_unique IS NULL, id LIMIT 1"),
        // The page's name is bound twice (MySQL has no numbered placeholders).
        page: format!(
            "SELECT {MYSQL_COLUMNS} FROM routines \
             WHERE routines.name >= ? AND (routines.name > ? OR routines.id > ?) \
             ORDER BY routines.name, routines.id LIMIT ?"
        ),
        edit: "UPDATE routines SET task = COALESCE(?, task), schedule = COALESCE(?, schedule), \
            kwargs = COALESCE(?, kwargs), options = COALESCE(?, options), \
            args = COALESCE(?, args) WHERE name = ?",
        existing_names: format!("SELECT name FROM routines WHERE name IN ({NAMES})"),
        insert: "INSERT INTO routines \
            (id, name, task, schedule, kwargs, options, active, args, total_run_count, needs_sync) \
            VALUES (REPLACE(?, '-', ''), ?, ?, ?, ?, ?, ?, ?, 0, 1)",
        undeclared_names: format!(
            "SELECT name FROM routines WHERE name NOT IN ({NAMES}) ORDER BY name"
        ),
        delete_undeclared: format!("DELETE FROM routines WHERE name NOT IN ({NAMES})"),
        update_by_name: "UPDATE routines SET task = ?, schedule = ?, kwargs = ?, options = ?, \
            args = ?, active = ? WHERE name = ?",
        set_active: "UPDATE routines SET active = ? WHERE name = ?",
        delete_by_name: "DELETE FROM routines WHERE name = ?",
        recheck_failed: "UPDATE routines SET needs_sync = 1 \
            WHERE last_error IS NOT NULL AND needs_sync = 0",
        recheck_unplanned: "UPDATE routines SET needs_sync = 1 \
            WHERE active = 1 AND next_run_at IS NULL AND last_error IS NULL AND needs_sync = 0",
        lock_edited: format!(
            "SELECT {MYSQL_COLUMNS} FROM routines WHERE needs_sync = 1 \
             LIMIT ? FOR UPDATE SKIP LOCKED"
        ),
        lock_due: format!(
            "SELECT {MYSQL_COLUMNS} FROM routines \
             WHERE active = 1 AND needs_sync = 0 AND next_run_at <= ? \
             ORDER BY routines.next_run_at LIMIT ? FOR UPDATE SKIP LOCKED"
        ),
        lock_due_of_tasks: format!(
            "SELECT {MYSQL_COLUMNS} FROM routines \
             WHERE active = 1 AND needs_sync = 0 AND next_run_at <= ? \
               AND task IN ({NAMES}) \
             ORDER BY routines.next_run_at LIMIT ? FOR UPDATE SKIP LOCKED"
        ),
        write_planned: "UPDATE routines AS r JOIN JSON_TABLE(?, '$[*]' COLUMNS ( \
                id VARCHAR(64) PATH '$.id', next_run_at VARCHAR(32) PATH '$.next_run_at', \
                next_due_at VARCHAR(32) PATH '$.next_due_at', \
                last_error TEXT PATH '$.last_error')) AS v ON r.id = v.id \
            SET r.next_run_at = v.next_run_at, r.next_due_at = v.next_due_at, r.needs_sync = 0, \
                r.last_error = v.last_error, r.run_requested_at = NULL",
        write_fired: "UPDATE routines AS r JOIN JSON_TABLE(?, '$[*]' COLUMNS ( \
                id VARCHAR(64) PATH '$.id', last_run_at VARCHAR(32) PATH '$.last_run_at', \
                fired INT PATH '$.fired', next_run_at VARCHAR(32) PATH '$.next_run_at', \
                next_due_at VARCHAR(32) PATH '$.next_due_at', \
                last_error TEXT PATH '$.last_error')) AS v ON r.id = v.id \
            SET r.last_run_at = COALESCE(v.last_run_at, r.last_run_at), \
                r.total_run_count = COALESCE(r.total_run_count, 0) + v.fired, \
                r.next_run_at = v.next_run_at, r.next_due_at = v.next_due_at, \
                r.last_error = v.last_error",
        end_routines: format!("UPDATE routines SET active = 0 WHERE id IN ({NAMES})"),
        earliest_due: "SELECT CAST(next_run_at AS CHAR) AS at FROM routines \
            WHERE active = 1 AND needs_sync = 0 AND next_run_at IS NOT NULL \
            ORDER BY routines.next_run_at LIMIT 1",
        earliest_due_of_tasks: format!(
            "SELECT CAST(next_run_at AS CHAR) AS at FROM routines \
             WHERE active = 1 AND needs_sync = 0 AND next_run_at IS NOT NULL \
               AND task IN ({NAMES}) \
             ORDER BY routines.next_run_at LIMIT 1"
        ),
    }
}
