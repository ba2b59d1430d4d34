//! Celery interop: protocol v2 messages and their Redis publisher.
//!
//! A due routine whose task is not registered in-process becomes a message
//! that an unmodified Python Celery worker runs. Publishing happens inside
//! the claim transaction: if Redis is unreachable the claim rolls back and
//! the routine stays due. A run claimed again after a crash or a failed
//! commit carries the same task id (see [`message::task_id`]), and Redis
//! remembers the ids it was given for `broker_dedup_window`, so the run is
//! pushed once.

pub(crate) mod message;
mod pyjson;
mod redis;

pub(crate) use message::{Message, SendOptions, Sender};
pub(crate) use redis::{Publisher, Pushed};

/// A broker failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `broker_url` is not a Redis URL this beat understands.
    #[error("invalid broker_url {0}")]
    Url(String),
    /// Redis did not answer.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}
