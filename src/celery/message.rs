//! Celery task protocol v2 messages, as kombu's Redis transport stores them.
//!
//! The envelope is what `celery.app.amqp.as_task_v2` and kombu's virtual
//! channel build, serialized the way Python's `json.dumps` does (", " and
//! ": " separators, non-ASCII escaped, Python's float repr), so that a
//! message from this beat and one from `app.send_task` differ only where
//! two Celery clients would differ too: the id, the origin, `reply_to`,
//! the delivery tag and times taken from the clock.

use super::pyjson::{saferepr, write_py_json, write_py_string};
use base64::Engine as _;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeDelta, Utc};
use serde_json::{Map, Number, Value};
use std::fmt::Write as _;

/// Celery's default queue (and exchange, and routing key).
pub(crate) const DEFAULT_QUEUE: &str = "celery";
/// kombu's Redis key separator.
pub(crate) const SEP: &str = "\x06\x16";
/// kombu's default priority steps on Redis.
const PRIORITY_STEPS: [i64; 4] = [0, 3, 6, 9];

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
enum Expires {
    /// Seconds after sending.
    After(f64),
    /// An ISO 8601 time, sent as written.
    At(String, DateTime<Utc>),
}

/// A routine's `options`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SendOptions {
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    priority: Option<i64>,
    expires: Option<Expires>,
    headers: Map<String, Value>,
    time_limit: Option<Number>,
    soft_time_limit: Option<Number>,
    countdown: Option<f64>,
}

