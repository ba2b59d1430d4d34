//! RabbitMQ for the bench (`--broker amqp`): the bench's own connections,
//! each a lapin client driven by a current-thread tokio runtime of its
//! own, behind blocking calls (as the beat's publisher is).
//!
//! The bench counts a queue's messages (a passive `queue.declare`), takes
//! them off it (a no-ack consumer), and publishes them again as a plain
//! confirmed publisher: the baseline the beat's burst is measured against.

use super::measure::{cpu_time, Drain, Drained};
use anyhow::{bail, Context};
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// A message as RabbitMQ delivered it: what a plain publisher sends again.
pub(crate) struct Taken {
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

impl Taken {
    /// The Celery task id (the `id` header).
    pub(crate) fn id(&self) -> String {
        task_id(&self.properties).unwrap_or_else(|| "?".to_owned())
    }
}

fn task_id(properties: &BasicProperties) -> Option<String> {
    match properties.headers().as_ref()?.inner().get("id")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A blocking connection to RabbitMQ, connected again after any failure (a
/// passive declare of a missing queue closes the channel, and nothing
/// drives the heartbeats while the bench sleeps).
pub(crate) struct Rabbit {
    runtime: Runtime,
    uri: AMQPUri,
    link: Option<(Connection, Channel)>,
}

impl Rabbit {
    /// Connects to `url`; a virtual host RabbitMQ does not know is created
    /// first (with `rabbitmqctl`, when RabbitMQ runs on this machine).
    pub(crate) fn connect(url: &str) -> anyhow::Result<Rabbit> {
        let mut rabbit = Rabbit {
            runtime: runtime()?,
            uri: parse(url)?,
            link: None,
        };
        if let Err(first) = rabbit.channel() {
            // RabbitMQ answered, and refused the virtual host ("NOT_ALLOWED -
            // vhost ... not found"); any other failure is reported as is.
            if !format!("{first:#}").contains("vhost") {
                return Err(first);
            }
            create_vhost(&rabbit.uri).with_context(|| format!("{first:#}"))?;
            rabbit.channel()?;
        }
        Ok(rabbit)
    }

    /// The open channel, on a new connection if the last one failed.
    fn channel(&mut self) -> anyhow::Result<Channel> {
        let usable = self
            .link
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            let uri = self.uri.clone();
            self.link = Some(self.runtime.block_on(open(uri))?);
        }
        match &self.link {
            Some((_, channel)) => Ok(channel.clone()),
            None => bail!("not connected to RabbitMQ"),
        }
    }

    /// Messages ready in `queue` (a passive declare).
    pub(crate) fn count(&mut self, queue: &str) -> anyhow::Result<usize> {
        let channel = self.channel()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self.runtime.block_on(channel.queue_declare(
            queue.into(),
            passive,
            FieldTable::default(),
        ));
        Ok(declared
            .with_context(|| format!("count queue {queue}"))?
            .message_count() as usize)
    }

    /// Deletes `queue` and its exchange, then declares them as a Celery
    /// worker (and the beat) does: exchange `queue` (direct, durable),
    /// queue `queue` (durable), bound by its name. Declared before the beat
    /// publishes, so that the bench can count and consume from the start.
    pub(crate) fn reset(&mut self, queue: &str) -> anyhow::Result<()> {
        self.delete(queue)?;
        let channel = self.channel()?;
        self.runtime.block_on(declare(&channel, queue))
    }

    /// Deletes `queue` and its exchange, with what they hold.
    pub(crate) fn delete(&mut self, queue: &str) -> anyhow::Result<()> {
        let channel = self.channel()?;
        self.runtime.block_on(async {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
            channel
                .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
                .await?;
            anyhow::Ok(())
        })
    }

    /// Takes every message off `queue` (a no-ack consumer), in the order
    /// delivered; nothing may be publishing to it meanwhile.
    pub(crate) fn take_all(&mut self, queue: &str) -> anyhow::Result<Vec<Taken>> {
        let n = self.count(queue)?;
        let channel = self.channel()?;
        self.runtime.block_on(async {
            let (tag, mut deliveries) = consume(&channel, queue).await?;
            let mut taken = Vec::with_capacity(n);
            while taken.len() < n {
                let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
                    .await
                    .ok()
                    .flatten()
                    .with_context(|| format!("only {} of {n} messages taken", taken.len()))?;
                taken.push(Taken {
                    body: delivery.data,
                    properties: delivery.properties,
                });
            }
            channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await?;
            Ok(taken)
        })
    }

    /// The baseline: publishes `messages` to `queue` through the default
    /// exchange, as the beat does (mandatory, the same bodies and
    /// properties), on one confirming channel, `batch` at a time, each
    /// batch confirmed in full before the next is sent. Returns the time
    /// it took.
    pub(crate) fn publish_confirmed(
        &mut self,
        queue: &str,
        messages: &[Taken],
        batch: usize,
        sends: Sends,
    ) -> anyhow::Result<Duration> {
        self.channel()?;
        let Some((connection, _)) = &self.link else {
            bail!("not connected to RabbitMQ");
        };
        self.runtime.block_on(async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let started = Instant::now();
            for chunk in messages.chunks(batch) {
                let confirms = match sends {
                    Sends::Pipelined => send_pipelined(&channel, queue, chunk).await?,
                    Sends::OneByOne => send_one_by_one(&channel, queue, chunk).await?,
                };
                confirmed(queue, confirms).await?;
            }
            let took = started.elapsed();
            channel.close(200, "done".into()).await?;
            Ok(took)
        })
    }

    /// Empties `queue`.
    pub(crate) fn purge(&mut self, queue: &str) -> anyhow::Result<()> {
        let channel = self.channel()?;
        self.runtime
            .block_on(channel.queue_purge(queue.into(), QueuePurgeOptions::default()))?;
        Ok(())
    }
}

/// How the baseline hands a batch's messages to lapin.
#[derive(Clone, Copy)]
pub(crate) enum Sends {
    /// Every message of the batch handed over at once (a task each), so
    /// that lapin's I/O thread writes them together.
    Pipelined,
    /// Each `basic_publish` awaited (written to the socket) before the
    /// next, as the beat's publish loop does.
    OneByOne,
}

fn publish_options() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

async fn send_pipelined(
    channel: &Channel,
    queue: &str,
    batch: &[Taken],
) -> anyhow::Result<Vec<PublisherConfirm>> {
    // Tasks of a current-thread runtime start in the order spawned, and
    // each queues its frames (and takes its delivery tag) on its first
    // poll: the messages go out in order.
    let sends: Vec<_> = batch
        .iter()
        .map(|message| {
            let (channel, queue) = (channel.clone(), queue.to_owned());
            let (body, properties) = (message.body.clone(), message.properties.clone());
            tokio::spawn(async move {
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        publish_options(),
                        &body,
                        properties,
                    )
                    .await
            })
        })
        .collect();
    let mut confirms = Vec::with_capacity(sends.len());
    for send in sends {
        confirms.push(send.await??);
    }
    Ok(confirms)
}

