//! Schedules: when a routine is due.
//!
//! A routine's `schedule` column holds the kit's JSON in one of two forms:
//!
//! * interval: `{"timedelta": 15}` (seconds, integer or float);
//! * crontab: any of `minute`, `hour`, `day_of_week`, `day_of_month`,
//!   `month_of_year`, each an integer, a list of integers or a Celery
//!   crontab string; missing fields mean `"*"`.
//!
//! [`Schedule::parse`] validates the JSON, [`Schedule::next_after`] gives the
//! next due time. Optional keys extend the kit's JSON without changing it:
//! `misfire_policy` and `misfire_grace_time` (see [`Misfire`]), a crontab's
//! `timezone` (an IANA name: its fields match that zone's wall clock), a
//! third kind, `clocked` (one time), and the keys that bound and spread a
//! routine's runs (see [`Bounds`]); [`Timing`] reads them all. This module
//! knows nothing of databases or time sources: it is pure calendar math on
//! UTC instants, so it is tested without a clock.

mod bounds;
mod crontab;
mod timing;

pub use bounds::Bounds;
pub use crontab::Crontab;
pub use timing::{End, Next, Timing};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// The JSON key of an interval schedule, as the kit writes it.
const TIMEDELTA: &str = "timedelta";
/// The JSON key of a clocked schedule (one time).
const CLOCKED: &str = "clocked";
/// Keys this beat adds to the kit's schedule JSON besides `clocked`. The
/// kit ignores them (it reads only `timedelta` or the five crontab fields).
const EXTENSIONS: [&str; 8] = [
    "misfire_policy",
    "misfire_grace_time",
    TIMEZONE,
    bounds::KEYS[0],
    bounds::KEYS[1],
    bounds::KEYS[2],
    bounds::KEYS[3],
    bounds::KEYS[4],
];
/// The key of a schedule's own time zone.
const TIMEZONE: &str = "timezone";

/// The IANA time zone called `name` (from the zone database compiled into
/// the crate).
pub(crate) fn zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse()
        .map_err(|_| ScheduleError::UnknownTimezone(truncated(name.to_owned())))
}

/// What the beat does with a run it missed by more than the misfire grace
/// time (the beat was stopped, the database was away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MisfirePolicy {
    /// Run once now, then continue on schedule, as Celery's beat does.
    #[default]
    FireOnce,
    /// Do not run it; continue with the next run after now.
    Skip,
}

impl std::str::FromStr for MisfirePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fire_once" => Ok(MisfirePolicy::FireOnce),
            "skip" => Ok(MisfirePolicy::Skip),
            other => Err(format!(
                "misfire_policy {other:?}: expected \"fire_once\" or \"skip\""
            )),
        }
    }
}

impl MisfirePolicy {
    /// Its name in configuration and schedule JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::FireOnce => "fire_once",
            MisfirePolicy::Skip => "skip",
        }
    }
}

/// A routine's own misfire settings, from its schedule JSON: keys
/// `misfire_policy` (`"fire_once"` or `"skip"`) and `misfire_grace_time`
/// (seconds). Unset ones fall back to the beat's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Misfire {
    /// The policy, if the routine sets one.
    pub policy: Option<MisfirePolicy>,
    /// How late a run may start before it counts as missed.
    pub grace_time: Option<Duration>,
}

impl Misfire {
    /// Reads the misfire keys of a schedule JSON object.
    pub fn from_json(value: &Value) -> Result<Self, ScheduleError> {
        let bad = |reason: String| ScheduleError::BadExtension(reason);
        let mut misfire = Misfire::default();
        if let Some(policy) = value.get("misfire_policy") {
            let text = policy.as_str().ok_or_else(|| {
                bad(format!(
                    "misfire_policy must be a string, got {}",
                    truncated(policy.to_string())
                ))
            })?;
            misfire.policy = Some(text.parse().map_err(|e: String| bad(truncated(e)))?);
        }
        if let Some(grace) = value.get("misfire_grace_time") {
            let seconds = grace
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "misfire_grace_time must be seconds ≥ 0, got {}",
                        truncated(grace.to_string())
                    ))
                })?;
            misfire.grace_time = Some(seconds);
        }
        Ok(misfire)
    }

    /// These settings as schedule JSON keys, added to `schedule`.
    pub fn write_into(&self, schedule: &mut Value) {
        let Some(map) = schedule.as_object_mut() else {
            return;
        };
        if let Some(policy) = self.policy {
            map.insert("misfire_policy".into(), policy.as_str().into());
        }
        if let Some(grace) = self.grace_time {
            map.insert("misfire_grace_time".into(), grace.as_secs_f64().into());
        }
    }
}

