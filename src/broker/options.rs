//! A routine's `options` column, as Celery's beat passes it to
//! `apply_async`: validated once, and read into where its messages go.

use crate::routine::Invalid;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{Map, Number, Value};

/// Celery's default queue (and exchange, and routing key).
pub(crate) const DEFAULT_QUEUE: &str = "celery";

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Straight to the queue's list (the anonymous exchange).
    Queue { queue: String },
    /// To every queue bound to `exchange` with `routing_key` (direct
    /// exchange). `queue` is still declared, as Celery declares it.
    Exchange {
        queue: String,
        exchange: String,
        routing_key: String,
    },
}

impl Destination {
    /// The queue Celery declares for this message.
    pub(crate) fn declared_queue(&self) -> &str {
        match self {
            Destination::Queue { queue } | Destination::Exchange { queue, .. } => queue,
        }
    }
}

/// Options a routine may carry (its `options` column), as Celery's beat
/// passes them to `apply_async`.
const KNOWN_OPTIONS: [&str; 9] = [
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "expires",
    "headers",
    "time_limit",
    "soft_time_limit",
    "countdown",
];

/// When a message stops being worth running.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expires {
    /// Seconds after sending.
    After(f64),
    /// An ISO 8601 time, sent as written.
    At(String, DateTime<Utc>),
}

/// A routine's `options`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SendOptions {
    pub(super) queue: Option<String>,
    pub(super) exchange: Option<String>,
    pub(super) routing_key: Option<String>,
    pub(super) priority: Option<i64>,
    pub(super) expires: Option<Expires>,
    pub(super) headers: Map<String, Value>,
    pub(super) time_limit: Option<Number>,
    pub(super) soft_time_limit: Option<Number>,
    pub(super) countdown: Option<f64>,
}

impl SendOptions {
    /// Reads an `options` object. Returns the options and the keys it
    /// ignores (unknown to Celery's beat: warned about, never sent).
    pub(crate) fn parse(options: &Map<String, Value>) -> Result<(Self, Vec<String>), Invalid> {
        let mut parsed = SendOptions::default();
        let mut ignored = Vec::new();
        for (key, value) in options {
            if value.is_null() {
                continue;
            }
            let text = || -> Result<String, Invalid> {
                value.as_str().map(str::to_owned).ok_or_else(|| {
                    Invalid(format!(
                        "option {key} must be a string, got {}",
                        short(value)
                    ))
                })
            };
            let seconds = || -> Result<f64, Invalid> {
                value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        Invalid::of(format!(
                            "option {key} must be a number of seconds ≥ 0, got {}",
                            short(value)
                        ))
                    })
            };
            match key.as_str() {
                "queue" => parsed.queue = Some(text()?).filter(|q| !q.is_empty()),
                "exchange" => parsed.exchange = Some(text()?),
                "routing_key" => parsed.routing_key = Some(text()?),
                "priority" => {
                    parsed.priority = Some(value.as_i64().filter(|p| *p >= 0).ok_or_else(|| {
                        Invalid::of(format!(
                            "option priority must be an integer ≥ 0, got {}",
                            short(value)
                        ))
                    })?)
                }
                "expires" => {
                    parsed.expires = Some(match value {
                        Value::String(iso) => Expires::At(
                            iso.clone(),
                            parse_iso(iso).ok_or_else(|| {
                                Invalid::of(format!(
                                    "option expires {} is neither seconds nor an ISO 8601 time",
                                    short(value)
                                ))
                            })?,
                        ),
                        _ => Expires::After(seconds()?),
                    })
                }
                "headers" => {
                    parsed.headers = value.as_object().cloned().ok_or_else(|| {
                        Invalid::of(format!(
                            "option headers must be a JSON object, got {}",
                            short(value)
                        ))
                    })?
                }
                "time_limit" | "soft_time_limit" => {
                    seconds()?;
                    let limit = value.as_number().cloned();
                    if key == "time_limit" {
                        parsed.time_limit = limit;
                    } else {
                        parsed.soft_time_limit = limit;
                    }
                }
                "countdown" => parsed.countdown = Some(seconds()?),
                _ => ignored.push(key.clone()),
            }
        }
        debug_assert!(ignored.iter().all(|k| !KNOWN_OPTIONS.contains(&k.as_str())));
        Ok((parsed, ignored))
    }

    /// Celery's routing (`send_task_message`): the anonymous exchange and
    /// the queue's own key, unless both an exchange and a routing key are
    /// given, in which case the exchange's bindings decide.
    pub(super) fn destination(&self) -> Destination {
        let queue = self
            .queue
            .clone()
            .unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        match (&self.exchange, &self.routing_key) {
            (Some(exchange), Some(routing_key))
                if !exchange.is_empty() && !routing_key.is_empty() =>
            {
                Destination::Exchange {
                    queue,
                    exchange: exchange.clone(),
                    routing_key: routing_key.clone(),
                }
            }
            _ => Destination::Queue { queue },
        }
    }
}

/// An ISO 8601 time as Celery reads it (`isoparse`; naive means UTC).
fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    DateTime::<FixedOffset>::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .map(|t| t.and_utc())
        })
}

fn short(value: &Value) -> String {
    crate::schedule::truncated(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_are_validated_and_unknown_ones_set_aside() {
        let opts = json!({"queue": "q", "priority": 5, "expires": 60, "shadow": "x", "serializer": "pickle"});
        let (parsed, ignored) = SendOptions::parse(opts.as_object().unwrap()).unwrap();
        assert_eq!(parsed.queue.as_deref(), Some("q"));
        assert_eq!(ignored, ["shadow", "serializer"]);
        for (bad, msg) in [
            (json!({"priority": "high"}), "priority must be an integer"),
            (
                json!({"expires": "tomorrow"}),
                "neither seconds nor an ISO 8601 time",
            ),
            (json!({"headers": [1]}), "headers must be a JSON object"),
            (
                json!({"time_limit": -1}),
                "time_limit must be a number of seconds",
            ),
            (json!({"queue": 5}), "queue must be a string"),
        ] {
            let err = SendOptions::parse(bad.as_object().unwrap()).unwrap_err();
            assert!(err.0.contains(msg), "{bad}: {err}");
        }
    }

    #[test]
    fn routing_follows_celerys_send_task_message() {
        let dest = |o: Value| {
            SendOptions::parse(o.as_object().unwrap())
                .unwrap()
                .0
                .destination()
        };
        assert_eq!(
            dest(json!({})),
            Destination::Queue {
                queue: "celery".into()
            }
        );
        assert_eq!(
            dest(json!({"queue": "q"})),
            Destination::Queue { queue: "q".into() }
        );
        assert_eq!(
            dest(json!({"routing_key": "rk"})),
            Destination::Queue {
                queue: "celery".into()
            }
        );
        assert_eq!(
            dest(json!({"exchange": "ex", "routing_key": "rk"})),
            Destination::Exchange {
                queue: "celery".into(),
                exchange: "ex".into(),
                routing_key: "rk".into()
            }
        );
    }
}
