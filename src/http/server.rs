//! The listener: connections, their limits and deadlines, and the HTTP/1.1
//! of one request per connection.
//!
//! Nothing a client does may starve the probes:
//!
//! - every connection has a thread of its own (a small stack), so a client
//!   that sends slowly holds only its own thread; connections are bounded
//!   in all ([`MAX_CONNECTIONS`]) and per client address
//!   ([`MAX_PER_CLIENT`]); one over a bound is answered 503 at once and
//!   closed;
//! - the request head must arrive within [`HEAD_DEADLINE`] of the
//!   connection, the body within [`BODY_DEADLINE`] of the head (408
//!   otherwise), and a body is read only when the handler asks for it, up
//!   to the size it allows (413 beyond);
//! - the handler answers cheap requests (probes, `/metrics`, logins) on the
//!   connection's thread at once, and sends pages, which read the database
//!   and may take a second, to a few page threads of their own behind a
//!   bounded queue (503 when it is full): the probes never queue behind
//!   them.
//!
//! Every answer closes its connection (`Connection: close`), which keeps
//! each connection's life one request long and its memory bounded: a head
//! of at most [`MAX_HEAD`] bytes and a body the handler allowed.

use super::Reply;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections open at once, from all clients.
pub(super) const MAX_CONNECTIONS: usize = 512;
/// Connections open at once from one client address (an IPv6 client: its
/// /64).
pub(super) const MAX_PER_CLIENT: usize = 32;
/// How long a client has to send its request line and headers.
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client has to send the body, after the head.
pub(super) const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client has to take the answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;
/// A connection thread's stack: it parses, checks a token and writes a
/// small answer; pages render on the page threads.
const CONNECTION_STACK: usize = 256 * 1024;
/// Threads rendering pages.
pub(super) const PAGE_THREADS: usize = 4;
/// Pages waiting for a page thread; one more is answered 503 at once.
pub(super) const PAGE_QUEUE: usize = 16;
/// The longest a connection waits for its page (the database's own bound
/// on a statement, `scheduler_db_timeout`, is 30 s by default).
const PAGE_WAIT: Duration = Duration::from_secs(35);
/// After answering without reading a body the client sent, how long (and
/// how many bytes) the rest is read and dropped, so that closing the
/// connection does not reset it before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 1024 * 1024;
/// How long a stop waits for requests being answered.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A request's method (the listener serves these three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
    Post,
}

/// A request's line and headers.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) path: String,
    /// The query string, undecoded (without its `?`).
    pub(super) query: String,
    headers: Vec<(String, String)>,
    /// The client's address (from the connection, never from a header).
    pub(super) peer: IpAddr,
    /// The declared body length (0 without one).
    pub(super) content_length: u64,
    expect_continue: bool,
}

impl Head {
    /// The value of the header `name` (the first, if repeated).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where a request whose body has been read is answered.
pub(super) enum On {
    /// On the connection's own thread (cheap: a login).
    Connection,
    /// On a page thread (anything that reads the database).
    Page,
}

/// What the handler makes of a request head.
pub(super) enum Next<S> {
    /// The answer, without reading any body.
    Answer(Reply),
    /// Read the body (at most `limit` bytes: 413 beyond), then answer it
    /// `on` that thread, with what the handler saw in the head.
    Read { limit: u64, on: On, seen: S },
}

/// What answers requests.
pub(super) trait Handler: Send + Sync + 'static {
    /// What the handler found in a head (who the caller is), handed to
    /// [`Handler::answer`].
    type Seen: Send + 'static;
    /// Decides on a head: an answer at once, or read the body first.
    fn look(&self, head: &Head) -> Next<Self::Seen>;
    /// Answers a request whose body (UTF-8) has been read.
    fn answer(&self, head: &Head, body: &str, seen: Self::Seen) -> Reply;
}

/// What the listener counts (for `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections refused: all connections in use.
    pub(crate) refused_full: AtomicU64,
    /// Connections refused: their client had too many open.
    pub(crate) refused_client: AtomicU64,
    /// Requests answered 408: head or body too slow.
    pub(crate) timed_out: AtomicU64,
    /// Pages answered 503: every page thread busy and the queue full.
    pub(crate) pages_busy: AtomicU64,
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64
/// (one host may hold a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Client {
    V4(u32),
    V6(u64),
}

impl Client {
    pub(super) fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(u32::from(v4)),
                None => Client::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<Client, usize>,
}