/// Why a schedule was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The column does not hold JSON at all.
    #[error("schedule is not valid JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object (`{...}`).
    #[error("schedule must be a JSON object, got {0}")]
    NotAnObject(String),
    /// A key that is neither `timedelta` nor a crontab field.
    #[error("unknown schedule key {0:?} (expected \"timedelta\" or crontab fields minute, hour, day_of_week, day_of_month, month_of_year)")]
    UnknownKey(String),
    /// `timedelta` mixed with crontab fields.
    #[error("schedule mixes \"timedelta\" with crontab fields")]
    Mixed,
    /// The interval is not a positive, finite number of seconds.
    #[error("invalid timedelta {0}: must be a positive number of seconds")]
    BadInterval(String),
    /// A crontab field could not be parsed or is out of range.
    #[error("invalid crontab field {field}: {reason}")]
    BadField {
        /// The field's name, e.g. `day_of_week`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Every crontab field is missing or `"*"`, as the kit forbids.
    #[error("no schedule set: every crontab field is \"*\"")]
    AllStars,
    /// A misfire extension key with a bad value.
    #[error("{0}")]
    BadExtension(String),
    /// A crontab whose fields can never all match a real date (e.g. 31 February).
    #[error("crontab never fires: {0}")]
    NeverFires(String),
    /// A `timezone` that is not an IANA time zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\")")]
    UnknownTimezone(String),
}

/// When a routine runs: every so often, on a Celery crontab, or once.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every `Duration` (Celery's `schedule(run_every=...)`).
    Interval(Duration),
    /// A Celery crontab (boxed: it is much larger than an interval).
    Crontab(Box<Crontab>),
    /// Once, at a given time (django-celery-beat's clocked schedule).
    Clocked(Clocked),
}

/// A clocked schedule: `{"clocked": "2027-03-01T09:00:00", "timezone":
/// "Europe/Berlin"}`. A time without an offset is on the wall clock of its
/// `timezone`, else of the configured zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Clocked {
    /// The instant it fires at.
    pub at: DateTime<Utc>,
    zone: Tz,
    source: Map<String, Value>,
}

impl Schedule {
    /// An interval schedule. Fails unless `every` is positive.
    pub fn every(every: Duration) -> Result<Self, ScheduleError> {
        if every.is_zero() || TimeDelta::from_std(every).is_err() {
            return Err(ScheduleError::BadInterval(format!("{every:?}")));
        }
        Ok(Schedule::Interval(every))
    }

    /// A crontab from Celery-style field strings, in the argument order of
    /// `celery.schedules.crontab`: minute, hour, day_of_week, day_of_month,
    /// month_of_year.
    ///
    /// ```
    /// use celery_diesel_kit::Schedule;
    /// // every 15 minutes from 9:00 to 17:45 on weekdays
    /// let s = Schedule::crontab("*/15", "9-17", "mon-fri", "*", "*").unwrap();
    /// assert_eq!(s.to_json()["day_of_week"], "mon-fri");
    /// ```
    pub fn crontab(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Self, ScheduleError> {
        let mut map = Map::new();
        for (key, spec) in [
            ("minute", minute),
            ("hour", hour),
            ("day_of_week", day_of_week),
            ("day_of_month", day_of_month),
            ("month_of_year", month_of_year),
        ] {
            if spec != "*" {
                map.insert(key.to_owned(), Value::String(spec.to_owned()));
            }
        }
        Crontab::from_json(&map, Tz::UTC, map.clone()).map(|c| Schedule::Crontab(Box::new(c)))
    }

    /// This crontab with its fields read on the wall clock of `timezone`
    /// (an IANA name), written into its JSON as the `timezone` key.
    /// Intervals are elapsed time: a zone is an error for them.
    ///
    /// ```
    /// use celery_diesel_kit::Schedule;
    /// let nine = Schedule::crontab("0", "9", "mon-fri", "*", "*")?.in_timezone("Europe/Berlin")?;
    /// assert_eq!(nine.to_json()["timezone"], "Europe/Berlin");
    /// # Ok::<(), celery_diesel_kit::ScheduleError>(())
    /// ```
    pub fn in_timezone(self, timezone: &str) -> Result<Self, ScheduleError> {
        let mut json = self.to_json();
        if let Some(map) = json.as_object_mut() {
            map.insert(TIMEZONE.to_owned(), Value::String(timezone.to_owned()));
        }
        Self::from_json(&json)
    }

    /// Parses the text of a `schedule` column.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ScheduleError::NotJson(e.to_string()))?;
        Self::from_json(&value)
    }

