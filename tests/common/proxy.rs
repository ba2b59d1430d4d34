//! A TCP proxy the test owns, to cut and restore a service (a database,
//! Redis) or slow it down without touching the service itself.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    upstream: String,
    state: Arc<Mutex<State>>,
    /// The delay added to each read passed on, either way (microseconds).
    delay: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    open: bool,
    streams: Vec<TcpStream>,
}

impl Proxy {
    /// A proxy on a free local port to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            open: true,
            streams: Vec::new(),
        }));
        let delay = Arc::new(AtomicU64::new(0));
        {
            let state = Arc::clone(&state);
            let delay = Arc::clone(&delay);
            let upstream = upstream.to_owned();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !state.lock().unwrap().open {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    {
                        let mut st = state.lock().unwrap();
                        st.streams.push(client.try_clone().unwrap());
                        st.streams.push(server.try_clone().unwrap());
                    }
                    for (from, to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let delay = Arc::clone(&delay);
                        std::thread::spawn(move || pass_on(from, to, &delay));
                    }
                }
            });
        }
        Proxy {
            port,
            upstream: upstream.to_owned(),
            state,
            delay,
        }
    }

    /// A proxy to the server `url` names (`scheme://user@host:port/...`).
    pub fn in_front_of(url: &str) -> Proxy {
        Proxy::start(upstream_of(url))
    }

    /// `url` with its server replaced by this proxy: the URL to give the
    /// beat.
    pub fn url(&self, url: &str) -> String {
        through(&self.upstream, self.port, url)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.open = false;
        for stream in st.streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().open = true;
    }

    /// Holds each read for `delay` before passing it on, either way (a
    /// request and its answer each wait): a slow network. Zero ends it.
    pub fn slow_down(&self, delay: Duration) {
        self.delay.store(delay.as_micros() as u64, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, holding each read for the
/// proxy's delay; then shuts `to` down.
fn pass_on(mut from: TcpStream, mut to: TcpStream, delay: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let wait = delay.load(Ordering::SeqCst);
        if wait > 0 {
            // The delay is the point: a slow link.
            std::thread::sleep(Duration::from_micros(wait));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// RabbitMQ under a resource alarm.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Condvar;
use std::time::Instant;

/// AMQP 0-9-1's frame end octet.
const FRAME_END: u8 = 0xCE;
/// A method frame's type.
const METHOD: u8 = 1;
/// (class, method) of the methods the proxy looks for.
const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
const BASIC_PUBLISH: (u16, u16) = (60, 40);
const BASIC_ACK: (u16, u16) = (60, 80);

/// A TCP proxy in front of RabbitMQ that reads the AMQP 0-9-1 frames
/// going each way, so that a test can play a broker under a memory or
/// disk alarm ([`AmqpProxy::block`], [`AmqpProxy::unblock`]) as well as
/// cut it off ([`AmqpProxy::cut`], [`AmqpProxy::restore`]).
///
/// Blocked, it behaves as RabbitMQ does (see its "Blocked Connection
/// Notifications" and "Memory and Disk Alarms" pages): a connection that
/// has published is sent `connection.blocked` at once, between two of the
/// server's frames, and the server stops reading it: what the client
/// sends from then on is held, not forwarded. A connection that has not
/// published (a new one, say) is served until its first `basic.publish`,
/// which is held, and is sent `connection.blocked` then. Unblocked, each
/// connection told is sent `connection.unblocked`, what was held goes on,
/// and it counts as not having published (RabbitMQ's reader resets its
/// `should_block` then).
///
/// It can also hold what the server sends ([`AmqpProxy::hold_answers`]):
/// a client then publishes, RabbitMQ takes and confirms the messages,
/// and the client waits for confirms that do not come, as it would if it
/// were killed between RabbitMQ's confirm and its own next step.
pub struct AmqpProxy {
    pub port: u16,
    upstream: String,
    shared: Arc<Shared>,
}

/// What the proxy's threads share.
struct Shared {
    state: Mutex<AmqpState>,
    /// Signalled when held bytes may go on (unblocked, or cut).
    changed: Condvar,
}

#[derive(Default)]
struct AmqpState {
    open: bool,
    /// The reason given in `connection.blocked`, while blocked.
    blocked: Option<String>,
    connections: HashMap<u64, Link>,
    next_id: u64,
    /// When the last `basic.ack` (a publisher confirm) went through.
    last_confirm: Option<Instant>,
    /// `connection.blocked` frames sent, over the proxy's life.
    blocked_sent: u64,
    /// `basic.publish` frames from clients, over the proxy's life, and
    /// when the last frame of any kind came from a client.
    publishes: u64,
    last_from_client: Option<Instant>,
    /// `publishes` when the last confirm went through.
    publishes_at_confirm: u64,
    /// What the server sends is held, not forwarded (see
    /// [`AmqpProxy::hold_answers`]).
    answers_held: bool,
    /// `basic.publish` frames held because their connection was blocked
    /// (sent by a client that had been told, or on a connection told on
    /// this publish), over the proxy's life.
    held_publishes: u64,
}

/// One client connection through the proxy.
struct Link {
    /// The client's socket, written only with the state locked: whole
    /// frames from the server, or a frame of the proxy's own, never
    /// interleaved.
    client: TcpStream,
    server: TcpStream,
    /// `connection.open-ok` has gone through: the connection may be told
    /// it is blocked.
    opened: bool,
    /// The client has published on it.
    published: bool,
    /// It has been sent `connection.blocked` (and not yet unblocked): what
    /// it sends is held.
    told: bool,
}

/// What clients had published through an [`AmqpProxy`] at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publishes {
    /// `basic.publish` frames, all told.
    pub publishes: u64,
    /// Those sent since the last confirm went through.
    pub since_confirm: u64,
}

/// A method frame on channel 0: `(class, method)` and its arguments.
fn method_frame((class, method): (u16, u16), arguments: &[u8]) -> Vec<u8> {
    let size = (4 + arguments.len()) as u32;
    let mut frame = vec![METHOD, 0, 0];
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&class.to_be_bytes());
    frame.extend_from_slice(&method.to_be_bytes());
    frame.extend_from_slice(arguments);
    frame.push(FRAME_END);
    frame
}

/// `connection.blocked` with its reason (a short string).
fn blocked_frame(reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(255)];
    let mut arguments = vec![reason.len() as u8];
    arguments.extend_from_slice(reason);
    method_frame(CONNECTION_BLOCKED, &arguments)
}

/// The length of the whole frame at the start of `bytes`, once all of it
/// has arrived; `Err` if what arrived is not a frame.
fn frame_length(bytes: &[u8]) -> Result<Option<usize>, String> {
    if bytes.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    let length = 7 + size + 1;
    if bytes.len() < length {
        return Ok(None);
    }
    if bytes[length - 1] != FRAME_END {
        return Err(format!(
            "no frame end after a frame of type {} and size {size}",
            bytes[0]
        ));
    }
    Ok(Some(length))
}

/// The `(class, method)` of a method frame.
fn method_of(frame: &[u8]) -> Option<(u16, u16)> {
    (frame[0] == METHOD && frame.len() >= 12).then(|| {
        (
            u16::from_be_bytes([frame[7], frame[8]]),
            u16::from_be_bytes([frame[9], frame[10]]),
        )
    })
}

impl AmqpProxy {
    /// A proxy on a free local port to RabbitMQ at `upstream` (`host:port`).
    pub fn start(upstream: &str) -> AmqpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the AMQP proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(AmqpState {
                open: true,
                ..AmqpState::default()
            }),
            changed: Condvar::new(),
        });
        {
            let shared = Arc::clone(&shared);
            let upstream = upstream.to_owned();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !shared.lock().open {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone())
                    else {
                        continue;
                    };
                    let id = {
                        let mut st = shared.lock();
                        let id = st.next_id;
                        st.next_id += 1;
                        st.connections.insert(
                            id,
                            Link {
                                client: client_w,
                                server: server_w,
                                opened: false,
                                published: false,
                                told: false,
                            },
                        );
                        id
                    };
                    let Ok(to_server) = server.try_clone() else {
                        shared.close(id, "server", Ok(()));
                        continue;
                    };
                    let (one, other) = (Arc::clone(&shared), Arc::clone(&shared));
                    std::thread::spawn(move || {
                        let end = one.forward_from_server(id, server);
                        one.close(id, "server", end);
                    });
                    std::thread::spawn(move || {
                        let end = other.forward_from_client(id, client, to_server);
                        other.close(id, "client", end);
                    });
                }
            });
        }
        AmqpProxy {
            port,
            upstream: upstream.to_owned(),
            shared,
        }
    }

    /// A proxy to the server `url` names (`amqp://user:password@host:port/vhost`).
    pub fn in_front_of(url: &str) -> AmqpProxy {
        AmqpProxy::start(upstream_of(url))
    }

    /// `url` with its server replaced by this proxy: the URL to give the
    /// beat.
    pub fn url(&self, url: &str) -> String {
        through(&self.upstream, self.port, url)
    }

    /// Plays a resource alarm: every connection that has published is
    /// sent `connection.blocked` with `reason` and no longer read; any
    /// other is, once it publishes. Returns how many were told at once.
    pub fn block(&self, reason: &str) -> usize {
        let mut st = self.shared.lock();
        assert!(st.blocked.is_none(), "already blocked");
        st.blocked = Some(reason.to_owned());
        let frame = blocked_frame(reason);
        let mut told = 0;
        for link in st.connections.values_mut() {
            if link.opened && link.published && link.client.write_all(&frame).is_ok() {
                link.told = true;
                told += 1;
            }
        }
        st.blocked_sent += told as u64;
        told
    }

    /// Ends the alarm: each connection told is sent `connection.unblocked`
    /// and what it sent meanwhile goes on to the server. Returns how many
    /// were told.
    pub fn unblock(&self) -> usize {
        let mut st = self.shared.lock();
        assert!(st.blocked.take().is_some(), "not blocked");
        let frame = method_frame(CONNECTION_UNBLOCKED, &[]);
        let mut told = 0;
        for link in st.connections.values_mut().filter(|l| l.told) {
            link.told = false;
            link.published = false;
            if link.client.write_all(&frame).is_ok() {
                told += 1;
            }
        }
        self.shared.changed.notify_all();
        told
    }

    /// Holds everything the server sends from its next frame on (until
    /// [`AmqpProxy::release_answers`]): RabbitMQ has what the clients
    /// publish, and confirms it, but the clients do not hear of it. A
    /// client killed now has had its messages taken and not confirmed to
    /// it. Returns what the clients had published at that moment.
    pub fn hold_answers(&self) -> Publishes {
        let mut st = self.shared.lock();
        st.answers_held = true;
        Publishes {
            publishes: st.publishes,
            since_confirm: st.publishes - st.publishes_at_confirm,
        }
    }

    /// Forwards what the server sent again, starting with what was held.
    pub fn release_answers(&self) {
        self.shared.lock().answers_held = false;
        self.shared.changed.notify_all();
    }

    /// `basic.publish` frames clients have sent so far.
    pub fn publishes(&self) -> u64 {
        self.shared.lock().publishes
    }

    /// How long ago a client last sent a frame (`None`: none yet).
    pub fn since_client_sent(&self) -> Option<std::time::Duration> {
        self.shared.lock().last_from_client.map(|at| at.elapsed())
    }

    /// How long ago the last publisher confirm went through (`None`: none
    /// yet).
    pub fn since_last_confirm(&self) -> Option<std::time::Duration> {
        self.shared.lock().last_confirm.map(|at| at.elapsed())
    }

    /// `connection.blocked` frames sent so far.
    pub fn blocked_sent(&self) -> u64 {
        self.shared.lock().blocked_sent
    }

    /// `basic.publish` frames held so far because their connection was
    /// blocked: publishes a client sent on a connection it did not know
    /// to be blocked (one that had not published when the alarm began is
    /// told only then), or sent although it had been told.
    pub fn held_publishes(&self) -> u64 {
        self.shared.lock().held_publishes
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.shared.lock();
        st.open = false;
        for (_, link) in st.connections.drain() {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.server.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.lock().open = true;
    }
}