struct Shared<H: Handler> {
    handler: Arc<H>,
    open: Mutex<Open>,
    closed: Condvar,
    stats: Arc<ServerStats>,
    pages: Sender<Job>,
    stopping: AtomicBool,
    /// When a refusal was last logged (one line per 10 s at most).
    refusal_logged: Mutex<Option<Instant>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The listener, running.
pub(super) struct Server<H: Handler> {
    addr: SocketAddr,
    shared: Arc<Shared<H>>,
    acceptor: Option<JoinHandle<()>>,
}

impl<H: Handler> Server<H> {
    /// Listens on `listener` for `handler`.
    pub(super) fn start(
        listener: TcpListener,
        handler: H,
        stats: Arc<ServerStats>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (pages, jobs) = crossbeam_channel::bounded::<Job>(PAGE_QUEUE);
        for i in 0..PAGE_THREADS {
            let jobs: Receiver<Job> = jobs.clone();
            std::thread::Builder::new()
                .name(format!("beat-http-page-{i}"))
                .spawn(move || {
                    for job in jobs {
                        job();
                    }
                })?;
        }
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            open: Mutex::new(Open::default()),
            closed: Condvar::new(),
            stats,
            pages,
            stopping: AtomicBool::new(false),
            refusal_logged: Mutex::new(None),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("beat-http-accept".into())
            .spawn(move || accept(&listener, &accepting))?;
        Ok(Server {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, and waits (up to [`STOP_WAIT`]) for the requests
    /// being answered.
    pub(super) fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The acceptor is blocked in accept(): a connection wakes it.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
                SocketAddr::V6(_) => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = acceptor.join();
        let deadline = Instant::now() + STOP_WAIT;
        let mut open = self.shared.lock_open();
        while open.total > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = self
                .shared
                .closed
                .wait_timeout(open, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl<H: Handler> Drop for Server<H> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<H: Handler> Shared<H> {
    fn lock_open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a connection from `client`, or says why not.
    fn admit(&self, client: Client) -> Result<(), &'static str> {
        let mut open = self.lock_open();
        if open.total >= MAX_CONNECTIONS {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err("all connections are in use");
        }
        let mine = open.by_client.entry(client).or_insert(0);
        if *mine >= MAX_PER_CLIENT {
            self.stats.refused_client.fetch_add(1, Ordering::Relaxed);
            return Err("its client has too many connections open");
        }
        *mine += 1;
        open.total += 1;
        self.stats.open.store(open.total as u64, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, client: Client) {
        let mut open = self.lock_open();
        if let Some(mine) = open.by_client.get_mut(&client) {
            *mine -= 1;
            if *mine == 0 {
                open.by_client.remove(&client);
            }
        }
        open.total = open.total.saturating_sub(1);
        self.stats.open.store(open.total as u64, Ordering::Relaxed);
        self.closed.notify_all();
    }

    fn log_refusal(&self, peer: IpAddr, why: &str) {
        let mut last = self
            .refusal_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            log::warn!(
                "http: refusing connections (503) while {why} (from {peer} and maybe others; at most one such line per 10 s)"
            );
        }
    }
}

/// A place taken by a connection, given back when its thread ends however
/// it ends.
struct Place<H: Handler> {
    shared: Arc<Shared<H>>,
    client: Client,
}

impl<H: Handler> Drop for Place<H> {
    fn drop(&mut self) {
        self.shared.release(self.client);
    }
}

fn accept<H: Handler>(listener: &TcpListener, shared: &Arc<Shared<H>>) {
    let mut failing = false;
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                failing = false;
                accepted
            }
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                if !failing {
                    log::warn!("http: cannot accept a connection: {e}");
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let client = Client::of(peer.ip());
        if let Err(why) = shared.admit(client) {
            shared.log_refusal(peer.ip(), why);
            refuse(stream);
            continue;
        }
        let place = Place {
            shared: Arc::clone(shared),
            client,
        };
        let spawned = std::thread::Builder::new()
            .name("beat-http-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let shared = Arc::clone(&place.shared);
                serve(&shared, stream, peer.ip());
                drop(place);
            });
        if let Err(e) = spawned {
            // The closure, with its stream and place, is gone with the error.
            log::warn!("http: cannot start a connection's thread: {e}");
        }
    }
}

/// Answers 503 to a connection over a bound, without ever blocking.
fn refuse(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n\
          Content-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\n\r\n\
          too many connections; try again",
    );
    let _ = stream.shutdown(Shutdown::Both);
}

/// One connection: its request, answered.
fn serve<H: Handler>(shared: &Shared<H>, mut stream: TcpStream, peer: IpAddr) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    let (head, early) = match read_head(&mut stream, peer, accepted + HEAD_DEADLINE) {
        Ok(read) => read,
        Err(Failed::Closed) => return,
        Err(Failed::Answer(reply)) => {
            if reply.status == 408 {
                shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            write_reply(&mut stream, &reply, false);
            return;
        }
    };
    let mut unread = head.content_length;
    let reply = match shared.handler.look(&head) {
        Next::Answer(reply) => reply,
        Next::Read { limit, on, seen } => {
            match read_body(
                &mut stream,
                &head,
                early,
                limit,
                Instant::now() + BODY_DEADLINE,
            ) {
                Err(reply) => {
                    if reply.status == 408 {
                        shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    reply
                }
                Ok(body) => {
                    unread = 0;
                    match on {
                        On::Connection => contained(|| shared.handler.answer(&head, &body, seen)),
                        On::Page => page(shared, head.clone(), body, seen),
                    }
                }
            }
        }
    };
    write_reply(&mut stream, &reply, head.method == Method::Head);
    if unread > 0 {
        linger(&mut stream, unread);
    }
}

/// Runs `answer`; a panic (a bug in a page) is a 500, and the thread goes
/// on.
fn contained(answer: impl FnOnce() -> Reply) -> Reply {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(answer)).unwrap_or_else(|_| {
        log::error!("http: a request handler panicked; answered 500");
        Reply::text(500, "internal error\n")
    })
}

/// Answers on a page thread, waiting for it; 503 at once when every page
/// thread is busy and the queue is full.
fn page<H: Handler>(shared: &Shared<H>, head: Head, body: String, seen: H::Seen) -> Reply {
    let (done, answered) = crossbeam_channel::bounded::<Reply>(1);
    let handler = Arc::clone(&shared.handler);
    let job: Job = Box::new(move || {
        let _ = done.send(contained(|| handler.answer(&head, &body, seen)));
    });
    if shared.pages.try_send(job).is_err() {
        shared.stats.pages_busy.fetch_add(1, Ordering::Relaxed);
        return Reply::text(503, "busy: every page thread is answering; try again\n")
            .with_header("Retry-After", "1".into());
    }
    answered.recv_timeout(PAGE_WAIT).unwrap_or_else(|_| {
        Reply::text(503, "the page took too long; try again\n")
            .with_header("Retry-After", "1".into())
    })
}

/// Why no head was read.
enum Failed {
    /// The client closed the connection (or it broke): nothing to answer.
    Closed,
    /// An answer to the client (400, 408, 431, 501, 505).
    Answer(Reply),
}

/// Reads the request head by `deadline`. Returns it, and any bytes read
/// past it (the start of the body).
fn read_head(
    stream: &mut TcpStream,
    peer: IpAddr,
    deadline: Instant,
) -> Result<(Head, Vec<u8>), Failed> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failed::Answer(too_slow("request head", HEAD_DEADLINE)));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(Failed::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if timed_out(&e) => {
                return Err(Failed::Answer(too_slow("request head", HEAD_DEADLINE)))
            }
            Err(_) => return Err(Failed::Closed),
        };
        let from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..n]);
        let end = find(&buffer[from..], b"\r\n\r\n").map(|i| from + i);
        if end.unwrap_or(buffer.len()) > MAX_HEAD {
            return Err(Failed::Answer(Reply::text(
                431,
                format!("the request head is larger than {} KiB\n", MAX_HEAD / 1024),
            )));
        }
        if let Some(end) = end {
            let head = parse_head(&buffer[..end], peer).map_err(Failed::Answer)?;
            return Ok((head, buffer[end + 4..].to_vec()));
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn too_slow(what: &str, bound: Duration) -> Reply {
    Reply::text(
        408,
        format!("the {what} did not arrive within {} s\n", bound.as_secs()),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a request line and headers (without the blank line).
fn parse_head(bytes: &[u8], peer: IpAddr) -> Result<Head, Reply> {
    let bad = |why: &str| Reply::text(400, format!("bad request: {why}\n"));
    let text = std::str::from_utf8(bytes).map_err(|_| bad("the head is not UTF-8 text"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected METHOD TARGET HTTP/1.1"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Reply::text(505, "only HTTP/1.1 and HTTP/1.0 are served\n"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => return Err(Reply::text(501, "only GET, HEAD and POST are served\n")),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("the target must be a path such as /healthz"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(Reply::text(
                431,
                format!("more than {MAX_HEADERS} request headers\n"),
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("a header line without ':'"))?;
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(bad("a header's name is not a token"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut content_length: Option<u64> = None;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reply::text(
                501,
                "request bodies must come with Content-Length, not Transfer-Encoding\n",
            ));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .ok()
                .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("Content-Length is not a number"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(bad("two different Content-Length headers"));
            }
            content_length = Some(n);
        }
    }
    let expect_continue = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue"));
    Ok(Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        peer,
        content_length: content_length.unwrap_or(0),
        expect_continue,
    })
}

/// Reads the body `head` declares (`early`: its first bytes, read with the
/// head), at most `limit` bytes, by `deadline`.
fn read_body(
    stream: &mut TcpStream,
    head: &Head,
    early: Vec<u8>,
    limit: u64,
    deadline: Instant,
) -> Result<String, Reply> {
    let length = head.content_length;
    if length > limit {
        return Err(Reply::text(
            413,
            format!(
                "the request body is larger than {} KiB\n",
                limit.div_ceil(1024)
            ),
        ));
    }
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    if head.expect_continue && early.len() < length {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = early;
    body.truncate(length);
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(too_slow("request body", BODY_DEADLINE));
        }
        let _ = stream.set_read_timeout(Some(left));
        let want = (length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(Reply::text(400, "bad request: the body ended early\n")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(too_slow("request body", BODY_DEADLINE)),
            Err(_) => {
                return Err(Reply::text(
                    400,
                    "bad request: the body could not be read\n",
                ))
            }
        }
    }
    String::from_utf8(body).map_err(|_| Reply::text(400, "the request body is not UTF-8 text\n"))
}

/// Headers every answer carries: nothing is cached, framed, sniffed or
/// scripted.
const SECURITY_HEADERS: &str = "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
    Cache-Control: no-store\r\nReferrer-Policy: same-origin\r\nContent-Security-Policy: \
    default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; \
    form-action 'self'; frame-ancestors 'none'\r\n";

fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{SECURITY_HEADERS}",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        // Values are ours (paths percent-encoded, cookies): never a line
        // break, but a header is the wrong place to find out.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let written = stream
        .write_all(out.as_bytes())
        .and_then(|()| match head_only {
            true => Ok(()),
            false => stream.write_all(reply.body.as_bytes()),
        });
    if let Err(e) = written.and_then(|()| stream.flush()) {
        log::debug!("http: could not answer: {e}");
    }
}

/// Reads and drops up to `unread` bytes the client is still sending (for
/// at most [`LINGER`]), so that the close does not reset the connection
/// before the client has read its answer.
fn linger(stream: &mut TcpStream, unread: u64) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut left = unread.min(LINGER_BYTES);
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, u16> {
        parse_head(text.as_bytes(), IpAddr::from([127, 0, 0, 1])).map_err(|r| r.status)
    }

    #[test]
    fn heads_parse_and_hostile_ones_are_refused() {
        let h = head(
            "POST /login?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue",
        )
        .unwrap();
        assert_eq!(
            (
                h.method,
                h.path.as_str(),
                h.query.as_str(),
                h.content_length
            ),
            (Method::Post, "/login", "x=1", 12)
        );
        assert!(h.expect_continue);
        assert_eq!(h.header("host"), Some("a"));
        for (text, status) in [
            ("GET /", 400),
            ("GET / HTTP/1.1 extra", 400),
            ("GET / HTTP/2.0", 505),
            ("DELETE / HTTP/1.1", 501),
            ("GET http://evil/ HTTP/1.1", 400),
            ("GET /a\u{7f} HTTP/1.1", 400),
            ("GET / HTTP/1.1\r\nno colon here", 400),
            ("GET / HTTP/1.1\r\nBad Name: x", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5", 400),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
                400,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 501),
        ] {
            assert_eq!(head(text).map(|_| 0), Err(status), "{text:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("\r\nX-{i}: y")).collect();
        assert_eq!(head(&format!("GET / HTTP/1.1{many}")).map(|_| 0), Err(431));
        let not_utf8 = parse_head(b"GET /\xff HTTP/1.1", IpAddr::from([127, 0, 0, 1]));
        assert_eq!(not_utf8.map(|_| 0).map_err(|r| r.status), Err(400));
    }

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_its_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(Client::of(a), Client::of(b));
        assert_ne!(Client::of(a), Client::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Client::of(mapped), Client::of("10.0.0.1".parse().unwrap()));
    }
}
