//! Redis as the tests' broker: a database or a queue of the test's own,
//! and the messages a beat left there, read back.

use super::{reachable, skip, unique};

pub const REDIS_HOST: &str = "127.0.0.1:6379";

/// A Redis database of the test's own (each test passes a distinct
/// number), emptied first; `None` (skipped) without a server. A server
/// that answers but refuses us is a failure, not a skip.
pub fn redis_db(test: &str, db: u8) -> Option<String> {
    let url = format!("redis://{REDIS_HOST}/{db}");
    if !reachable(&url) {
        skip(test, &format!("Redis not reachable at {REDIS_HOST}"));
        return None;
    }
    let mut conn = redis_conn(&url);
    ::redis::cmd("FLUSHDB")
        .query::<()>(&mut conn)
        .expect("FLUSHDB");
    Some(url)
}

/// A Redis list of the test's own in a database shared by such tests (13):
/// its URL and a unique queue name. For tests whose routines route their
/// messages to that queue; no worker involved.
pub fn redis_queue(test: &str) -> Option<(String, String)> {
    let url = format!("redis://{REDIS_HOST}/13");
    if !reachable(&url) {
        skip(test, &format!("Redis not reachable at {REDIS_HOST}"));
        return None;
    }
    Some((url, unique(test)))
}

pub fn redis_conn(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

/// A message a beat published, as the tests read it back.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub routine: String,
    pub task: String,
}

/// How many messages wait in the Redis list `queue`.
pub fn published_count(redis_url: &str, queue: &str) -> usize {
    ::redis::cmd("LLEN")
        .arg(queue)
        .query(&mut redis_conn(redis_url))
        .unwrap()
}

/// The envelopes waiting in the Redis list `key`, oldest first.
pub fn envelopes(redis_url: &str, key: &str) -> Vec<serde_json::Value> {
    let raw: Vec<String> = ::redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut redis_conn(redis_url))
        .unwrap();
    raw.iter()
        .rev()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect()
}

/// A message's body: `[args, kwargs, embed]`.
pub fn body(envelope: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(envelope["body"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Every message waiting in the Redis list `queue`, oldest first. The
/// routines of these tests carry their own name in kwargs (`{"r": name}`,
/// as [`super::routines::insert_tagged`] writes them).
pub fn published(redis_url: &str, queue: &str) -> Vec<Published> {
    envelopes(redis_url, queue)
        .iter()
        .map(|envelope| Published {
            id: envelope["headers"]["id"].as_str().unwrap().to_owned(),
            routine: body(envelope)[1]["r"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            task: envelope["headers"]["task"].as_str().unwrap().to_owned(),
        })
        .collect()
}