async fn send_one_by_one(
    channel: &Channel,
    queue: &str,
    batch: &[Taken],
) -> anyhow::Result<Vec<PublisherConfirm>> {
    let mut confirms = Vec::with_capacity(batch.len());
    for message in batch {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                publish_options(),
                &message.body,
                message.properties.clone(),
            )
            .await?;
        confirms.push(confirm);
    }
    Ok(confirms)
}

/// Waits until RabbitMQ has confirmed every message of a batch.
async fn confirmed(queue: &str, confirms: Vec<PublisherConfirm>) -> anyhow::Result<()> {
    for confirm in confirms {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => bail!("a message to {queue} was returned unrouted"),
            Confirmation::Nack(_) => bail!("RabbitMQ refused (nack) a message to {queue}"),
            Confirmation::NotRequested => bail!("publisher confirms are off"),
        }
    }
    Ok(())
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = self.runtime.block_on(connection.close(200, "done".into()));
        }
    }
}

/// Starts a thread that consumes `queue` as it fills (no ack), counting
/// deliveries by task id, until `stop` is set and the queue is empty; its
/// CPU time is its own and its connection's I/O thread's. Returns once the
/// consumer is in place.
pub(crate) fn drain(url: &str, queue: &str, stop: Arc<AtomicBool>) -> anyhow::Result<Drain> {
    let (uri, queue) = (parse(url)?, queue.to_owned());
    let (ready, consuming) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::spawn(move || -> anyhow::Result<Drained> {
        let cpu0 = cpu_time("/proc/thread-self/stat");
        let threads_before = io_threads();
        let runtime = runtime()?;
        let started = runtime.block_on(async {
            let (connection, channel) = open(uri).await?;
            let (tag, deliveries) = consume(&channel, &queue).await?;
            anyhow::Ok((connection, channel, tag, deliveries))
        });
        let (connection, channel, tag, mut deliveries) = match started {
            Ok(started) => {
                let _ = ready.send(Ok(()));
                started
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                bail!("the drain did not start");
            }
        };
        // The I/O thread lapin started for this connection (the beat's own
        // connections start later, once the drain is ready).
        let io: Vec<String> = io_threads().difference(&threads_before).cloned().collect();
        let io_cpu0 = io_cpu(&io);
        let mut seen: HashMap<String, usize> = HashMap::new();
        runtime.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_millis(20), deliveries.recv()).await {
                    Ok(Some(delivery)) => {
                        let id = task_id(&delivery.properties).unwrap_or_else(|| "?".into());
                        *seen.entry(id).or_default() += 1;
                    }
                    Ok(None) => bail!("the consumer of {queue} was cancelled"),
                    Err(_) if stop.load(Ordering::SeqCst) => {
                        let passive = QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        };
                        let left = channel
                            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                            .await?;
                        if left.message_count() == 0 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await?;
            anyhow::Ok(())
        })?;
        let cpu = cpu_time("/proc/thread-self/stat").saturating_sub(cpu0)
            + io_cpu(&io).saturating_sub(io_cpu0);
        let _ = runtime.block_on(connection.close(200, "done".into()));
        Ok((seen, cpu))
    });
    match consuming.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = thread.join();
            bail!("the drain thread ended before it consumed")
        }
    }
}

