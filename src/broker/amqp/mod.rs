//! Publishing to RabbitMQ the way Celery's py-amqp transport does, with
//! publisher confirms.
//!
//! lapin is async: each [`Publisher`] owns one thread with a current-thread
//! tokio runtime that it drives for as long as the publisher lives, so the
//! connection's heartbeats flow while the scheduler sleeps. The claim hands
//! it a batch and waits for the answer: every message confirmed (an ack),
//! or the batch fails and the claim rolls back.
//!
//! A message whose target cannot take it (a named exchange that does not
//! exist, a queue RabbitMQ will not declare) is refused alone: its routine
//! moves on with the reason as its `last_error`, as Celery's beat logs a
//! failed send and moves the entry on, and the rest of the batch is
//! published. Topic and fanout exchanges need nothing more: the message
//! goes to the named exchange with its routing key.
//!
//! RabbitMQ cannot drop a repeated task id as the Redis script does: a
//! run confirmed by RabbitMQ whose claim then fails to commit is claimed
//! and published again, with the same task id. The broker remembers the
//! ids of such runs (`Broker::not_committed`) and does not publish them
//! again from this process; a run reaches RabbitMQ twice only if the
//! beat dies between RabbitMQ's confirm and the commit (or another beat
//! claims the run first after the failed commit).

mod url;
mod wire;

use super::message::Message;
use super::options::Destination;
use super::{BrokerError, Delivery, Transport};
use crate::config::{redact_message, redact_url};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, ConnectionStatus, ExchangeKind,
};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc as channel;

pub(crate) use url::is_amqp;

/// How long RabbitMQ may take to confirm a batch before the batch counts
/// as failed (and its claim rolls back).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch for the publisher thread (none: a check), and where to send
/// its outcome.
struct Request {
    messages: Option<Vec<Message>>,
    reply: mpsc::SyncSender<Result<Vec<Delivery>, BrokerError>>,
}

/// A connection to RabbitMQ, on a thread of its own; connected on first use
/// and again after any failure.
pub(crate) struct Publisher {
    requests: Option<channel::UnboundedSender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// The longest a batch may take: connecting, then confirming.
    bound: Duration,
}

impl Publisher {
    /// A publisher to `url`, one of the lanes that share `peers`.
    pub(crate) fn new(url: &str, peers: Arc<Peers>) -> Result<Self, BrokerError> {
        let target = url::parse(url)?;
        let bound = target.connect_timeout + CONFIRM_TIMEOUT + Duration::from_secs(1);
        let (requests, inbox) = channel::unbounded_channel();
        let shown = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("beat-amqp".into())
            .spawn(move || serve(target, shown, peers, inbox))
            .map_err(|e| BrokerError::Unavailable(format!("cannot start the AMQP thread: {e}")))?;
        Ok(Publisher {
            requests: Some(requests),
            thread: Some(thread),
            bound,
        })
    }

