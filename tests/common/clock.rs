//! Time in tests: fixed instants to drive `ManualBeat::tick` with, and a
//! clock the test sets by hand.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use std::sync::{Arc, Mutex};

/// The instant the tests' schedules start from (`at(0)`).
pub const T0: &str = "2030-01-01 00:00:00";

/// `seconds` after [`T0`].
pub fn at(seconds: i64) -> DateTime<Utc> {
    utc(T0) + TimeDelta::seconds(seconds)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(text: &str) -> DateTime<Utc> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .and_utc()
}

/// A clock the test sets (and moves) by hand.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    pub fn at(t: DateTime<Utc>) -> TestClock {
        TestClock(Arc::new(Mutex::new(t)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

impl celery_diesel_kit::Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}
