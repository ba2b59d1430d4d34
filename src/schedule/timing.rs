//! A routine's timing: its schedule with its misfire settings and bounds,
//! as the scheduler asks of it: the next due time, the end, and the
//! instant a run is dispatched at.

use super::bounds::Bounds;
use super::{zone, Misfire, Schedule, ScheduleError, TIMEZONE};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use std::fmt;

/// A schedule JSON read whole: when the routine is due, what it does with
/// a missed run, and what bounds its runs.
///
/// ```
/// use celery_diesel_kit::Timing;
/// use chrono::{TimeZone, Utc};
/// let json = serde_json::json!({"minute": 0, "hour": 9, "start_at": "2030-01-03T00:00", "max_runs": 2});
/// let timing = Timing::from_json_in(&json, chrono_tz::Europe::Berlin)?;
/// let t = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
/// let runs: Vec<String> = timing.next_runs(t, 5, 0).iter().map(|t| t.to_rfc3339()).collect();
/// assert_eq!(runs, ["2030-01-03T08:00:00+00:00", "2030-01-04T08:00:00+00:00"]);
/// # Ok::<(), celery_diesel_kit::ScheduleError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// When it is due.
    pub schedule: Schedule,
    /// Its own misfire settings.
    pub misfire: Misfire,
    /// What bounds its runs, and spreads them.
    pub bounds: Bounds,
}

/// What follows a run (or a plan): the next due time, or the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The next run is due then.
    At(DateTime<Utc>),
    /// The routine's runs are over: it becomes inactive.
    Ends(End),
    /// The schedule itself has no run after this one.
    Never,
}

/// Why a routine's runs are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A one-off routine ran.
    OneOff,
    /// A clocked routine's time came (it ran, or was missed).
    Clocked(DateTime<Utc>),
    /// Its next due time would be after its `end_at`.
    EndAt(DateTime<Utc>),
    /// It made its `max_runs` runs.
    MaxRuns(u32),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::OneOff => write!(f, "a one-off routine, and it has run"),
            End::Clocked(at) => write!(f, "a clocked routine, and its time ({at}) has come"),
            End::EndAt(at) => write!(f, "it has no run left before its end_at ({at})"),
            End::MaxRuns(n) => write!(f, "it has made its {n} run(s) (max_runs)"),
        }
    }
}

impl End {
    /// One word for it: `finished` (a one-off or clocked routine that ran
    /// or passed) or `ended` (past its end or its run limit).
    pub fn word(&self) -> &'static str {
        match self {
            End::OneOff | End::Clocked(_) => "finished",
            End::EndAt(_) | End::MaxRuns(_) => "ended",
        }
    }
}

impl Timing {
    /// Reads a schedule JSON whole; a crontab (and naive times) without a
    /// `timezone` key are on `default_zone`'s wall clock.
    pub fn from_json_in(value: &Value, default_zone: Tz) -> Result<Self, ScheduleError> {
        let schedule = Schedule::from_json_in(value, default_zone)?;
        let misfire = Misfire::from_json(value)?;
        let own_zone = match value.get(TIMEZONE).and_then(Value::as_str) {
            Some(name) => zone(name)?,
            None => default_zone,
        };
        let bounds = Bounds::from_json(value, own_zone)?;
        if matches!(schedule, Schedule::Clocked(_)) && bounds.max_runs.is_some() {
            return Err(ScheduleError::BadExtension(
                "max_runs does not apply to a clocked schedule (it runs once)".into(),
            ));
        }
        Ok(Timing {
            schedule,
            misfire,
            bounds,
        })
    }

    /// The next run of a routine being planned (new, edited, made active
    /// again) at `now`, which last ran at `last_run_at` and has made `runs`
    /// runs. A clocked routine that has not run since its time is due at
    /// its time, even a past one (the misfire policy then decides).
    pub fn planned(
        &self,
        last_run_at: Option<DateTime<Utc>>,
        runs: u32,
        now: DateTime<Utc>,
    ) -> Next {
        if let Some(max) = self.bounds.max_runs.filter(|max| runs >= *max) {
            return Next::Ends(End::MaxRuns(max));
        }
        let next = match &self.schedule {
            Schedule::Clocked(clocked) => {
                if last_run_at.is_some_and(|last| last >= clocked.at) {
                    return Next::Ends(End::Clocked(clocked.at));
                }
                Some(clocked.at)
            }
            schedule => schedule.next_after(last_run_at.unwrap_or(now)),
        };
        self.bounded(next)
    }

