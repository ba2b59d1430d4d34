//! Routing a row: whether it can run, and where (in-process or Celery),
//! with its schedule, kwargs and options parsed once per text.

use crate::broker::{message, Message, SendOptions, Sender as CelerySender};
use crate::routine::{check_name, Invalid};
use crate::schedule::{truncated, ScheduleError, Timing};
use crate::store::{RoutineRow, LATEST_STORABLE};
use crate::task::{TaskContext, TaskRegistry};
use crate::worker::Job;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// A row found runnable, with what its run needs.
pub(crate) struct Checked {
    /// Its schedule, misfire settings and bounds.
    pub(crate) timing: Arc<Timing>,
    kwargs: Map<String, Value>,
    args: Vec<Value>,
    /// Celery options, for a task sent to the broker.
    pub(super) send: Option<Arc<SendOptions>>,
}

/// A run to start: in the worker pool, or as a Celery message.
pub(super) enum Outgoing {
    Local(Job),
    Celery(Message),
}

/// Decides where a routine's task runs: in-process when it is registered,
/// else on a Celery worker when a broker is configured.
pub(crate) struct Router {
    /// The tasks run in-process.
    local: HashSet<String>,
    has_broker: bool,
    sender: CelerySender,
    /// The registered task names as a JSON array, for claims that must
    /// leave broker routines alone.
    pub(crate) local_tasks: String,
    parsed: Parsed,
}

impl Router {
    /// A router for `registry`'s tasks, sending the rest to Celery if
    /// `has_broker`; crontabs without a zone of their own match `zone`.
    pub(crate) fn new(registry: &TaskRegistry, has_broker: bool, zone: Tz) -> Self {
        Self::for_tasks(registry.names(), has_broker, zone)
    }

    /// A router for tasks of these names (the command line checks rows as
    /// the live beats would, knowing only their task names).
    pub(crate) fn for_tasks<S: Into<String>>(
        tasks: impl IntoIterator<Item = S>,
        has_broker: bool,
        zone: Tz,
    ) -> Self {
        let local: HashSet<String> = tasks.into_iter().map(Into::into).collect();
        let mut sorted: Vec<&String> = local.iter().collect();
        sorted.sort();
        Router {
            local_tasks: serde_json::Value::from(sorted.into_iter().cloned().collect::<Vec<_>>())
                .to_string(),
            local,
            has_broker,
            sender: CelerySender::this_process(),
            parsed: Parsed {
                zone,
                ..Parsed::default()
            },
        }
    }

    /// Whether any task runs in-process here.
    pub(crate) fn has_local_tasks(&self) -> bool {
        !self.local.is_empty()
    }

    /// Whether `task` runs in-process here.
    pub(crate) fn is_local(&self, task: &str) -> bool {
        self.local.contains(task)
    }

    /// Everything that makes a row runnable: its schedule, its kwargs and
    /// options, and a way to run its task. Also returns option keys that
    /// will be ignored.
    pub(crate) fn check(&self, row: &RoutineRow) -> Result<(Checked, Vec<String>), Invalid> {
        if row.duplicate_name {
            return Err(Invalid(format!(
                "another row is also named {:?} and runs instead; this one (id {}) never runs: \
                 delete or rename it",
                row.name, row.id
            )));
        }
        if let Some(reason) = &row.unreadable {
            return Err(Invalid(reason.clone()));
        }
        // What every other write path refuses, a row written by SQL may
        // hold (an empty name; on SQLite, any length).
        check_name("name", &row.name)?;
        check_name("task", &row.task)?;
        let timing = self.parsed.timing(&row.schedule)?;
        let kwargs = json_object("kwargs", row.kwargs.as_deref())?;
        let args = json_array("args", row.args.as_deref())?;
        if self.local.contains(&row.task) {
            json_object("options", row.options.as_deref())?;
            return Ok((
                Checked {
                    timing,
                    kwargs,
                    args,
                    send: None,
                },
                Vec::new(),
            ));
        }
        if !self.has_broker {
            return Err(Invalid(format!(
                "unknown task {:?}: not registered in this beat, and no broker_url to send it to Celery",
                truncated(row.task.clone())
            )));
        }
        let (send, ignored) = self.parsed.options(row.options.as_deref())?;
        Ok((
            Checked {
                timing,
                kwargs,
                args,
                send: Some(send),
            },
            ignored,
        ))
    }

    /// The Celery message of a run of `row` now with task id `id`, if its
    /// task goes to Celery (`beat send` publishing itself); `None` if it
    /// runs in-process.
    pub(crate) fn celery_message(
        &self,
        row: &RoutineRow,
        now: DateTime<Utc>,
        id: &str,
    ) -> Result<Option<Message>, Invalid> {
        let (checked, _) = self.check(row)?;
        Ok(match self.outgoing(row, &checked, now, id, now) {
            Outgoing::Celery(message) => Some(message),
            Outgoing::Local(_) => None,
        })
    }

