//! Schedules in words, and times on a zone's wall clock.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

/// A schedule JSON (the kit's form) in words: `every 30 seconds`,
/// `at 09:00 on mon-fri (Europe/Berlin)`, `every 15 minutes`.
///
/// ```
/// use celery_diesel_kit::ops::describe;
/// use serde_json::json;
/// assert_eq!(describe(&json!({"timedelta": 90})), "every 90 seconds");
/// assert_eq!(describe(&json!({"timedelta": 3600})), "every hour");
/// assert_eq!(describe(&json!({"minute": "*/15"})), "every 15 minutes");
/// assert_eq!(describe(&json!({"minute": "*/1", "hour": "*/1"})), "every minute");
/// assert_eq!(
///     describe(&json!({"minute": 0, "hour": 9, "day_of_week": "mon-fri", "timezone": "Europe/Berlin"})),
///     "at 09:00 on mon-fri (Europe/Berlin)"
/// );
/// assert_eq!(describe(&json!({"minute": "30", "hour": "*/2"})), "at minute 30 of every 2nd hour");
/// assert_eq!(
///     describe(&json!({"clocked": "2027-03-01T09:00:00", "timezone": "Europe/Berlin"})),
///     "once at 2027-03-01T09:00:00 (Europe/Berlin)"
/// );
/// assert_eq!(
///     describe(&json!({"timedelta": 3600, "start_at": "2027-03-01T00:00", "end_at": "2027-03-15T00:00", "jitter": 60})),
///     "every hour, from 2027-03-01T00:00, until 2027-03-15T00:00, dispatched up to 60 s after each due time (jitter)"
/// );
/// assert_eq!(describe(&json!({"minute": 0, "max_runs": 3})), "at minute 0 of every hour, 3 runs at most");
/// assert_eq!(describe(&json!({"timedelta": 60, "one_off": true})), "every minute, once (one-off)");
/// ```
pub fn describe(schedule: &Value) -> String {
    let mut words = cadence(schedule);
    let text = |key: &str| {
        schedule
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    if let Some(start) = text("start_at") {
        words += &format!(", from {start}");
    }
    if let Some(end) = text("end_at") {
        words += &format!(", until {end}");
    }
    if let Some(n) = text("max_runs") {
        words += &format!(", {n} runs at most");
    }
    if schedule.get("one_off") == Some(&Value::Bool(true)) {
        words += ", once (one-off)";
    }
    if let Some(jitter) = text("jitter").filter(|j| j != "0") {
        words += &format!(", dispatched up to {jitter} s after each due time (jitter)");
    }
    words
}

/// The schedule's own times in words, without its bounds.
fn cadence(schedule: &Value) -> String {
    if let Some(seconds) = schedule.get("timedelta").and_then(Value::as_f64) {
        return every(seconds);
    }
    if let Some(at) = schedule.get("clocked") {
        let at = at.as_str().map_or_else(|| at.to_string(), str::to_owned);
        return match schedule.get("timezone").and_then(Value::as_str) {
            Some(zone) => format!("once at {at} ({zone})"),
            None => format!("once at {at}"),
        };
    }
    let field = |key: &str| match schedule.get(key) {
        None | Some(Value::Null) => "*".to_owned(),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    };
    let (minute, hour) = (field("minute"), field("hour"));
    let number = |s: &str| s.parse::<u32>().ok();
    // `*/1` is `*`.
    let step = |s: &str| s.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    let (minute, hour) = (
        if step(&minute) == Some(1) {
            "*".to_owned()
        } else {
            minute
        },
        if step(&hour) == Some(1) {
            "*".to_owned()
        } else {
            hour
        },
    );
    let mut words = match (number(&minute), number(&hour)) {
        (Some(m), Some(h)) => format!("at {h:02}:{m:02}"),
        _ => {
            let minutes = match (minute.as_str(), step(&minute)) {
                ("*", _) => "every minute".to_owned(),
                (_, Some(n)) => format!("every {n} minutes"),
                (m, None) => format!("at minute {m}"),
            };
            let hours = match (hour.as_str(), step(&hour)) {
                ("*", _) if minute == "*" || step(&minute).is_some() => String::new(),
                ("*", _) => " of every hour".to_owned(),
                (_, Some(n)) => format!(" of every {} hour", ordinal(n)),
                (h, None) => format!(" past hour {h}"),
            };
            minutes + &hours
        }
    };
    let day_of_week = field("day_of_week");
    if day_of_week != "*" {
        words += &format!(" on {day_of_week}");
    }
    let day_of_month = field("day_of_month");
    if day_of_month != "*" {
        words += &format!(" on day {day_of_month} of the month");
    }
    let month = field("month_of_year");
    if month != "*" {
        words += &format!(" in month {month}");
    }
    if let Some(zone) = schedule.get("timezone").and_then(Value::as_str) {
        words += &format!(" ({zone})");
    }
    words
}

fn every(seconds: f64) -> String {
    let whole = seconds.fract() == 0.0 && seconds >= 1.0;
    for (unit, length) in [("day", 86_400.0), ("hour", 3_600.0), ("minute", 60.0)] {
        if whole && seconds % length == 0.0 {
            let n = seconds / length;
            return match n == 1.0 {
                true => format!("every {unit}"),
                false => format!("every {n} {unit}s"),
            };
        }
    }
    match seconds == 1.0 {
        true => "every second".to_owned(),
        false => format!("every {seconds} seconds"),
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// `t` on `zone`'s wall clock, with the zone's abbreviation:
/// `2026-03-29 03:00:00 CEST`.
pub(crate) fn local(t: DateTime<Utc>, zone: Tz) -> String {
    t.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// A time an operator typed: RFC 3339 with its offset
/// (`2026-11-27T09:00:00+01:00`), or a UTC time to the minute or second
/// (`2026-11-27 09:00`, `2026-11-27T09:00:30`, as an HTML
/// `datetime-local` field sends it), or a UTC date (its midnight).
///
/// ```
/// use celery_diesel_kit::ops::parse_time;
/// let nine = parse_time("2026-11-27T09:00").unwrap();
/// assert_eq!(parse_time("2026-11-27 09:00:00"), Some(nine));
/// assert_eq!(parse_time("2026-11-27T10:00:00+01:00"), Some(nine));
/// assert_eq!(parse_time("soon"), None);
/// ```
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}
