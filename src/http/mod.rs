//! The HTTP listener (`http_addr`): `/metrics` for Prometheus, `/healthz`
//! and `/readyz` for orchestrators, and the operators' dashboard.
//!
//! A small blocking server (`tiny_http`) on threads of its own: a request
//! never runs on, or waits for, the scheduler thread. It reads the beat's
//! [`Monitor`] (counts, health) and acts through [`Operator`], the library
//! the `beat` command line uses, so that every check and every error text
//! is the command line's and the beat's.
//!
//! Security: every state-changing request is a POST that needs the
//! operator token (`http_token`), as a bearer header, or through the login
//! form's session cookie (HttpOnly, SameSite=Strict) with the form's
//! anti-forgery token. Without a token configured the dashboard is
//! read-only. `/metrics`, `/healthz` and `/readyz` need no token. Every
//! value shown is escaped by the templates; database and broker URLs are
//! shown with their passwords masked, and the token never.

mod auth;
mod pages;
mod prometheus;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Monitor;
use crate::ops::Operator;
use auth::{Auth, Caller};
use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Threads answering requests: a slow page (a search of a million rows)
/// leaves the others free for probes and scrapes.
const THREADS: usize = 4;

/// The largest request body read (a form).
const MAX_BODY: u64 = 256 * 1024;

/// The listener, running. Dropping it stops it.
pub struct HttpServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// What the handlers share.
struct App {
    monitor: Monitor,
    operator: Operator,
    auth: Auth,
    prometheus: prometheus::Exporter,
}

impl HttpServer {
    /// Listens on `addr` (port 0: any free port, see [`Self::addr`]) for
    /// the beat `monitor` watches, acting on the database of `config`
    /// (`http_token` from there too).
    pub fn start(addr: SocketAddr, monitor: Monitor, config: Config) -> Result<Self, Error> {
        let token = config.http_token.clone();
        let operator = Operator::connect(config)?;
        let server = tiny_http::Server::http(addr).map_err(|e| Error::Http {
            addr,
            reason: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().ok_or_else(|| Error::Http {
            addr,
            reason: "not an IP address".into(),
        })?;
        let server = Arc::new(server);
        let app = Arc::new(App {
            prometheus: prometheus::Exporter::new(monitor.clone()),
            monitor,
            operator,
            auth: Auth::new(token),
        });
        let mut threads = Vec::with_capacity(THREADS);
        for i in 0..THREADS {
            let server = Arc::clone(&server);
            let app = Arc::clone(&app);
            let thread = std::thread::Builder::new()
                .name(format!("beat-http-{i}"))
                .spawn(move || {
                    for request in server.incoming_requests() {
                        // A bug in one page must not take a thread down.
                        let answered =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                app.answer(request)
                            }));
                        if answered.is_err() {
                            log::error!(
                                "http: a request handler panicked; the request got no answer"
                            );
                        }
                    }
                })
                .map_err(|source| Error::Thread {
                    what: "http",
                    source,
                })?;
            threads.push(thread);
        }
        log::info!(
            "http: listening on http://{addr} (/metrics, /healthz, /readyz, dashboard at /; {})",
            match app.auth.has_token() {
                true => "changes need http_token",
                false => "read-only: no http_token",
            }
        );
        Ok(HttpServer {
            addr,
            server,
            threads,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening; requests being answered finish first.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A request, as the handlers see it.
pub(crate) struct Request {
    pub(crate) post: bool,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) form: HashMap<String, String>,
    pub(crate) caller: Caller,
}

impl Request {
    /// A query (GET) or form (POST) field, trimmed of nothing.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        match self.post {
            true => self.form.get(name),
            false => self.query.get(name),
        }
        .map(String::as_str)
    }
}

