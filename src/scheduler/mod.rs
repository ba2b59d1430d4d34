//! The scheduler: a blocking thread that plans edited routines and fires
//! due ones, with the database as the only state.
//!
//! Each pass (a [`Tick`]) does three things, each in its own transactions:
//!
//! 1. plan edited rows (`plan`): the triggers set `needs_sync` on every
//!    edit; the thread looks for them every `scheduler_watch_interval`;
//! 2. claim due rows (`claim`) in batches: each run goes through
//!    `dispatch`, and its row is advanced in the same transaction;
//! 3. read the earliest `next_run_at`, and sleep until then.
//!
//! Celery's database schedulers re-read the whole schedule every tick (the
//! kit: up to 100 rows); this beat reads only rows that are due or edited,
//! through partial indexes, so a pass costs the same for ten routines or a
//! million. The sleep is bounded by `scheduler_watch_interval`, the delay
//! within which an edit takes effect, and by `scheduler_max_interval`.
//!
//! On PostgreSQL two helper claimers run beside the thread at all times
//! (see [`Scheduler::help`]); elsewhere, bursts are shared by claimers
//! started for them. Outages of the database and the broker are tracked in
//! `outage`.

mod claim;
pub(crate) mod housekeeping;
mod outage;
mod plan;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::metrics::{Counts, Health, Metrics};
use crate::shutdown::Shutdown;
use crate::store::{Backend, RoutineStore};
use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use claim::CLAIMS_PER_TICK;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What one scheduler pass did.
#[derive(Debug, Default, Clone, PartialEq)]
#[non_exhaustive]
pub struct Tick {
    /// Edited or new rows planned.
    pub planned: usize,
    /// Routines fired (dispatched).
    pub fired: usize,
    /// Due routines not queued because their previous run was still queued
    /// or running.
    pub skipped: usize,
    /// Runs not made because they were missed by more than the misfire
    /// grace time under the `skip` policy.
    pub missed: usize,
    /// Rows found invalid (recorded in their `last_error`).
    pub invalid: usize,
    /// Runs whose message the broker could not take where it goes
    /// (recorded in their routine's `last_error`).
    pub refused: usize,
    /// Claimed runs dropped because the beat stopped with every worker busy.
    pub abandoned: usize,
    /// More rows were due than one pass claims.
    pub more_due: bool,
    /// The earliest next run after this pass.
    pub next_due: Option<DateTime<Utc>>,
}

/// Scheduler settings, from [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_interval: Duration,
    pub(crate) watch_interval: Duration,
    pub(crate) sync_every: Duration,
}

impl Settings {
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        Settings {
            max_interval: config.scheduler_max_interval,
            watch_interval: config.scheduler_watch_interval,
            sync_every: config.scheduler_sync_every,
        }
    }
}

/// The wait before a pass that lost a race (a deadlock) is tried again.
const TRANSIENT_RETRY: Duration = Duration::from_millis(10);

/// Claimers sharing a burst of due routines on PostgreSQL and MySQL (see
/// `claim`); the pool has room for them and one more.
const CLAIMERS: usize = 3;

pub(crate) struct Scheduler {
    store: Arc<RoutineStore>,
    /// For the thread's passes and for lateness; `tick` takes its time as
    /// an argument.
    clock: Arc<dyn Clock>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    settings: Settings,
    /// When the periodic full check last ran (`None`: not since start).
    last_recheck: Mutex<Option<Instant>>,
    /// Claimers in a burst (one on SQLite, which serialises writers).
    claimers: usize,
    /// Whether the thread keeps `claimers - 1` helper claimers busy beside
    /// it at all times (see `help`), rather than starting them for bursts.
    helpers: bool,
    /// What the probes read: the last good pass, the outages.
    health: Arc<Health>,
}

/// How many claimers share a burst on `backend`: SQLite lets one writer
/// in at a time. The dispatcher has a broker connection for each.
pub(crate) fn claimers(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 1,
        _ => CLAIMERS,
    }
}

impl Scheduler {
    pub(crate) fn new(
        store: Arc<RoutineStore>,
        clock: Arc<dyn Clock>,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        settings: Settings,
        health: Arc<Health>,
    ) -> Self {
        let backend = store.backend();
        Scheduler {
            store,
            clock,
            dispatcher,
            metrics,
            shutdown,
            settings,
            last_recheck: Mutex::new(None),
            claimers: claimers(backend),
            // Measured (bench): helpers halve PostgreSQL's lateness in a busy
            // second; on MariaDB, whose row updates cost twice as much, two
            // claimers at once only contend, so it claims alone but for bursts.
            helpers: backend == Backend::Postgres,
            health,
        }
    }

