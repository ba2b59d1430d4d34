//! The crate's error type.

use crate::celery::BrokerError;
use crate::config::ConfigError;
use crate::schedule::ScheduleError;
use crate::store::StoreError;

/// Anything that stops the beat from starting, or a scheduler step from
/// completing. Problems with one routine never surface here: they are
/// logged and recorded in that routine's `last_error` column.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Celery broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A routine declared in code is invalid.
    #[error("routine {routine}: {reason}")]
    Routine {
        /// The routine's name.
        routine: String,
        /// What is wrong.
        reason: String,
    },
    /// A schedule declared in code is invalid.
    #[error("routine {routine}: {source}")]
    Schedule {
        /// The routine's name.
        routine: String,
        /// The schedule error.
        source: ScheduleError,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}
