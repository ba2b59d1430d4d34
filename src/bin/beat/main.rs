//! `beat`: serves the scheduler (no subcommand, or `serve`), and lets
//! operators see and steer routines, runs and beats without SQL.
//!
//! Configuration comes from the environment (`SCHEDULER_DB_URI`,
//! `CELERY_BROKER_URL`, ...) and optionally a `key = value` file
//! (`--config`). Exit status: 0 success, 1 failure, 2 usage error.

mod backfill;
mod celery_app;
mod commands;
mod declared;
mod flags;
mod output;
mod serve;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// A database-backed periodic task scheduler that speaks Celery's protocol.
#[derive(Parser)]
#[command(name = "beat", version, about, long_about = None)]
#[command(
    after_help = "Environment: SCHEDULER_DB_URI, CELERY_BROKER_URL, TIMEZONE, \
SCHEDULER_WATCH_INTERVAL, SCHEDULER_MAX_INTERVAL, SCHEDULER_SYNC_EVERY, CELERY_MAX_RETRY, \
CELERY_RETRY_DELAY, CREATE_TABLE, WORKER_CONCURRENCY, SHUTDOWN_TIMEOUT, HISTORY, \
HISTORY_MAX_AGE, HISTORY_MAX_RUNS, SCHEDULER_HEARTBEAT_INTERVAL, SCHEDULER_DEAD_AFTER, HTTP_ADDR, \
HTTP_TOKEN, HTTP_TOKENS, HTTP_TOKENS_FILE, HTTP_PUBLIC_READ, AUDIT_MAX_AGE, AUDIT_MAX_EDITS, RUST_LOG."
)]
struct Cli {
    /// A `key = value` configuration file (the environment overrides it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one JSON document instead of aligned text.
    #[arg(long, global = true)]
    json: bool,
    /// Who makes the changes, as the audit trail records them (default:
    /// your OS user, $USER).
    #[arg(long = "as", global = true, value_name = "NAME", value_parser = flags::parse_actor)]
    as_name: Option<String>,
    /// Routines to declare when serving (see `beat serve --help`).
    #[arg(long, value_name = "FILE", conflicts_with = "celery_app")]
    routines: Option<PathBuf>,
    #[command(flatten)]
    celery: CeleryAppArgs,
    /// When serving: where /metrics, /healthz, /readyz and the dashboard
    /// listen (overrides HTTP_ADDR; see `beat serve --help`).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler until Ctrl-C or SIGTERM (the default).
    Serve(ServeArgs),
    /// List routines: name, task, schedule, zone, active, next and last
    /// run, count, last error.
    List(ListArgs),
    /// One routine: its row, its next 5 fire times and its last 10 runs.
    Show {
        /// The routine's name.
        name: String,
    },
    /// Recorded runs, newest first.
    History(HistoryArgs),
    /// The audit trail: who changed which routine, when, by what means, and
    /// each changed column's old and new value; newest first.
    Log(LogArgs),
    /// Add a routine (checked as the beat checks rows).
    Add(AddArgs),
    /// Change a routine's task, schedule, zone, args, kwargs or options.
    Edit(EditArgs),
    /// Let a routine run.
    Enable {
        /// The routine's name.
        name: String,
    },
    /// Stop a routine from running (its row stays).
    Disable {
        /// The routine's name.
        name: String,
    },
    /// Delete a routine.
    Remove {
        /// The routine's name.
        name: String,
    },
    /// Run a routine now, outside its schedule.
    Send(SendArgs),
    /// Dispatch a routine's past due times that have no run in the history
    /// (missed in an outage, skipped), once each, with the task ids the
    /// scheduled runs would have had; its own timing is not changed.
    Backfill(backfill::BackfillArgs),
    /// Apply the kit's source-of-truth rules to declared routines now and
    /// exit: declared but missing → inserted; in the table → the table's
    /// version stays; not declared → deleted.
    Sync(SyncArgs),
    /// Preview a schedule's next fire times (no database needed).
    Next(NextArgs),
    /// Check every routine as the beat would; exit status 1 if any is bad.
    Check,
    /// The live and recently dead beats.
    Beats,
    /// Create or upgrade the tables (as a beat does at start).
    Migrate,
    /// Make a new dashboard token for operator NAME: prints the token (for
    /// the operator) and the line for `http_tokens_file` (its SHA-256).
    Token {
        /// The operator's name, as the audit trail will show it.
        name: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// JSON array of routines to declare: {name, task, schedule, args?,
    /// kwargs?, options?, active?}. Declared routines missing from the table are
    /// inserted; rows not declared are deleted. Without it nothing is
    /// declared and nothing deleted (on the default SQLite database,
    /// ./routines.json is read if present).
    #[arg(long, value_name = "FILE", conflicts_with = "celery_app")]
    routines: Option<PathBuf>,
    #[command(flatten)]
    celery: CeleryAppArgs,
    /// Listen on ADDR:PORT (e.g. 127.0.0.1:9808) for /metrics (Prometheus),
    /// /healthz, /readyz and the dashboard; overrides HTTP_ADDR. Changes
    /// from the dashboard need HTTP_TOKEN; without it it is read-only.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,
}

/// A Celery app whose periodic tasks are the declared routines.
#[derive(Args, Clone, Default)]
struct CeleryAppArgs {
    /// Declare the periodic tasks of this Celery app (`proj.celery:app`, as
    /// `celery -A` takes it): its `beat_schedule` and the kit's task
    /// classes with a `schedule`, read by the `celery_diesel_kit` Python
    /// package in the app's Python. The app's `scheduler_db_uri`,
    /// `broker_url`, `timezone` and the kit's other keys apply under the
    /// environment. An entry the beat cannot represent (a solar schedule)
    /// is refused by name and its row left alone.
    #[arg(long, value_name = "MODULE:APP")]
    celery_app: Option<String>,
    /// The Python that imports the Celery app (default: the python3 beside
    /// this executable, as in the virtualenv pip installed it into, else
    /// python3 on the PATH).
    #[arg(long, value_name = "PATH", requires = "celery_app")]
    python: Option<PathBuf>,
}

#[derive(Args)]
#[group(id = "declared", required = true, multiple = false, args = ["routines", "celery_app"])]
struct SyncArgs {
    /// A JSON array of routines, as `beat serve --routines` takes it (`-`:
    /// standard input). A routine the beat refuses is named and its row
    /// left alone; the others are synced; the exit status is then 1.
    #[arg(long, value_name = "FILE")]
    routines: Option<PathBuf>,
    #[command(flatten)]
    celery: CeleryAppArgs,
    /// A routine whose row stays though not declared (one refused on the
    /// way here); repeatable.
    #[arg(long, value_name = "NAME")]
    keep: Vec<String>,
}

#[derive(Args)]
struct ListArgs {
    /// Only routines with an error.
    #[arg(long)]
    errors: bool,
    /// Only inactive routines.
    #[arg(long)]
    inactive: bool,
}

#[derive(Args)]
struct HistoryArgs {
    /// Only this routine's runs.
    name: Option<String>,
    /// Only runs that failed, were lost or abandoned.
    #[arg(long)]
    failed: bool,
    /// Only runs dispatched since: a duration ago (`30m`, `2h`, `7d`) or a
    /// UTC time (`2026-11-27 09:00`).
    #[arg(long, value_parser = flags::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many runs.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Args)]
struct LogArgs {
    /// Only this routine's edits (also one since deleted, by its name).
    name: Option<String>,
    /// Only edits made since: a duration ago (`30m`, `2h`, `7d`) or a UTC
    /// time (`2026-11-27 09:00`).
    #[arg(long, value_parser = flags::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many edits.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// A schedule given on the command line.
#[derive(Args)]
#[group(required = false, multiple = false)]
struct ScheduleArgs {
    /// An interval: `30s`, `5m`, `1h`, `1d`, or seconds (`90`, `1.5`).
    #[arg(long, value_name = "DURATION", value_parser = flags::parse_every)]
    every: Option<f64>,
    /// A schedule as the kit's JSON: a Celery crontab (`'{"minute": "*/5"}'`),
    /// or any schedule with its extension keys (`'{"clocked":
    /// "2027-03-01T09:00:00"}'`, `'{"minute": 0, "jitter": 60}'`).
    #[arg(long, visible_alias = "schedule", value_name = "JSON", value_parser = celery_diesel_kit::ops::parse_json)]
    crontab: Option<serde_json::Value>,
}

#[derive(Args)]
struct AddArgs {
    /// The routine's name (unique).
    name: String,
    /// The task it runs: one a beat runs in-process, or a Celery task.
    #[arg(long)]
    task: String,
    #[command(flatten)]
    schedule: ScheduleArgs,
    #[command(flatten)]
    fields: RoutineFields,
    /// Add it disabled.
    #[arg(long)]
    inactive: bool,
}

#[derive(Args)]
struct EditArgs {
    /// The routine's name.
    name: String,
    /// A new task.
    #[arg(long)]
    task: Option<String>,
    #[command(flatten)]
    schedule: ScheduleArgs,
    #[command(flatten)]
    fields: RoutineFields,
}

/// A routine's zone, args, kwargs and options (`add`, `edit`).
#[derive(Args)]
struct RoutineFields {
    /// The IANA zone whose wall clock a crontab matches (default: the
    /// beats' `timezone`).
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// Positional args, a JSON array: `'["thumbnails", 128]'` (`'[]'` for
    /// none).
    // Read as text and checked with the routine's name (`ops::parse_args`),
    // so that a bad value is refused in the beat's words.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// kwargs, a JSON object.
    #[arg(long, value_name = "JSON", value_parser = celery_diesel_kit::ops::parse_json)]
    kwargs: Option<serde_json::Value>,
    /// Celery options, a JSON object (queue, priority, expires, ...).
    #[arg(long, value_name = "JSON", value_parser = celery_diesel_kit::ops::parse_json)]
    options: Option<serde_json::Value>,
}

#[derive(Args)]
struct SendArgs {
    /// The routine's name.
    name: String,
    /// How long to wait for a beat to take the request (seconds).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    wait: f64,
}

#[derive(Args)]
struct NextArgs {
    /// The schedule JSON: `'{"minute": "0", "hour": "9"}'` or `'{"timedelta": 30}'`.
    schedule: String,
    /// The zone of a crontab without its own `timezone` key (default: the
    /// `timezone` setting).
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// How many fire times.
    #[arg(short = 'n', default_value_t = 10)]
    count: usize,
    /// The fire times after this time instead of now: a UTC time
    /// (`2027-03-01 08:00`) or one with its offset (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = flags::parse_after)]
    after: Option<chrono::DateTime<chrono::Utc>>,
}

/// The error and its causes, each cause once: a library error that shows
/// its cause in its own words is not followed by the cause again.
fn message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

fn main() {
    let cli = Cli::parse();
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if serving {
        "info"
    } else {
        "warn"
    }))
    .init();
    let json = cli.json;
    let status = match commands::run(cli) {
        Ok(status) => status,
        Err(e) => {
            let message = message(&e);
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            }
            eprintln!("error: {message}");
            1
        }
    };
    std::process::exit(status);
}

#[cfg(test)]
mod tests {
    use super::message;

    /// An error that says its cause in its own words, and also gives it as
    /// its source (as the library's statement errors do).
    #[derive(Debug)]
    struct Failed(std::io::Error);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "list: {}", self.0)
        }
    }

    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let cause = std::io::Error::other("no such table: routines");
        assert_eq!(
            message(&anyhow::Error::new(Failed(cause))),
            "list: no such table: routines"
        );
        let wrapped = anyhow::Error::new(std::io::Error::other("refused")).context("connecting");
        assert_eq!(message(&wrapped), "connecting: refused");
    }
}
