//! Who is asking, and whether they may change anything: the operator
//! token, as a bearer header or through a login session, and the
//! anti-forgery token of the session's forms.

use super::{Reply, Request};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The session cookie's name.
const COOKIE: &str = "beat_session";
/// How long a login lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1000;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No credentials, or credentials that did not match.
    Anonymous,
    /// A wrong bearer token was sent.
    WrongToken,
    /// The right bearer token: a script, which needs no form token.
    Bearer,
    /// Logged in through the form: changes need the session's form token.
    Session { id: String, csrf: String },
}

struct Session {
    csrf: String,
    created: Instant,
}

pub(crate) struct Auth {
    token: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only, not on where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut differ = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        differ |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    std::hint::black_box(differ) == 0
}

/// A cookie that ends the session in the browser.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl Auth {
    pub(crate) fn new(token: Option<String>) -> Self {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who sent a request with these headers.
    pub(crate) fn caller(&self, authorization: Option<&str>, cookie: Option<&str>) -> Caller {
        let Some(token) = &self.token else {
            return Caller::Anonymous;
        };
        if let Some(value) = authorization {
            return match value.strip_prefix("Bearer ") {
                Some(given) if same(given.trim(), token) => Caller::Bearer,
                _ => Caller::WrongToken,
            };
        }
        let id = cookie.and_then(|c| {
            c.split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| *name == COOKIE)
                .map(|(_, value)| value.to_owned())
        });
        let Some(id) = id else {
            return Caller::Anonymous;
        };
        let mut sessions = self.sessions();
        // Session ids are looked up by hash, which does not compare in
        // constant time; they are 122 random bits, not guessable anyway.
        match sessions.get(&id) {
            Some(s) if s.created.elapsed() < SESSION_LIFETIME => Caller::Session {
                csrf: s.csrf.clone(),
                id,
            },
            Some(_) => {
                sessions.remove(&id);
                Caller::Anonymous
            }
            None => Caller::Anonymous,
        }
    }

    /// Checks `given` against the token; on a match, a new session and the
    /// `Set-Cookie` value that carries it.
    pub(crate) fn login(&self, given: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        if !same(given, token) {
            log::warn!("http: a login with a wrong token was refused");
            return None;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let csrf = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf,
                created: Instant::now(),
            },
        );
        log::info!("http: an operator logged in");
        Some(format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        ))
    }

    pub(crate) fn logout(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Whether `r` may change something: 403 when read-only or the form
    /// token is wrong, 401 without (right) credentials.
    pub(crate) fn allows_change(&self, r: &Request) -> Result<(), Reply> {
        if self.token.is_none() {
            return Err(Reply::text(
                403,
                "forbidden: this dashboard is read-only (no http_token is configured)\n",
            ));
        }
        match &r.caller {
            Caller::Bearer => Ok(()),
            Caller::Session { csrf, .. } if same(csrf, r.field("csrf").unwrap_or("")) => Ok(()),
            Caller::Session { .. } => Err(Reply::text(
                403,
                "forbidden: the form's anti-forgery token is missing or wrong; reload the page\n",
            )),
            Caller::WrongToken => Err(Reply::text(401, "unauthorized: wrong token\n")
                .with_header("WWW-Authenticate", "Bearer".into())),
            Caller::Anonymous => Err(Reply::text(
                401,
                "unauthorized: log in at /login, or send the token as a bearer header\n",
            )
            .with_header("WWW-Authenticate", "Bearer".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(same("", ""));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("ab", "abc"));
        assert!(!same("", "a"));
    }

    #[test]
    fn a_session_comes_from_the_right_token_only() {
        let auth = Auth::new(Some("0123456789abcdef".into()));
        assert_eq!(auth.login("0123456789abcdeF"), None);
        let cookie = auth.login("0123456789abcdef").expect("logged in");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let pair = cookie.split(';').next().unwrap_or_default().to_owned();
        assert!(matches!(
            auth.caller(None, Some(&format!("other=1; {pair}"))),
            Caller::Session { .. }
        ));
        assert_eq!(
            auth.caller(None, Some("beat_session=forged")),
            Caller::Anonymous
        );
        assert_eq!(
            auth.caller(Some("Bearer 0123456789abcdef"), None),
            Caller::Bearer
        );
        assert_eq!(auth.caller(Some("Bearer nope"), None), Caller::WrongToken);
        let readonly = Auth::new(None);
        assert_eq!(readonly.login(""), None);
        assert_eq!(readonly.caller(Some("Bearer x"), None), Caller::Anonymous);
    }
}
