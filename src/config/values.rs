//! Values of keys from their text (a file's line, a variable).

use super::ConfigError;
use crate::schedule::MisfirePolicy;
use chrono_tz::Tz;
use std::net::SocketAddr;
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

pub(super) fn text(_key: &'static str, value: &str) -> Result<String, ConfigError> {
    Ok(value.to_owned())
}

pub(super) fn some_text(_key: &'static str, value: &str) -> Result<Option<String>, ConfigError> {
    Ok(Some(value.to_owned()))
}

pub(super) fn some_path(
    _key: &'static str,
    value: &str,
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    Ok(Some(value.into()))
}

pub(super) fn whole_number(key: &'static str, value: &str) -> Result<u32, ConfigError> {
    value.parse().map_err(|_| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "expected a whole number ≥ 0",
    })
}

pub(super) fn at_least_one(key: &'static str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::Invalid {
            key,
            value: value.to_owned(),
            reason: "expected a whole number ≥ 1",
        })
}

pub(super) fn misfire_policy(key: &'static str, value: &str) -> Result<MisfirePolicy, ConfigError> {
    value.parse().map_err(|_| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "expected fire_once or skip",
    })
}

/// An IANA zone name, read once here: the rest of the beat holds a `Tz`.
pub(super) fn time_zone(key: &'static str, value: &str) -> Result<Tz, ConfigError> {
    crate::schedule::zone(value).map_err(|_| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "expected an IANA time zone name such as Europe/Berlin",
    })
}

pub(super) fn socket_address(
    key: &'static str,
    value: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    value.parse().map(Some).map_err(|_| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "expected an address and port such as 127.0.0.1:9808",
    })
}