    /// Reads the kit's schedule JSON; a crontab without a `timezone` key
    /// matches UTC.
    pub fn from_json(value: &Value) -> Result<Self, ScheduleError> {
        Self::from_json_in(value, Tz::UTC)
    }

    /// Reads the kit's schedule JSON; a crontab without a `timezone` key
    /// matches `default_timezone`'s wall clock (the `timezone` setting).
    pub fn from_json_in_timezone(
        value: &Value,
        default_timezone: &str,
    ) -> Result<Self, ScheduleError> {
        Self::from_json_in(value, zone(default_timezone)?)
    }

    pub(crate) fn from_json_in(value: &Value, default_zone: Tz) -> Result<Self, ScheduleError> {
        let map = value
            .as_object()
            .ok_or_else(|| ScheduleError::NotAnObject(truncated(value.to_string())))?;
        // Extension keys (see `Misfire`) are read elsewhere.
        let fields: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !EXTENSIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let own_zone = match map.get(TIMEZONE) {
            None => None,
            Some(Value::String(name)) => Some(zone(name)?),
            Some(other) => {
                return Err(ScheduleError::BadExtension(format!(
                    "timezone must be an IANA name such as \"Europe/Berlin\", got {}",
                    truncated(other.to_string())
                )))
            }
        };
        if let Some(time) = fields.get(CLOCKED) {
            if let Some(other) = fields.keys().find(|k| *k != CLOCKED) {
                return Err(match crontab::is_field(other) || other == TIMEDELTA {
                    true => ScheduleError::BadExtension(format!(
                        "clocked is a schedule of its own: it cannot be mixed with {other:?}"
                    )),
                    false => ScheduleError::UnknownKey(truncated(other.clone())),
                });
            }
            let zone = own_zone.unwrap_or(default_zone);
            let mut source = Map::new();
            source.insert(CLOCKED.to_owned(), time.clone());
            if let Some(name) = map.get(TIMEZONE) {
                source.insert(TIMEZONE.to_owned(), name.clone());
            }
            return Ok(Schedule::Clocked(Clocked {
                at: bounds::instant(CLOCKED, time, zone)?,
                zone,
                source,
            }));
        }
        // An interval is elapsed time: a zone serves only to read its
        // start_at and end_at.
        let zone_for_bounds = map.contains_key("start_at") || map.contains_key("end_at");
        match fields.get(TIMEDELTA) {
            Some(_) if own_zone.is_some() && !zone_for_bounds => Err(ScheduleError::BadExtension(
                "timezone applies to crontab schedules only (an interval is elapsed time)".into(),
            )),
            Some(seconds) if fields.len() == 1 => interval_from_json(seconds),
            Some(_) => Err(
                match fields
                    .keys()
                    .find(|k| !crontab::is_field(k) && *k != TIMEDELTA)
                {
                    Some(unknown) => ScheduleError::UnknownKey(truncated(unknown.clone())),
                    None => ScheduleError::Mixed,
                },
            ),
            None => {
                let mut source = fields.clone();
                if let Some(name) = map.get(TIMEZONE) {
                    source.insert(TIMEZONE.to_owned(), name.clone());
                }
                Crontab::from_json(&fields, own_zone.unwrap_or(default_zone), source)
                    .map(|c| Schedule::Crontab(Box::new(c)))
            }
        }
    }