    /// Hands the thread a batch (or a check) and waits for its outcome.
    fn ask(&mut self, messages: Option<Vec<Message>>) -> Result<Vec<Delivery>, BrokerError> {
        let gone = || BrokerError::Unavailable("the AMQP publisher thread has stopped".into());
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request { messages, reply };
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(request)
            .map_err(|_| gone())?;
        match answer.recv_timeout(self.bound) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(BrokerError::Unavailable(format!(
                "RabbitMQ did not answer within {:?}",
                self.bound
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }
}

impl Transport for Publisher {
    fn publish(&mut self, messages: &[&Message]) -> Result<Vec<Delivery>, BrokerError> {
        self.ask(Some(messages.iter().map(|m| (*m).clone()).collect()))
    }

    /// Connects if needed, then a passive declare of `amq.direct` (which
    /// every virtual host has): one round trip.
    fn check(&mut self) -> Result<(), BrokerError> {
        self.ask(None).map(drop)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Closing the inbox ends the thread's loop; it closes the connection.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The publisher thread: runs the runtime until the publisher is dropped.
fn serve(
    target: url::Target,
    url: String,
    peers: Arc<Peers>,
    mut inbox: channel::UnboundedReceiver<Request>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("broker: cannot start the AMQP runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut link: Option<Link> = None;
        while let Some(request) = inbox.recv().await {
            let result = match &request.messages {
                Some(messages) => publish(&target, &url, &peers, &mut link, messages).await,
                None => check(&target, &url, &peers, &mut link)
                    .await
                    .map(|()| Vec::new()),
            };
            let failed = result.is_err();
            let _ = request.reply.send(result);
            if failed {
                // A blocked connection is kept: lapin writes nothing to it,
                // not even a close, until RabbitMQ unblocks it, and it is
                // usable again then. Whatever else failed, the next batch
                // starts on a new connection; the old one is closed aside.
                if let Some(old) = link.take_if(|l| !l.connection.status().blocked()) {
                    tokio::spawn(close(old, "failed"));
                }
            }
        }
        if let Some(link) = link {
            close(link, "bye").await;
        }
    });
}

/// Closes a connection, within a second (a connection RabbitMQ blocks
/// cannot say goodbye).
async fn close(link: Link, why: &'static str) {
    let closing = link.connection.close(200, why.into());
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
}

/// The connections of one broker's lanes: RabbitMQ tells only the
/// connections that publish that it blocks publishers, so a lane that has
/// not published since would publish into the block, and wait for its
/// confirms until the block ends. Every lane asks them all.
#[derive(Default)]
pub(crate) struct Peers(Mutex<Vec<ConnectionStatus>>);

impl Peers {
    fn add(&self, status: ConnectionStatus) {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(ConnectionStatus::connected);
        peers.push(status);
    }

    fn blocked(&self) -> bool {
        let peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        peers.iter().any(|s| s.connected() && s.blocked())
    }
}

/// A connection, its confirming channel, and what was declared on it.
struct Link {
    connection: Connection,
    channel: Channel,
    /// Queues declared on this connection (kombu declares once per
    /// connection).
    declared: HashSet<String>,
    /// Named exchanges found to exist on this connection.
    exchanges: HashSet<String>,
}

async fn connect(target: &url::Target, url: &str) -> Result<Link, BrokerError> {
    let failed = |e: lapin::Error| BrokerError::Unavailable(redact_message(&e.to_string(), url));
    let connecting = Connection::connect_uri(target.uri.clone(), ConnectionProperties::default());
    let connection = tokio::time::timeout(target.connect_timeout, connecting)
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!(
                "{}: no connection within {:?}",
                redact_url(url),
                target.connect_timeout
            ))
        })?
        .map_err(failed)?;
    let channel = confirming_channel(&connection).await.map_err(failed)?;
    Ok(Link {
        connection,
        channel,
        declared: HashSet::new(),
        exchanges: HashSet::new(),
    })
}

/// The connection, made if there is none (or it failed), and open to
/// publishers.
async fn ready<'a>(
    target: &url::Target,
    url: &str,
    peers: &Peers,
    link: &'a mut Option<Link>,
) -> Result<&'a mut Link, BrokerError> {
    let usable = link
        .as_ref()
        .is_some_and(|l| l.connection.status().connected() && l.channel.status().connected());
    if !usable {
        let new = connect(target, url).await?;
        peers.add(new.connection.status().clone());
        *link = Some(new);
    }
    let Some(link) = link.as_mut() else {
        return Err(BrokerError::Unavailable("not connected".into()));
    };
    if link.connection.status().blocked() || peers.blocked() {
        return Err(BrokerError::Unavailable(
            "RabbitMQ is blocking publishers (a memory or disk alarm)".into(),
        ));
    }
    Ok(link)
}

/// One round trip on the connection: RabbitMQ answers, and is not
/// blocking publishers.
async fn check(
    target: &url::Target,
    url: &str,
    peers: &Peers,
    link: &mut Option<Link>,
) -> Result<(), BrokerError> {
    let link = ready(target, url, peers, link).await?;
    let declared = link.channel.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    );
    tokio::time::timeout(target.connect_timeout, declared)
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!(
                "RabbitMQ did not answer within {:?}",
                target.connect_timeout
            ))
        })?
        .map_err(|e| BrokerError::Unavailable(redact_message(&e.to_string(), url)))
}

