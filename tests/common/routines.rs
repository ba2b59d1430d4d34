//! Routines as the tests write them (by the library, or by SQL as an
//! operator would) and read them back.

use super::TestDb;
use celery_diesel_kit::{Actor, RoutineStore, Schedule, Via};
use std::time::Duration;

/// An interval schedule of `seconds`.
pub fn every(seconds: u64) -> Schedule {
    Schedule::every(Duration::from_secs(seconds)).unwrap()
}

/// Who the tests' own edits are by, in the audit trail.
pub fn tester() -> Actor {
    Actor::new("tests", Via::Library)
}

/// Whether the routine `name` is active in the database of `config`.
pub fn is_active(config: &celery_diesel_kit::Config, name: &str) -> bool {
    RoutineStore::connect(&config.scheduler_db_uri)
        .unwrap()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
        .active
}

/// Inserts `n` Celery routines by SQL, as an operator would, named
/// `{prefix}000`, `{prefix}001`, …: routine `i` runs every `period(i)`
/// seconds, or every minute (a crontab) when that is 60. Each runs
/// `tasks.record`, sends to `queue`, and carries its name in kwargs
/// (`{"r": name}`), so that [`super::published`] tells its messages apart.
pub fn insert_tagged(
    db: &TestDb,
    prefix: &str,
    n: usize,
    queue: &str,
    period: impl Fn(usize) -> u64,
) {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("{prefix}{i:03}");
            let schedule = match period(i) {
                60 => r#"{"minute": "*/1"}"#.to_owned(),
                s => format!(r#"{{"timedelta": {s}}}"#),
            };
            format!(
                r#"('{name}', 'tasks.record', '{schedule}', '{{"r": "{name}"}}', '{{"queue": "{queue}"}}')"#
            )
        })
        .collect();
    insert_rows(db, &rows);
}

/// Inserts routines by SQL, a hundred to a statement: each of `rows` is
/// the SQL tuple `(name, task, schedule, kwargs, options)`.
pub fn insert_rows(db: &TestDb, rows: &[String]) {
    for chunk in rows.chunks(100) {
        db.exec(&format!(
            "INSERT INTO routines (name, task, schedule, kwargs, options) VALUES {}",
            chunk.join(", ")
        ));
    }
}
