//! The housekeeper: a thread beside the scheduler that keeps this beat's
//! entry in `beats` alive, writes what became of its in-process runs, marks
//! the runs of dead beats lost, and prunes the history and the audit trail.
//!
//! Nothing here is on a claim's path: claims insert their runs in their own
//! transaction, and the housekeeper's statements are short transactions of
//! their own. Pruning deletes by primary key, a small batch at a time, so
//! it never holds a range lock a claim could wait on (MySQL's next-key
//! locks would, for a range `DELETE`).

use crate::clock::Clock;
use crate::dispatch::Touched;
use crate::store::{BeatInfo, RoutineStore, RunOutcome, RunUpdate};
use crate::worker::{Happened, RunEvent};
use chrono::TimeDelta;
use crossbeam_channel::{select, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs deleted per statement.
const PRUNE_BATCH: usize = 1000;
/// Routines whose history is trimmed to `history_max_runs` per statement.
const TRIM_ROUTINES: usize = 500;
/// Statements of pruning per cycle, so that a large backlog (history just
/// switched on with a short age) goes in steps.
const PRUNE_STEPS: usize = 10;
/// Updates kept for a database that is away; older ones are dropped
/// (logged) past this.
const PENDING_CAPACITY: usize = 100_000;
/// Edits looked at per cycle for the routines whose edits to trim to
/// `audit_max_edits` (a walk by edit number, from the last one seen).
const EDITS_WALK: usize = 1000;

/// The history settings, from [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistorySettings {
    pub(crate) history: bool,
    pub(crate) max_age: Duration,
    pub(crate) max_runs: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) dead_after: Duration,
    /// `audit_max_age`, `audit_max_edits`: the audit trail's retention.
    pub(crate) audit_max_age: Duration,
    pub(crate) audit_max_edits: usize,
}

pub(crate) struct Housekeeper {
    pub(crate) store: Arc<RoutineStore>,
    pub(crate) beat: BeatInfo,
    pub(crate) settings: HistorySettings,
    pub(crate) events: Receiver<RunEvent>,
    pub(crate) touched: Arc<Touched>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Housekeeper {
    /// Starts the housekeeper's thread. Dropping the returned sender stops
    /// it (see [`Self::run`]).
    pub(crate) fn start(
        self,
    ) -> Result<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>), crate::error::Error>
    {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("beat-housekeeper".into())
            .spawn(move || self.run(stopped))
            .map_err(|source| crate::error::Error::Thread {
                what: "housekeeper",
                source,
            })?;
        Ok((stop, thread))
    }

