//! Celery task protocol v2 messages, built once for any transport.
//!
//! A message is what `celery.app.amqp.as_task_v2` builds: headers, a body
//! and properties, serialized the way Python's `json.dumps` does (", " and
//! ": " separators, non-ASCII escaped, Python's float repr), so that a
//! message from this beat and one from `app.send_task` differ only where
//! two Celery clients would differ too: the id, the origin, `reply_to`,
//! the delivery tag and times taken from the clock. How it travels (the
//! Redis envelope, AMQP's frames) is the transport's business.

use super::options::{Destination, Expires, SendOptions};
use super::pyjson::{saferepr, write_py_json, write_py_json_array, write_py_string};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Number, Value};

/// A Celery message, ready for any transport.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    /// The task id (also the `correlation_id` property).
    pub(crate) id: String,
    /// The Celery task name.
    pub(crate) task: String,
    /// Where it goes.
    pub(crate) destination: Destination,
    /// The `priority` option (0 when not given).
    pub(crate) priority: i64,
    /// The headers, a JSON object as Python writes it.
    pub(crate) headers: String,
    /// The body (args, kwargs, embed), JSON as Python writes it.
    pub(crate) body: String,
    /// The `reply_to` property.
    pub(crate) reply_to: String,
    /// The `expiration` property, in milliseconds (from `expires`).
    pub(crate) expiration_ms: Option<i64>,
    /// The time the run stands for: its due time (now, for a run on
    /// demand). A transport publishes a run once per id and due second.
    pub(crate) run_at: DateTime<Utc>,
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
    (args, kwargs): (&[Value], &Map<String, Value>),
    options: &SendOptions,
    (run_at, now): (DateTime<Utc>, DateTime<Utc>),
    sender: &Sender,
) -> Message {
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
    let kwargs = Value::Object(kwargs.clone());
    let eta = options
        .countdown
        .and_then(|s| seconds_after(now, s))
        .map(isoformat);
    let mut body = String::with_capacity(128);
    // Celery's `args = args or ()`: no args are the empty tuple, which
    // JSON writes as `[]`.
    let argsrepr = match args.is_empty() {
        true => "()".to_owned(),
        false => saferepr(&Value::Array(args.to_vec())),
    };
    body.push('[');
    write_py_json_array(args, &mut body);
    body.push_str(", ");
    write_py_json(&kwargs, &mut body);
    body.push_str(", {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]");
    Message {
        id: id.to_owned(),
        task: task.to_owned(),
        destination: options.destination(),
        priority: options.priority.unwrap_or(0),
        headers: headers(
            task,
            id,
            (&argsrepr, &kwargs),
            options,
            (eta, expires),
            sender,
        ),
        body,
        reply_to: sender.reply_to.clone(),
        // kombu: str(int(expiration * 1000))
        expiration_ms: expiration.map(|seconds| (seconds * 1000.0).trunc() as i64),
        run_at,
    }
}

/// The headers of `as_task_v2`, written straight out in the order
/// Celery's dict has (a message is built for every run, so no
/// intermediate maps). `times` are the `eta` and `expires` headers.
fn headers(
    task: &str,
    id: &str,
    (argsrepr, kwargs): (&str, &Value),
    options: &SendOptions,
    (eta, expires): (Option<String>, Option<String>),
    sender: &Sender,
) -> String {
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
        ("argsrepr", text(argsrepr)),
        ("kwargsrepr", text(&saferepr(kwargs))),
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
    headers
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

#[cfg(test)]
mod tests {
    use super::*;

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
