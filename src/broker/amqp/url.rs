//! Broker URLs for RabbitMQ, read as kombu reads them: `amqp://`,
//! `pyamqp://` (the same transport under Celery's other name) and
//! `amqps://` (TLS), with kombu's defaults for whatever is left out.

use super::super::BrokerError;
use crate::config::redact_url;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use std::time::Duration;

/// kombu's connect timeout when the URL gives none (Celery's
/// `broker_connection_timeout`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// The largest frame asked for. lapin keeps buffers of 32 frames each way
/// per connection: at RabbitMQ's default of 128 KiB that is 8 MiB a
/// connection, which a beat's short messages never use; a longer body
/// goes in more frames.
const FRAME_MAX: u32 = 32 * 1024;

/// Whether `url` names RabbitMQ (any scheme this module reads).
pub(crate) fn is_amqp(url: &str) -> bool {
    scheme_of(url).is_some()
}

fn scheme_of(url: &str) -> Option<(AMQPScheme, usize)> {
    let lower = url.get(..10).unwrap_or(url).to_ascii_lowercase();
    [
        ("amqp://", AMQPScheme::AMQP),
        ("pyamqp://", AMQPScheme::AMQP),
        ("amqps://", AMQPScheme::AMQPS),
        ("pyamqps://", AMQPScheme::AMQPS),
    ]
    .into_iter()
    .find(|(prefix, _)| lower.starts_with(prefix))
    .map(|(prefix, scheme)| (scheme, prefix.len()))
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) uri: AMQPUri,
    /// How long connecting may take.
    pub(crate) connect_timeout: Duration,
}

/// Reads `url` as kombu does: user and password default to `guest`, the
/// host to `localhost`, the port to 5672 (5671 for TLS); the virtual host
/// is the path after the first `/`, percent-decoded (`//` and `/%2F` are
/// `/`; none is `/`); `heartbeat` (seconds) and `connect_timeout`
/// (seconds) from the query. Errors show the URL with its password masked.
pub(crate) fn parse(url: &str) -> Result<Target, BrokerError> {
    let bad = |why: &str| BrokerError::Url(format!("{}: {why}", redact_url(url)));
    let (scheme, start) = scheme_of(url).ok_or_else(|| bad("not an amqp:// URL"))?;
    let rest = &url[start..];
    if rest.contains(';') {
        return Err(bad(
            "several brokers in one URL (kombu's failover list) are not supported",
        ));
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (String::new(), String::new()),
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            (
                decode(user).ok_or_else(|| bad("the user name is not valid percent-encoding"))?,
                decode(password)
                    .ok_or_else(|| bad("the password is not valid percent-encoding"))?,
            )
        }
    };
    let (host, port) =
        split_host_port(hostport).ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let default_port = match scheme {
        AMQPScheme::AMQP => 5672,
        AMQPScheme::AMQPS => 5671,
    };
    let vhost = match path.map(decode) {
        Some(None) => return Err(bad("the virtual host is not valid percent-encoding")),
        Some(Some(v)) if !v.is_empty() => v,
        _ => "/".to_owned(),
    };
    let mut query_string = AMQPQueryString::default();
    let mut connect_timeout = CONNECT_TIMEOUT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let seconds = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| bad(&format!("{key}={value:?} is not a number of seconds")))
        };
        match key {
            "heartbeat" => {
                // AMQP negotiates whole seconds; kombu rounds the same way.
                let s = seconds()?;
                query_string.heartbeat = Some(s.round().min(f64::from(u16::MAX)) as u16);
            }
            "connect_timeout" => {
                let s = seconds()?;
                if s == 0.0 {
                    return Err(bad("connect_timeout must be more than 0"));
                }
                connect_timeout = Duration::from_secs_f64(s.min(3600.0));
            }
            // kombu hands other options to the transport (ssl options,
            // login_method, ...): none changes how a message is published.
            _ => {}
        }
    }
    query_string.connection_timeout = Some(connect_timeout.as_millis() as u64);
    query_string.frame_max = Some(FRAME_MAX);
    Ok(Target {
        uri: AMQPUri {
            scheme,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: if username.is_empty() {
                        "guest".into()
                    } else {
                        username
                    },
                    password: if password.is_empty() {
                        "guest".into()
                    } else {
                        password
                    },
                },
                host: if host.is_empty() {
                    "localhost".into()
                } else {
                    host
                },
                port: port.unwrap_or(default_port),
            },
            vhost,
            query: query_string,
        },
        connect_timeout,
    })
}

