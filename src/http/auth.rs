//! Who is asking, and what they may do: the operators and their tokens
//! (`http_token`, `http_tokens`, `http_tokens_file`), as a bearer header
//! or through a login session, the anti-forgery token of a session's
//! forms, and the throttle on wrong tokens.
//!
//! Tokens are kept as their SHA-256 only, and a token given is hashed once
//! and compared with every operator's hash in constant time, so that
//! neither which operator matched nor where a guess differs shows in the
//! time taken. Each guess is charged to its client address first (see
//! `throttle`).

use super::throttle::{self, Throttle};
use super::{Reply, Request};
use crate::config::{read_tokens_file, Config, ConfigError, OperatorToken, TokenSecret};
use crate::store::{Actor, Via};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The session cookie's name.
const COOKIE: &str = "beat_session";
/// How long a login lasts.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
pub(super) const MAX_SESSIONS: usize = 1000;
/// The name the audit trail gives whoever holds the shared `http_token`.
pub(super) const SHARED_TOKEN_NAME: &str = "http_token";

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No credentials.
    Anonymous,
    /// A wrong bearer token (counted against its address).
    WrongToken,
    /// Its address gave too many wrong tokens: try again after this.
    Throttled(Duration),
    /// A right bearer token: a script, which needs no form token.
    Bearer { operator: String },
    /// Logged in through the form: changes need the session's form token.
    Session {
        id: String,
        csrf: String,
        operator: String,
    },
}

impl Caller {
    /// The operator, if the caller proved to be one.
    pub(crate) fn operator(&self) -> Option<&str> {
        match self {
            Caller::Bearer { operator } | Caller::Session { operator, .. } => Some(operator),
            _ => None,
        }
    }

    /// Who the audit trail names for this caller's changes.
    pub(crate) fn actor(&self) -> Option<Actor> {
        self.operator().map(|name| Actor::new(name, Via::Dashboard))
    }
}

struct Session {
    csrf: String,
    operator: String,
    created: Instant,
}

pub(crate) struct Auth {
    /// Each operator's name and token's SHA-256.
    operators: Vec<(String, [u8; 32])>,
    public_read: bool,
    sessions: Mutex<HashMap<String, Session>>,
    throttle: Throttle,
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only, not on where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let mut differ = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        differ |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    std::hint::black_box(differ) == 0
}

