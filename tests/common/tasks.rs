//! Tasks for in-process runs: one that records every run, one that blocks
//! until the test lets it go.

use celery_diesel_kit::{SyncTask, TaskContext, TaskResult};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A run seen by a [`Recorder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub routine: String,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub args: serde_json::Value,
    pub kwargs: serde_json::Value,
    pub at: Instant,
}

/// A task that records every run.
#[derive(Clone)]
pub struct Recorder {
    name: &'static str,
    pub runs: Arc<Mutex<Vec<Run>>>,
}

impl Recorder {
    pub fn new(name: &'static str) -> Self {
        Recorder {
            name,
            runs: Arc::default(),
        }
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    pub fn runs_of(&self, routine: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.routine == routine)
            .collect()
    }
}

impl SyncTask for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, ctx: &TaskContext) -> TaskResult {
        self.runs.lock().unwrap().push(Run {
            routine: ctx.routine.clone(),
            scheduled_at: ctx.scheduled_at,
            attempt: ctx.attempt,
            args: ctx.args.clone(),
            kwargs: ctx.kwargs.clone(),
            at: Instant::now(),
        });
        Ok(())
    }
}

/// A task that blocks until the test lets it go (or a minute passes).
pub struct Gate {
    started: Sender<()>,
    release: Receiver<()>,
}

impl SyncTask for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn run(&self, _: &TaskContext) -> TaskResult {
        let _ = self.started.send(());
        let _ = self.release.recv_timeout(Duration::from_secs(60));
        Ok(())
    }
}

/// A gate task, the receiver of its starts, and the sender that releases
/// one run.
pub fn gate() -> (Gate, Receiver<()>, Sender<()>) {
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    (
        Gate {
            started: started_tx,
            release: release_rx,
        },
        started_rx,
        release_tx,
    )
}