    /// The IANA name of the zone a crontab's fields (or a clocked time)
    /// are read in (`None` for an interval, which is elapsed time).
    pub fn timezone(&self) -> Option<&'static str> {
        match self {
            Schedule::Interval(_) => None,
            Schedule::Crontab(cron) => Some(cron.timezone()),
            Schedule::Clocked(clocked) => Some(clocked.zone.name()),
        }
    }

    /// The first due time at or after `t`: `t` itself for an interval
    /// (whose grid then starts there).
    pub fn first_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Interval(_) => Some(t),
            Schedule::Crontab(cron) => cron.next_after(t - TimeDelta::microseconds(1)),
            Schedule::Clocked(clocked) => (clocked.at >= t).then_some(clocked.at),
        }
    }

    /// The next `n` fire times after `t`, in order (fewer if the schedule
    /// ends).
    ///
    /// ```
    /// use celery_diesel_kit::Schedule;
    /// use chrono::{TimeZone, Utc};
    /// let quarter = Schedule::crontab("*/15", "*", "*", "*", "*")?;
    /// let t = Utc.with_ymd_and_hms(2030, 1, 1, 10, 7, 0).unwrap();
    /// let next: Vec<String> = quarter.next_runs(t, 3).iter().map(|t| t.format("%H:%M").to_string()).collect();
    /// assert_eq!(next, ["10:15", "10:30", "10:45"]);
    /// # Ok::<(), celery_diesel_kit::ScheduleError>(())
    /// ```
    pub fn next_runs(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut runs = Vec::with_capacity(n);
        let mut after = t;
        while runs.len() < n {
            match self.next_after(after) {
                Some(next) => {
                    runs.push(next);
                    after = next;
                }
                None => break,
            }
        }
        runs
    }

    /// The kit's JSON for this schedule (what is stored in the `schedule` column).
    pub fn to_json(&self) -> Value {
        match self {
            Schedule::Interval(every) => {
                let mut map = Map::new();
                let value = if every.subsec_nanos() == 0 {
                    Value::from(every.as_secs())
                } else {
                    Value::from(every.as_secs_f64())
                };
                map.insert(TIMEDELTA.to_owned(), value);
                Value::Object(map)
            }
            Schedule::Crontab(cron) => cron.to_json(),
            Schedule::Clocked(clocked) => Value::Object(clocked.source.clone()),
        }
    }

    /// The first due time strictly after `t`, or `None` if there is none
    /// (a crontab can only end when time itself runs out).
    ///
    /// For an interval this is `t + interval`: the beat passes the previous
    /// due time as `t`, so an interval keeps its phase instead of drifting
    /// by each dispatch's delay (Celery's beat adds the interval to the time
    /// it happened to run).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Interval(every) => t.checked_add_signed(TimeDelta::from_std(*every).ok()?),
            Schedule::Crontab(cron) => cron.next_after(t),
            Schedule::Clocked(clocked) => (clocked.at > t).then_some(clocked.at),
        }
    }

    /// The first due time after `last` that is later than `now`, for a
    /// routine that is behind (its `last` due time plus one period is
    /// already past). Intervals stay on the grid `last + k * interval`;
    /// crontabs take their next match after `now`.
    pub fn next_after_catching_up(
        &self,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let next = self.next_after(last)?;
        if next > now {
            return Some(next);
        }
        match self {
            Schedule::Interval(every) => {
                let step = i128::try_from(every.as_nanos()).ok()?;
                let behind = i128::from((now - last).num_nanoseconds()?);
                let periods = behind / step + 1;
                let nanos = i64::try_from(periods.checked_mul(step)?).ok()?;
                last.checked_add_signed(TimeDelta::nanoseconds(nanos))
            }
            Schedule::Crontab(cron) => cron.next_after(now),
            Schedule::Clocked(_) => None,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

fn interval_from_json(seconds: &Value) -> Result<Schedule, ScheduleError> {
    let bad = || ScheduleError::BadInterval(truncated(seconds.to_string()));
    let secs = match seconds {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad());
    }
    let every = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    // Round to whole microseconds: that is what every backend can store.
    let every = Duration::from_micros(u64::try_from(every.as_micros()).map_err(|_| bad())?);
    Schedule::every(every).map_err(|_| bad())
}

/// `YYYY-MM-DD<sep>HH:MM:SS.ffffff` of a UTC time: fixed width, so that
/// text columns sort in time order. Written by hand because chrono parses
/// its format string at every call, and this runs for every run the beat
/// claims.
pub(crate) fn format_micros(t: DateTime<Utc>, separator: char) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}.{:06}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_micros().min(999_999)
    )
}

/// Bounds what an error message repeats from user input (a 10 kB string
/// in a row must not become a 10 kB log line).
pub(crate) fn truncated(mut text: String) -> String {
    const MAX: usize = 80;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
