//! The HTTP listener (`http_addr`): `/metrics` for Prometheus, `/healthz`
//! and `/readyz` for orchestrators, and the operators' dashboard.
//!
//! Our own small server (`server`, speaking the HTTP/1.1 of `wire`), on
//! threads of its own: a request never runs on, or waits for, the
//! scheduler thread, and nothing a client does (slow requests, floods,
//! slow pages) starves the probes (see `server` for the bounds). It reads
//! the beat's [`Monitor`] (counts, health) and acts through [`Operator`],
//! the library the `beat` command line uses, so that every check and every
//! error text is the command line's and the beat's.
//!
//! Access: `/metrics`, `/healthz` and `/readyz` are open. With an operator
//! configured (`http_token`, `http_tokens`, `http_tokens_file`), every
//! page needs an operator, by a bearer header or a login session (an
//! HttpOnly, SameSite=Strict cookie), unless `http_public_read` opens the
//! pages for reading; every change is a POST by an operator, and from a
//! session it needs the form's anti-forgery token. Without an operator the
//! dashboard is read-only and open. Every value shown is escaped by the
//! templates; database and broker URLs are shown with their passwords
//! masked, and tokens never.

mod auth;
mod pages;
mod prometheus;
mod server;
mod throttle;
mod wire;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Monitor;
use crate::ops::Operator;
use auth::{Auth, Caller};
use server::{Next, On, Server, ServerStats};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use wire::{Head, Method};

/// The largest request body read (an edit form).
const MAX_BODY: u64 = 256 * 1024;
/// The largest login or logout form (a token, a form token).
const MAX_LOGIN_BODY: u64 = 4 * 1024;

/// The listener, running. Dropping it stops it.
pub struct HttpServer {
    server: Server<App>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.server.addr())
            .finish()
    }
}

/// What the handlers share.
struct App {
    monitor: Monitor,
    operator: Arc<Operator>,
    auth: Auth,
    prometheus: prometheus::Exporter,
}

impl HttpServer {
    /// Listens on `addr` (port 0: any free port, see [`Self::addr`]) for
    /// the beat `monitor` watches, acting on the database of `config`
    /// (the operators, `http_token`, `http_tokens`, `http_tokens_file`
    /// and `http_public_read`, from there too).
    pub fn start(addr: SocketAddr, monitor: Monitor, config: Config) -> Result<Self, Error> {
        let auth = Auth::from_config(&config)?;
        let operator = Arc::new(Operator::connect(config)?);
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::Http {
            addr,
            reason: e.to_string(),
        })?;
        let stats = Arc::new(ServerStats::default());
        let app = App {
            prometheus: prometheus::Exporter::new(
                monitor.clone(),
                Arc::clone(&operator),
                Arc::clone(&stats),
            ),
            monitor,
            operator,
            auth,
        };
        let access = match (
            app.auth.operator_count(),
            app.auth.may_read(&Caller::Anonymous),
        ) {
            (0, _) => "read-only and open: no operator token".to_owned(),
            (n, true) => format!("{n} operator(s); pages open for reading (http_public_read)"),
            (n, false) => format!("{n} operator(s); every page needs a login"),
        };
        let server = Server::start(listener, app, stats).map_err(|e| Error::Http {
            addr,
            reason: e.to_string(),
        })?;
        log::info!(
            "http: listening on http://{} (/metrics, /healthz, /readyz, dashboard at /; {access})",
            server.addr()
        );
        Ok(HttpServer { server })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops listening; requests being answered finish first (for up to
    /// 5 s).
    pub fn stop(mut self) {
        self.server.stop();
    }
}

/// A request, as the pages see it.
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

/// The dashboard's pages (GET) and its changes (POST).
const PAGES: [&str; 3] = ["/", "/routine", "/beats"];
const CHANGES: [&str; 5] = [
    "/routine/enable",
    "/routine/disable",
    "/routine/run",
    "/routine/backfill",
    "/routine/edit",
];

impl server::Handler for App {
    type Seen = Caller;

