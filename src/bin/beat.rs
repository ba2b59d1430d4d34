//! `beat`: runs the scheduler until Ctrl-C or SIGTERM.
//!
//! Configuration comes from the environment (`SCHEDULER_DB_URI`,
//! `CELERY_BROKER_URL`, ...) and optionally a `key = value` file. Routines
//! are declared by a JSON file (`--routines`); on the default SQLite
//! database, `./routines.json` is used when present, which is how the demo
//! in this repository runs.

use anyhow::{bail, Context};
use celery_diesel_kit::DEFAULT_DB_URI;
use celery_diesel_kit::{AsyncTask, Beat, Config, Routine, SyncTask, TaskContext, TaskResult};
use serde_json::Value;
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: beat [--config FILE] [--routines FILE]

  --config FILE    key = value configuration (the environment overrides it)
  --routines FILE  JSON array of routines to declare: {name, task, schedule,
                   kwargs?, options?, active?}. Declared routines missing from
                   the table are inserted; rows not declared are deleted.
                   Without it nothing is declared and nothing deleted (on the
                   default SQLite database, ./routines.json is read if present).

Environment: SCHEDULER_DB_URI, SCHEDULER_MAX_INTERVAL, SCHEDULER_SYNC_EVERY,
SCHEDULER_WATCH_INTERVAL, CELERY_MAX_RETRY, CELERY_RETRY_DELAY, CREATE_TABLE,
CELERY_BROKER_URL, WORKER_CONCURRENCY, SHUTDOWN_TIMEOUT, RUST_LOG.";

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

struct Args {
    config: Option<PathBuf>,
    routines: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        config: None,
        routines: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => args.config = Some(it.next().context("--config needs a file")?.into()),
            "--routines" => {
                args.routines = Some(it.next().context("--routines needs a file")?.into())
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(args)
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

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args()?;
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::from_env()?,
    };
    let routines_file = args.routines.clone().or_else(|| {
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

    let beat = Beat::builder(config)
        .task(Hello)
        .async_task(AsyncTick)
        .routines(routines)
        .start()?;
    log::info!("beat: running; Ctrl-C or SIGTERM stops it");
    let _ = stop_rx.recv();
    log::info!("beat: stopping");
    let report = beat.stop();
    if report.busy_workers > 0 {
        bail!(
            "{} task(s) were still running at the shutdown deadline",
            report.busy_workers
        );
    }
    Ok(())
}