    /// Serves until `stop` is dropped; then writes what is left, marks this
    /// beat's unfinished runs abandoned and the beat stopped.
    pub(crate) fn run(self, stop: Receiver<()>) {
        let mut pending: Vec<RunUpdate> = Vec::new();
        let mut next_cycle = Instant::now();
        let mut quiet = Quiet::default();
        // The number of the last edit whose routine was trimmed.
        let mut edits_seen = 0;
        loop {
            let wait = next_cycle.saturating_duration_since(Instant::now());
            let timer = crossbeam_channel::after(wait);
            let stopping = select! {
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        self.queue(&mut pending, event);
                    }
                    false
                }
                recv(timer) -> _ => false,
                recv(stop) -> _ => true,
            };
            // Whatever else has arrived goes in the same transaction.
            for event in self.events.try_iter() {
                self.queue(&mut pending, event);
            }
            self.write(&mut pending, &mut quiet);
            if stopping {
                break;
            }
            if Instant::now() >= next_cycle {
                self.cycle(&mut quiet, &mut edits_seen);
                next_cycle = Instant::now() + self.settings.heartbeat;
            }
        }
        self.write(&mut pending, &mut quiet);
        match self
            .store
            .beats()
            .stopped(&self.beat.id, self.clock.now(), self.settings.history)
        {
            Ok(0) => {}
            Ok(n) => log::warn!("beat: {n} in-process run(s) had not ended at the stop"),
            Err(e) => log::warn!("beat: could not record the stop in the beats table: {e}"),
        }
    }

    fn queue(&self, pending: &mut Vec<RunUpdate>, event: RunEvent) {
        if pending.len() >= PENDING_CAPACITY {
            let dropped = pending.len() / 2;
            pending.drain(..dropped);
            log::warn!("history: the database has been away; {dropped} run update(s) dropped");
        }
        pending.push(self.update(event));
    }

    /// The record's change for `event`.
    fn update(&self, event: RunEvent) -> RunUpdate {
        // A job's attempt counts from 0; one that never started again has
        // made as many as its number.
        let made = match event.what {
            Happened::Abandoned => event.attempts,
            _ => event.attempts + 1,
        };
        let (outcome, error, ended) = match event.what {
            Happened::Started => (RunOutcome::Running, None, false),
            Happened::Retrying(e) => (RunOutcome::Retrying, Some(e), false),
            Happened::Succeeded => (RunOutcome::Succeeded, None, true),
            Happened::Failed(e) => (RunOutcome::Failed, Some(e), true),
            Happened::Abandoned => (
                RunOutcome::Abandoned,
                Some("the beat stopped before it ran".to_owned()),
                true,
            ),
        };
        RunUpdate {
            routine_id: event.routine_id,
            task_id: event.task_id,
            outcome,
            attempts: i32::try_from(made).ok(),
            error,
            started_at: (outcome == RunOutcome::Running).then_some(event.at),
            finished_at: ended.then_some(event.at),
            forget: ended && !self.settings.history,
        }
    }

    fn write(&self, pending: &mut Vec<RunUpdate>, quiet: &mut Quiet) {
        if pending.is_empty() {
            return;
        }
        match self.store.runs().update(&self.beat.id, pending) {
            Ok(()) => pending.clear(),
            Err(e) => quiet.warn("history: cannot record run outcomes (will retry)", &e),
        }
    }

    /// The periodic work: heartbeat, dead beats, pruning.
    fn cycle(&self, quiet: &mut Quiet, edits_seen: &mut i64) {
        match self.store.beats().heartbeat(&self.beat.id) {
            Ok(true) => quiet.ok(),
            Ok(false) => {
                log::warn!("beat: this beat's row in the beats table was gone; registering again");
                if let Err(e) = self.store.beats().register(&self.beat) {
                    quiet.warn("beat: cannot register in the beats table", &e);
                }
            }
            Err(e) => {
                quiet.warn("beat: heartbeat failed", &e);
                return;
            }
        }
        let now = self.clock.now();
        match self
            .store
            .runs().mark_lost(&self.beat.id, self.settings.dead_after, now)
        {
            Ok(0) => {}
            Ok(n) => log::warn!(
                "history: {n} in-process run(s) of dead or stopped beats marked lost; their routines are free to run again"
            ),
            Err(e) => quiet.warn("history: cannot mark the runs of dead beats", &e),
        }
        if self.settings.history {
            self.prune(now);
        }
        // With the history off too: every start registers a beat.
        if let Err(e) = self.store.beats().prune(self.settings.max_age) {
            log::debug!("beats: pruning: {e}");
        }
        self.prune_edits(edits_seen);
    }

    /// Prunes the audit trail: edits older than `audit_max_age` (by the
    /// database's clock, which dates them), and each routine's beyond its
    /// newest `audit_max_edits`, for the routines edited since
    /// `edits_seen` (a walk of [`EDITS_WALK`] edits a cycle, from the first
    /// at start: bounded work, however long the trail).
    fn prune_edits(&self, edits_seen: &mut i64) {
        let mut deleted = 0;
        for _ in 0..PRUNE_STEPS {
            match self
                .store
                .edits()
                .prune_aged(self.settings.audit_max_age, PRUNE_BATCH)
            {
                Ok(n) => {
                    deleted += n;
                    if n < PRUNE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    log::debug!("audit: pruning by age: {e}");
                    return;
                }
            }
        }
        let trimmed = self
            .store
            .edits()
            .routines_edited_after(*edits_seen, EDITS_WALK)
            .and_then(|(routines, last)| {
                let n = self
                    .store
                    .edits()
                    .prune_excess(&routines, self.settings.audit_max_edits)?;
                *edits_seen = last;
                Ok(n)
            });
        match trimmed {
            Ok(n) => deleted += n,
            Err(e) => log::debug!("audit: pruning by count: {e}"),
        }
        if deleted > 0 {
            log::debug!("audit: pruned {deleted} edit(s)");
        }
    }

    fn prune(&self, now: chrono::DateTime<chrono::Utc>) {
        let cutoff = now - TimeDelta::from_std(self.settings.max_age).unwrap_or(TimeDelta::MAX);
        let mut deleted = 0;
        for _ in 0..PRUNE_STEPS {
            match self.store.runs().prune_aged(cutoff, PRUNE_BATCH) {
                Ok(n) => {
                    deleted += n;
                    if n < PRUNE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    log::debug!("history: pruning by age: {e}");
                    break;
                }
            }
        }
        for _ in 0..PRUNE_STEPS {
            let ids = self.touched.take(TRIM_ROUTINES);
            if ids.is_empty() {
                break;
            }
            match self
                .store
                .runs()
                .prune_excess(&ids, self.settings.max_runs, PRUNE_BATCH * 10)
            {
                Ok(n) => deleted += n,
                Err(e) => {
                    // Looked at again next cycle.
                    self.touched.note(ids.iter().map(String::as_str));
                    log::debug!("history: pruning by count: {e}");
                    break;
                }
            }
        }
        if deleted > 0 {
            log::debug!("history: pruned {deleted} run(s)");
        }
    }
}

/// One warning per outage, not one per cycle.
#[derive(Default)]
struct Quiet {
    warned: bool,
}

impl Quiet {
    fn warn(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !self.warned {
            log::warn!("{what}: {e}");
            self.warned = true;
        } else {
            log::debug!("{what}: {e}");
        }
    }

    fn ok(&mut self) {
        if self.warned {
            log::info!("beat: the database is back; heartbeats resumed");
            self.warned = false;
        }
    }
}