impl Drop for AmqpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, AmqpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends connection `id` (both sockets), if still there; a framing
    /// error is reported.
    fn close(&self, id: u64, side: &str, end: Result<(), String>) {
        if let Err(e) = end {
            super::report(&format!(
                "AMQP proxy, connection {id}, from the {side}: {e}"
            ));
        }
        if let Some(link) = self.lock().connections.remove(&id) {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.server.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    /// Server to client: whole frames, each written with the state locked,
    /// so that a frame of the proxy's own goes between two of them. A
    /// closed socket ends it; only bytes that are not frames are an
    /// error.
    fn forward_from_server(&self, id: u64, mut server: TcpStream) -> Result<(), String> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = server.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            let mut st = self.lock();
            while let Some(length) = frame_length(&buffer[start..])? {
                while st.answers_held && st.connections.contains_key(&id) {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                let frame = &buffer[start..start + length];
                start += length;
                let state = &mut *st;
                let Some(link) = state.connections.get_mut(&id) else {
                    return Ok(());
                };
                if link.client.write_all(frame).is_err() {
                    return Ok(());
                }
                match method_of(frame) {
                    Some(CONNECTION_OPEN_OK) => link.opened = true,
                    Some(BASIC_ACK) => {
                        state.last_confirm = Some(Instant::now());
                        state.publishes_at_confirm = state.publishes;
                    }
                    _ => {}
                }
            }
            drop(st);
            buffer.drain(..start);
        }
    }

    /// Client to server: the protocol header, then whole frames, each held
    /// while the connection is blocked (see [`AmqpProxy`]).
    fn forward_from_client(
        &self,
        id: u64,
        mut client: TcpStream,
        mut server: TcpStream,
    ) -> Result<(), String> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let mut header = 8; // "AMQP" 0 0 9 1
        loop {
            // A blocked connection is not read, as RabbitMQ does not read it.
            if !self.wait_while_told(id) {
                return Ok(());
            }
            let n = client.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            if header > 0 {
                let take = header.min(buffer.len());
                if server.write_all(&buffer[..take]).is_err() {
                    return Ok(());
                }
                header -= take;
                start = take;
            }
            while let Some(length) = frame_length(&buffer[start..])? {
                let publishes = method_of(&buffer[start..start + length]) == Some(BASIC_PUBLISH);
                self.sent(id, publishes);
                if !self.wait_while_told(id) {
                    return Ok(());
                }
                if server.write_all(&buffer[start..start + length]).is_err() {
                    return Ok(());
                }
                start += length;
            }
            buffer.drain(..start);
        }
    }

    /// Connection `id`'s client sent a frame; if a publish, one while
    /// blocked blocks the connection.
    fn sent(&self, id: u64, publishes: bool) {
        let mut st = self.lock();
        st.last_from_client = Some(Instant::now());
        if !publishes {
            return;
        }
        st.publishes += 1;
        let frame = st.blocked.as_deref().map(blocked_frame);
        let Some(link) = st.connections.get_mut(&id) else {
            return;
        };
        link.published = true;
        if let (Some(frame), false) = (&frame, link.told) {
            if link.client.write_all(frame).is_ok() {
                link.told = true;
                st.blocked_sent += 1;
            }
        }
        if frame.is_some() {
            st.held_publishes += 1;
        }
    }

    /// Waits while connection `id` is blocked; `false` once it is gone.
    fn wait_while_told(&self, id: u64) -> bool {
        let mut st = self.lock();
        loop {
            match st.connections.get(&id) {
                None => return false,
                Some(link) if !link.told => return true,
                Some(_) => {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// The `host:port` of the server `url` names.
fn upstream_of(url: &str) -> &str {
    super::host_port(url).unwrap_or_else(|| panic!("no host:port in {url}"))
}

/// `url` with its server (`upstream`) replaced by a proxy on `port`.
fn through(upstream: &str, port: u16, url: &str) -> String {
    assert!(url.contains(upstream), "{url} is not through {upstream}");
    url.replacen(upstream, &format!("127.0.0.1:{port}"), 1)
}
