//! `beat serve` (and `beat` alone): runs the scheduler until Ctrl-C or
//! SIGTERM, with the demo tasks registered.
//!
//! Routines are declared by a JSON file (`--routines`); on the default
//! SQLite database, `./routines.json` is used when present, which is how
//! the demo in this repository runs.

use anyhow::{bail, Context};
use celery_diesel_kit::DEFAULT_DB_URI;
use celery_diesel_kit::{
    AsyncTask, Beat, Config, HttpServer, Routine, SyncTask, TaskContext, TaskResult,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `demo.hello`: logs a greeting (a blocking task).
struct Hello;

impl SyncTask for Hello {
    fn name(&self) -> &str {
        "demo.hello"
    }

    fn run(&self, ctx: &TaskContext) -> TaskResult {
        let who = ctx
            .kwargs
            .get("who")
            .and_then(Value::as_str)
            .unwrap_or("world");
        log::info!("[{}] hello, {who}! (due {})", ctx.routine, ctx.scheduled_at);
        Ok(())
    }
}

/// `demo.async_tick`: waits a little on the worker's tokio runtime, then logs.
struct AsyncTick;

impl AsyncTask for AsyncTick {
    fn name(&self) -> &str {
        "demo.async_tick"
    }

    async fn run(&self, ctx: TaskContext) -> TaskResult {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log::info!("[{}] async tick (due {})", ctx.routine, ctx.scheduled_at);
        Ok(())
    }
}

fn read_routines(path: &Path) -> anyhow::Result<Vec<Routine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Value::Array(items) = value else {
        bail!("{} must hold a JSON array of routines", path.display());
    };
    items
        .iter()
        .map(|item| Routine::from_json(item).with_context(|| format!("in {}", path.display())))
        .collect()
}

/// `demo.sleep`: sleeps `seconds` (kwargs, default 1): a long run, for
/// seeing that a routine's runs never overlap, on any number of beats.
struct Sleep;

impl SyncTask for Sleep {
    fn name(&self) -> &str {
        "demo.sleep"
    }

    fn run(&self, ctx: &TaskContext) -> TaskResult {
        let seconds = ctx
            .kwargs
            .get("seconds")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let pause = Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("kwargs seconds = {seconds}: {e}"))?;
        log::info!(
            "[{}] sleeping {pause:?} (due {})",
            ctx.routine,
            ctx.scheduled_at
        );
        std::thread::sleep(pause);
        log::info!("[{}] slept (due {})", ctx.routine, ctx.scheduled_at);
        Ok(())
    }
}

/// Serves until Ctrl-C or SIGTERM, declaring the routines in `routines`.
pub fn serve(config: Config, routines: Option<PathBuf>) -> anyhow::Result<()> {
    let routines_file = routines.or_else(|| {
        let demo = PathBuf::from("routines.json");
        (config.scheduler_db_uri == DEFAULT_DB_URI && demo.exists()).then_some(demo)
    });
    let routines = match &routines_file {
        Some(path) => {
            let routines = read_routines(path)?;
            log::info!(
                "beat: {} routine(s) declared in {}",
                routines.len(),
                path.display()
            );
            routines
        }
        None => {
            log::info!("beat: no routines file; running the routines in the table as they are");
            Vec::new()
        }
    };

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;

    let http = config.http_addr;
    let beat = Beat::builder(config.clone())
        .task(Hello)
        .task(Sleep)
        .async_task(AsyncTick)
        .routines(routines)
        .start()?;
    let server = match http {
        Some(addr) => Some(HttpServer::start(addr, beat.monitor(), config)?),
        None => None,
    };
    log::info!("beat: running; Ctrl-C or SIGTERM stops it");
    let _ = stop_rx.recv();
    log::info!("beat: stopping");
    // Probes see the beat stopping (the scheduler thread ends first).
    let report = beat.stop();
    drop(server);
    if report.busy_workers > 0 {
        bail!(
            "{} task(s) were still running at the shutdown deadline",
            report.busy_workers
        );
    }
    Ok(())
}