    /// What follows the run due at `due`, claimed at `now`: `ran` is the
    /// routine's run count after it if it ran (`None`: it was skipped or
    /// missed). Missed due times are skipped (see
    /// [`Schedule::next_after_catching_up`]).
    pub fn after(&self, due: DateTime<Utc>, now: DateTime<Utc>, ran: Option<u32>) -> Next {
        if let Some(runs) = ran {
            if self.bounds.one_off {
                return Next::Ends(End::OneOff);
            }
            if let Some(max) = self.bounds.max_runs.filter(|max| runs >= *max) {
                return Next::Ends(End::MaxRuns(max));
            }
        }
        if let Schedule::Clocked(clocked) = &self.schedule {
            return Next::Ends(End::Clocked(clocked.at));
        }
        self.bounded(self.schedule.next_after_catching_up(due, now))
    }

    /// `next` within `start_at` and `end_at`.
    fn bounded(&self, next: Option<DateTime<Utc>>) -> Next {
        let Some(mut next) = next else {
            return Next::Never;
        };
        if let Some(start) = self.bounds.start_at.filter(|start| next < *start) {
            match self.schedule.first_at_or_after(start) {
                Some(first) => next = first,
                None => return self.over_or_never(),
            }
        }
        match self.bounds.end_at {
            Some(end) if next > end => Next::Ends(End::EndAt(end)),
            _ => Next::At(next),
        }
    }

    fn over_or_never(&self) -> Next {
        match &self.schedule {
            Schedule::Clocked(clocked) => Next::Ends(End::Clocked(clocked.at)),
            _ => Next::Never,
        }
    }

    /// The next `n` due times after `t` within the bounds, for a routine
    /// that has made `runs` runs (fewer if its runs end).
    pub fn next_runs(&self, t: DateTime<Utc>, n: usize, runs: u32) -> Vec<DateTime<Utc>> {
        let mut left = n;
        if self.bounds.one_off {
            left = left.min(usize::from(runs == 0));
        }
        if let Some(max) = self.bounds.max_runs {
            left = left.min(usize::try_from(max.saturating_sub(runs)).unwrap_or(usize::MAX));
        }
        let mut out = Vec::with_capacity(left);
        let mut after = t;
        while out.len() < left {
            match self.bounded(self.schedule.next_after(after)) {
                Next::At(next) => {
                    out.push(next);
                    after = next;
                }
                Next::Ends(_) | Next::Never => break,
            }
        }
        out
    }

    /// The due times from `from` to `to` (both included) within the
    /// bounds, at most `limit` of them, for a backfill. An interval's grid
    /// is the one through `anchor` (a due time of the routine: its next, or
    /// its last), else through `start_at`, else through `from`.
    pub fn due_between(
        &self,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        anchor: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let first = match &self.schedule {
            Schedule::Interval(every) => {
                let anchor = anchor.or(self.bounds.start_at).unwrap_or(from);
                let (Ok(step), Some(behind)) = (
                    i64::try_from(every.as_micros()),
                    (anchor - from).num_microseconds(),
                ) else {
                    return Vec::new();
                };
                // The last grid point at or before `from`, then on.
                let back = behind.div_euclid(step) * step;
                anchor.checked_sub_signed(TimeDelta::microseconds(back))
            }
            schedule => schedule.first_at_or_after(from),
        };
        let mut out = Vec::new();
        let mut next = first;
        while let Some(t) = next.filter(|t| *t <= to && out.len() < limit) {
            let within = self.bounds.start_at.is_none_or(|s| t >= s)
                && self.bounds.end_at.is_none_or(|e| t <= e);
            if t >= from && within {
                out.push(t);
            }
            next = self.schedule.next_after(t);
        }
        out
    }

    /// The instant the run of routine `routine_id` due at `due` is
    /// dispatched at: `due`, or with a `jitter` of J seconds, `due` plus an
    /// offset in `[0, J]` taken from a hash of the routine's id and the due
    /// time, so that every beat computes the same one. The offset stays
    /// below the gap to the next due time (at most the gap less 1 µs), so
    /// that runs keep their order and never pile up: a 1 s interval with
    /// a 5 s jitter is spread over `[0, 1 s)`.
    pub fn dispatch_at(&self, routine_id: &str, due: DateTime<Utc>) -> DateTime<Utc> {
        let Some(jitter) = self.bounds.jitter else {
            return due;
        };
        let window = i64::try_from(jitter.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let gap = self
            .schedule
            .next_after(due)
            .and_then(|next| (next - due).num_microseconds())
            .unwrap_or(i64::MAX)
            .max(1);
        let span = u64::try_from(window.min(gap)).unwrap_or(1).max(1);
        let offset = i64::try_from(spread(routine_id, due) % span).unwrap_or(0);
        due.checked_add_signed(TimeDelta::microseconds(offset))
            .unwrap_or(due)
    }
}

/// A well-mixed 64-bit hash of a routine's id and a due time: FNV-1a over
/// the bytes, then SplitMix64's finalizer. Written out (not `std`'s
/// hasher, which may change between Rust releases) so that beats of every
/// version agree.
fn spread(routine_id: &str, due: DateTime<Utc>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in routine_id
        .bytes()
        .chain(due.timestamp_micros().to_le_bytes())
    {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
