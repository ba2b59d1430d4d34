//! Publishing to Redis the way kombu's Redis transport does.

use super::message::{Destination, Message, SEP};
use super::BrokerError;
use crate::config::{redact_message, redact_url};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long connecting, and each command, may take before the broker
/// counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The hashes that remember which runs were pushed: one per due second,
/// `_beat.sent.<unix second>`, with a field per task id.
const SENT_PREFIX: &str = "_beat.sent.";

/// Pushes each message unless its task id was pushed within the window, in
/// one script so that the check and the push are one atomic step: a run
/// claimed again (after a crash or a failed commit between the push and the
/// claim's commit) reaches its queues once. A run is remembered as a field
/// of its due second's hash (`HSETNX`): cheaper in time and memory than a
/// key of its own, and each hash expires a window after its last push.
///
/// KEYS: the due seconds' hashes, then each message's list keys in turn.
/// ARGV: the window (s), the number of messages, the number of hashes, then
/// per message its hash's index in KEYS, its task id, its envelope and its
/// number of list keys. Returns per message 1 (pushed) or 0 (pushed before).
const PUSH_ONCE: &str = r"
local n = tonumber(ARGV[2])
local hashes = tonumber(ARGV[3])
local k = hashes
local a = 4
local pushed = {}
for i = 1, n do
    local envelope = ARGV[a + 2]
    local targets = tonumber(ARGV[a + 3])
    if redis.call('HSETNX', KEYS[tonumber(ARGV[a])], ARGV[a + 1], 1) == 1 then
        for t = 1, targets do
            redis.call('LPUSH', KEYS[k + t], envelope)
        end
        pushed[i] = 1
    else
        pushed[i] = 0
    end
    k = k + targets
    a = a + 4
end
for h = 1, hashes do
    redis.call('EXPIRE', KEYS[h], ARGV[1])
end
return pushed
";

/// Turns Celery's broker URL forms into the redis crate's.
///
/// `redis://[user:password@]host[:port][/db]` and `rediss://…` pass through;
/// kombu's `redis+socket:///path?virtual_host=N` and `socket://` become
/// `unix:///path?db=N`.
pub(crate) fn connection_url(url: &str) -> Result<String, BrokerError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("redis://")
        || lower.starts_with("rediss://")
        || lower.starts_with("unix://")
    {
        return Ok(url.to_owned());
    }
    for prefix in ["redis+socket://", "socket://", "redis+unix://"] {
        if lower.starts_with(prefix) {
            let rest = &url[prefix.len()..];
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let query: Vec<String> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some(("virtual_host", db)) => format!("db={db}"),
                    _ => p.to_owned(),
                })
                .collect();
            return Ok(if query.is_empty() {
                format!("unix://{path}")
            } else {
                format!("unix://{path}?{}", query.join("&"))
            });
        }
    }
    Err(BrokerError::Url(format!(
        "{}: broker_url must be redis://, rediss://, redis+socket:// or unix://",
        redact_url(url)
    )))
}

/// A connection to the broker, opened on first use and again after any
/// failure.
pub(crate) struct Publisher {
    client: redis::Client,
    url: String,
    connection: Option<redis::Connection>,
    /// Queues whose binding was declared on this connection (kombu declares
    /// once per connection).
    declared: HashSet<String>,
    /// How long a pushed run is remembered (`broker_dedup_window`), in whole
    /// seconds (at least one), after the last push due in the same second.
    window: u64,
}

/// [`PUSH_ONCE`], with its hash (sent as `EVALSHA`, loaded on first use).
static PUSH_ONCE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUSH_ONCE));

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Pushed to this many lists (0: no queue is bound to its exchange).
    To(usize),
    /// Its task id was pushed within the window: not pushed again.
    Before,
}

