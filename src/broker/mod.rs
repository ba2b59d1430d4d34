//! The broker: Celery protocol v2 messages, and the transports that
//! publish them (Redis today), behind one small interface.
//!
//! A due routine whose task is not registered in-process becomes a
//! [`Message`] (built once, the same for every transport), which an
//! unmodified Python Celery worker runs. The scheduler publishes inside
//! its claim transaction: if the broker is unreachable the claim rolls
//! back and the routine stays due. A run claimed again after a crash or a
//! failed commit carries the same task id (see [`message::task_id`]), and
//! a [`Transport`] publishes each run once for its due second within
//! `broker_dedup_window`, so the run is delivered once.
//!
//! [`Broker`] is what the rest of the beat sees: a connection per claimer
//! and one for runs on demand, and the broker's health (up, or failing
//! with what error, and when to try again), which every publish updates
//! (see `health`). A transport only publishes or fails.

mod health;
pub(crate) mod message;
mod options;
mod pyjson;
mod redis;

use crate::config::redact_url;
use crate::metrics::Health;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use message::{Message, Sender};
pub(crate) use options::SendOptions;

/// A broker failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `broker_url` is not a broker URL this beat understands.
    #[error("invalid broker_url {0}")]
    Url(String),
    /// The broker did not answer.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// What became of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Delivered to this many queues (0: none is bound to its exchange,
    /// and the message is dropped, as Celery's client drops it).
    To(usize),
    /// Its task id was published for its due second within the window:
    /// not published again.
    Before,
}

/// One connection to a broker: publishes these messages, each once for
/// its due second (`Message::run_at`) and task id within the dedup
/// window, or fails with nothing to undo (what was delivered before a
/// failure is remembered, and a retry does not deliver it again).
pub(crate) trait Transport: Send {
    /// What became of each message, in order.
    fn publish(&mut self, messages: &[&Message]) -> Result<Vec<Delivery>, BrokerError>;
}

/// Opens a connection to the broker `url` names (connecting on first
/// use), remembering published runs for `window`.
pub(crate) fn connect(url: &str, window: Duration) -> Result<Box<dyn Transport>, BrokerError> {
    Ok(Box::new(redis::Publisher::new(url, window)?))
}

/// The broker as the beat uses it.
pub(crate) struct Broker {
    /// One connection per claimer, so that claimers never wait on each
    /// other; the last one serves runs on demand.
    lanes: Vec<Mutex<Box<dyn Transport>>>,
    outages: health::Outages,
}

impl Broker {
    /// A broker at `url` with a connection for each of `claimers` and one
    /// for runs on demand; its health is reported to `health`.
    pub(crate) fn open(
        url: &str,
        window: Duration,
        claimers: usize,
        health: Arc<Health>,
    ) -> Result<Self, BrokerError> {
        log::info!("beat: broker {}", redact_url(url));
        let lanes = (0..=claimers.max(1))
            .map(|_| connect(url, window).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Broker {
            lanes,
            outages: health::Outages::new(health),
        })
    }

    /// Publishes `messages` on claimer `claimer`'s connection, and notes
    /// the broker's health from the outcome.
    pub(crate) fn publish(
        &self,
        claimer: usize,
        messages: &[&Message],
    ) -> Result<Vec<Delivery>, BrokerError> {
        let lane = claimer.min(self.lanes.len() - 1);
        self.publish_on(lane, messages)
    }

    /// Publishes a run on demand, on a connection of its own, so that it
    /// never waits on (or disturbs) the claimers'.
    pub(crate) fn publish_on_demand(
        &self,
        messages: &[&Message],
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.publish_on(self.lanes.len() - 1, messages)
    }

    fn publish_on(&self, lane: usize, messages: &[&Message]) -> Result<Vec<Delivery>, BrokerError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.lanes[lane]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .publish(messages);
        match &result {
            Ok(_) => self.outages.succeeded(),
            Err(e) => self.outages.failed(e),
        }
        result
    }

    /// Whether claims must leave the broker's routines due for now: it
    /// failed, and its next retry is not yet.
    pub(crate) fn paused(&self) -> bool {
        self.outages.paused()
    }

    /// When the broker is next tried, during an outage.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.outages.retry_at()
    }
}
