//! RabbitMQ as the tests' broker: a virtual host of the test's own,
//! created and removed by the test with `rabbitmqctl` (the shared server's
//! other virtual hosts are never touched), and the messages waiting there,
//! read back by py-amqp.

use super::{reachable, skip};
use std::process::Command;

pub const RABBIT_HOST: &str = "127.0.0.1:5672";

/// A virtual host of the test's own, deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// Celery's URL for it (guest/guest).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{RABBIT_HOST}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh virtual host named after the test (`cdk_<name>`), emptied of
/// anything an earlier run left; `None` (skipped) without a server or
/// without `rabbitmqctl`. A server that refuses us is a failure.
pub fn rabbit_vhost(test: &str, name: &str) -> Option<Vhost> {
    if !reachable(&format!("amqp://{RABBIT_HOST}")) {
        skip(test, &format!("RabbitMQ not reachable at {RABBIT_HOST}"));
        return None;
    }
    if Command::new("rabbitmqctl").arg("--help").output().is_err() {
        skip(
            test,
            "rabbitmqctl not found (needed to make a virtual host)",
        );
        return None;
    }
    let name = format!("cdk_{name}");
    let _ = rabbitmqctl(&["delete_vhost", &name]);
    rabbitmqctl(&["add_vhost", &name]).unwrap_or_else(|e| panic!("{test}: {e}"));
    rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    Some(Vhost { name })
}

/// Declares, as a Celery user would, what routines publish to (see
/// `tests/python/amqp_setup.py`).
pub fn declare(python: &std::path::Path, url: &str, specs: &[&str]) {
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/amqp_setup.py"
        ))
        .arg(url)
        .args(specs)
        .output()
        .expect("amqp_setup.py");
    assert!(
        out.status.success(),
        "amqp_setup.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every message waiting in `queue`, taken off it, as py-amqp decodes them
/// (see `tests/python/amqp_get.py`).
pub fn take_messages(python: &std::path::Path, url: &str, queue: &str) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/amqp_get.py"
        ))
        .args([url, queue])
        .output()
        .unwrap_or_else(|e| panic!("amqp_get.py: {e}"));
    assert!(
        out.status.success(),
        "amqp_get.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("amqp_get.py printed no JSON list: {e}"))
}

/// A typed value from `amqp_get.py` (`[type, value]`), as text.
fn text(typed: &serde_json::Value) -> Option<&str> {
    typed.get(1).and_then(serde_json::Value::as_str)
}

/// Every message waiting in `queue`, taken off it, as the tests tally
/// them: the task id (the `correlation_id` property, or the `id` header),
/// the routine (the kwargs' `"r"` in the body, `[args, kwargs, embed]`,
/// as [`super::routines::insert_tagged`] writes it) and the task (the
/// `task` header).
pub fn published(python: &std::path::Path, url: &str, queue: &str) -> Vec<super::Published> {
    take_messages(python, url, queue)
        .iter()
        .map(|m| {
            let id = text(&m["properties"]["correlation_id"])
                .or_else(|| text(&m["headers"]["id"]))
                .unwrap_or_else(|| panic!("a message without a task id: {m}"));
            let body: serde_json::Value = m["body"]
                .as_str()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_else(|| panic!("a body that is not JSON: {m}"));
            super::Published {
                id: id.to_owned(),
                routine: body[1]["r"].as_str().unwrap_or_default().to_owned(),
                task: text(&m["headers"]["task"])
                    .unwrap_or_else(|| panic!("a message without a task header: {m}"))
                    .to_owned(),
            }
        })
        .collect()
}
