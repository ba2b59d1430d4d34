//! `beat serve` (and `beat` alone): runs the scheduler until Ctrl-C or
//! SIGTERM, with the demo tasks registered.
//!
//! Routines are declared by a JSON file (`--routines`) or a Celery app
//! (`--celery-app`); on the default SQLite database, `./routines.json` is
//! used when present, which is how the demo in this repository runs.

use crate::celery_app::CeleryApp;
use crate::declared;
use anyhow::{bail, Context};
use celery_diesel_kit::DEFAULT_DB_URI;
use celery_diesel_kit::{AsyncTask, Beat, Config, HttpServer, SyncTask, TaskContext, TaskResult};
use serde_json::Value;
use std::path::PathBuf;
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

/// Where a serving beat's declared routines come from.
pub enum Source {
    /// A routines file (`--routines`); none: `./routines.json` on the
    /// default SQLite database, if present.
    File(Option<PathBuf>),
    /// A Celery app's periodic tasks (`--celery-app`).
    CeleryApp(CeleryApp),
}

/// Serves until Ctrl-C or SIGTERM, declaring the routines of `source`;
/// `http` (`--http`) overrides every other setting of `http_addr`.
pub fn serve(
    mut config: Config,
    source: Source,
    http: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut kept = Vec::new();
    let routines = match source {
        Source::CeleryApp(app) => {
            let exported = app.export()?;
            exported.configure(&mut config)?;
            for refused in &exported.declared.refused {
                log::error!(
                    "routine {}: not declared (its row, if any, is left as it is): {}",
                    refused.name,
                    refused.reason
                );
                kept.push(refused.name.clone());
            }
            log::info!(
                "beat: {} routine(s) declared by the Celery app {}",
                exported.declared.routines.len(),
                app.app
            );
            exported.declared.routines
        }
        Source::File(routines) => {
            let routines_file = routines.or_else(|| {
                let demo = PathBuf::from("routines.json");
                (config.scheduler_db_uri == DEFAULT_DB_URI && demo.exists()).then_some(demo)
            });
            match &routines_file {
                Some(path) => {
                    let items = declared::read_array(path)?;
                    let routines = declared::all_or_nothing(&items, path)?;
                    log::info!(
                        "beat: {} routine(s) declared in {}",
                        routines.len(),
                        path.display()
                    );
                    routines
                }
                None => {
                    log::info!(
                        "beat: no routines file; running the routines in the table as they are"
                    );
                    Vec::new()
                }
            }
        }
    };

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;

    if http.is_some() {
        config.http_addr = http;
    }
    let http = config.http_addr;
    let beat = Beat::builder(config.clone())
        .task(Hello)
        .task(Sleep)
        .async_task(AsyncTick)
        .routines(routines)
        .keep(kept)
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
