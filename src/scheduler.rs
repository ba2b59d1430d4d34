//! The scheduler: a blocking thread that plans edited routines and fires
//! due ones, with the database as the only state.
//!
//! Each pass (a [`Tick`]) does three things, each in its own transactions:
//!
//! 1. plan edited rows (`needs_sync`, set by triggers on every edit): parse
//!    and validate, then write `next_run_at` or `last_error` (the thread
//!    looks for them every `scheduler_watch_interval`);
//! 2. claim due rows (`next_run_at <= now`) in batches: dispatch each, and
//!    advance `last_run_at`, `total_run_count`, `next_run_at` in the same
//!    transaction;
//! 3. read the earliest `next_run_at`, and sleep until then.
//!
//! Celery's database schedulers re-read the whole schedule every tick (the
//! kit: up to 100 rows); this beat reads only rows that are due or edited,
//! through partial indexes, so a pass costs the same for ten routines or a
//! million. The sleep is bounded by `scheduler_watch_interval`, the delay
//! within which an edit takes effect, and by `scheduler_max_interval`.
//!
//! Bursts of due rows are shared by several claimers (`SKIP LOCKED` keeps
//! their rows apart); on PostgreSQL two helper claimers run beside the
//! thread at all times (see [`Scheduler::help`]).

use crate::celery::{self, Message, Publisher, SendOptions, Sender as CelerySender};
use crate::error::Error;
use crate::schedule::{Misfire, MisfirePolicy, Schedule, ScheduleError};
use crate::shutdown::Shutdown;
use crate::store::{Plan, RoutineRow, RoutineStore};
use crate::task::{TaskContext, TaskRegistry};
use crate::worker::{InFlight, Job, JobQueue};
use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Rows planned per transaction.
const PLAN_BATCH: usize = 500;
/// Rows claimed per transaction.
const CLAIM_BATCH: usize = 1000;
/// Claim transactions per pass, so that edits are looked at between bursts.
const CLAIMS_PER_TICK: usize = 20;
/// Back-off after a failed pass (and for the broker): doubles from the
/// first to the last. The cap is short because a failing pass already
/// waits up to the pool's checkout timeout (5 s) before it fails.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// The source of "now". Inject one to test schedule logic without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What one scheduler pass did.
#[derive(Debug, Default, Clone, PartialEq)]
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
    /// Claimed runs dropped because the beat stopped with every worker busy.
    pub abandoned: usize,
    /// More rows were due than one pass claims.
    pub more_due: bool,
    /// The earliest next run after this pass.
    pub next_due: Option<DateTime<Utc>>,
}

/// Running totals across passes, shared with the [`BeatHandle`](crate::BeatHandle).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) fired: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) invalid: AtomicU64,
    /// How late runs were handed over (published, or queued for a worker).
    pub(crate) lateness: Histogram,
}

/// A histogram of durations in microseconds, log-linear (16 buckets per
/// power of two: within 7% of the true value), lock-free to record.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

const SUB_BUCKETS: u32 = 16;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..64 * SUB_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn bucket(micros: u64) -> usize {
        if micros < u64::from(SUB_BUCKETS) {
            return micros as usize;
        }
        let octave = 63 - micros.leading_zeros(); // ≥ 4
        let sub = (micros >> (octave - 4)) & u64::from(SUB_BUCKETS - 1);
        ((octave - 3) * SUB_BUCKETS) as usize + sub as usize
    }

    /// The largest value a bucket holds.
    fn upper(bucket: usize) -> u64 {
        let (octave, sub) = (
            bucket as u64 / u64::from(SUB_BUCKETS),
            bucket as u64 % u64::from(SUB_BUCKETS),
        );
        if octave == 0 {
            return sub;
        }
        let shift = octave - 1;
        ((u64::from(SUB_BUCKETS) + sub + 1) << shift) - 1
    }

    pub(crate) fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(micros).min(self.buckets.len() - 1)]
            .fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Lateness {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max = Duration::from_micros(self.max.load(Ordering::Relaxed));
        let quantile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_micros(Self::upper(bucket)).min(max);
                }
            }
            max
        };
        Lateness {
            count,
            p50: quantile(0.5),
            p99: quantile(0.99),
            max,
        }
    }
}

