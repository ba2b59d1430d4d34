//! The flag values clap cannot parse alone: `--every` (a duration),
//! `--since` (a duration ago, or a UTC time), `--after`, `--from` and
//! `--to` (a time) and `--as` (a name).

use chrono::{DateTime, TimeDelta, Utc};

/// `--every`: `30s`, `5m`, `1h`, `1d`, or plain seconds.
pub fn parse_every(text: &str) -> anyhow::Result<f64> {
    let seconds = parse_duration(text)?;
    if seconds <= 0.0 {
        anyhow::bail!("must be positive");
    }
    Ok(seconds)
}

/// A duration in seconds: a number, with a unit (s, m, h or d) or none
/// (seconds).
fn parse_duration(text: &str) -> anyhow::Result<f64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let factor = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => anyhow::bail!("unknown unit {unit:?} (use s, m, h or d)"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a duration such as 30s, 5m, 1h, 1d"))?;
    if !value.is_finite() || value < 0.0 {
        anyhow::bail!("{text:?} is not a duration such as 30s, 5m, 1h, 1d");
    }
    Ok(value * factor)
}

/// `--as`: a name for the audit trail: printable, at most 64 characters.
pub fn parse_actor(text: &str) -> anyhow::Result<String> {
    let name = text.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        anyhow::bail!("expected a name of 1 to 64 printable characters");
    }
    Ok(name.to_owned())
}

/// `--since`: a duration ago, or a UTC time.
pub fn parse_since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(seconds) = parse_duration(text) {
        let ago = TimeDelta::try_milliseconds((seconds * 1000.0) as i64)
            .ok_or_else(|| anyhow::anyhow!("{text:?} is too long ago"))?;
        return Ok(Utc::now() - ago);
    }
    instant(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{text:?}: expected a duration ago (30m, 2h, 7d) or a UTC time (2026-11-27 09:00)"
        )
    })
}

/// `--after` (and `backfill --from`, `--to`): a UTC time, or an RFC 3339
/// time with its offset.
pub fn parse_after(text: &str) -> anyhow::Result<DateTime<Utc>> {
    instant(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{text:?}: expected a UTC time (2026-11-27 09:00) or one with its offset (2026-11-27T09:00:00+01:00)"
        )
    })
}

/// An RFC 3339 time, or a UTC time to the minute or second, or a UTC date
/// (its midnight): as the dashboard reads times too.
fn instant(text: &str) -> Option<DateTime<Utc>> {
    celery_diesel_kit::ops::parse_time(text)
}
