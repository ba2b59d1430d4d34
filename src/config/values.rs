//! Values of keys from their text (a file's line, a variable).

use super::ConfigError;
use std::time::Duration;

pub(super) fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

pub(super) fn positive_seconds(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(ConfigError::Invalid {
            key,
            value: value.to_owned(),
            reason: "expected a positive number of seconds",
        })
}

pub(super) fn non_negative_seconds(
    key: &'static str,
    value: &str,
) -> Result<Duration, ConfigError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(ConfigError::Invalid {
            key,
            value: value.to_owned(),
            reason: "expected a number of seconds ≥ 0",
        })
}

pub(super) fn boolean(key: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key,
            value: value.to_owned(),
            reason: "expected true or false",
        }),
    }
}
