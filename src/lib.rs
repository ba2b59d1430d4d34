#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! From the top down; each module uses only those below it (`error`,
//! the crate's error type, gathers the errors of the modules above it).
//!
//! - `http` (feature `http`): the listener ([`HttpServer`]): its
//!   connections, bounds and page threads (`server`), the HTTP/1.1 it
//!   speaks (`wire`), `/metrics`
//!   (`prometheus`), `/healthz` and `/readyz`, the dashboard (`pages`) and
//!   who may see and change what (`auth`); it reads a beat's [`Monitor`]
//!   and acts through [`ops`] only.
//! - [`ops`]: what operators do (list, show, add, edit, enable, disable,
//!   remove, send, check, history, beats, migrate), for the `beat` command
//!   line; it calls only the library below.
//! - `beat`: [`Beat`], its builder, and the [`BeatHandle`] and
//!   [`ManualBeat`] that run and stop it; its start-up in order (`start`).
//! - `scheduler`: the blocking scheduler thread: the loop (`mod.rs`),
//!   planning edited rows (`plan`), claiming due ones (`claim`), outages of
//!   the database (`outage`); and the housekeeper thread beside it
//!   (`housekeeping`: heartbeats, run outcomes, dead beats, pruning the
//!   history). Its claim reads one due run from top to bottom: it opens a
//!   claim transaction (`store::ClaimTx`), has `dispatch` route, decide and
//!   record each row, publishes through `broker`, records, advances,
//!   commits, and hands the in-process runs to `worker`.
//! - `dispatch`: one due run, from the claim to its hand-over: route
//!   (`route`: valid, and in-process or Celery), decide (`decide`: misfire,
//!   overlap, advance), record (`record`), what to log (`notes`); and runs
//!   on demand (`on_demand`).
//! - `worker`: the worker pool running in-process tasks (its threads'
//!   loop in `thread`), and the timer that holds their retries (`retry`).
//! - `broker`: Celery protocol v2 messages (`message`, from a routine's
//!   `options`), built once for any transport; the `Transport` interface
//!   ("publish these messages, once for their due second, or fail") with
//!   Redis behind it (`redis`); and the `Broker` the beat publishes
//!   through, with its health (`health`).
//! - `store`: the beat's tables ([`RoutineStore`]): `routines` (`mod.rs`,
//!   `find`), the run history ([`Runs`], `history`), the beats ([`Beats`],
//!   `beats`), the audit trail and who acts ([`Edits`], `edits`); the
//!   rows (`models`), the scheduler's claim transaction (`claim`) and its
//!   other statements (`claims`), migrations and pools (`pool`), the
//!   backends' batch writes and edits (`write`), the errors (`error`), and
//!   every statement the beat issues, in each dialect (`sql`,
//!   `sql/history`).
//! - `routine`: a [`Routine`] as code declares it.
//! - `metrics`: what the beat counts ([`Stats`]), where a run goes
//!   ([`Target`]), and how the beat is (`health`, read through a
//!   [`Monitor`]).
//! - `config`: the kit's configuration keys ([`Config`]), each declared
//!   once (`keys`), their values' parsing (`values`), the dashboard's
//!   operators and their tokens (`operators`), and what is never printed
//!   (`secrets`).
//! - `schedule`: the kit's schedule JSON (interval or Celery crontab, its
//!   field syntax in `crontab/fields`), parsed, validated, and the
//!   next-run math ([`Schedule`]). Knows nothing of databases.
//! - `task`: the [`SyncTask`] and [`AsyncTask`] traits.
//! - `clock`, `shutdown`, `backoff`, `error`: the injected time, the stop
//!   signal, the waits between retries, and the crate's [`Error`].

#![warn(missing_docs)]

mod backoff;
mod beat;
mod broker;
mod clock;
mod config;
mod dispatch;
mod error;
#[cfg(feature = "http")]
mod http;
mod metrics;
pub mod ops;
mod routine;
mod schedule;
mod scheduler;
mod shutdown;
mod store;
mod task;
mod worker;

pub use beat::{Beat, BeatBuilder, BeatHandle, ManualBeat, StopReport};
pub use broker::message::task_id;
pub use broker::BrokerError;
pub use clock::{Clock, SystemClock};
pub use config::{
    read_tokens_file, redact_url, Config, ConfigError, OperatorToken, DEFAULT_DB_URI,
};
pub use error::Error;
#[cfg(feature = "http")]
pub use http::HttpServer;
pub use metrics::{HealthReport, Lateness, Monitor, Stats, Target};
pub use routine::{Routine, RoutineError};
pub use schedule::{
    Bounds, Clocked, Crontab, End, Misfire, MisfirePolicy, Next, Schedule, ScheduleError, Timing,
};
pub use scheduler::Tick;
pub use store::{
    Actor, Backend, BeatRow, Beats, DatabaseError, EditAction, EditFilter, EditRow, Edits,
    FieldChange, RoutineCounts, RoutineQuery, RoutineRow, RoutineState, RoutineStore, RunFilter,
    RunOutcome, RunRow, Runs, StoreError, Synced, Via,
};
pub use task::{AsyncTask, SyncTask, TaskContext, TaskError, TaskResult};

#[cfg(doctest)]
#[doc = include_str!("../docs/tasks.md")]
struct TasksDoc;