/// An answer.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }

    /// 303 to `location` (after a change: reloading does not repeat it).
    pub(crate) fn see_other(location: String) -> Reply {
        Reply {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
            headers: vec![("Location", location)],
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

fn decode(text: &str) -> HashMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

/// `text` encoded for a query string.
pub(crate) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl App {
    fn answer(&self, mut request: tiny_http::Request) {
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_owned())
        };
        let authorization = header("Authorization");
        let accept = header("Accept");
        let cookie = header("Cookie");
        let post = *request.method() == tiny_http::Method::Post;
        let (path, query) = match request.url().split_once('?') {
            Some((path, query)) => (path.to_owned(), decode(query)),
            None => (request.url().to_owned(), HashMap::new()),
        };
        let mut body = String::new();
        let too_large = request.body_length().is_some_and(|n| n as u64 > MAX_BODY);
        let read = match post && !too_large {
            true => request
                .as_reader()
                .take(MAX_BODY + 1)
                .read_to_string(&mut body)
                .is_ok(),
            false => true,
        };
        let reply = if too_large || body.len() as u64 > MAX_BODY {
            Reply::text(413, "the request body is larger than 256 KiB\n")
        } else if !read {
            Reply::text(400, "the request body is not UTF-8 text\n")
        } else {
            let caller = self
                .auth
                .caller(authorization.as_deref(), cookie.as_deref());
            let request = Request {
                post,
                path,
                query,
                form: decode(&body),
                caller,
            };
            self.route(&request, accept.as_deref())
        };
        let mut response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(header_of("Content-Type", reply.content_type))
            .with_header(header_of("X-Content-Type-Options", "nosniff"))
            .with_header(header_of("X-Frame-Options", "DENY"))
            .with_header(header_of("Cache-Control", "no-store"))
            .with_header(header_of(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; form-action 'self'; frame-ancestors 'none'",
            ));
        for (name, value) in &reply.headers {
            response.add_header(header_of(name, value));
        }
        if let Err(e) = request.respond(response) {
            log::debug!("http: could not answer: {e}");
        }
    }

    fn route(&self, r: &Request, accept: Option<&str>) -> Reply {
        match (r.post, r.path.as_str()) {
            (false, "/metrics") => self.prometheus.scrape(&self.operator, accept),
            (false, "/healthz") => health(&self.monitor, false),
            (false, "/readyz") => health(&self.monitor, true),
            (false, "/") => pages::routines(self, r),
            (false, "/routine") => pages::routine(self, r),
            (false, "/beats") => pages::beats(self, r),
            (false, "/login") => pages::login(self, r, None),
            (true, "/login") => self.login(r),
            (true, "/logout") => self.logout(r),
            (true, "/routine/enable" | "/routine/disable" | "/routine/run" | "/routine/edit") => {
                match self.auth.allows_change(r) {
                    Err(refused) => refused,
                    Ok(()) => pages::act(self, r),
                }
            }
            (_, "/metrics" | "/healthz" | "/readyz" | "/" | "/routine" | "/beats") => {
                Reply::text(405, "method not allowed\n")
            }
            _ => Reply::text(404, "not found\n"),
        }
    }

    fn login(&self, r: &Request) -> Reply {
        match self.auth.login(r.field("token").unwrap_or("")) {
            Some(cookie) => Reply::see_other("/".into()).with_header("Set-Cookie", cookie),
            None => {
                // Guessing costs time.
                std::thread::sleep(Duration::from_millis(250));
                pages::login(self, r, Some("wrong token"))
            }
        }
    }

    fn logout(&self, r: &Request) -> Reply {
        if let Caller::Session { id, csrf } = &r.caller {
            if auth::same(csrf, r.field("csrf").unwrap_or("")) {
                self.auth.logout(id);
            } else {
                return Reply::text(
                    403,
                    "forbidden: the form's anti-forgery token is missing or wrong\n",
                );
            }
        }
        Reply::see_other("/".into()).with_header("Set-Cookie", auth::clear_cookie())
    }
}

fn header_of(name: &str, value: &str) -> tiny_http::Header {
    // Names are ours and values are printable ASCII (cookies, our paths
    // percent-encoded): this does not fail.
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| tiny_http::Header::from_bytes("X-Invalid", "1").expect("valid header"))
}

/// `/healthz` (liveness) and `/readyz` (readiness): 200 `ok`, or 503 with
/// the reason in one line.
fn health(monitor: &Monitor, ready: bool) -> Reply {
    let report = monitor.health();
    match (report.reason, ready && !report.ready) {
        (Some(reason), _) => Reply::text(503, format!("{reason}\n")),
        (None, true) => Reply::text(503, "starting: the first pass has not succeeded yet\n"),
        (None, false) => Reply::text(200, "ok\n"),
    }
}
