//! Embedding the beat in a Rust service.
//!
//! ```text
//! cargo run --example embed            # SQLite file in the temp directory
//! SCHEDULER_DB_URI=postgres://postgres@127.0.0.1/test cargo run --example embed
//! ```

use celery_diesel_kit::{
    AsyncTask, Beat, Config, Routine, Schedule, SyncTask, TaskContext, TaskResult,
};
use serde::Deserialize;
use std::time::Duration;

/// A blocking task with typed kwargs.
struct SendReport;

#[derive(Deserialize)]
struct ReportArgs {
    recipient: String,
}

impl SyncTask for SendReport {
    fn name(&self) -> &str {
        "reports.send"
    }

    fn run(&self, ctx: &TaskContext) -> TaskResult {
        let args: ReportArgs = ctx.kwargs()?;
        log::info!(
            "sending the report due {} to {}",
            ctx.scheduled_at,
            args.recipient
        );
        Ok(())
    }
}

/// An async task: runs on the worker thread's own tokio runtime.
struct Refresh;

impl AsyncTask for Refresh {
    fn name(&self) -> &str {
        "cache.refresh"
    }

    async fn run(&self, ctx: TaskContext) -> TaskResult {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log::info!("cache refreshed (attempt {})", ctx.attempt);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = Config::from_env()?;
    if std::env::var_os("SCHEDULER_DB_URI").is_none() {
        let file = std::env::temp_dir().join("celery-diesel-kit-example.sqlite3");
        config.scheduler_db_uri = format!("sqlite://{}", file.display());
    }

    let beat = Beat::builder(config)
        .task(SendReport)
        .async_task(Refresh)
        .routine(
            Routine::new(
                "report every 2 s",
                "reports.send",
                Schedule::every(Duration::from_secs(2))?,
            )
            .kwargs(serde_json::json!({"recipient": "ops@example.com"})),
        )
        .routine(Routine::new(
            "refresh at every minute",
            "cache.refresh",
            Schedule::crontab("*", "*", "mon-sun", "*", "*")?,
        ))
        .start()?;

    std::thread::sleep(Duration::from_secs(5));
    let report = beat.stop();
    log::info!("stopped after {} runs", report.stats.fired);
    Ok(())
}
