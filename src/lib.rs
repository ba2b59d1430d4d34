#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`schedule`]: the kit's schedule JSON (interval or Celery crontab),
//!   parsed, validated, and the next-run math. Knows nothing of databases.
//! - [`store`]: the `routines` table: migrations, pools, and every
//!   statement the beat issues.
//! - `scheduler`: the blocking scheduler thread: plans edited rows, claims
//!   due ones, sleeps until the next.
//! - `worker`: the worker pool running in-process tasks, with retries.
//! - `task`: the [`SyncTask`] and [`AsyncTask`] traits.
//! - `beat`: [`Beat`], the builder, and the [`BeatHandle`] that stops it.
//! - [`config`]: the kit's configuration keys.

#![warn(missing_docs)]

mod beat;
mod celery;
pub mod config;
mod error;
pub mod schedule;
mod scheduler;
mod shutdown;
pub mod store;
mod task;
mod worker;

pub use beat::{Beat, BeatBuilder, BeatHandle, ManualBeat, Routine, Stats, StopReport};
pub use celery::message::task_id;
pub use celery::BrokerError;
pub use config::{redact_url, Config};
pub use error::Error;
pub use schedule::{Misfire, MisfirePolicy, Schedule, ScheduleError};
pub use scheduler::{Clock, Lateness, SystemClock, Tick};
pub use store::{RoutineRow, RoutineStore};
pub use task::{AsyncTask, SyncTask, TaskContext, TaskError, TaskResult};