impl SendOptions {
    /// Reads an `options` object. Returns the options and the keys it
    /// ignores (unknown to Celery's beat: warned about, never sent).
    pub(crate) fn parse(options: &Map<String, Value>) -> Result<(Self, Vec<String>), String> {
        let mut parsed = SendOptions::default();
        let mut ignored = Vec::new();
        for (key, value) in options {
            if value.is_null() {
                continue;
            }
            let text = || -> Result<String, String> {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("option {key} must be a string, got {}", short(value)))
            };
            let seconds = || -> Result<f64, String> {
                value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        format!(
                            "option {key} must be a number of seconds ≥ 0, got {}",
                            short(value)
                        )
                    })
            };
            match key.as_str() {
                "queue" => parsed.queue = Some(text()?).filter(|q| !q.is_empty()),
                "exchange" => parsed.exchange = Some(text()?),
                "routing_key" => parsed.routing_key = Some(text()?),
                "priority" => {
                    parsed.priority = Some(value.as_i64().filter(|p| *p >= 0).ok_or_else(|| {
                        format!(
                            "option priority must be an integer ≥ 0, got {}",
                            short(value)
                        )
                    })?)
                }
                "expires" => {
                    parsed.expires = Some(match value {
                        Value::String(iso) => Expires::At(
                            iso.clone(),
                            parse_iso(iso).ok_or_else(|| {
                                format!(
                                    "option expires {} is neither seconds nor an ISO 8601 time",
                                    short(value)
                                )
                            })?,
                        ),
                        _ => Expires::After(seconds()?),
                    })
                }
                "headers" => {
                    parsed.headers = value.as_object().cloned().ok_or_else(|| {
                        format!("option headers must be a JSON object, got {}", short(value))
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
    fn destination(&self) -> Destination {
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

/// A message ready for Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    /// The task id.
    pub(crate) id: String,
    /// The Celery task name.
    pub(crate) task: String,
    /// Where it goes.
    pub(crate) destination: Destination,
    /// kombu's priority step: the suffix of the list key (0: none).
    pub(crate) priority_step: i64,
    /// The envelope JSON, as LPUSHed.
    pub(crate) envelope: String,
    /// The time the run stands for: its due time (now, for a run on
    /// demand). Redis remembers pushed runs by it.
    pub(crate) run_at: DateTime<Utc>,
}

impl Message {
    /// The list key for `queue` at this message's priority.
    pub(crate) fn list_key(&self, queue: &str) -> String {
        if self.priority_step == 0 {
            queue.to_owned()
        } else {
            format!("{queue}{SEP}{}", self.priority_step)
        }
    }
}

/// Who sends: Celery's `origin` header and `reply_to` property.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    origin: String,
    reply_to: String,
}

impl Sender {
    /// `gen<pid>@<hostname>`, as Celery's `anon_nodename()`.
    pub(crate) fn this_process() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let origin = format!("gen{}@{host}", std::process::id());
        let reply_to =
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, origin.as_bytes()).to_string();
        Sender { origin, reply_to }
    }
}

/// The Celery task id of a routine's run: a name-based uuid (v5) of the
/// routine's id and the due time, the same for the same run, so that a
/// message published again after a crash carries the id of the first, and
/// a consumer can tell a repeat from a new run.
///
/// ```
/// use celery_diesel_kit::task_id;
/// let due = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().to_utc();
/// assert_eq!(task_id("r1", due), task_id("r1", due));
/// assert_ne!(task_id("r1", due), task_id("r2", due));
/// ```
pub fn task_id(routine_id: &str, scheduled_at: DateTime<Utc>) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c1f_3b0e_9a4d_4c2e_8f57_3d2a_1b0c_9e8d);
    let name = format!(
        "{routine_id}@{}Z",
        crate::schedule::format_micros(scheduled_at, 'T')
    );
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// Builds the message Celery's `send_task(task, args=[], kwargs=kwargs,
/// task_id=id, **options)` would send at time `now`, for the run due at
/// `run_at`.
pub(crate) fn build(
    task: &str,
    id: &str,
    kwargs: &Map<String, Value>,
    options: &SendOptions,
    (run_at, now): (DateTime<Utc>, DateTime<Utc>),
    sender: &Sender,
) -> Message {
    let eta = options
        .countdown
        .and_then(|s| seconds_after(now, s))
        .map(isoformat);
    let (expires, expiration) = match &options.expires {
        None => (None, None),
        Some(Expires::After(s)) => (seconds_after(now, *s).map(isoformat), Some(*s)),
        Some(Expires::At(text, at)) => {
            let left = (*at - now)
                .num_microseconds()
                .map_or(0.0, |us| us as f64 / 1e6);
            (Some(text.clone()), Some(left.max(0.0)))
        }
    };
    let limit = |n: &Option<Number>| {
        n.as_ref()
            .map_or_else(|| "null".to_owned(), Number::to_string)
    };
    let text = |t: &str| {
        let mut out = String::with_capacity(t.len() + 2);
        write_py_string(t, &mut out);
        out
    };
    let opt_text = |t: &Option<String>| t.as_deref().map_or_else(|| "null".to_owned(), text);
    let kwargs_value = Value::Object(kwargs.clone());

    // Written straight out, in the order Celery's dicts have (a message is
    // built for every run, so no intermediate maps).
    let standard: [(&str, String); 19] = [
        ("lang", "\"py\"".to_owned()),
        ("task", text(task)),
        ("id", text(id)),
        ("shadow", "null".to_owned()),
        ("eta", opt_text(&eta)),
        ("expires", opt_text(&expires)),
        ("group", "null".to_owned()),
        ("group_index", "null".to_owned()),
        ("retries", "0".to_owned()),
        (
            "timelimit",
            format!(
                "[{}, {}]",
                limit(&options.time_limit),
                limit(&options.soft_time_limit)
            ),
        ),
        ("root_id", text(id)),
        ("parent_id", "null".to_owned()),
        // Celery's `args = args or ()`: empty args are the empty tuple.
        ("argsrepr", text("()")),
        ("kwargsrepr", text(&saferepr(&kwargs_value))),
        ("origin", text(&sender.origin)),
        ("ignore_result", "false".to_owned()),
        ("replaced_task_nesting", "0".to_owned()),
        ("stamped_headers", "null".to_owned()),
        ("stamps", "{}".to_owned()),
    ];
    let mut headers = String::with_capacity(640);
    headers.push('{');
    for (i, (key, value)) in standard.iter().enumerate() {
        if i > 0 {
            headers.push_str(", ");
        }
        write_py_string(key, &mut headers);
        headers.push_str(": ");
        // A custom header of the same name replaces the value in place,
        // as Python's dict.update does.
        match options.headers.get(*key) {
            Some(custom) => write_py_json(custom, &mut headers),
            None => headers.push_str(value),
        }
    }
    for (key, value) in &options.headers {
        if standard.iter().all(|(k, _)| k != key) {
            headers.push_str(", ");
            write_py_string(key, &mut headers);
            headers.push_str(": ");
            write_py_json(value, &mut headers);
        }
    }
    headers.push('}');

    let mut body = String::with_capacity(128);
    body.push_str("[[], ");
    write_py_json(&kwargs_value, &mut body);
    body.push_str(", {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]");

    let destination = options.destination();
    let (exchange, routing_key) = match &destination {
        Destination::Queue { queue } => ("", queue.as_str()),
        Destination::Exchange {
            exchange,
            routing_key,
            ..
        } => (exchange.as_str(), routing_key.as_str()),
    };
    let priority = options.priority.unwrap_or(0);

    let mut envelope = String::with_capacity(headers.len() + body.len() * 4 / 3 + 512);
    envelope.push_str("{\"body\": \"");
    base64::engine::general_purpose::STANDARD.encode_string(body.as_bytes(), &mut envelope);
    envelope.push_str("\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \"headers\": ");
    envelope.push_str(&headers);
    envelope.push_str(", \"properties\": {\"correlation_id\": ");
    write_py_string(id, &mut envelope);
    envelope.push_str(", \"reply_to\": ");
    write_py_string(&sender.reply_to, &mut envelope);
    envelope.push_str(", \"delivery_mode\": 2");
    if let Some(seconds) = expiration {
        // kombu: str(int(expiration * 1000))
        let _ = write!(
            envelope,
            ", \"expiration\": \"{}\"",
            (seconds * 1000.0).trunc() as i64
        );
    }
    envelope.push_str(", \"delivery_info\": {\"exchange\": ");
    write_py_string(exchange, &mut envelope);
    envelope.push_str(", \"routing_key\": ");
    write_py_string(routing_key, &mut envelope);
    let _ = write!(
        envelope,
        "}}, \"priority\": {priority}, \"body_encoding\": \"base64\", \"delivery_tag\": "
    );
    write_py_string(
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
        &mut envelope,
    );
    envelope.push_str("}}");

    Message {
        id: id.to_owned(),
        task: task.to_owned(),
        destination,
        priority_step: priority_step(priority),
        envelope,
        run_at,
    }
}

