//! What is worth a log line about a run, said once its claim has
//! committed: a claim that rolls back (the broker is away) is tried again,
//! and must not fill the log with the same lines at every try.

use crate::routine::Invalid;
use crate::schedule::End;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Something to say about a run.
pub(crate) enum Note {
    Invalid(Invalid),
    Missed {
        due: DateTime<Utc>,
        late: Duration,
        grace: Duration,
        next: Option<DateTime<Utc>>,
    },
    CaughtUp {
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    },
    /// The previous run is still going: here, or (`true`) on another beat.
    Overlap(DateTime<Utc>, bool),
    Last(DateTime<Utc>),
    /// The next run is later than the table can hold.
    Unstorable(Invalid),
    /// The routine's runs are over: it becomes inactive.
    Ended(End),
}

impl Note {
    pub(crate) fn log(&self, routine: &str) {
        let next = |t: &Option<DateTime<Utc>>| t.map_or("never".to_owned(), |t| t.to_string());
        match self {
            Note::Invalid(reason) | Note::Unstorable(reason) => log::error!(
                "routine {routine}: {reason}; it will not run until its row is fixed"
            ),
            Note::Missed {
                due,
                late,
                grace,
                next: n,
            } => log::warn!(
                "routine {routine}: skipped the run due {due}, {late:.1?} late (misfire grace time {grace:?}, policy skip); next at {}",
                next(n)
            ),
            Note::CaughtUp { due, next: n } => log::warn!(
                "routine {routine}: was due at {due}, missed later due times; firing once now, next at {}",
                next(n)
            ),
            Note::Overlap(due, false) => log::warn!(
                "routine {routine}: previous run still queued or running; skipping the run due {due}"
            ),
            Note::Overlap(due, true) => log::warn!(
                "routine {routine}: previous run still going on another beat; skipping the run due {due}"
            ),
            Note::Ended(end) => log::info!(
                "routine {routine}: its runs are over ({end}); it is now inactive"
            ),
            Note::Last(now) => log::warn!(
                "routine {routine}: schedule has no run after {now}; this was its last"
            ),
        }
    }
}