/// How late runs were handed over, since start: due time to the moment a
/// message was in Redis or a job in the worker queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Runs measured.
    pub count: u64,
    /// Median (to within 7%).
    pub p50: Duration,
    /// 99th percentile (to within 7%).
    pub p99: Duration,
    /// The latest.
    pub max: Duration,
}

/// Scheduler settings, from [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_interval: Duration,
    pub(crate) watch_interval: Duration,
    pub(crate) sync_every: Duration,
    /// How long a stopping scheduler waits to hand over claimed runs.
    pub(crate) shutdown_timeout: Duration,
    pub(crate) misfire_policy: MisfirePolicy,
    pub(crate) misfire_grace_time: Duration,
}

pub(crate) struct Scheduler {
    pub(crate) store: Arc<RoutineStore>,
    /// For measuring lateness; passes take their time as an argument.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) router: Arc<Router>,
    pub(crate) queue: JobQueue,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) totals: Arc<Totals>,
    pub(crate) shutdown: Shutdown,
    pub(crate) settings: Settings,
    /// When the periodic full check last ran (`None`: not since start).
    pub(crate) last_recheck: Mutex<Option<Instant>>,
    /// One broker connection per claimer (none without `broker_url`).
    pub(crate) publishers: Vec<Mutex<Publisher>>,
    /// Claimers in a burst (one on SQLite, which serialises writers).
    pub(crate) claimers: usize,
    /// Whether the thread keeps `claimers - 1` helper claimers busy beside
    /// it at all times (see `help`), rather than starting them for bursts.
    pub(crate) helpers: bool,
    /// Set while the broker is failing: claims leave its routines due.
    pub(crate) broker_outage: Mutex<Option<Outage>>,
}

/// A broker outage in progress.
#[derive(Debug)]
pub(crate) struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
}

/// A due row's fate, decided inside the claim transaction.
enum Fate {
    /// Queue this job after commit.
    Run(Job),
    /// Published to the broker within the transaction (for this due time).
    Sent(Message, DateTime<Utc>),
    /// Its previous run is still going.
    Skip,
    /// Missed by more than its grace time, under the skip policy.
    Missed,
    /// The row is invalid.
    Invalid,
}

/// What one claimer did.
#[derive(Default)]
struct Claimed {
    batches: usize,
    /// The last batch was full: more may be due.
    more: bool,
    fired: usize,
    skipped: usize,
    missed: usize,
    invalid: usize,
    abandoned: usize,
    error: Option<Error>,
}

impl Claimed {
    fn panicked() -> Self {
        Claimed {
            error: Some(Error::Thread {
                what: "claimer",
                source: std::io::Error::other("a claimer thread panicked"),
            }),
            ..Claimed::default()
        }
    }
}

/// A row found runnable, with what its run needs.
pub(crate) struct Checked {
    schedule: Arc<Schedule>,
    misfire: Misfire,
    kwargs: Map<String, Value>,
    /// Celery options, for a task sent to the broker.
    send: Option<Arc<SendOptions>>,
}

/// A run to start: in the worker pool, or as a Celery message.
pub(crate) enum Outgoing {
    Local(Job),
    Celery(Message),
}

/// Decides where a routine's task runs: in-process when it is registered,
/// else on a Celery worker when a broker is configured.
pub(crate) struct Router {
    pub(crate) registry: Arc<TaskRegistry>,
    pub(crate) has_broker: bool,
    pub(crate) sender: CelerySender,
    /// The registered task names as a JSON array, for claims that must
    /// leave broker routines alone.
    pub(crate) local_tasks: String,
    pub(crate) parsed: Parsed,
}

/// Schedules and options parsed before, by their JSON text. Tables have few
/// distinct schedules, and a crontab is costly to parse at every run.
#[derive(Default)]
pub(crate) struct Parsed {
    schedules: Cache<(Arc<Schedule>, Misfire)>,
    options: Cache<(Arc<SendOptions>, Vec<String>)>,
}

/// Parse results by JSON text (errors too: a bad row is parsed once).
type Cache<T> = Mutex<HashMap<String, Result<T, String>>>;