/// Consumes `queue` without acks; each delivery comes out of the channel
/// returned with the consumer's tag.
async fn consume(
    channel: &Channel,
    queue: &str,
) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Delivery>)> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume queue {queue}"))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let sender = sender.clone();
        async move {
            if let Ok(Some(delivery)) = delivery {
                let _ = sender.send(delivery);
            }
        }
    });
    Ok((consumer.tag().to_string(), receiver))
}

/// Declares what kombu declares for a queue (see `Rabbit::reset`).
async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    channel
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
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A connection and a channel on it.
async fn open(uri: AMQPUri) -> anyhow::Result<(Connection, Channel)> {
    let place = format!(
        "RabbitMQ at {}:{}, virtual host {:?}",
        uri.authority.host, uri.authority.port, uri.vhost
    );
    let connection = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {place}"))?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// `url` as lapin reads it, but for the host: lapin's parser takes only a
/// domain name, and reads an IP address as `localhost`.
fn parse(url: &str) -> anyhow::Result<AMQPUri> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--amqp-url: {e}"))?;
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if !host.is_empty() {
        uri.authority.host = host.to_owned();
    }
    Ok(uri)
}

/// Creates `uri`'s virtual host, with every permission for its user, if
/// RabbitMQ on this machine does not have it.
fn create_vhost(uri: &AMQPUri) -> anyhow::Result<()> {
    let vhost = uri.vhost.as_str();
    let by_hand = format!(
        "create it: rabbitmqctl add_vhost {vhost} && rabbitmqctl set_permissions -p {vhost} {} '.*' '.*' '.*'",
        uri.authority.userinfo.username
    );
    if !["127.0.0.1", "localhost", "::1"].contains(&uri.authority.host.as_str()) {
        bail!("RabbitMQ is not on this machine; if the virtual host is missing, {by_hand}");
    }
    let listed = rabbitmqctl(&["list_vhosts", "--quiet", "name"]).context(by_hand.clone())?;
    if listed.lines().any(|l| l.trim() == vhost) {
        bail!("(the virtual host {vhost:?} exists: not the cause)");
    }
    rabbitmqctl(&["add_vhost", vhost]).context(by_hand.clone())?;
    let user = uri.authority.userinfo.username.as_str();
    rabbitmqctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]).context(by_hand)?;
    eprintln!("bench: created the RabbitMQ virtual host {vhost:?} for {user}");
    Ok(())
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("run rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This process's lapin I/O threads, by thread id.
fn io_threads() -> HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim() == "lapin-io-loop")
                .then(|| path.file_name()?.to_str().map(str::to_owned))?
        })
        .collect()
}

/// CPU time so far of the threads `tids` of this process.
fn io_cpu(tids: &[String]) -> Duration {
    tids.iter()
        .map(|tid| cpu_time(&format!("/proc/self/task/{tid}/stat")))
        .sum()
}
