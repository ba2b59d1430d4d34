//! `bench`: measures the beat on a real database and broker (Redis, or
//! RabbitMQ with `--broker amqp`), and prints one JSON line per scenario
//! and backend.
//!
//! ```text
//! cargo bench --bench bench                                  # everything, full size
//! cargo bench --bench bench -- --db postgres --scenario burst
//! cargo bench --bench bench -- --db postgres --scenario burst,steady --broker amqp
//! cargo bench --bench bench -- --smoke                       # small and quick
//! ```
//!
//! With `--broker amqp` the beat publishes to RabbitMQ at `--amqp-url`
//! (default `amqp://guest:guest@127.0.0.1:5672/cdk_bench`); a virtual host
//! RabbitMQ lacks is created with `rabbitmqctl` when RabbitMQ runs on this
//! machine (otherwise create it by hand, with permissions for the user).
//!
//! Scenarios (each on a fresh database the bench creates and drops):
//! - `scale`: 10k, 100k and 1M planned routines (intervals and crontabs);
//!   time from start to the first dispatch, resident memory, CPU per minute
//!   while nothing is due.
//! - `burst`: 100k routines due at one instant: the time until all are in
//!   the broker (Redis: in the list; RabbitMQ: confirmed, counted in the
//!   queue), resident memory before and after, against a plain publisher
//!   of the same messages by this process (Redis: pipelined LPUSH;
//!   RabbitMQ: one confirming channel, in batches of the beat's claim
//!   batch, each confirmed before the next).
//! - `steady`: 10k routines every second for 60 s: dispatches per second,
//!   lateness, misses and repeats (a consumer drains the queue and counts
//!   task ids), beat CPU; with `--http-load on`, while a thread loads the
//!   dashboard's pages and `/metrics` in a loop.
//! - `edit`: 100 edits by SQL (schedule, active), each timed until the
//!   beat has applied it.
//! - `herd` (Redis only; not in the default list, nor in the smoke run: it
//!   waits for a minute boundary and then a minute): 10k routines on
//!   `{"minute": "*/1", "jitter": 60}` (`--herd-routines`, `--jitter`),
//!   and when each run of one minute reaches Redis, from its due time.
//!
//! The beat runs in this process through the library's `Beat::start`, the
//! code path of the `beat` binary; each measurement in a process of its own.
//!
//! `cargo test` runs this target too, without `--bench`: then it is the
//! smoke test (`smoke.rs`), every scenario small on every backend, checked
//! for misses and repeats, so that the bench cannot rot.

mod burst;
#[path = "../../tests/common/mod.rs"]
mod common;
mod db;
mod herd;
mod measure;
mod rabbit;
mod scenarios;
mod smoke;

use anyhow::{bail, Context};
use std::process::ExitCode;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Backend {
    Postgres,
    Mysql,
    Sqlite,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// The broker the beat publishes to (`--broker`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Broker {
    Redis,
    Amqp,
}

impl Broker {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Amqp => "amqp",
        }
    }

    /// The broker server's process, whose CPU time the bench reports.
    pub(crate) fn process(self) -> &'static str {
        match self {
            Broker::Redis => "redis-server",
            Broker::Amqp => "beam.smp",
        }
    }
}

pub(crate) struct Options {
    pub(crate) backends: Vec<Backend>,
    pub(crate) scenarios: Vec<String>,
    pub(crate) scale: Vec<usize>,
    pub(crate) burst: usize,
    pub(crate) steady_routines: usize,
    pub(crate) steady_seconds: u64,
    pub(crate) edits: usize,
    pub(crate) idle_seconds: u64,
    pub(crate) postgres: String,
    pub(crate) mysql: String,
    pub(crate) redis: String,
    pub(crate) broker: Broker,
    /// RabbitMQ, for `--broker amqp`.
    pub(crate) amqp: String,
    /// `history` (the run records) on or off.
    pub(crate) history: bool,
    /// `steady` with the dashboard and `/metrics` loaded in a loop.
    pub(crate) http_load: bool,
    /// The loader's pause between page loads (0: flat out).
    pub(crate) http_pause: std::time::Duration,
    /// `herd`: how many routines, and their `jitter` in seconds.
    pub(crate) herd_routines: usize,
    pub(crate) jitter: u64,
}