/// A token's SHA-256.
pub(crate) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A cookie that ends the session in the browser.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl Auth {
    /// The operators `config` names (`http_token`, `http_tokens`, and the
    /// file `http_tokens_file`, read now).
    pub(crate) fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut named: Vec<OperatorToken> = config.http_tokens.clone();
        if let Some(path) = &config.http_tokens_file {
            named.extend(read_tokens_file(path)?);
        }
        crate::config::check_unique(&named, "http_tokens and http_tokens_file")?;
        let mut operators: Vec<(String, [u8; 32])> = named
            .iter()
            .map(|o| {
                let hash = match &o.secret {
                    TokenSecret::Plain(token) => sha256(token),
                    TokenSecret::Sha256(hash) => *hash,
                };
                (o.name().to_owned(), hash)
            })
            .collect();
        if let Some(token) = &config.http_token {
            if operators.iter().any(|(name, _)| name == SHARED_TOKEN_NAME) {
                return Err(ConfigError::Tokens {
                    at: "http_tokens".into(),
                    reason: format!("the name {SHARED_TOKEN_NAME} is http_token's"),
                });
            }
            operators.push((SHARED_TOKEN_NAME.to_owned(), sha256(token)));
        }
        for (i, (name, hash)) in operators.iter().enumerate() {
            if let Some((other, _)) = operators[..i].iter().find(|(_, h)| h == hash) {
                return Err(ConfigError::Tokens {
                    at: "http_tokens".into(),
                    reason: format!(
                        "operators {other} and {name} have the same token: the audit trail could not tell them apart"
                    ),
                });
            }
        }
        Ok(Self::new(operators, config.http_public_read))
    }

    pub(crate) fn new(operators: Vec<(String, [u8; 32])>, public_read: bool) -> Self {
        Auth {
            operators,
            public_read,
            sessions: Mutex::new(HashMap::new()),
            throttle: Throttle::default(),
        }
    }

    /// Whether any operator is configured (without one, the dashboard is
    /// read-only and open).
    pub(crate) fn has_operators(&self) -> bool {
        !self.operators.is_empty()
    }

    /// How many operators there are.
    pub(crate) fn operator_count(&self) -> usize {
        self.operators.len()
    }

    /// Whether `caller` may read the dashboard's pages.
    pub(crate) fn may_read(&self, caller: &Caller) -> bool {
        !self.has_operators() || self.public_read || caller.operator().is_some()
    }

    /// The operator whose token is `given`: compared with every operator,
    /// each in constant time.
    fn identify(&self, given: &str) -> Option<&str> {
        let hash = sha256(given);
        let mut found = None;
        for (name, known) in &self.operators {
            if same(&hash, known) {
                found = Some(name.as_str());
            }
        }
        found
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who sent a request with these headers, from `peer`.
    pub(crate) fn caller(
        &self,
        authorization: Option<&str>,
        cookie: Option<&str>,
        peer: IpAddr,
    ) -> Caller {
        self.caller_at(authorization, cookie, peer, Instant::now())
    }

    /// [`Self::caller`] as of `now` (sessions older than
    /// [`SESSION_LIFETIME`] then are over).
    fn caller_at(
        &self,
        authorization: Option<&str>,
        cookie: Option<&str>,
        peer: IpAddr,
        now: Instant,
    ) -> Caller {
        if !self.has_operators() {
            return Caller::Anonymous;
        }
        if let Some(value) = authorization {
            let left = match self.throttle.guess(peer) {
                Ok(left) => left,
                Err(wait) => return Caller::Throttled(wait),
            };
            let given = value.strip_prefix("Bearer ").map(str::trim);
            return match given.and_then(|given| self.identify(given)) {
                Some(operator) => {
                    self.throttle.right_token(peer);
                    Caller::Bearer {
                        operator: operator.to_owned(),
                    }
                }
                None => {
                    throttle::wrong_token(peer, left);
                    Caller::WrongToken
                }
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
            Some(s) if alive(s, now) => Caller::Session {
                csrf: s.csrf.clone(),
                operator: s.operator.clone(),
                id,
            },
            Some(_) => {
                sessions.remove(&id);
                Caller::Anonymous
            }
            None => Caller::Anonymous,
        }
    }

    /// Checks `given` from `peer`; on a match, a new session, its operator
    /// and the `Set-Cookie` value that carries it.
    pub(crate) fn login(&self, given: &str, peer: IpAddr) -> Result<(String, String), Caller> {
        self.login_at(given, peer, Instant::now())
    }

    /// [`Self::login`] as of `now`: sessions over by then are dropped, and
    /// with [`MAX_SESSIONS`] left the oldest goes.
    fn login_at(
        &self,
        given: &str,
        peer: IpAddr,
        now: Instant,
    ) -> Result<(String, String), Caller> {
        let left = self.throttle.guess(peer).map_err(Caller::Throttled)?;
        let Some(operator) = self.identify(given).map(str::to_owned) else {
            throttle::wrong_token(peer, left);
            log::debug!("http: a login with a wrong token from {peer} was refused");
            return Err(Caller::WrongToken);
        };
        self.throttle.right_token(peer);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let csrf = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| alive(s, now));
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
                operator: operator.clone(),
                created: now,
            },
        );
        log::info!("http: operator {operator} logged in from {peer}");
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        );
        Ok((operator, cookie))
    }

    pub(crate) fn logout(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Whether `r`, from an operator, may change something: 403 when the
    /// form token of its session is wrong (a forged form), else 401 (429
    /// when throttled) for a caller who is no operator.
    pub(crate) fn allows_change(&self, r: &Request) -> Result<(), Reply> {
        match &r.caller {
            Caller::Bearer { .. } => Ok(()),
            Caller::Session { csrf, .. }
                if same(csrf.as_bytes(), r.field("csrf").unwrap_or("").as_bytes()) =>
            {
                Ok(())
            }
            Caller::Session { .. } => Err(Reply::text(
                403,
                "forbidden: the form's anti-forgery token is missing or wrong; reload the page\n",
            )),
            refused => Err(refusal(refused)),
        }
    }
}

