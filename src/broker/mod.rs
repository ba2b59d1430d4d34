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
//! (see `health`), and a check when nothing was published for a second,
//! so that an outage shows in `/healthz` and `beat_broker_up` even when
//! nothing is due. A transport only publishes, checks, or fails.

mod amqp;
mod health;
pub(crate) mod message;
mod options;
mod pyjson;
mod redis;

use crate::config::redact_url;
use crate::metrics::Health;
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Delivered to this many queues (0: none is bound to its exchange,
    /// and the message is dropped, as Celery's client drops it).
    To(usize),
    /// Its task id was published for its due second within the window:
    /// not published again.
    Before,
    /// The broker cannot take it where it goes (RabbitMQ: its exchange
    /// does not exist), for this reason; the other messages are published.
    Refused(String),
}

/// One connection to a broker: publishes these messages, each once for
/// its due second (`Message::run_at`) and task id within the dedup
/// window, or fails with nothing to undo (what was delivered before a
/// failure is remembered, and a retry does not deliver it again).
pub(crate) trait Transport: Send {
    /// What became of each message, in order.
    fn publish(&mut self, messages: &[&Message]) -> Result<Vec<Delivery>, BrokerError>;

    /// Whether the broker answers now (and takes messages), by one round
    /// trip on this connection (connecting if needed).
    fn check(&mut self) -> Result<(), BrokerError>;
}

/// How long the broker may go without a publish before it is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A connection, shared by the claimer it serves and the broker's watch.
type Lane = Arc<Mutex<Box<dyn Transport>>>;

/// Opens a connection to the broker `url` names (connecting on first
/// use), remembering published runs for `window`.
pub(crate) fn connect(url: &str, window: Duration) -> Result<Box<dyn Transport>, BrokerError> {
    let mut lanes = connect_lanes(url, window, 1)?;
    lanes
        .pop()
        .ok_or_else(|| BrokerError::Unavailable("no connection".into()))
}

/// `n` connections to the broker `url` names, as `connect` opens one;
/// RabbitMQ's lanes know of each other (see `amqp::Peers`).
fn connect_lanes(
    url: &str,
    window: Duration,
    n: usize,
) -> Result<Vec<Box<dyn Transport>>, BrokerError> {
    let peers = Arc::new(amqp::Peers::default());
    (0..n)
        .map(|_| -> Result<Box<dyn Transport>, BrokerError> {
            if amqp::is_amqp(url) {
                Ok(Box::new(amqp::Publisher::new(url, Arc::clone(&peers))?))
            } else {
                Ok(Box::new(redis::Publisher::new(url, window)?))
            }
        })
        .collect()
}