/// `host[:port]`, with `[v6]` brackets: the host (brackets removed) and the
/// port if one is given; `None` for a port that is not 1..=65535.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let end = v6.find(']')?;
        let after = &v6[end + 1..];
        (&v6[..end], after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
    };
    Some((decode(host)?, port))
}

/// Percent-decoding as Python's `unquote` does, but refusing what is not
/// UTF-8 once decoded.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> (String, String, String, u16, String, AMQPScheme) {
        let t = parse(url).unwrap();
        let a = t.uri.authority;
        (
            a.userinfo.username,
            a.userinfo.password,
            a.host,
            a.port,
            t.uri.vhost,
            t.uri.scheme,
        )
    }

    #[test]
    fn kombus_defaults_fill_what_the_url_leaves_out() {
        let guest = || ("guest".to_owned(), "guest".to_owned());
        let (u, p, h, port, v, s) = target("amqp://");
        assert_eq!((u, p), guest());
        assert_eq!(
            (h.as_str(), port, v.as_str(), s),
            ("localhost", 5672, "/", AMQPScheme::AMQP)
        );
        let (_, _, h, port, v, s) = target("amqps://rabbit.example");
        assert_eq!(
            (h.as_str(), port, v.as_str(), s),
            ("rabbit.example", 5671, "/", AMQPScheme::AMQPS)
        );
        let (_, _, _, port, _, s) = target("pyamqp://h:5673");
        assert_eq!((port, s), (5673, AMQPScheme::AMQP));
    }

    #[test]
    fn the_virtual_host_is_the_path_percent_decoded() {
        for (url, vhost) in [
            ("amqp://h//", "/"),
            ("amqp://h/%2F", "/"),
            ("amqp://h/%2f", "/"),
            ("amqp://h/", "/"),
            ("amqp://h", "/"),
            ("amqp://h/prod", "prod"),
            ("amqp://h/team%2Fprod", "team/prod"),
            ("amqp://h/a%20b?heartbeat=10", "a b"),
        ] {
            assert_eq!(target(url).4, vhost, "{url}");
        }
    }

    #[test]
    fn user_and_password_are_percent_decoded() {
        let (u, p, h, port, _, _) = target("amqp://us%40er:p%3Ass%2Fw@rabbit:5672//");
        assert_eq!(
            (u.as_str(), p.as_str(), h.as_str(), port),
            ("us@er", "p:ss/w", "rabbit", 5672)
        );
        // A password may hold '@' unescaped: the authority ends at the last.
        let (u, p, h, _, _, _) = target("amqp://u:p@ss@rabbit//");
        assert_eq!(
            (u.as_str(), p.as_str(), h.as_str()),
            ("u", "p@ss", "rabbit")
        );
        let (_, _, h, port, _, _) = target("amqp://u:p@[::1]:5700//");
        assert_eq!((h.as_str(), port), ("::1", 5700));
    }

    #[test]
    fn heartbeat_and_connect_timeout_come_from_the_query() {
        let t = parse("amqp://h//?heartbeat=30&connect_timeout=2.5&ssl=1").unwrap();
        assert_eq!(t.uri.query.heartbeat, Some(30));
        assert_eq!(t.connect_timeout, Duration::from_millis(2500));
        assert_eq!(t.uri.query.connection_timeout, Some(2500));
        let t = parse("amqp://h//").unwrap();
        assert_eq!(
            (t.uri.query.heartbeat, t.connect_timeout),
            (None, CONNECT_TIMEOUT)
        );
    }

    #[test]
    fn bad_urls_are_errors_that_never_show_the_password() {
        for (url, why) in [
            ("amqp://u:hunter2@h:99999//", "the port"),
            ("amqp://u:hunter2@h:x//", "the port"),
            ("amqp://u:hunter2@h//?heartbeat=soon", "heartbeat=\"soon\""),
            ("amqp://u:hunter2@h//?connect_timeout=0", "connect_timeout"),
            ("amqp://u:hunter2@h1;amqp://u:hunter2@h2", "several brokers"),
            ("redis://u:hunter2@h/0", "not an amqp:// URL"),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(
                e.contains(why) && !e.contains("hunter2") && e.contains("u:***@"),
                "{url}: {e}"
            );
        }
        assert!(is_amqp("AMQP://h") && is_amqp("pyamqp://h") && is_amqp("amqps://h"));
        assert!(!is_amqp("redis://h") && !is_amqp("amqpx://h"));
    }
}