    /// Probes and scrapes are answered here at once, refusals too; a login
    /// is read and answered on the connection's thread; pages and changes
    /// on a page thread, once their caller may see or change them (an
    /// anonymous caller's body is never read).
    fn look(&self, head: &Head) -> Next<Caller> {
        let get = matches!(head.method, Method::Get | Method::Head);
        let post = head.method == Method::Post;
        let path = head.path.as_str();
        match path {
            "/metrics" if get => {
                return Next::Answer(self.prometheus.scrape(head.header("Accept")))
            }
            "/healthz" if get => return Next::Answer(health(&self.monitor, false)),
            "/readyz" if get => return Next::Answer(health(&self.monitor, true)),
            "/metrics" | "/healthz" | "/readyz" => return Next::Answer(not_allowed("GET, HEAD")),
            _ => {}
        }
        let caller = self.auth.caller(
            head.header("Authorization"),
            head.header("Cookie"),
            head.peer,
        );
        let read = |limit: u64, on: On, caller: Caller| Next::Read {
            limit,
            on,
            seen: caller,
        };
        match path {
            "/login" if get => read(0, On::Connection, caller),
            "/login" | "/logout" if post => read(MAX_LOGIN_BODY, On::Connection, caller),
            _ if PAGES.contains(&path) && get => match self.auth.may_read(&caller) {
                true => read(0, On::Page, caller),
                false => Next::Answer(self.anonymous(head, &caller)),
            },
            _ if CHANGES.contains(&path) && post => match caller.operator() {
                Some(_) => read(MAX_BODY, On::Page, caller),
                None if !self.auth.has_operators() => Next::Answer(Reply::text(
                    403,
                    "forbidden: this dashboard is read-only (no http_token or http_tokens is configured)\n",
                )),
                None => Next::Answer(auth::refusal(&caller)),
            },
            _ if PAGES.contains(&path) => Next::Answer(not_allowed("GET, HEAD")),
            _ if CHANGES.contains(&path) || path == "/logout" => Next::Answer(not_allowed("POST")),
            "/login" => Next::Answer(not_allowed("GET, HEAD, POST")),
            _ => Next::Answer(Reply::text(404, "not found\n")),
        }
    }

    fn answer(&self, head: &Head, body: &str, caller: Caller) -> Reply {
        let request = Request {
            post: head.method == Method::Post,
            path: head.path.clone(),
            query: decode(&head.query),
            form: decode(body),
            caller,
        };
        let r = &request;
        match (r.post, r.path.as_str()) {
            (false, "/login") => pages::login(self, r, None),
            (true, "/login") => self.login(r, head),
            (true, "/logout") => self.logout(r),
            (false, "/") => pages::routines(self, r),
            (false, "/routine") => pages::routine(self, r),
            (false, "/beats") => pages::beats(self, r),
            (true, _) => match self.auth.allows_change(r) {
                Err(refused) => refused,
                Ok(()) => pages::act(self, r),
            },
            _ => Reply::text(404, "not found\n"),
        }
    }
}

impl App {
    /// A page asked for without an operator's credentials: a browser gets
    /// the login page, anything else 401 (or 429 when throttled); neither
    /// shows any routine.
    fn anonymous(&self, head: &Head, caller: &Caller) -> Reply {
        let browser = head
            .header("Accept")
            .is_some_and(|a| a.contains("text/html"));
        match caller {
            Caller::Anonymous if browser => {
                let r = Request {
                    post: false,
                    path: "/login".into(),
                    query: HashMap::new(),
                    form: HashMap::new(),
                    caller: Caller::Anonymous,
                };
                let mut reply = pages::login(self, &r, Some("Log in to see the routines."));
                reply.status = 401;
                reply
            }
            _ => auth::refusal(caller),
        }
    }

    fn login(&self, r: &Request, head: &Head) -> Reply {
        match self.auth.login(r.field("token").unwrap_or(""), head.peer) {
            Ok((_, cookie)) => Reply::see_other("/".into()).with_header("Set-Cookie", cookie),
            Err(Caller::Throttled(wait)) => {
                let mut reply = pages::login(
                    self,
                    r,
                    Some("Too many wrong tokens from this address: wait a minute and try again."),
                );
                reply.status = 429;
                reply.with_header("Retry-After", wait.as_secs().max(1).to_string())
            }
            Err(_) => pages::login(self, r, Some("wrong token")),
        }
    }

    fn logout(&self, r: &Request) -> Reply {
        if let Caller::Session { id, csrf, .. } = &r.caller {
            if auth::same(csrf.as_bytes(), r.field("csrf").unwrap_or("").as_bytes()) {
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

/// 405 for a path served with other methods: the `Allow` header names
/// them (RFC 9110 wants it).
fn not_allowed(allow: &'static str) -> Reply {
    Reply::text(405, format!("method not allowed: {allow} only\n"))
        .with_header("Allow", allow.into())
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