/// Publishes the batch and waits for RabbitMQ to confirm every message.
/// A message whose target cannot take it (an exchange that does not
/// exist, a queue RabbitMQ will not declare) is refused alone, with the
/// reason; the rest of the batch goes on.
async fn publish(
    target: &url::Target,
    url: &str,
    peers: &Peers,
    link: &mut Option<Link>,
    messages: &[Message],
) -> Result<Vec<Delivery>, BrokerError> {
    let failed = |e: lapin::Error| BrokerError::Unavailable(redact_message(&e.to_string(), url));
    let link = ready(target, url, peers, link).await?;
    let mut refused: Vec<Option<String>> = Vec::with_capacity(messages.len());
    for message in messages {
        refused.push(link.prepare(&message.destination).await.map_err(failed)?);
    }
    let channel = &link.channel;
    let sends = messages
        .iter()
        .zip(&refused)
        .filter(|(_, refusal)| refusal.is_none())
        .map(|(message, _)| {
            let (exchange, routing_key) = wire::route(&message.destination);
            channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                // Returned when no queue is bound: told apart from a
                // delivery, as on Redis.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.body.as_bytes(),
                wire::properties(message),
            )
        })
        .collect();
    let confirms = in_order(sends)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let confirmed = async {
        let mut outcomes = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            outcomes.push(confirm.await);
        }
        outcomes
    };
    let published = refused.iter().filter(|r| r.is_none()).count();
    let mut outcomes = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!(
                "RabbitMQ did not confirm {published} messages within {CONFIRM_TIMEOUT:?}"
            ))
        })?
        .into_iter();
    let mut deliveries = Vec::with_capacity(messages.len());
    for (message, refusal) in messages.iter().zip(refused) {
        if let Some(reason) = refusal {
            deliveries.push(Delivery::Refused(reason));
            continue;
        }
        let Some(outcome) = outcomes.next() else {
            return Err(BrokerError::Unavailable("a confirm went missing".into()));
        };
        deliveries.push(match outcome.map_err(failed)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Delivery::To(1),
            Confirmation::Ack(Some(_)) => Delivery::To(0),
            Confirmation::Nack(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "RabbitMQ refused (nack) the message of task {}",
                    message.id
                )))
            }
        });
    }
    Ok(deliveries)
}

impl Link {
    /// Makes ready what a message to `destination` needs, once per
    /// connection: what kombu's producer declares (see `declare`), and
    /// the named exchange's existence (checked passively: a publish to a
    /// missing exchange would close the channel, and every message after
    /// it would fail). `Ok(Some(reason))`: this message cannot be
    /// published; the channel is opened again for the others. `Err`: the
    /// connection failed.
    async fn prepare(&mut self, destination: &Destination) -> Result<Option<String>, lapin::Error> {
        let queue = destination.declared_queue();
        if !self.declared.contains(queue) {
            match self.declare(queue).await {
                Ok(()) => {}
                Err(e) if e.is_amqp_soft_error() => {
                    self.reopen().await?;
                    // kombu would fail here; a queue that exists (with
                    // other arguments, say) takes the message all the same.
                    if let Err(e) = self
                        .channel
                        .queue_declare(queue.into(), passive(), FieldTable::default())
                        .await
                    {
                        return self
                            .refuse(e, || format!("queue {queue:?} cannot be declared"))
                            .await;
                    }
                    log::warn!(
                        "broker: queue {queue:?} exists with other arguments than Celery's defaults ({e}); publishing to it as it is"
                    );
                }
                Err(e) => return Err(e),
            }
            self.declared.insert(queue.to_owned());
        }
        if let Destination::Exchange { exchange, .. } = destination {
            if !exchange.is_empty() && !self.exchanges.contains(exchange) {
                let checked = self
                    .channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        ExchangeKind::Direct,
                        ExchangeDeclareOptions {
                            passive: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                if let Err(e) = checked {
                    return self
                        .refuse(e, || format!("exchange {exchange:?} does not exist"))
                        .await;
                }
                self.exchanges.insert(exchange.clone());
            }
        }
        Ok(None)
    }

    /// A channel error refuses the message (the channel is opened again);
    /// any other error is the connection's.
    async fn refuse(
        &mut self,
        e: lapin::Error,
        what: impl FnOnce() -> String,
    ) -> Result<Option<String>, lapin::Error> {
        if !e.is_amqp_soft_error() {
            return Err(e);
        }
        self.reopen().await?;
        Ok(Some(format!("{}: RabbitMQ said {e}", what())))
    }

    /// A new confirming channel, after a channel error closed the last.
    async fn reopen(&mut self) -> Result<(), lapin::Error> {
        self.channel = confirming_channel(&self.connection).await?;
        Ok(())
    }

    /// Declares what kombu's producer declares before publishing to a
    /// queue: the queue's exchange (direct, durable), the queue (durable)
    /// and their binding.
    async fn declare(&self, queue: &str) -> Result<(), lapin::Error> {
        self.channel
            .exchange_declare(
                queue.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                queue.into(),
                queue.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

async fn confirming_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Runs `futures` together and returns their outputs in order. Each is
/// first polled in order, and a publish hands lapin its frames at its
/// first poll: the batch's messages go out in order, one write after
/// another, instead of each waiting for the last to be written.
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut early = Vec::with_capacity(futures.len());
    for future in &mut futures {
        let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        early.push(match polled {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        });
    }
    let mut outputs = Vec::with_capacity(futures.len());
    for (future, early) in futures.into_iter().zip(early) {
        outputs.push(match early {
            Some(output) => output,
            None => future.await,
        });
    }
    outputs
}
