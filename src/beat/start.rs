//! A beat's start-up, in order: check what was declared, open the store
//! (migrate, sync declared routines), open the broker, register the beat,
//! start the worker pool and the housekeeper, and build the scheduler.

use super::{BeatBuilder, Parts};
use crate::broker::Broker;
use crate::config::{redact_url, Config};
use crate::dispatch::{Dispatcher, Router, Touched};
use crate::error::Error;
use crate::metrics::{self, Health, Metrics, Monitor};
use crate::routine::Routine;
use crate::scheduler::housekeeping::{HistorySettings, Housekeeper};
use crate::scheduler::{self, Scheduler, Settings};
use crate::shutdown;
use crate::store::{Actor, BeatInfo, Claimant, RoutineStore};
use crate::task::TaskRegistry;
use crate::worker::{Reporter, RetryPolicy, WorkerPool};
use std::sync::Arc;

impl BeatBuilder {
    pub(super) fn prepare(self) -> Result<(Parts, Scheduler), Error> {
        for routine in &self.routines {
            routine.validate()?;
        }
        let config = self.config;
        config.validate()?;
        let beat_id = uuid::Uuid::new_v4().to_string();
        let store = open_store(&config, &beat_id, &self.routines, &self.kept)?;
        let health = Arc::new(Health::default());
        let claimers = scheduler::claimers(store.backend());
        let broker = open_broker(&config, claimers, &health)?;
        let registry = Arc::new(self.registry);
        let beat = beat_info(&beat_id, &registry, broker.is_some());
        store.beats().register(&beat)?;
        log::info!("beat: registered as {beat_id} in the beats table");
        let metrics = Arc::new(Metrics::default());
        let (events, events_rx) = crossbeam_channel::unbounded();
        let reporter = Reporter {
            events: events.clone(),
            clock: Arc::clone(&self.clock),
        };
        let pool = start_workers(&config, &registry, &metrics, reporter)?;
        let touched = Arc::new(Touched::default());
        let housekeeper = Housekeeper {
            store: Arc::clone(&store),
            beat,
            settings: history_settings(&config),
            events: events_rx,
            touched: Arc::clone(&touched),
            clock: Arc::clone(&self.clock),
        };
        let (housekeeper_stop, housekeeper) = housekeeper.start()?;
        let (trigger, shutdown) = shutdown::channel();
        let dispatcher = Arc::new(Dispatcher {
            router: Router::new(&registry, broker.is_some(), config.timezone),
            broker,
            queue: pool.queue(),
            in_flight: pool.in_flight(),
            metrics: Arc::clone(&metrics),
            clock: Arc::clone(&self.clock),
            misfire: (
                config.scheduler_misfire_policy,
                config.scheduler_misfire_grace_time,
            ),
            shutdown: shutdown.clone(),
            history: config.history,
            events,
            touched,
        });
        let monitor = Monitor {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            bound: metrics::health_bound(config.scheduler_watch_interval),
            has_broker: config.broker_url.is_some(),
            beat_id: beat_id.clone(),
        };
        let scheduler = Scheduler::new(
            Arc::clone(&store),
            self.clock,
            Arc::clone(&dispatcher),
            Arc::clone(&metrics),
            shutdown,
            Settings::of(&config),
            health,
        );
        let parts = Parts {
            store,
            beat_id,
            dispatcher: Some(dispatcher),
            pool: Some(pool),
            housekeeper: Some((housekeeper_stop, housekeeper)),
            metrics,
            monitor,
            trigger: Some(trigger),
            shutdown_timeout: config.shutdown_timeout,
        };
        Ok((parts, scheduler))
    }
}

/// Opens the store for beat `beat_id`, creates or checks its tables, and
/// syncs the routines `declared` in code into them (leaving the rows named
/// in `kept` alone).
fn open_store(
    config: &Config,
    beat_id: &str,
    declared: &[Routine],
    kept: &[String],
) -> Result<Arc<RoutineStore>, Error> {
    log::info!("beat: database {}", redact_url(&config.scheduler_db_uri));
    let store = RoutineStore::open(&config.scheduler_db_uri, config.scheduler_db_timeout)?
        .claiming_for(Claimant {
            beat_id: beat_id.to_owned(),
            dead_after: config.scheduler_dead_after,
        });
    if config.create_table {
        store.migrate()?;
    } else {
        store.check_schema()?;
    }
    let synced = store.sync_declared(&Actor::beat(beat_id), declared, kept)?;
    for name in &synced.inserted {
        log::info!("routine {name}: declared in code, inserted");
    }
    for name in &synced.deleted {
        log::info!("routine {name}: no longer declared in code, deleted");
    }
    Ok(Arc::new(store))
}

/// The broker of `broker_url`, if any, with a connection for each of
/// `claimers`, reporting its health to `health`.
fn open_broker(
    config: &Config,
    claimers: usize,
    health: &Arc<Health>,
) -> Result<Option<Arc<Broker>>, Error> {
    let Some(url) = &config.broker_url else {
        return Ok(None);
    };
    let broker = Broker::open(
        url,
        config.broker_dedup_window,
        claimers,
        Arc::clone(health),
    )?;
    Ok(Some(Arc::new(broker)))
}

/// The beat's row in the `beats` table.
fn beat_info(beat_id: &str, registry: &TaskRegistry, broker: bool) -> BeatInfo {
    let mut names: Vec<&str> = registry.names().collect();
    names.sort_unstable();
    BeatInfo {
        id: beat_id.to_owned(),
        host: hostname(),
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        tasks: serde_json::Value::from(names).to_string(),
        broker,
    }
}

fn start_workers(
    config: &Config,
    registry: &Arc<TaskRegistry>,
    metrics: &Arc<Metrics>,
    reporter: Reporter,
) -> Result<WorkerPool, Error> {
    WorkerPool::start(
        config.worker_concurrency,
        Arc::clone(registry),
        RetryPolicy {
            max_retries: config.celery_max_retry,
            delay: config.celery_retry_delay,
        },
        Arc::clone(metrics),
        reporter,
    )
    .map_err(|source| Error::Thread {
        what: "worker",
        source,
    })
}

fn history_settings(config: &Config) -> HistorySettings {
    HistorySettings {
        history: config.history,
        max_age: config.history_max_age,
        max_runs: config.history_max_runs,
        heartbeat: config.scheduler_heartbeat_interval,
        dead_after: config.scheduler_dead_after,
        audit_max_age: config.audit_max_age,
        audit_max_edits: config.audit_max_edits,
    }
}
/// This machine's name, for the `beats` table.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    name.chars().take(255).collect()
}