    /// The run of `row` due at `scheduled_at`, with Celery task id `id`.
    pub(super) fn outgoing(
        &self,
        row: &RoutineRow,
        checked: &Checked,
        scheduled_at: DateTime<Utc>,
        id: &str,
        now: DateTime<Utc>,
    ) -> Outgoing {
        match &checked.send {
            None => Outgoing::Local(Job {
                ctx: TaskContext {
                    routine_id: row.id.clone(),
                    routine: row.name.clone(),
                    task: row.task.clone(),
                    scheduled_at,
                    attempt: 0,
                    args: Value::Array(checked.args.clone()),
                    kwargs: Value::Object(checked.kwargs.clone()),
                },
                task_id: id.to_owned(),
                scheduled: true,
                recorded: true,
            }),
            Some(options) => Outgoing::Celery(message::build(
                &row.task,
                id,
                (&checked.args, &checked.kwargs),
                options,
                (scheduled_at, now),
                &self.sender,
            )),
        }
    }
}

/// Schedules and options parsed before, by their JSON text. Tables have few
/// distinct schedules, and a crontab is costly to parse at every run.
#[derive(Default)]
struct Parsed {
    /// The `timezone` setting: crontabs without a zone of their own.
    zone: Tz,
    schedules: Cache<Arc<Timing>>,
    options: Cache<(Arc<SendOptions>, Vec<String>)>,
}

/// Parse results by JSON text (errors too: a bad row is parsed once).
type Cache<T> = Mutex<HashMap<String, Result<T, Invalid>>>;

/// Entries kept per cache; past this, it starts afresh.
const PARSED_CAPACITY: usize = 4096;

impl Parsed {
    fn timing(&self, text: &str) -> Result<Arc<Timing>, Invalid> {
        cached(&self.schedules, text, || {
            let json: Value = serde_json::from_str(text)
                .map_err(|e| Invalid::of(ScheduleError::NotJson(e.to_string())))?;
            let timing = Timing::from_json_in(&json, self.zone).map_err(Invalid::of)?;
            Ok(Arc::new(timing))
        })
    }

    fn options(&self, text: Option<&str>) -> Result<(Arc<SendOptions>, Vec<String>), Invalid> {
        cached(&self.options, text.unwrap_or("null"), || {
            let options = json_object("options", text)?;
            let (send, ignored) = SendOptions::parse(&options)?;
            Ok((Arc::new(send), ignored))
        })
    }
}

fn cached<T: Clone>(
    cache: &Cache<T>,
    key: &str,
    parse: impl FnOnce() -> Result<T, Invalid>,
) -> Result<T, Invalid> {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(hit) = cache.get(key) {
        return hit.clone();
    }
    let parsed = parse();
    if cache.len() >= PARSED_CAPACITY {
        cache.clear();
    }
    // Long texts (a 10 kB garbage schedule) are not worth keeping.
    if key.len() <= 1024 {
        cache.insert(key.to_owned(), parsed.clone());
    }
    parsed
}

/// `next` if the table can hold it; a run later than that is the row's
/// error, not a failed claim for every row beside it.
pub(crate) fn storable(next: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, Invalid> {
    match next {
        Some(t) if t > LATEST_STORABLE => Err(Invalid(format!(
            "its next run ({t}) is later than {LATEST_STORABLE}, the latest time the table holds"
        ))),
        other => Ok(other),
    }
}

/// Reads an args column: a JSON array, or nothing (`[]`).
pub(crate) fn json_array(column: &str, text: Option<&str>) -> Result<Vec<Value>, Invalid> {
    match json_column(column, text)? {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(not_a(column, "array", &other)),
    }
}

/// Reads a kwargs or options column: a JSON object, or nothing (`{}`).
fn json_object(column: &str, text: Option<&str>) -> Result<Map<String, Value>, Invalid> {
    match json_column(column, text)? {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(not_a(column, "object", &other)),
    }
}

/// A JSON column's value; `None` for SQL NULL and JSON `null`.
fn json_column(column: &str, text: Option<&str>) -> Result<Option<Value>, Invalid> {
    let Some(text) = text else {
        return Ok(None);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(e) => Err(Invalid(format!("{column} is not valid JSON: {e}"))),
    }
}

fn not_a(column: &str, kind: &str, value: &Value) -> Invalid {
    Invalid(format!(
        "{column} must be a JSON {kind}, got {}",
        truncated(value.to_string())
    ))
}