impl Publisher {
    /// A publisher to `url` that remembers each run it pushed for `window`.
    pub(crate) fn new(url: &str, window: Duration) -> Result<Self, BrokerError> {
        let target = connection_url(url)?;
        let client = redis::Client::open(target.as_str()).map_err(|e| {
            BrokerError::Url(format!(
                "{}: {}",
                redact_url(url),
                redact_message(&e.to_string(), url)
            ))
        })?;
        Ok(Publisher {
            client,
            url: url.to_owned(),
            connection: None,
            declared: HashSet::new(),
            window: window.as_secs().max(1),
        })
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, BrokerError> {
        if self.connection.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(TIMEOUT)
                .map_err(|e| self.failed(&e))?;
            conn.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| self.failed(&e))?;
            conn.set_write_timeout(Some(TIMEOUT))
                .map_err(|e| self.failed(&e))?;
            self.declared.clear();
            self.connection = Some(conn);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| BrokerError::Unavailable("no connection".into()))
    }

    fn failed(&self, e: &redis::RedisError) -> BrokerError {
        BrokerError::Unavailable(format!(
            "{}: {}",
            redact_url(&self.url),
            redact_message(&e.to_string(), &self.url)
        ))
    }

    /// Publishes `messages`: the queue declarations kombu makes (`SADD
    /// _kombu.binding.<queue>`, once per connection), then one `LPUSH` per
    /// message and bound queue, unless the message's task id was pushed
    /// within the window. Returns what became of each message (one to an
    /// exchange with no matching binding reaches no list, and is dropped,
    /// as kombu drops it).
    pub(crate) fn publish(&mut self, messages: &[&Message]) -> Result<Vec<Pushed>, BrokerError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let reused = self.connection.is_some();
        let mut result = self.try_publish(messages);
        if result.is_err() {
            self.connection = None;
            // A connection that was idle may have died meanwhile (a Redis
            // restart, a proxy's timeout): one more try on a fresh one
            // before calling the broker unavailable. Nothing was delivered
            // on the dead one; were it otherwise, a repeat has the same ids.
            if reused {
                result = self.try_publish(messages);
                if result.is_err() {
                    self.connection = None;
                }
            }
        }
        result
    }

    fn try_publish(&mut self, messages: &[&Message]) -> Result<Vec<Pushed>, BrokerError> {
        let exchanges: HashSet<&str> = messages
            .iter()
            .filter_map(|m| match &m.destination {
                Destination::Exchange { exchange, .. } => Some(exchange.as_str()),
                Destination::Queue { .. } => None,
            })
            .collect();
        let mut bindings: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for exchange in exchanges {
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("_kombu.binding.{exchange}"))
                .query(self.connection()?)
                .map_err(|e| self.failed(&e))?;
            let table = members
                .iter()
                .filter_map(|m| {
                    let mut parts = m.split(SEP);
                    let (rkey, _pattern, queue) = (parts.next()?, parts.next()?, parts.next()?);
                    Some((rkey.to_owned(), queue.to_owned()))
                })
                .collect();
            bindings.insert(exchange.to_owned(), table);
        }

        let mut declare = redis::pipe();
        let mut declaring = Vec::new();
        let mut hashes: Vec<i64> = Vec::new();
        let mut per_message = Vec::with_capacity(messages.len());
        let mut lists: Vec<String> = Vec::new();
        let mut targets_of = Vec::with_capacity(messages.len());
        for message in messages {
            let queue = message.destination.declared_queue();
            if !self.declared.contains(queue) && !declaring.iter().any(|q| q == queue) {
                declare
                    .cmd("SADD")
                    .arg(format!("_kombu.binding.{queue}"))
                    .arg(format!("{queue}{SEP}{SEP}{queue}"))
                    .ignore();
                declaring.push(queue.to_owned());
            }
            let targets: Vec<&str> = match &message.destination {
                Destination::Queue { queue } => vec![queue.as_str()],
                Destination::Exchange {
                    exchange,
                    routing_key,
                    ..
                } => bindings
                    .get(exchange)
                    .map(|table| {
                        table
                            .iter()
                            .filter(|(rk, _)| rk == routing_key)
                            .map(|(_, q)| q.as_str())
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let second = message.run_at.timestamp();
            let hash = match hashes.iter().position(|h| *h == second) {
                Some(index) => index,
                None => {
                    hashes.push(second);
                    hashes.len() - 1
                }
            };
            per_message.push((hash + 1, targets.len()));
            lists.extend(targets.iter().map(|t| message.list_key(t)));
            targets_of.push(targets.len());
        }
        let mut push = PUSH_ONCE_SCRIPT.prepare_invoke();
        push.arg(self.window).arg(messages.len()).arg(hashes.len());
        for ((hash, targets), message) in per_message.iter().zip(messages) {
            push.arg(*hash)
                .arg(&message.id)
                .arg(&message.envelope)
                .arg(*targets);
        }
        for second in &hashes {
            push.key(format!("{SENT_PREFIX}{second}"));
        }
        for list in &lists {
            push.key(list);
        }
        if !declaring.is_empty() {
            declare
                .query::<()>(self.connection()?)
                .map_err(|e| self.failed(&e))?;
        }
        let pushed: Vec<i64> = push
            .invoke(self.connection()?)
            .map_err(|e| self.failed(&e))?;
        self.declared.extend(declaring);
        Ok(targets_of
            .into_iter()
            .zip(pushed)
            .map(|(targets, pushed)| {
                if pushed == 1 {
                    Pushed::To(targets)
                } else {
                    Pushed::Before
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_url_forms_are_understood() {
        assert_eq!(
            connection_url("redis://:pw@h:6380/2").unwrap(),
            "redis://:pw@h:6380/2"
        );
        assert_eq!(connection_url("rediss://h/0").unwrap(), "rediss://h/0");
        assert_eq!(
            connection_url("redis+socket:///tmp/r.sock").unwrap(),
            "unix:///tmp/r.sock"
        );
        assert_eq!(
            connection_url("redis+socket:///tmp/r.sock?virtual_host=3").unwrap(),
            "unix:///tmp/r.sock?db=3"
        );
        assert_eq!(
            connection_url("unix:///tmp/r.sock?db=1").unwrap(),
            "unix:///tmp/r.sock?db=1"
        );
        let err = connection_url("amqp://guest:hunter2@h//")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("amqp://guest:***@h//") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(
            Publisher::new("redis://:hunter2@127.0.0.1:1/0", Duration::from_secs(60)).is_ok(),
            "connects lazily"
        );
        assert!(
            Publisher::new("rediss://127.0.0.1:1/0", Duration::from_secs(60)).is_ok(),
            "TLS is built in"
        );
    }
}
