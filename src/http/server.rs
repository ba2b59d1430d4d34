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
//! of at most [`MAX_HEAD`](super::wire::MAX_HEAD) bytes and a body the
//! handler allowed.

use super::wire::{
    linger, read_body, read_head, write_reply, Failed, Head, Method, BODY_DEADLINE, HEAD_DEADLINE,
};
use super::Reply;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io::Write;
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
/// How long a client has to take the answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
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
/// How long a stop waits for requests being answered.
const STOP_WAIT: Duration = Duration::from_secs(5);

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

#[cfg(test)]
mod tests {
    use super::*;

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