    /// One pass at time `now`.
    pub(crate) fn tick(&self, now: DateTime<Utc>) -> Result<Tick, Error> {
        let tick = self.pass(now, true, true);
        match &tick {
            Ok(_) => self.health.pass_succeeded(),
            Err(e) => self.health.database_failed(e),
        }
        tick
    }

    /// One pass at time `now`; edited rows are looked for only if
    /// `look_for_edits` (the thread does so every `scheduler_watch_interval`,
    /// not at every pass of a busy second), and a burst is shared out to
    /// claimers started for it only if `fork_bursts` (the thread has its
    /// helpers claiming all along instead).
    fn pass(
        &self,
        now: DateTime<Utc>,
        look_for_edits: bool,
        fork_bursts: bool,
    ) -> Result<Tick, Error> {
        // Every backend stores microseconds: plan in what can be stored.
        let now = now.trunc_subsecs(6);
        let mut tick = Tick::default();
        let first_pass = self.last_recheck().is_none();
        if first_pass {
            // Rows with errors, once per start: code deployed since may have
            // fixed them (a task now registered, say). Indexed: cheap.
            let marked = self.store.recheck_failed()?;
            if marked > 0 {
                log::info!("checking {marked} routine(s) that had errors again");
            }
        }
        let mut counts = Counts::default();
        if look_for_edits || first_pass {
            let (planned, invalid) = self.plan_edited(now)?;
            tick.planned = planned;
            counts.invalid += invalid;
        }
        let (claimed, more_due) = self.claim(now, fork_bursts)?;
        counts.add(claimed);
        tick.more_due = more_due;
        // The periodic check comes after claiming, so that it never delays
        // a due run (the first pass after start included).
        if self
            .last_recheck()
            .is_none_or(|at| at.elapsed() >= self.settings.sync_every)
        {
            let marked = self.store.recheck_unplanned()?;
            if marked > 0 {
                log::info!("{marked} active routine(s) had no next run; planning them again");
            }
            *self
                .last_recheck
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        self.metrics.add(counts);
        tick.fired = counts.fired;
        tick.skipped = counts.skipped;
        tick.missed = counts.missed;
        tick.invalid = counts.invalid;
        tick.refused = counts.refused;
        tick.abandoned = counts.abandoned;
        tick.next_due = self.next_due(now)?;
        Ok(tick)
    }

    /// When there is next something to claim: the earliest due run, or,
    /// while the broker is out, the earliest in-process run or the broker's
    /// retry. The routines held back for the broker are overdue; were they
    /// counted, the thread would never sleep through an outage.
    fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let broker = self.dispatcher.broker.as_deref();
        let Some(retry_at) = broker.filter(|b| b.paused()).and_then(|b| b.retry_at()) else {
            return Ok(self.store.earliest_due(None)?);
        };
        let retry = now
            + TimeDelta::from_std(retry_at.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
        let local = match self.dispatcher.router.has_local_tasks() {
            true => self
                .store
                .earliest_due(Some(&self.dispatcher.router.local_tasks))?,
            false => None,
        };
        Ok(Some(local.map_or(retry, |due| due.min(retry))))
    }

    /// Whether claims must leave the broker's routines due for now.
    fn broker_paused(&self) -> bool {
        self.dispatcher.broker.as_ref().is_some_and(|b| b.paused())
    }

    fn last_recheck(&self) -> Option<Instant> {
        *self
            .last_recheck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The scheduler thread: passes until shutdown, sleeping in between;
    /// with helper claimers beside it on PostgreSQL.
    pub(crate) fn run(self) {
        /// Says the thread stopped however it ends (a panic included).
        struct Running<'a>(&'a Health);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.set_running(false);
            }
        }
        self.health.set_running(true);
        let _running = Running(&self.health);
        let helpers = if self.helpers { self.claimers } else { 1 };
        std::thread::scope(|scope| {
            for claimer in 1..helpers {
                let this = &self;
                let spawned = std::thread::Builder::new()
                    .name(format!("beat-claimer-{claimer}"))
                    .spawn_scoped(scope, move || this.help(claimer));
                if let Err(e) = spawned {
                    log::warn!(
                        "scheduler: claimer {claimer} not started ({e}); claiming with fewer"
                    );
                }
            }
            self.main_loop(helpers <= 1);
        });
        log::info!("scheduler: stopped");
    }

    /// A helper claimer: claims what is due whenever it is due, beside the
    /// main loop. With two claimers one can claim the runs falling due while
    /// the other is still busy with its batch, so a busy second is served
    /// in small batches instead of ever larger ones; `SKIP LOCKED` keeps
    /// their rows apart. Errors are the main loop's to report.
    fn help(&self, claimer: usize) {
        let mut backoff = Backoff::default();
        let mut contended = self.contended();
        while !self.shutdown.is_fired() {
            let now = self.clock.now().trunc_subsecs(6);
            let out = self.claim_batches(claimer, now, self.broker_paused(), CLAIMS_PER_TICK);
            self.metrics.add(out.counts);
            let wait = match out.error {
                // The broker noted its outage; in-process routines go on.
                Some(Error::Broker(_)) => Duration::ZERO,
                Some(Error::Store(e)) if e.is_transient() => {
                    log::debug!("claimer {claimer}: {e}; trying again");
                    TRANSIENT_RETRY
                }
                Some(e) => {
                    log::debug!("claimer {claimer}: {e}");
                    backoff.failed()
                }
                None if out.counts.any() => {
                    backoff.reset();
                    contended.reset();
                    continue;
                }
                None => match self.next_due(now) {
                    Ok(next) => {
                        // The database answered: a later outage starts
                        // from the first wait again.
                        backoff.reset();
                        let until = next.map_or(Duration::MAX, |due| {
                            (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO)
                        });
                        if until.is_zero() {
                            contended.failed()
                        } else {
                            contended.reset();
                            until
                                .min(self.settings.watch_interval)
                                .min(self.settings.max_interval)
                        }
                    }
                    Err(_) => backoff.failed(),
                },
            };
            if self.shutdown.sleep(wait) {
                break;
            }
        }
    }

    /// The main loop: passes (edits, claims, checks) until shutdown.
    fn main_loop(&self, fork_bursts: bool) {
        let mut database = outage::Database::default();
        let mut contended = self.contended();
        let mut looked_for_edits: Option<Instant> = None;
        while !self.shutdown.is_fired() {
            let look =
                looked_for_edits.is_none_or(|at| at.elapsed() >= self.settings.watch_interval);
            let started = Instant::now();
            let wait = match self.pass(self.clock.now(), look, fork_bursts) {
                Ok(tick) => {
                    if look {
                        looked_for_edits = Some(started);
                    }
                    self.metrics.pass_seconds.observe(started.elapsed());
                    self.health.pass_succeeded();
                    database.succeeded();
                    let looked = looked_for_edits.map_or(Duration::ZERO, |at| at.elapsed());
                    let next_look = self.settings.watch_interval.saturating_sub(looked);
                    let wait = self.sleep_after(&tick, self.clock.now(), next_look);
                    let claimed =
                        tick.fired + tick.skipped + tick.missed + tick.invalid + tick.refused > 0;
                    if wait.is_zero() && !tick.more_due && !claimed {
                        contended.failed()
                    } else {
                        contended.reset();
                        wait
                    }
                }
                Err(Error::Store(e)) if e.is_transient() => {
                    log::debug!("scheduler: {e}; trying again");
                    TRANSIENT_RETRY
                }
                Err(e) => {
                    self.health.database_failed(&e);
                    database.failed(&e)
                }
            };
            if self.shutdown.sleep(wait) {
                break;
            }
        }
    }

    /// Waits for rows that are due but held by another claimer (a helper,
    /// another beat, one frozen mid-claim): nothing to claim until it lets
    /// go, so looking again at once would only spin.
    fn contended(&self) -> Backoff {
        Backoff::new(Duration::from_millis(5), self.settings.watch_interval)
    }

    /// Until the next due run, the next look for edits, or the longest
    /// sleep allowed, whichever comes first.
    fn sleep_after(&self, tick: &Tick, now: DateTime<Utc>, next_look: Duration) -> Duration {
        if tick.more_due {
            return Duration::ZERO;
        }
        let until_due = tick
            .next_due
            .map(|due| (due - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::MAX);
        until_due.min(next_look).min(self.settings.max_interval)
    }
}
