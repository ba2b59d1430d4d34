//! HTTP/1.1 on one connection, as the listener speaks it: the request
//! head read by its deadline and within its bounds, the body read only
//! when asked for and within the size allowed, and the answer written,
//! each closing its connection. Anything else a client sends (other
//! methods, chunked bodies, odd or duplicate lengths, a head that is not
//! text) is answered with the status that says so.

use super::Reply;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How long a client has to send its request line and headers.
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client has to send the body, after the head.
pub(super) const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;
/// After answering without reading a body the client sent, how long (and
/// how many bytes) the rest is read and dropped, so that closing the
/// connection does not reset it before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 1024 * 1024;

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

/// Why no head was read.
pub(super) enum Failed {
    /// The client closed the connection (or it broke): nothing to answer.
    Closed,
    /// An answer to the client (400, 408, 431, 501, 505).
    Answer(Reply),
}

/// Reads the request head by `deadline`. Returns it, and any bytes read
/// past it (the start of the body).
pub(super) fn read_head(
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
pub(super) fn read_body(
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

pub(super) fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) {
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
pub(super) fn linger(stream: &mut TcpStream, unread: u64) {
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
}
