//! The Python kit's table and rows, as SQLAlchemy writes them, for the
//! tests that adopt a kit-made table.

use super::Kind;

/// The kit's table exactly as SQLAlchemy 2.0 creates it from the kit's model.
pub fn kit_ddl(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => {
            "CREATE TABLE routines (
                id UUID NOT NULL, name VARCHAR(50) NOT NULL, task VARCHAR(50) NOT NULL,
                schedule JSON NOT NULL, last_run_at TIMESTAMP WITHOUT TIME ZONE,
                total_run_count INTEGER, active BOOLEAN NOT NULL, kwargs JSON, options JSON,
                PRIMARY KEY (id));
             CREATE INDEX ix_routines_last_run_at ON routines (last_run_at);
             CREATE INDEX ix_routines_name ON routines (name);"
        }
        // MariaDB 10.7+ has the UUID type SQLAlchemy names (MySQL 8 has not).
        Kind::Mysql => {
            "CREATE TABLE routines (
                id UUID NOT NULL, name VARCHAR(50) NOT NULL, task VARCHAR(50) NOT NULL,
                schedule JSON NOT NULL, last_run_at DATETIME, total_run_count INTEGER,
                active BOOL NOT NULL, kwargs JSON, options JSON, PRIMARY KEY (id));
             CREATE INDEX ix_routines_last_run_at ON routines (last_run_at);
             CREATE INDEX ix_routines_name ON routines (name);"
        }
        Kind::Sqlite => {
            "CREATE TABLE routines (
                id CHAR(32) NOT NULL, name VARCHAR(50) NOT NULL, task VARCHAR(50) NOT NULL,
                schedule JSON NOT NULL, last_run_at DATETIME, total_run_count INTEGER,
                active BOOLEAN NOT NULL, kwargs JSON, options JSON, PRIMARY KEY (id));
             CREATE INDEX ix_routines_last_run_at ON routines (last_run_at);
             CREATE INDEX ix_routines_name ON routines (name);"
        }
    }
}

/// A row as the kit's `merge_inplace` inserts it (SQLAlchemy's statement).
pub fn kit_insert(kind: Kind, name: &str, schedule: &str) -> String {
    kit_insert_run(kind, name, schedule, 0)
}

/// As `kit_insert`, for a row that has run `count` times.
pub fn kit_insert_run(kind: Kind, name: &str, schedule: &str, count: i32) -> String {
    kit_insert_row(kind, name, name, schedule, count, "{}", "{}", true)
}

/// A row as the kit's `merge_inplace` inserts it (SQLAlchemy's statement),
/// each column given; a new id.
#[allow(clippy::too_many_arguments)]
pub fn kit_insert_row(
    kind: Kind,
    name: &str,
    task: &str,
    schedule: &str,
    count: i32,
    kwargs: &str,
    options: &str,
    active: bool,
) -> String {
    let id = uuid::Uuid::new_v4();
    // SQLAlchemy binds a uuid natively on PostgreSQL, as 32 hex digits elsewhere.
    let id = match kind {
        Kind::Postgres => id.to_string(),
        Kind::Sqlite | Kind::Mysql => id.simple().to_string(),
    };
    let active = match (kind, active) {
        (Kind::Postgres, a) => a.to_string(),
        (_, a) => u8::from(a).to_string(),
    };
    // A literal of the text (MySQL reads backslashes as escapes).
    let quoted = |text: &str| match kind {
        Kind::Mysql => text.replace('\\', "\\\\").replace('\'', "''"),
        _ => text.replace('\'', "''"),
    };
    format!(
        "INSERT INTO routines (id, name, task, schedule, last_run_at, total_run_count, active, kwargs, options) \
         VALUES ('{id}', '{}', '{}', '{}', NULL, {count}, {active}, '{}', '{}')",
        quoted(name),
        quoted(task),
        quoted(schedule),
        quoted(kwargs),
        quoted(options)
    )
}
