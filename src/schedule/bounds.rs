//! The keys that bound a routine's runs and spread them, beyond the kit's
//! schedule JSON: `start_at`, `end_at`, `max_runs`, `one_off`, `jitter`;
//! and the times they (and `clocked`) are written in.

use super::{truncated, ScheduleError};
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use std::time::Duration;

/// The keys [`Bounds`] reads.
pub(super) const KEYS: [&str; 5] = ["start_at", "end_at", "max_runs", "one_off", "jitter"];

/// A routine's bounds and spread, from its schedule JSON:
///
/// * `start_at`: no run before it; the first run is the first due time at
///   or after it;
/// * `end_at`: no run after it; the routine then ends;
/// * `max_runs`: it ends after this many runs (`total_run_count`);
/// * `one_off`: it ends after its first run;
/// * `jitter`: each run is dispatched up to this many seconds after its due
///   time (see [`Timing::dispatch_at`](super::Timing::dispatch_at)).
///
/// Times without an offset are read on the wall clock of the schedule's
/// `timezone`, else of the configured zone. A routine that ends becomes
/// inactive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bounds {
    /// No run before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No run after this instant.
    pub end_at: Option<DateTime<Utc>>,
    /// At most this many runs.
    pub max_runs: Option<u32>,
    /// One run, then the routine ends.
    pub one_off: bool,
    /// The longest delay of a run's dispatch after its due time.
    pub jitter: Option<Duration>,
    /// The keys as given, for writing back.
    source: Map<String, Value>,
}

impl Bounds {
    /// Reads the bound keys of a schedule JSON object; naive times are on
    /// `zone`'s wall clock.
    pub fn from_json(value: &Value, zone: Tz) -> Result<Self, ScheduleError> {
        let bad = |reason: String| ScheduleError::BadExtension(reason);
        let mut bounds = Bounds::default();
        let Some(map) = value.as_object() else {
            return Ok(bounds);
        };
        for key in KEYS {
            if let Some(v) = map.get(key) {
                bounds.source.insert(key.to_owned(), v.clone());
            }
        }
        // An interval keeps no zone of its own: the one its times are read
        // in goes with them.
        if let (Some(zone), true) = (map.get("timezone"), map.contains_key("timedelta")) {
            if map.contains_key("start_at") || map.contains_key("end_at") {
                bounds.source.insert("timezone".to_owned(), zone.clone());
            }
        }
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, ScheduleError> {
            map.get(key).map(|v| instant(key, v, zone)).transpose()
        };
        bounds.start_at = time("start_at")?;
        bounds.end_at = time("end_at")?;
        if let (Some(start), Some(end)) = (bounds.start_at, bounds.end_at) {
            if end < start {
                return Err(bad(format!(
                    "end_at ({end}) is before start_at ({start}): the routine could never run"
                )));
            }
        }
        if let Some(n) = map.get("max_runs") {
            let runs = n
                .as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "max_runs must be a whole number ≥ 1, got {}",
                        truncated(n.to_string())
                    ))
                })?;
            bounds.max_runs = Some(runs);
        }
        if let Some(flag) = map.get("one_off") {
            bounds.one_off = flag.as_bool().ok_or_else(|| {
                bad(format!(
                    "one_off must be true or false, got {}",
                    truncated(flag.to_string())
                ))
            })?;
        }
        if let Some(jitter) = map.get("jitter") {
            let seconds = jitter
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| TimeDelta::from_std(*d).is_ok())
                .ok_or_else(|| {
                    bad(format!(
                        "jitter must be seconds ≥ 0, got {}",
                        truncated(jitter.to_string())
                    ))
                })?;
            bounds.jitter = Some(seconds).filter(|d| !d.is_zero());
        }
        Ok(bounds)
    }

    /// These keys, as given, added to `schedule`.
    pub fn write_into(&self, schedule: &mut Value) {
        if let Some(map) = schedule.as_object_mut() {
            for (key, value) in &self.source {
                map.insert(key.clone(), value.clone());
            }
        }
    }

    /// Whether any key is set.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }
}

/// The instant the value of `key` names: an ISO 8601 time with an offset
/// (`2027-03-01T09:00:00+01:00`, `…Z`) is that instant; one without is on
/// `zone`'s wall clock (a time that occurs twice is its first occurrence,
/// one in a spring gap the first instant after the gap).
pub(super) fn instant(key: &str, value: &Value, zone: Tz) -> Result<DateTime<Utc>, ScheduleError> {
    let bad = || {
        ScheduleError::BadExtension(format!(
            "{key} must be a time such as \"2027-03-01T09:00:00\" (in the routine's zone) \
             or \"2027-03-01T09:00:00+01:00\", got {}",
            truncated(value.to_string())
        ))
    };
    let text = value.as_str().ok_or_else(bad)?.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .ok_or_else(bad)?;
    on_wall_clock(zone, naive).ok_or_else(bad)
}

/// The instant of `local` on `zone`'s wall clock (see [`instant`]).
fn on_wall_clock(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => Some(at.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: the first whole minute that exists again (no zone
            // skips more than a day).
            let mut next = local.with_second(0)?.with_nanosecond(0)?;
            for _ in 0..24 * 60 {
                next = next.checked_add_signed(TimeDelta::minutes(1))?;
                if let LocalResult::Single(at) | LocalResult::Ambiguous(at, _) =
                    zone.from_local_datetime(&next)
                {
                    return Some(at.with_timezone(&Utc));
                }
            }
            None
        }
    }
}