/// The broker as the beat uses it.
pub(crate) struct Broker {
    /// One connection per claimer, so that claimers never wait on each
    /// other; the last one serves runs on demand.
    lanes: Vec<Lane>,
    outages: Arc<health::Outages>,
    /// Dropped with the broker: ends the watch.
    _watching: mpsc::Sender<()>,
    /// Runs published whose claim then failed to commit, by task id, and
    /// until when they are remembered (see [`Broker::not_committed`]).
    uncommitted: Mutex<HashMap<String, Instant>>,
    window: Duration,
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
        let lanes = connect_lanes(url, window, claimers.max(1) + 1)?;
        Self::from_lanes(lanes, window, health)
    }

    /// A broker on these connections (the last serves runs on demand, and
    /// the watch).
    fn from_lanes(
        lanes: Vec<Box<dyn Transport>>,
        window: Duration,
        health: Arc<Health>,
    ) -> Result<Self, BrokerError> {
        let lanes: Vec<Lane> = lanes.into_iter().map(|t| Arc::new(Mutex::new(t))).collect();
        let outages = Arc::new(health::Outages::new(health));
        let (watching, stop) = mpsc::channel();
        // The watch checks on the connection for runs on demand, which is
        // idle but for them.
        let (lane, seen) = (Arc::clone(&lanes[lanes.len() - 1]), Arc::clone(&outages));
        std::thread::Builder::new()
            .name("beat-broker-watch".into())
            .spawn(move || watch(&lane, &seen, &stop))
            .map_err(|e| BrokerError::Unavailable(format!("cannot start the broker watch: {e}")))?;
        Ok(Broker {
            lanes,
            outages,
            _watching: watching,
            uncommitted: Mutex::new(HashMap::new()),
            window,
        })
    }

    /// These messages were published (confirmed) but their claim did not
    /// commit, so their rows are due again: when claimed again within the
    /// window, they count as published before and are not sent twice.
    /// Redis drops such repeats itself; RabbitMQ cannot, and this is what
    /// keeps a failed commit from doubling a run there.
    pub(crate) fn not_committed<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) {
        let now = Instant::now();
        let mut uncommitted = self
            .uncommitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        uncommitted.retain(|_, until| *until > now);
        for message in messages {
            uncommitted.insert(message.id.clone(), now + self.window);
        }
    }

    /// Which of `messages` were published before (see `not_committed`).
    fn published_before(&self, messages: &[&Message]) -> Vec<bool> {
        let uncommitted = self
            .uncommitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if uncommitted.is_empty() {
            return vec![false; messages.len()];
        }
        let now = Instant::now();
        messages
            .iter()
            .map(|m| uncommitted.get(&m.id).is_some_and(|until| *until > now))
            .collect()
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
        let before = self.published_before(messages);
        let fresh: Vec<&Message> = messages
            .iter()
            .zip(&before)
            .filter(|(_, before)| !**before)
            .map(|(m, _)| *m)
            .collect();
        if fresh.is_empty() {
            return Ok(vec![Delivery::Before; messages.len()]);
        }
        let result = self.lanes[lane]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .publish(&fresh);
        match &result {
            Ok(_) => self.outages.succeeded(),
            Err(e) => self.outages.failed(e),
        }
        let mut delivered = result?.into_iter();
        Ok(before
            .into_iter()
            .map(|before| {
                if before {
                    Delivery::Before
                } else {
                    delivered.next().unwrap_or(Delivery::To(0))
                }
            })
            .collect())
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

/// Checks the broker on `lane` whenever it has not answered for
/// [`CHECK_INTERVAL`] (during an outage: at each retry of the back-off),
/// until `stop` hangs up.
fn watch(lane: &Lane, outages: &health::Outages, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECK_INTERVAL / 4) {
        if !outages.check_due(CHECK_INTERVAL) {
            continue;
        }
        let checked = lane.lock().unwrap_or_else(PoisonError::into_inner).check();
        match checked {
            Ok(()) => outages.succeeded(),
            Err(e) => outages.failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// A transport that takes everything, and says which ids it was given.
    struct Taker(Arc<Mutex<Vec<String>>>);

    impl Transport for Taker {
        fn publish(&mut self, messages: &[&Message]) -> Result<Vec<Delivery>, BrokerError> {
            let mut taken = self.0.lock().unwrap();
            taken.extend(messages.iter().map(|m| m.id.clone()));
            Ok(vec![Delivery::To(1); messages.len()])
        }

        fn check(&mut self) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    fn message(id: &str) -> Message {
        Message {
            id: id.into(),
            task: "t".into(),
            destination: options::Destination::Queue {
                queue: "celery".into(),
            },
            priority: 0,
            headers: "{}".into(),
            body: "[]".into(),
            reply_to: String::new(),
            expiration_ms: None,
            run_at: Utc::now(),
        }
    }

    fn broker(window: Duration) -> (Broker, Arc<Mutex<Vec<String>>>) {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let lanes: Vec<Box<dyn Transport>> = vec![
            Box::new(Taker(Arc::clone(&taken))),
            Box::new(Taker(Arc::clone(&taken))),
        ];
        let broker = Broker::from_lanes(lanes, window, Arc::new(Health::default())).unwrap();
        (broker, taken)
    }

    /// A batch published whose claim did not commit is not published
    /// again when its runs are claimed again, on any claimer's connection;
    /// the rest of a batch is, in order.
    #[test]
    fn runs_published_but_not_committed_are_not_published_again() {
        let (broker, taken) = broker(Duration::from_secs(3600));
        let (a, b) = (message("a"), message("b"));
        broker.publish(0, &[&a]).unwrap();
        broker.not_committed([&a]);
        let delivered = broker.publish(1, &[&a, &b]).unwrap();
        assert_eq!(delivered, vec![Delivery::Before, Delivery::To(1)]);
        assert_eq!(broker.publish(0, &[&a]).unwrap(), vec![Delivery::Before]);
        assert_eq!(*taken.lock().unwrap(), ["a", "b"]);
    }

    /// Past the window, a run is published again.
    #[test]
    fn the_memory_of_uncommitted_runs_ends_with_the_window() {
        let (broker, taken) = broker(Duration::ZERO);
        let a = message("a");
        broker.publish(0, &[&a]).unwrap();
        broker.not_committed([&a]);
        assert_eq!(broker.publish(0, &[&a]).unwrap(), vec![Delivery::To(1)]);
        assert_eq!(*taken.lock().unwrap(), ["a", "a"]);
    }
}
