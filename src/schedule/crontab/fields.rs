//! Crontab fields: their names and bounds, and Celery's syntax for each
//! field's value (`crontab_parser`), expanded into the set of values it
//! matches.

use crate::schedule::{truncated, ScheduleError};
use serde_json::Value;
use std::collections::BTreeSet;

/// A crontab field: its JSON name and Celery's `(max_, min_)` bounds.
pub(super) struct Field {
    pub(super) name: &'static str,
    min: u32,
    /// How many values the field has (Celery's `max_`): valid values are
    /// `min..min + count`.
    count: u32,
}

pub(super) const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    count: 60,
};
pub(super) const HOUR: Field = Field {
    name: "hour",
    min: 0,
    count: 24,
};
pub(super) const DAY_OF_WEEK: Field = Field {
    name: "day_of_week",
    min: 0,
    count: 7,
};
pub(super) const DAY_OF_MONTH: Field = Field {
    name: "day_of_month",
    min: 1,
    count: 31,
};
pub(super) const MONTH_OF_YEAR: Field = Field {
    name: "month_of_year",
    min: 1,
    count: 12,
};

/// Every field, in the order of Celery's `crontab()` arguments.
pub(super) const FIELDS: [&Field; 5] =
    [&MINUTE, &HOUR, &DAY_OF_WEEK, &DAY_OF_MONTH, &MONTH_OF_YEAR];

/// The names a value may be given by (their first three letters), in
/// any field: weekdays from Sunday = 0, months from January = 1.
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Every value of `field`: what `*` matches.
pub(super) fn full(field: &Field) -> BTreeSet<u32> {
    (field.min..field.min + field.count).collect()
}

/// The most days `month` ever has (29 for February).
pub(super) fn days_in_month_max(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `set` as a list for error messages: `[1,15]`.
pub(super) fn list(set: &BTreeSet<u32>) -> String {
    let items: Vec<String> = set.iter().map(u32::to_string).collect();
    format!("[{}]", items.join(","))
}

/// `set` as a field of saffron's expression: `*` if it is every value of
/// `field`, else its values comma-separated.
pub(super) fn star_or_list(set: &BTreeSet<u32>, field: &Field) -> String {
    if *set == full(field) {
        "*".to_owned()
    } else {
        set.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// Celery's `crontab._expand_cronspec` for one JSON value.
pub(super) fn expand_spec(field: &Field, spec: &Value) -> Result<BTreeSet<u32>, ScheduleError> {
    let bad = |reason: String| ScheduleError::BadField {
        field: field.name,
        reason,
    };
    let values: BTreeSet<i64> = match spec {
        Value::Number(n) => BTreeSet::from([n
            .as_i64()
            .ok_or_else(|| bad(format!("{n} is not an integer")))?]),
        Value::String(s) => parse_field(field, s)?,
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_i64().ok_or_else(|| {
                    bad(format!(
                        "list item {} is not an integer",
                        truncated(item.to_string())
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "{} is not an integer, a list of integers or a string",
                truncated(other.to_string())
            )))
        }
    };
    let max = i64::from(field.min + field.count - 1);
    values
        .into_iter()
        .map(|v| {
            if v < i64::from(field.min) || v > max {
                Err(bad(format!("{v} is out of range {}-{max}", field.min)))
            } else {
                u32::try_from(v).map_err(|_| bad(format!("{v} is out of range")))
            }
        })
        .collect()
}

/// Celery's `crontab_parser(max_, min_).parse(spec)`.
fn parse_field(field: &Field, spec: &str) -> Result<BTreeSet<i64>, ScheduleError> {
    let mut acc = BTreeSet::new();
    for part in spec.split(',') {
        if part.is_empty() {
            return Err(bad(
                field,
                format!("empty part in {:?}", truncated(spec.to_owned())),
            ));
        }
        acc.extend(parse_part(field, part)?);
    }
    Ok(acc)
}

/// One comma-separated part. Celery tries, in order, the regexes
/// `(\w+?)-(\w+)/(\w+)?`, `(\w+?)-(\w+)`, `\*/(\w+)?` and `^\*$` with
/// `re.match` (anchored at the start only: text after a match is ignored),
/// and otherwise reads the part as a single number or name.
fn parse_part(field: &Field, part: &str) -> Result<Vec<i64>, ScheduleError> {
    if let Some((from, rest)) = split_word(part) {
        if let Some(rest) = rest.strip_prefix('-') {
            if let Some((to, rest)) = split_word(rest) {
                if let Some(step) = rest.strip_prefix('/') {
                    let step = split_word(step).map(|(w, _)| w);
                    let step = step.ok_or_else(|| bad(field, "empty filter"))?;
                    return every_nth(field, expand_range(field, from, Some(to))?, step);
                }
                return expand_range(field, from, Some(to));
            }
        }
    }
    if let Some(step) = part.strip_prefix("*/") {
        let step = split_word(step).map(|(w, _)| w);
        let step = step.ok_or_else(|| bad(field, "empty filter"))?;
        return every_nth(
            field,
            full(field).into_iter().map(i64::from).collect(),
            step,
        );
    }
    if part == "*" {
        return Ok(full(field).into_iter().map(i64::from).collect());
    }
    expand_range(field, part, None)
}

/// Splits a leading run of regex `\w` characters (at least one) from `s`.
fn split_word(s: &str) -> Option<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |(i, _)| i);
    (end > 0).then(|| s.split_at(end))
}

/// Python's `values[::step]`.
fn every_nth(field: &Field, values: Vec<i64>, step: &str) -> Result<Vec<i64>, ScheduleError> {
    let step = python_int(step).ok_or_else(|| bad(field, format!("invalid step {step:?}")))?;
    let step = usize::try_from(step)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| bad(field, format!("step must be positive, got {step}")))?;
    Ok(values.into_iter().step_by(step).collect())
}

