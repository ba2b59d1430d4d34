//! Routines as the tests write them and read them back.

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