/// kombu: clamp to 0..9, then round down to a step of [0, 3, 6, 9].
fn priority_step(priority: i64) -> i64 {
    let p = priority.clamp(0, 9);
    PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|step| *step <= p)
        .unwrap_or(0)
}

fn seconds_after(now: DateTime<Utc>, seconds: f64) -> Option<DateTime<Utc>> {
    let micros = (seconds * 1e6).round();
    if !micros.is_finite() || micros.abs() > 1e15 {
        return None;
    }
    now.checked_add_signed(TimeDelta::microseconds(micros as i64))
}

/// Python's `datetime.isoformat()` of an aware UTC time.
fn isoformat(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
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
    fn priorities_map_to_kombus_steps() {
        let steps: Vec<i64> = (0..=10).map(priority_step).collect();
        assert_eq!(steps, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9]);
    }

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
            assert!(err.contains(msg), "{bad}: {err}");
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

    #[test]
    fn task_ids_are_stable_across_releases() {
        // The id of a run must not change with an upgrade: a beat restarted
        // on a new version republishes a run with the id the old one used.
        // Expected value from Python: uuid.uuid5(UUID('6c1f3b0e-…'), name).
        let t = DateTime::parse_from_rfc3339("2030-01-02T03:04:05.000006Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            task_id("0b5c3e52-0c0e-4c1e-9a53-1d2f3e4a5b6c", t),
            "5b9dabd3-479d-5c80-8f57-fd19f1216a9f"
        );
    }

    #[test]
    fn task_ids_are_the_same_for_the_same_run() {
        let t = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(task_id("r1", t), task_id("r1", t));
        assert_ne!(task_id("r1", t), task_id("r2", t));
        assert_ne!(
            task_id("r1", t),
            task_id("r1", t + TimeDelta::microseconds(1))
        );
    }
}
