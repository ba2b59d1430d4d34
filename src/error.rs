//! The crate's error type.

use crate::broker::BrokerError;
use crate::config::ConfigError;
use crate::routine::RoutineError;
use crate::store::StoreError;

/// Anything that stops the beat from starting, or a scheduler step from
/// completing. Problems with one routine in the table never surface here:
/// they are logged and recorded in that routine's `last_error` column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// No routine has this name.
    #[error("routine {0}: no such routine")]
    NoSuchRoutine(String),
    /// A routine declared in code, or asked for by name, is invalid or
    /// cannot be run.
    #[error(transparent)]
    Routine(#[from] RoutineError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP listener (`http_addr`) could not listen.
    #[error("cannot listen on http_addr {addr}: {reason}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why not.
        reason: String,
    },
}