/// Entries kept per cache; past this, it starts afresh.
const PARSED_CAPACITY: usize = 4096;

impl Parsed {
    fn schedule(&self, text: &str) -> Result<(Arc<Schedule>, Misfire), String> {
        cached(&self.schedules, text, || {
            let json: Value = serde_json::from_str(text)
                .map_err(|e| ScheduleError::NotJson(e.to_string()).to_string())?;
            let schedule = Schedule::from_json(&json).map_err(|e| e.to_string())?;
            let misfire = Misfire::from_json(&json).map_err(|e| e.to_string())?;
            Ok((Arc::new(schedule), misfire))
        })
    }

    fn options(&self, text: Option<&str>) -> Result<(Arc<SendOptions>, Vec<String>), String> {
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
    parse: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
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

impl Router {
    /// Everything that makes a row runnable: its schedule, its kwargs and
    /// options, and a way to run its task. Also returns option keys that
    /// will be ignored.
    pub(crate) fn check(&self, row: &RoutineRow) -> Result<(Checked, Vec<String>), String> {
        let (schedule, misfire) = self.parsed.schedule(&row.schedule)?;
        let kwargs = json_object("kwargs", row.kwargs.as_deref())?;
        if self.registry.contains(&row.task) {
            json_object("options", row.options.as_deref())?;
            return Ok((
                Checked {
                    schedule,
                    misfire,
                    kwargs,
                    send: None,
                },
                Vec::new(),
            ));
        }
        if !self.has_broker {
            return Err(format!(
                "unknown task {:?}: not registered in this beat, and no broker_url to send it to Celery",
                crate::schedule::truncated(row.task.clone())
            ));
        }
        let (send, ignored) = self.parsed.options(row.options.as_deref())?;
        Ok((
            Checked {
                schedule,
                misfire,
                kwargs,
                send: Some(send),
            },
            ignored,
        ))
    }

    /// The run of `row` due at `scheduled_at`, with Celery task id `id`.
    pub(crate) fn outgoing(
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
                    kwargs: Value::Object(checked.kwargs.clone()),
                },
                scheduled: true,
            }),
            Some(options) => Outgoing::Celery(celery::message::build(
                &row.task,
                id,
                &checked.kwargs,
                options,
                now,
                &self.sender,
            )),
        }
    }
}

impl Scheduler {
    /// One pass at time `now`.
    pub(crate) fn tick(&self, now: DateTime<Utc>) -> Result<Tick, Error> {
        self.pass(now, true, true)
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
        let first_pass = self
            .last_recheck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if first_pass {
            // Rows with errors, once per start: code deployed since may have
            // fixed them (a task now registered, say). Indexed: cheap.
            let marked = self.store.recheck_failed()?;
            if marked > 0 {
                log::info!("checking {marked} routine(s) that had errors again");
            }
        }
        if look_for_edits || first_pass {
            loop {
                let mut invalid = 0;
                let planned = self.store.plan_edited(PLAN_BATCH, |rows| {
                    let plans: Vec<Plan> = rows.iter().map(|row| self.plan(row, now)).collect();
                    invalid = plans.iter().filter(|p| p.last_error.is_some()).count();
                    Ok::<_, Error>(plans)
                })?;
                tick.planned += planned;
                tick.invalid += invalid;
                if planned < PLAN_BATCH {
                    break;
                }
            }
        }

        self.claim(now, &mut tick, fork_bursts)?;
        // The periodic check comes after claiming, so that it never delays
        // a due run (the first pass after start included).
        let recheck = self
            .last_recheck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= self.settings.sync_every);
        if recheck {
            let marked = self.store.recheck_unplanned()?;
            if marked > 0 {
                log::info!("{marked} active routine(s) had no next run; planning them again");
            }
            *self
                .last_recheck
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        self.totals
            .fired
            .fetch_add(tick.fired as u64, Ordering::Relaxed);
        self.totals
            .skipped
            .fetch_add(tick.skipped as u64, Ordering::Relaxed);
        self.totals
            .missed
            .fetch_add(tick.missed as u64, Ordering::Relaxed);
        self.totals
            .invalid
            .fetch_add(tick.invalid as u64, Ordering::Relaxed);
        tick.next_due = self.store.earliest_due()?;
        if let Some(outage) = &*self
            .broker_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            // Wake for the broker retry even when nothing else is due sooner.
            let retry = now
                + TimeDelta::from_std(outage.retry_at.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
            tick.next_due = Some(tick.next_due.map_or(retry, |due| due.min(retry)));
        }
        Ok(tick)
    }