fn parse_args(args: Vec<String>) -> anyhow::Result<Options> {
    let mut o = Options {
        backends: if cfg!(feature = "mysql") {
            vec![Backend::Postgres, Backend::Sqlite, Backend::Mysql]
        } else {
            vec![Backend::Postgres, Backend::Sqlite]
        },
        scenarios: ["scale", "burst", "steady", "edit"]
            .map(String::from)
            .to_vec(),
        scale: vec![10_000, 100_000, 1_000_000],
        burst: 100_000,
        steady_routines: 10_000,
        steady_seconds: 60,
        edits: 100,
        idle_seconds: 30,
        postgres: common::postgres_admin_url(),
        mysql: common::mysql_admin_url(),
        redis: "redis://127.0.0.1:6379/14".into(),
        broker: Broker::Redis,
        amqp: "amqp://guest:guest@127.0.0.1:5672/cdk_bench".into(),
        history: true,
        http_load: false,
        http_pause: std::time::Duration::ZERO,
        herd_routines: 10_000,
        jitter: 60,
    };
    let mut args = args.into_iter();
    let list = |v: String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    let numbers = |v: String| -> anyhow::Result<Vec<usize>> {
        v.split(',')
            .map(|n| n.trim().replace('_', "").parse().context("a number"))
            .collect()
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => {
                o.backends = list(value()?)
                    .iter()
                    .map(|b| match b.as_str() {
                        "postgres" => Ok(Backend::Postgres),
                        "mysql" | "mariadb" => Ok(Backend::Mysql),
                        "sqlite" => Ok(Backend::Sqlite),
                        other => bail!("unknown backend {other}"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--scenario" => o.scenarios = list(value()?),
            "--scale" => o.scale = numbers(value()?)?,
            "--burst" => o.burst = numbers(value()?)?[0],
            "--steady-routines" => o.steady_routines = numbers(value()?)?[0],
            "--steady-seconds" => o.steady_seconds = numbers(value()?)?[0] as u64,
            "--edits" => o.edits = numbers(value()?)?[0],
            "--idle-seconds" => o.idle_seconds = numbers(value()?)?[0] as u64,
            "--herd-routines" => o.herd_routines = numbers(value()?)?[0],
            "--jitter" => o.jitter = numbers(value()?)?[0] as u64,
            "--postgres-url" => o.postgres = value()?,
            "--mysql-url" => o.mysql = value()?,
            "--redis-url" => o.redis = value()?,
            "--broker" => {
                o.broker = match value()?.as_str() {
                    "redis" => Broker::Redis,
                    "amqp" | "rabbitmq" => Broker::Amqp,
                    other => bail!("--broker takes redis or amqp, not {other:?}"),
                }
            }
            "--amqp-url" => o.amqp = value()?,
            "--http-load" => {
                o.http_load = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--http-load takes on or off, not {other:?}"),
                }
            }
            "--http-pause-ms" => {
                o.http_pause = std::time::Duration::from_millis(numbers(value()?)?[0] as u64)
            }
            "--history" => {
                o.history = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--history takes on or off, not {other:?}"),
                }
            }
            // `cargo bench` says so; it changes nothing here.
            "--bench" => {}
            "--smoke" => {
                o.scale = vec![1_000];
                o.burst = 2_000;
                o.steady_routines = 200;
                o.steady_seconds = 3;
                o.edits = smoke::EDITS;
                o.idle_seconds = 1;
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--smoke] [--db postgres,sqlite,mysql] [--scenario scale,burst,steady,edit,herd]\n\
                     \x20            [--scale 10000,100000,1000000] [--burst N] [--steady-routines N]\n\
                     \x20            [--herd-routines N] [--jitter SECONDS]\n\
                     \x20            [--steady-seconds S] [--edits N] [--idle-seconds S]\n\
                     \x20            [--postgres-url URL] [--mysql-url URL] [--redis-url URL]\n\
                     \x20            [--broker redis|amqp] [--amqp-url URL]\n\
                     \x20            [--history on|off] [--http-load on|off] [--http-pause-ms MS]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(o)
}

/// The arguments, less those that select backends, scenarios and scales.
fn strip_selection(args: Vec<String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if ["--db", "--scenario", "--scale"].contains(&arg.as_str()) {
            it.next();
        } else {
            kept.push(arg);
        }
    }
    kept
}

/// Measures, and prints one JSON line per scenario and backend.
fn measure(args: Vec<String>) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let o = parse_args(args)?;
    let mut runs: Vec<(Backend, String, Option<usize>)> = Vec::new();
    for backend in &o.backends {
        for scenario in &o.scenarios {
            if scenario == "scale" {
                runs.extend(
                    o.scale
                        .iter()
                        .map(|n| (*backend, scenario.clone(), Some(*n))),
                );
            } else {
                runs.push((*backend, scenario.clone(), None));
            }
        }
    }
    if runs.len() > 1 {
        // One process per measurement, so that memory and CPU figures are
        // the beat's alone, not left over from an earlier scenario.
        let passed: Vec<String> = strip_selection(std::env::args().skip(1).collect());
        // Children measure; none of them is a test run.
        let passed: Vec<String> = if passed.iter().any(|a| a == "--bench") {
            passed
        } else {
            [vec!["--bench".to_owned()], passed].concat()
        };
        for (backend, scenario, size) in runs {
            let mut child = std::process::Command::new(std::env::current_exe()?);
            child
                .args(&passed)
                .args(["--db", backend.name(), "--scenario", &scenario]);
            if let Some(n) = size {
                child.args(["--scale", &n.to_string()]);
            }
            let status = child.status().context("run the bench for one scenario")?;
            if !status.success() {
                bail!("{scenario} on {} failed", backend.name());
            }
        }
        return Ok(());
    }
    for backend in &o.backends {
        for scenario in &o.scenarios {
            let result = match scenario.as_str() {
                "scale" => o
                    .scale
                    .iter()
                    .try_for_each(|n| scenarios::scale(*backend, *n, &o)),
                "burst" => burst::burst(*backend, o.burst, &o),
                "steady" => scenarios::steady(*backend, o.steady_routines, o.steady_seconds, &o),
                "edit" => scenarios::edit(*backend, o.edits, &o),
                "herd" => herd::herd(*backend, o.herd_routines, o.jitter, &o),
                other => bail!("unknown scenario {other}"),
            };
            result.with_context(|| format!("{scenario} on {}", backend.name()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if smoke::is_test_run(&args) {
        return smoke::run(&args);
    }
    match measure(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