/// Celery's `_expand_range`: a single value, or `from-to` (wrapping past the
/// field's end when `to < from`, so `fri-mon` is fri, sat, sun, mon).
fn expand_range(field: &Field, from: &str, to: Option<&str>) -> Result<Vec<i64>, ScheduleError> {
    let from = expand_number(field, from)?;
    let Some(to) = to else { return Ok(vec![from]) };
    let to = expand_number(field, to)?;
    let (min, end) = (i64::from(field.min), i64::from(field.min + field.count));
    if to < from {
        Ok((from..end).chain(min..=to).collect())
    } else {
        Ok((from..=to).collect())
    }
}

/// Celery's `_expand_number`: an integer, else a month name, else a weekday
/// name (each by its first three letters, in any field), range-checked.
fn expand_number(field: &Field, s: &str) -> Result<i64, ScheduleError> {
    if s.starts_with('-') {
        return Err(bad(field, "negative numbers not supported"));
    }
    let value = match python_int(s) {
        Some(v) => v,
        None => {
            let abbreviation: String = s.chars().take(3).flat_map(char::to_lowercase).collect();
            let month = MONTHS
                .iter()
                .position(|m| *m == abbreviation)
                .map(|i| i + 1);
            let weekday = WEEKDAYS.iter().position(|d| *d == abbreviation);
            match month.or(weekday) {
                Some(v) => i64::try_from(v).map_err(|e| bad(field, e.to_string()))?,
                None => {
                    return Err(bad(
                        field,
                        format!("invalid literal {:?}", truncated(s.to_owned())),
                    ))
                }
            }
        }
    };
    let (min, max) = (i64::from(field.min), i64::from(field.min + field.count - 1));
    if value > max {
        return Err(bad(
            field,
            format!("invalid end range: {value} must be {max} or less"),
        ));
    }
    if value < min {
        return Err(bad(
            field,
            format!("invalid beginning range: {value} must be {min} or greater"),
        ));
    }
    Ok(value)
}

/// `reason`, as the error of `field`.
fn bad(field: &Field, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::BadField {
        field: field.name,
        reason: reason.into(),
    }
}

/// Python's `int(s)` for ASCII input: surrounding whitespace, an optional
/// sign, digits with single underscores between them.
fn python_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (negative, digits) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let bytes = digits.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes[0].is_ascii_digit()
        && bytes[bytes.len() - 1].is_ascii_digit()
        && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
        && !digits.contains("__");
    if !well_formed {
        return None;
    }
    let value: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -value } else { value })
}