/// Whether session `s` is still on at `now`.
fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.created) < SESSION_LIFETIME
}

/// The answer to a caller who is not an operator: 401, or 429 when
/// throttled.
pub(crate) fn refusal(caller: &Caller) -> Reply {
    match caller {
        Caller::Throttled(wait) => Reply::text(
            429,
            "too many wrong tokens from this address; wait and try again\n",
        )
        .with_header("Retry-After", wait.as_secs().max(1).to_string()),
        Caller::WrongToken => Reply::text(401, "unauthorized: wrong token\n")
            .with_header("WWW-Authenticate", "Bearer".into()),
        _ => Reply::text(
            401,
            "unauthorized: log in at /login, or send an operator's token as a bearer header\n",
        )
        .with_header("WWW-Authenticate", "Bearer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::throttle::{BURST, REFILL};

    fn local() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn auth() -> Auth {
        Auth::new(
            vec![
                ("alice".into(), sha256("alice-token-0123456789")),
                ("bob".into(), sha256("bob-token-0123456789ab")),
            ],
            false,
        )
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same(b"abc", b"abc"));
        assert!(same(b"", b""));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn a_session_comes_from_an_operators_token_and_names_them() {
        let auth = auth();
        assert_eq!(
            auth.login("alice-token-012345678X", local()),
            Err(Caller::WrongToken)
        );
        let (operator, cookie) = auth.login("bob-token-0123456789ab", local()).unwrap();
        assert_eq!(operator, "bob");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let pair = cookie.split(';').next().unwrap_or_default().to_owned();
        assert!(matches!(
            auth.caller(None, Some(&format!("other=1; {pair}")), local()),
            Caller::Session { operator, .. } if operator == "bob"
        ));
        assert_eq!(
            auth.caller(None, Some("beat_session=forged"), local()),
            Caller::Anonymous
        );
        assert_eq!(
            auth.caller(Some("Bearer alice-token-0123456789"), None, local()),
            Caller::Bearer {
                operator: "alice".into()
            }
        );
        assert_eq!(
            auth.caller(Some("Bearer nope"), None, local()),
            Caller::WrongToken
        );
        let readonly = Auth::new(Vec::new(), false);
        assert!(readonly.login("", local()).is_err());
        assert_eq!(
            readonly.caller(Some("Bearer x"), None, local()),
            Caller::Anonymous
        );
        assert!(readonly.may_read(&Caller::Anonymous));
        assert!(!auth.may_read(&Caller::Anonymous));
        assert!(Auth::new(auth.operators.clone(), true).may_read(&Caller::Anonymous));
    }

    #[test]
    fn wrong_tokens_throttle_their_address_only() {
        let auth = auth();
        let guesser = IpAddr::from([10, 0, 0, 9]);
        for _ in 0..BURST as usize {
            assert_eq!(auth.login("wrong", guesser), Err(Caller::WrongToken));
        }
        // Throttled: even the right token is refused, without a look.
        assert!(matches!(
            auth.login("alice-token-0123456789", guesser),
            Err(Caller::Throttled(wait)) if wait > Duration::ZERO && wait <= REFILL
        ));
        assert!(matches!(
            auth.caller(Some("Bearer alice-token-0123456789"), None, guesser),
            Caller::Throttled(_)
        ));
        // Another address is not.
        assert!(auth.login("alice-token-0123456789", local()).is_ok());
        let refused = refusal(&Caller::Throttled(Duration::from_millis(300)));
        assert_eq!(refused.status, 429);
        assert!(refused.headers.contains(&("Retry-After", "1".into())));
    }

    fn session_of(cookie: &str) -> String {
        cookie.split(';').next().unwrap_or_default().to_owned()
    }

    #[test]
    fn a_session_ends_when_its_lifetime_is_over_and_is_dropped() {
        let auth = auth();
        let t0 = Instant::now();
        let (_, cookie) = auth
            .login_at("alice-token-0123456789", local(), t0)
            .unwrap();
        assert!(cookie.contains(&format!("Max-Age={}", SESSION_LIFETIME.as_secs())));
        let pair = session_of(&cookie);
        let at = |now: Instant| auth.caller_at(None, Some(&pair), local(), now);
        let last = t0 + SESSION_LIFETIME - Duration::from_millis(1);
        assert!(matches!(at(last), Caller::Session { operator, .. } if operator == "alice"));
        assert_eq!(at(t0 + SESSION_LIFETIME), Caller::Anonymous);
        // Dropped, not only refused: asked about earlier again, it is gone.
        assert_eq!(auth.sessions().len(), 0);
        assert_eq!(at(t0), Caller::Anonymous);
    }

    /// bob logs in at `now`; his session's cookie pair.
    fn bob_logs_in(auth: &Auth, now: Instant) -> String {
        session_of(
            &auth
                .login_at("bob-token-0123456789ab", local(), now)
                .unwrap()
                .1,
        )
    }

    /// Whether the cookie pair is a live session at `now`.
    fn has_session(auth: &Auth, pair: &str, now: Instant) -> bool {
        matches!(
            auth.caller_at(None, Some(pair), local(), now),
            Caller::Session { .. }
        )
    }

    #[test]
    fn past_max_sessions_a_login_drops_the_ended_ones_else_the_oldest_only() {
        let auth = auth();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let login = |now| bob_logs_in(&auth, now);
        let on = |pair: &str, now| has_session(&auth, pair, now);
        // MAX_SESSIONS logins, each 1 ms after the one before: all kept.
        let first: Vec<String> = (0..MAX_SESSIONS as u32)
            .map(|i| login(t0 + ms(i.into())))
            .collect();
        assert_eq!(auth.sessions().len(), MAX_SESSIONS);
        // One more: the oldest goes, and only it.
        let now = t0 + ms(MAX_SESSIONS as u64);
        let newest = login(now);
        assert_eq!(auth.sessions().len(), MAX_SESSIONS);
        assert!(!on(&first[0], now));
        assert!(first[1..].iter().all(|pair| on(pair, now)));
        assert!(on(&newest, now));

        // Sessions over are dropped first: with the two oldest ended, a
        // login drops both and evicts no session that is still on.
        let auth = Auth::new(auth.operators.clone(), false);
        let login = |now| bob_logs_in(&auth, now);
        let on = |pair: &str, now| has_session(&auth, pair, now);
        let later = t0 + Duration::from_secs(3600);
        let ended: Vec<String> = (0..2).map(|i| login(t0 + ms(i))).collect();
        let live: Vec<String> = (0..MAX_SESSIONS as u32 - 2)
            .map(|i| login(later + ms(i.into())))
            .collect();
        assert_eq!(auth.sessions().len(), MAX_SESSIONS);
        let now = t0 + ms(1) + SESSION_LIFETIME;
        let newest = login(now);
        assert_eq!(auth.sessions().len(), MAX_SESSIONS - 1);
        assert!(live.iter().all(|pair| on(pair, now)) && on(&newest, now));
        assert!(ended.iter().all(|pair| !on(pair, now)));
    }
}
