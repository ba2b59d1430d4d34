//! What the scenarios measure with, on either broker: CPU time from
//! `/proc`, and what a drain thread reports.

use super::{Backend, Broker};
use std::collections::HashMap;
use std::time::Duration;

/// A thread's or process's CPU time (user + system), from its `stat` file.
pub(crate) fn cpu_time(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// What a drain thread found: deliveries by task id, and the CPU time the
/// drain itself took.
pub(crate) type Drained = (HashMap<String, usize>, Duration);

/// A drain thread.
pub(crate) type Drain = std::thread::JoinHandle<anyhow::Result<Drained>>;

/// CPU time of every process called `name` on this machine (the database
/// server's backends, Redis): where a claim's time goes, besides the beat.
pub(crate) fn cpu_of(name: &str) -> Duration {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim() == name).then(|| cpu_time(&path.join("stat").to_string_lossy()))
        })
        .sum()
}

/// CPU time so far of the beat's process, the database server and the
/// broker: where a claim's time goes.
pub(crate) struct Cpu {
    pub(crate) beat: Duration,
    pub(crate) database: Duration,
    pub(crate) broker: Duration,
}

impl Cpu {
    pub(crate) fn now(backend: Backend, broker: Broker) -> Cpu {
        let server = if backend == Backend::Mysql {
            "mariadbd"
        } else {
            "postgres"
        };
        Cpu {
            beat: cpu_time("/proc/self/stat"),
            database: cpu_of(server),
            broker: cpu_of(broker.process()),
        }
    }

    /// The CPU time taken since `self`.
    pub(crate) fn since(&self, backend: Backend, broker: Broker) -> Cpu {
        let now = Cpu::now(backend, broker);
        Cpu {
            beat: now.beat.saturating_sub(self.beat),
            database: now.database.saturating_sub(self.database),
            broker: now.broker.saturating_sub(self.broker),
        }
    }
}