    /// Claims everything due at `now`, up to `CLAIMS_PER_TICK` batches.
    ///
    /// One batch first; if it came back full (a burst), several claimers
    /// share the rest, each with its own connections: `SKIP LOCKED` keeps
    /// their batches apart, and while one waits on the database another
    /// builds and publishes messages. On a broker failure the broker's
    /// routines are left due and the pass goes on with in-process ones.
    fn claim(&self, now: DateTime<Utc>, tick: &mut Tick, fork_bursts: bool) -> Result<(), Error> {
        let mut passes = 0;
        let mut first = true;
        while passes < CLAIMS_PER_TICK && !self.shutdown.is_fired() {
            // While the broker is out, claim only in-process routines: the
            // others stay due until it is back.
            let local_only = self.broker_paused();
            let claimers = if first || !fork_bursts {
                1
            } else {
                self.claimers.max(1)
            };
            let budget = if first { 1 } else { CLAIMS_PER_TICK - passes };
            let outcomes: Vec<Claimed> = if claimers == 1 {
                vec![self.claim_batches(0, now, local_only, budget)]
            } else {
                let this = self;
                std::thread::scope(|scope| {
                    let others: Vec<_> = (1..claimers)
                        .map(|i| {
                            scope.spawn(move || {
                                this.claim_batches(i, now, local_only, budget.div_ceil(claimers))
                            })
                        })
                        .collect();
                    let mut all =
                        vec![this.claim_batches(0, now, local_only, budget.div_ceil(claimers))];
                    all.extend(
                        others
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Claimed::panicked())),
                    );
                    all
                })
            };
            first = false;
            let mut more = false;
            let mut broker_error = None;
            for outcome in outcomes {
                tick.fired += outcome.fired;
                tick.skipped += outcome.skipped;
                tick.missed += outcome.missed;
                tick.invalid += outcome.invalid;
                tick.abandoned += outcome.abandoned;
                passes += outcome.batches;
                more |= outcome.more;
                match outcome.error {
                    None => {}
                    Some(Error::Broker(e)) => broker_error = Some(e),
                    Some(e) => return Err(e),
                }
            }
            let broker_failed = broker_error.is_some();
            if let Some(e) = broker_error {
                self.broker_failed(e);
            }
            // After a broker failure, go on with the in-process routines.
            if !more && !broker_failed {
                return Ok(());
            }
        }
        tick.more_due = passes >= CLAIMS_PER_TICK;
        Ok(())
    }

    /// One claimer: up to `budget` batches, until one comes back short.
    fn claim_batches(
        &self,
        claimer: usize,
        now: DateTime<Utc>,
        local_only: bool,
        budget: usize,
    ) -> Claimed {
        let mut out = Claimed::default();
        while out.batches < budget && !self.shutdown.is_fired() {
            let claimed = self.store.claim_due(
                now,
                CLAIM_BATCH,
                local_only.then_some(self.router.local_tasks.as_str()),
                |rows| {
                    let (plans, fates): (Vec<Plan>, Vec<Fate>) =
                        rows.iter().map(|row| self.fire(row, now)).unzip();
                    self.publish(claimer, &rows, &fates)?;
                    Ok::<_, Error>((plans, fates))
                },
            );
            let fates = match claimed {
                Ok(fates) => fates,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            };
            out.batches += 1;
            out.more = fates.len() == CLAIM_BATCH;
            for fate in fates {
                match fate {
                    Fate::Run(job) => {
                        if self.dispatch(job) {
                            out.fired += 1;
                        } else {
                            out.abandoned += 1;
                        }
                    }
                    Fate::Sent(..) => out.fired += 1,
                    Fate::Skip => out.skipped += 1,
                    Fate::Missed => out.missed += 1,
                    Fate::Invalid => out.invalid += 1,
                }
            }
            if !out.more {
                break;
            }
        }
        out
    }

    /// Publishes the claimed rows' Celery messages, inside the claim
    /// transaction: if this fails, the claim rolls back.
    fn publish(&self, claimer: usize, rows: &[RoutineRow], fates: &[Fate]) -> Result<(), Error> {
        let messages: Vec<(&RoutineRow, &Message)> = rows
            .iter()
            .zip(fates)
            .filter_map(|(row, fate)| match fate {
                Fate::Sent(message, _) => Some((row, message)),
                _ => None,
            })
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        let Some(publisher) = self.publishers.get(claimer) else {
            // check() sends nothing to Celery without a broker.
            return Ok(());
        };
        let only: Vec<&Message> = messages.iter().map(|(_, m)| *m).collect();
        let delivered = publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .publish(&only)?;
        // Only a publish proves the broker is back.
        self.broker_ok();
        let published_at = self.clock.now();
        for fate in fates {
            if let Fate::Sent(_, due) = fate {
                self.totals
                    .lateness
                    .record((published_at - *due).to_std().unwrap_or_default());
            }
        }
        for ((row, message), lists) in messages.iter().zip(delivered) {
            if lists == 0 {
                log::error!(
                    "routine {}: no queue is bound to {:?}: Celery would drop message {} too",
                    row.name,
                    message.destination,
                    message.id
                );
            } else {
                log::debug!(
                    "routine {}: sent {} as task {}",
                    row.name,
                    row.task,
                    message.id
                );
            }
        }
        Ok(())
    }

    /// Whether claims must leave the broker's routines alone for now.
    fn broker_paused(&self) -> bool {
        self.broker_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|o| Instant::now() < o.retry_at)
    }

    fn broker_failed(&self, e: crate::celery::BrokerError) {
        let now = Instant::now();
        let mut outage_state = self
            .broker_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &mut *outage_state {
            Some(outage) => {
                outage.backoff = (outage.backoff * 2).min(BACKOFF.1);
                outage.retry_at = now + outage.backoff;
                log::debug!("broker still unavailable: {e}");
            }
            None => {
                log::error!(
                    "{e}; routines sent to Celery stay due and are retried with back-off; in-process routines go on"
                );
                *outage_state = Some(Outage {
                    since: now,
                    retry_at: now + BACKOFF.0,
                    backoff: BACKOFF.0,
                });
            }
        }
    }

    fn broker_ok(&self) {
        let outage = self
            .broker_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(outage) = outage {
            log::info!(
                "broker reachable again after {:.1?}",
                outage.since.elapsed()
            );
        }
    }

    /// Plans an edited or new row: validates it and decides its next run.
    ///
    /// A kept `next_run_at` (the edit touched only task, kwargs or options)
    /// stands; otherwise the next run is the first the schedule yields
    /// after `last_run_at`, or after `now` for a routine that never ran.
    fn plan(&self, row: &RoutineRow, now: DateTime<Utc>) -> Plan {
        let mut plan = Plan {
            locator: row.locator.clone(),
            last_run_at: None,
            fired: 0,
            next_run_at: None,
            last_error: None,
        };
        if !row.active {
            log::info!("routine {}: inactive", row.name);
            return plan;
        }
        let checked = self.router.check(row).and_then(|(checked, ignored)| {
            if !ignored.is_empty() {
                log::warn!(
                    "routine {}: ignoring options Celery's beat does not pass on: {}",
                    row.name,
                    ignored.join(", ")
                );
            }
            let base = row.last_run_at_utc().unwrap_or(now);
            row.next_run_at_utc()
                .or_else(|| checked.schedule.next_after(base))
                .ok_or_else(|| format!("schedule {} has no run after {base}", row.schedule))
        });
        match checked {
            Ok(next) => {
                if row.last_error.is_some() {
                    log::info!("routine {}: valid again, next run at {next}", row.name);
                } else {
                    log::info!("routine {}: next run at {next}", row.name);
                }
                plan.next_run_at = Some(next);
            }
            Err(reason) => {
                log::error!(
                    "routine {}: {reason}; it will not run until its row is fixed",
                    row.name
                );
                plan.last_error = Some(reason);
            }
        }
        plan
    }

    /// Fires a due row: decides its run and its advance.
    ///
    /// The row fires once for the due time it was claimed at, however late
    /// (the beat was stopped, the database away): the next run is then the
    /// first one after `now`, skipping the missed ones, as Celery's beat
    /// does. `last_run_at` records the due time, or `now` when due times
    /// were skipped (so that it says when the routine really last ran).
    fn fire(&self, row: &RoutineRow, now: DateTime<Utc>) -> (Plan, Fate) {
        let mut plan = Plan {
            locator: row.locator.clone(),
            last_run_at: None,
            fired: 0,
            next_run_at: None,
            last_error: None,
        };
        // Claimed rows are due, so next_run_at is set; `now` is a safe stand-in.
        let due = row.next_run_at_utc().unwrap_or(now);
        let checked = match self.router.check(row) {
            Ok((checked, _)) => checked,
            Err(reason) => {
                log::error!(
                    "routine {}: {reason}; it will not run until its row is fixed",
                    row.name
                );
                plan.last_error = Some(reason);
                return (plan, Fate::Invalid);
            }
        };
        let on_time = checked
            .schedule
            .next_after(due)
            .is_some_and(|next| next > now);
        plan.next_run_at = checked.schedule.next_after_catching_up(due, now);
        let next = plan
            .next_run_at
            .map_or("never".to_owned(), |t| t.to_string());
        let policy = checked
            .misfire
            .policy
            .unwrap_or(self.settings.misfire_policy);
        let grace = checked
            .misfire
            .grace_time
            .unwrap_or(self.settings.misfire_grace_time);
        let late = (now - due).to_std().unwrap_or_default();
        if late > grace && policy == MisfirePolicy::Skip {
            log::warn!(
                "routine {}: skipped the run due {due}, {late:.1?} late (misfire grace time {grace:?}, policy skip); next at {next}",
                row.name
            );
            return (plan, Fate::Missed);
        }
        if plan.next_run_at.is_none() {
            log::warn!(
                "routine {}: schedule has no run after {now}; this was its last",
                row.name
            );
        }
        if !on_time {
            log::warn!(
                "routine {}: was due at {due}, missed later due times; firing once now, next at {next}",
                row.name
            );
        }
        let local = checked.send.is_none();
        if local && self.in_flight.contains(&row.id) {
            log::warn!(
                "routine {}: previous run still queued or running; skipping the run due {due}",
                row.name
            );
            return (plan, Fate::Skip);
        }
        plan.fired = 1;
        plan.last_run_at = Some(if on_time { due } else { now });
        log::debug!("routine {}: firing task {} due {due}", row.name, row.task);
        let id = celery::message::task_id(&row.id, due);
        let fate = match self.router.outgoing(row, &checked, due, &id, now) {
            Outgoing::Local(job) => Fate::Run(job),
            Outgoing::Celery(message) => Fate::Sent(message, due),
        };
        (plan, fate)
    }

    /// Queues a claimed run for the workers; returns whether it was queued.
    fn dispatch(&self, job: Job) -> bool {
        self.in_flight.try_mark(&job.ctx.routine_id);
        let due = job.ctx.scheduled_at;
        match self
            .queue
            .push(job, &self.shutdown, self.settings.shutdown_timeout)
        {
            Ok(()) => {
                let lateness = (self.clock.now() - due).to_std().unwrap_or_default();
                self.totals.lateness.record(lateness);
                true
            }
            Err(job) => {
                log::error!(
                    "routine {}: run due {} lost: the beat stopped before a worker was free",
                    job.ctx.routine,
                    job.ctx.scheduled_at
                );
                self.in_flight.release(&job.ctx.routine_id);
                false
            }
        }
    }

    /// The scheduler thread: passes until shutdown, sleeping in between;
    /// with helper claimers beside it on PostgreSQL and MySQL.
    pub(crate) fn run(self) {
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
        let mut backoff = BACKOFF.0;
        while !self.shutdown.is_fired() {
            let now = self.clock.now().trunc_subsecs(6);
            let out = self.claim_batches(claimer, now, self.broker_paused(), CLAIMS_PER_TICK);
            self.totals
                .fired
                .fetch_add(out.fired as u64, Ordering::Relaxed);
            self.totals
                .skipped
                .fetch_add(out.skipped as u64, Ordering::Relaxed);
            self.totals
                .missed
                .fetch_add(out.missed as u64, Ordering::Relaxed);
            self.totals
                .invalid
                .fetch_add(out.invalid as u64, Ordering::Relaxed);
            let wait = match out.error {
                Some(Error::Broker(e)) => {
                    self.broker_failed(e);
                    Duration::ZERO
                }
                Some(e) => {
                    log::debug!("claimer {claimer}: {e}");
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    wait
                }
                None if out.fired + out.skipped + out.missed + out.invalid + out.abandoned > 0 => {
                    backoff = BACKOFF.0;
                    continue;
                }
                None => match self.store.earliest_due() {
                    Ok(next) => {
                        let until = next.map_or(Duration::MAX, |due| {
                            (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO)
                        });
                        until
                            .min(self.settings.watch_interval)
                            .min(self.settings.max_interval)
                    }
                    Err(_) => backoff,
                },
            };
            if self.shutdown.sleep(wait) {
                break;
            }
        }
    }

    /// The main loop: passes (edits, claims, checks) until shutdown.
    fn main_loop(&self, fork_bursts: bool) {
        let clock = Arc::clone(&self.clock);
        // One line when passes start failing, one when they recover: an
        // outage is a state, not a stream of errors.
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF.0;
        let mut looked_for_edits: Option<Instant> = None;
        while !self.shutdown.is_fired() {
            let look =
                looked_for_edits.is_none_or(|at| at.elapsed() >= self.settings.watch_interval);
            let started = Instant::now();
            let wait = match self.pass(clock.now(), look, fork_bursts) {
                Ok(tick) => {
                    if look {
                        looked_for_edits = Some(started);
                    }
                    if let Some(since) = failing_since.take() {
                        log::info!(
                            "scheduler: database reachable again after {:.1?}",
                            since.elapsed()
                        );
                        backoff = BACKOFF.0;
                    }
                    {
                        let looked = looked_for_edits.map_or(Duration::ZERO, |at| at.elapsed());
                        let next_look = self.settings.watch_interval.saturating_sub(looked);
                        self.sleep_after(&tick, clock.now(), next_look)
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        log::error!(
                            "scheduler: {e}; retrying with back-off (up to {:?})",
                            BACKOFF.1
                        );
                        failing_since = Some(Instant::now());
                    } else {
                        log::debug!("scheduler: still failing: {e}");
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    wait
                }
            };
            if self.shutdown.sleep(wait) {
                break;
            }
        }
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

/// Reads a kwargs or options column: a JSON object, or nothing (`{}`).
fn json_object(column: &str, text: Option<&str>) -> Result<Map<String, Value>, String> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Map::new()),
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "{column} must be a JSON object, got {}",
            crate::schedule::truncated(other.to_string())
        )),
        Err(e) => Err(format!("{column} is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_values_within_seven_percent() {
        for micros in [
            0u64, 1, 15, 16, 17, 31, 32, 100, 999, 1_000, 4_321, 65_535, 1_000_000, 59_999_999,
        ] {
            let bucket = Histogram::bucket(micros);
            let upper = Histogram::upper(bucket);
            assert!(upper >= micros, "{micros} in bucket {bucket} up to {upper}");
            assert!(
                upper as f64 <= micros as f64 * 1.07 + 1.0,
                "{micros}: bucket up to {upper}"
            );
            if bucket > 0 {
                assert!(
                    Histogram::upper(bucket - 1) < micros,
                    "{micros} belongs in an earlier bucket"
                );
            }
        }
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let l = h.snapshot();
        assert_eq!((l.count, l.max), (100, Duration::from_millis(100)));
        let close = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.07;
        assert!(close(l.p50, 50.0), "{:?}", l.p50);
        assert!(close(l.p99, 99.0), "{:?}", l.p99);
    }
}
