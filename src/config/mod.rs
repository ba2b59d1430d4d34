//! Configuration: the kit's keys, from code, environment variables or a file.
//!
//! Every key has the name celery-sqlalchemy-kit gives it, and the
//! environment variable is that name in upper case (`broker_url` is read
//! from `CELERY_BROKER_URL`, as Celery names it; the retry settings also
//! from the kit's `DEFAULT_CELERY_MAX_RETRY` and `DEFAULT_CELERY_RETRY_DELAY`). A file holds `key = value`
//! lines; environment variables override the file, which overrides the
//! defaults.

mod operators;
mod secrets;
mod values;

pub(crate) use operators::{check_unique, TokenSecret};
pub use operators::{read_tokens_file, OperatorToken};
pub(crate) use secrets::redact_message;
pub use secrets::redact_url;

use crate::schedule::MisfirePolicy;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use values::{boolean, non_negative_seconds, positive_seconds, unquote};

/// The SQLite file used when no `scheduler_db_uri` is given.
pub const DEFAULT_DB_URI: &str = "sqlite://celery-beat.sqlite3";

/// `scheduler_db_timeout`'s default.
pub(crate) const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a configuration value was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse for its key.
    #[error("invalid {key} = {value:?}: {reason}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// The rejected value (URLs with their password masked).
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// A key the file does not know.
    #[error("{path}:{line}: unknown configuration key {key:?}")]
    UnknownKey {
        /// The configuration file.
        path: String,
        /// Its line number, from 1.
        line: usize,
        /// The unknown key.
        key: String,
    },
    /// A line of a configuration file that is not `key = value`.
    #[error("{path}:{line}: expected `key = value`")]
    Syntax {
        /// The configuration file.
        path: String,
        /// Its line number, from 1.
        line: usize,
    },
    /// An operator entry (`http_tokens`, or a line of `http_tokens_file`)
    /// that does not parse; the reason never repeats the token.
    #[error("{at}: {reason}")]
    Tokens {
        /// The key and entry, or the file and line.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The configuration file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The beat's configuration. Field names are the kit's configuration keys.
///
/// New keys come with new releases, so a `Config` starts from
/// [`Config::default`], [`Config::from_env`] or [`Config::load`], and is
/// changed field by field (or with [`Config::set`], by key name):
///
/// ```
/// use celery_diesel_kit::Config;
/// use std::time::Duration;
///
/// let mut config = Config::default();
/// config.scheduler_db_uri = "sqlite://my-beat.sqlite3".into();
/// config.celery_max_retry = 5;
/// assert_eq!(config.scheduler_max_interval, Duration::from_secs(300));
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `scheduler_db_uri`: `postgres://…`, `sqlite://path` or a plain SQLite path.
    pub scheduler_db_uri: String,
    /// `scheduler_max_interval`: the longest the scheduler sleeps between checks.
    pub scheduler_max_interval: Duration,
    /// `scheduler_sync_every`: the longest time between full re-checks of the
    /// table for rows whose next run is missing (edits are seen sooner: see
    /// `scheduler_watch_interval`).
    pub scheduler_sync_every: Duration,
    /// `scheduler_watch_interval`: how often the beat looks for edited rows.
    /// An edit takes effect within this time.
    pub scheduler_watch_interval: Duration,
    /// `scheduler_db_timeout`: the bound on each statement, lock wait and
    /// idle transaction of the beat's database sessions (PostgreSQL:
    /// `statement_timeout`, `lock_timeout`,
    /// `idle_in_transaction_session_timeout`, TCP keepalives; MariaDB:
    /// `max_statement_time`, `innodb_lock_wait_timeout`,
    /// `idle_transaction_timeout`). A beat frozen or cut off mid-claim
    /// holds its rows no longer than this.
    pub scheduler_db_timeout: Duration,
    /// `celery_max_retry`: how often a failed in-process task is retried.
    pub celery_max_retry: u32,
    /// `celery_retry_delay`: the wait before each retry.
    pub celery_retry_delay: Duration,
    /// `create_table`: create or upgrade the schema at start.
    pub create_table: bool,
    /// `broker_url`: where Celery messages go (`redis://…`); `None` runs only
    /// in-process tasks.
    pub broker_url: Option<String>,
    /// `broker_dedup_window`: how long Redis remembers the task id of each
    /// run pushed to it, so that a run claimed again (after a crash or a
    /// failed commit) is not pushed twice. Costs 100 to 120 bytes of Redis
    /// memory per run within the window.
    pub broker_dedup_window: Duration,
    /// `worker_concurrency`: worker pool threads (default: CPU count).
    pub worker_concurrency: usize,
    /// `shutdown_timeout`: how long a stop waits for running tasks.
    pub shutdown_timeout: Duration,
    /// `scheduler_misfire_policy`: what to do with a run missed by more than
    /// the grace time (a routine's schedule JSON may override it).
    pub scheduler_misfire_policy: MisfirePolicy,
    /// `scheduler_misfire_grace_time`: how late a run may start before it
    /// counts as missed.
    pub scheduler_misfire_grace_time: Duration,
    /// `timezone`: the IANA zone whose wall clock crontabs match when their
    /// schedule JSON names none (`TIMEZONE`, else Celery's
    /// `CELERY_TIMEZONE`). Intervals are elapsed time and ignore it.
    pub timezone: String,
    /// `history`: record every dispatch in `routine_runs`. Off, only
    /// in-process runs are recorded, while they last (so that no other beat
    /// overlaps them), and nothing is kept.
    pub history: bool,
    /// `history_max_age`: runs older than this are pruned.
    pub history_max_age: Duration,
    /// `history_max_runs`: the runs kept per routine, newest first.
    pub history_max_runs: usize,
    /// `scheduler_heartbeat_interval`: how often the beat says it is alive
    /// in the `beats` table (and prunes the history, and looks for dead
    /// beats).
    pub scheduler_heartbeat_interval: Duration,
    /// `scheduler_dead_after`: a beat silent for longer is dead: its
    /// unfinished in-process runs are marked lost, and their routines may
    /// run on another beat.
    pub scheduler_dead_after: Duration,
    /// `http_addr`: where `/metrics`, `/healthz`, `/readyz` and the
    /// dashboard listen (`127.0.0.1:9808`); off when unset.
    pub http_addr: Option<SocketAddr>,
    /// `http_token`: a token shared by every operator (at least 16
    /// characters; the audit trail names its holder `http_token`). With
    /// any token configured (this, `http_tokens` or `http_tokens_file`),
    /// the dashboard's pages need a login and its changes are allowed;
    /// without one it is read-only and open. Never printed.
    pub http_token: Option<String>,
    /// `http_tokens`: named operators, `alice:TOKEN,bob:TOKEN` (each token
    /// at least 16 characters, or given as `sha256:HEX`), so that the audit
    /// trail says who changed what. Never printed.
    pub http_tokens: Vec<OperatorToken>,
    /// `http_tokens_file`: a file of named operators, one
    /// `name:sha256:HEX` a line (`beat token NAME` prints one), read when
    /// the listener starts.
    pub http_tokens_file: Option<std::path::PathBuf>,
    /// `http_public_read`: with a token configured, let anyone read the
    /// dashboard's pages (changes still need a login). Off by default:
    /// pages show routines' kwargs, which may hold secrets.
    pub http_public_read: bool,
    /// `audit_max_age`: edits in the audit trail (`routine_edits`) older
    /// than this are pruned.
    pub audit_max_age: Duration,
    /// `audit_max_edits`: the edits kept per routine, newest first.
    pub audit_max_edits: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_db_uri: DEFAULT_DB_URI.to_owned(),
            scheduler_max_interval: Duration::from_secs(300),
            scheduler_sync_every: Duration::from_secs(180),
            scheduler_watch_interval: Duration::from_millis(500),
            scheduler_db_timeout: DEFAULT_DB_TIMEOUT,
            celery_max_retry: 3,
            celery_retry_delay: Duration::from_secs(300),
            create_table: true,
            broker_url: None,
            broker_dedup_window: Duration::from_secs(3600),
            worker_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shutdown_timeout: Duration::from_secs(30),
            scheduler_misfire_policy: MisfirePolicy::FireOnce,
            scheduler_misfire_grace_time: Duration::from_secs(1),
            timezone: "UTC".to_owned(),
            history: true,
            history_max_age: Duration::from_secs(7 * 86_400),
            history_max_runs: 100,
            scheduler_heartbeat_interval: Duration::from_secs(2),
            scheduler_dead_after: Duration::from_secs(10),
            http_addr: None,
            http_token: None,
            http_tokens: Vec::new(),
            http_tokens_file: None,
            http_public_read: false,
            audit_max_age: Duration::from_secs(90 * 86_400),
            audit_max_edits: 100,
        }
    }
}

/// Every key, with its environment variable.
const KEYS: [(&str, &str); 27] = [
    ("scheduler_db_uri", "SCHEDULER_DB_URI"),
    ("scheduler_max_interval", "SCHEDULER_MAX_INTERVAL"),
    ("scheduler_sync_every", "SCHEDULER_SYNC_EVERY"),
    ("scheduler_watch_interval", "SCHEDULER_WATCH_INTERVAL"),
    ("scheduler_db_timeout", "SCHEDULER_DB_TIMEOUT"),
    ("celery_max_retry", "CELERY_MAX_RETRY"),
    ("celery_retry_delay", "CELERY_RETRY_DELAY"),
    ("create_table", "CREATE_TABLE"),
    ("broker_url", "CELERY_BROKER_URL"),
    ("broker_dedup_window", "BROKER_DEDUP_WINDOW"),
    ("worker_concurrency", "WORKER_CONCURRENCY"),
    ("shutdown_timeout", "SHUTDOWN_TIMEOUT"),
    ("scheduler_misfire_policy", "SCHEDULER_MISFIRE_POLICY"),
    (
        "scheduler_misfire_grace_time",
        "SCHEDULER_MISFIRE_GRACE_TIME",
    ),
    ("timezone", "TIMEZONE"),
    ("history", "HISTORY"),
    ("history_max_age", "HISTORY_MAX_AGE"),
    ("history_max_runs", "HISTORY_MAX_RUNS"),
    (
        "scheduler_heartbeat_interval",
        "SCHEDULER_HEARTBEAT_INTERVAL",
    ),
    ("scheduler_dead_after", "SCHEDULER_DEAD_AFTER"),
    ("http_addr", "HTTP_ADDR"),
    ("http_token", "HTTP_TOKEN"),
    ("http_tokens", "HTTP_TOKENS"),
    ("http_tokens_file", "HTTP_TOKENS_FILE"),
    ("http_public_read", "HTTP_PUBLIC_READ"),
    ("audit_max_age", "AUDIT_MAX_AGE"),
    ("audit_max_edits", "AUDIT_MAX_EDITS"),
];

impl Config {
    /// Defaults overridden by the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Config::default();
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Defaults, overridden by the `key = value` file at `path`, overridden
    /// by the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut config = Config::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| ConfigError::Syntax {
                path: shown.clone(),
                line: index + 1,
            })?;
            let (key, value) = (key.trim(), unquote(value.trim()));
            if !config.set(key, value)? {
                return Err(ConfigError::UnknownKey {
                    path: shown.clone(),
                    line: index + 1,
                    key: key.to_owned(),
                });
            }
        }
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Overrides keys from an environment (`lookup` maps a variable name to
    /// its value). Empty values are ignored.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (key, var) in KEYS {
            // The kit reads its retry settings from DEFAULT_-prefixed names;
            // Celery names the zone CELERY_TIMEZONE.
            let value = lookup(var).or_else(|| match var {
                "CELERY_MAX_RETRY" | "CELERY_RETRY_DELAY" => lookup(&format!("DEFAULT_{var}")),
                "TIMEZONE" => lookup("CELERY_TIMEZONE"),
                _ => None,
            });
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                self.set(key, value.trim())?;
            }
        }
        Ok(())
    }

    /// Sets one key from its text form. Returns `false` for an unknown key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "scheduler_db_uri" => self.scheduler_db_uri = value.to_owned(),
            "scheduler_max_interval" => {
                self.scheduler_max_interval = positive_seconds("scheduler_max_interval", value)?
            }
            "scheduler_sync_every" => {
                self.scheduler_sync_every = positive_seconds("scheduler_sync_every", value)?
            }
            "scheduler_watch_interval" => {
                self.scheduler_watch_interval = positive_seconds("scheduler_watch_interval", value)?
            }
            "scheduler_db_timeout" => {
                self.scheduler_db_timeout = positive_seconds("scheduler_db_timeout", value)?
            }
            "celery_max_retry" => {
                self.celery_max_retry = value.parse().map_err(|_| ConfigError::Invalid {
                    key: "celery_max_retry",
                    value: value.to_owned(),
                    reason: "expected a whole number ≥ 0",
                })?
            }
            "celery_retry_delay" => {
                self.celery_retry_delay = non_negative_seconds("celery_retry_delay", value)?
            }
            "create_table" => self.create_table = boolean("create_table", value)?,
            "broker_url" => self.broker_url = Some(value.to_owned()),
            "broker_dedup_window" => {
                self.broker_dedup_window = positive_seconds("broker_dedup_window", value)?
            }
            "worker_concurrency" => {
                self.worker_concurrency =
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ConfigError::Invalid {
                            key: "worker_concurrency",
                            value: value.to_owned(),
                            reason: "expected a whole number ≥ 1",
                        })?
            }
            "shutdown_timeout" => {
                self.shutdown_timeout = non_negative_seconds("shutdown_timeout", value)?
            }
            "scheduler_misfire_policy" => {
                self.scheduler_misfire_policy = value.parse().map_err(|_| ConfigError::Invalid {
                    key: "scheduler_misfire_policy",
                    value: value.to_owned(),
                    reason: "expected fire_once or skip",
                })?
            }
            "scheduler_misfire_grace_time" => {
                self.scheduler_misfire_grace_time =
                    non_negative_seconds("scheduler_misfire_grace_time", value)?
            }
            "timezone" => {
                crate::schedule::zone(value).map_err(|_| ConfigError::Invalid {
                    key: "timezone",
                    value: value.to_owned(),
                    reason: "expected an IANA time zone name such as Europe/Berlin",
                })?;
                self.timezone = value.to_owned();
            }
            "history" => self.history = boolean("history", value)?,
            "history_max_age" => self.history_max_age = positive_seconds("history_max_age", value)?,
            "history_max_runs" => {
                self.history_max_runs =
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ConfigError::Invalid {
                            key: "history_max_runs",
                            value: value.to_owned(),
                            reason: "expected a whole number ≥ 1",
                        })?
            }
            "scheduler_heartbeat_interval" => {
                self.scheduler_heartbeat_interval =
                    positive_seconds("scheduler_heartbeat_interval", value)?
            }
            "scheduler_dead_after" => {
                self.scheduler_dead_after = positive_seconds("scheduler_dead_after", value)?
            }
            "http_addr" => {
                self.http_addr = Some(value.parse().map_err(|_| ConfigError::Invalid {
                    key: "http_addr",
                    value: value.to_owned(),
                    reason: "expected an address and port such as 127.0.0.1:9808",
                })?)
            }
            "http_token" => {
                if value.chars().count() < operators::MIN_TOKEN_CHARS {
                    return Err(ConfigError::Invalid {
                        key: "http_token",
                        // The token is a secret, even a bad one.
                        value: "***".to_owned(),
                        reason: "too short: use at least 16 characters",
                    });
                }
                self.http_token = Some(value.to_owned())
            }
            "http_tokens" => self.http_tokens = operators::parse_list(value)?,
            "http_tokens_file" => self.http_tokens_file = Some(value.into()),
            "http_public_read" => self.http_public_read = boolean("http_public_read", value)?,
            "audit_max_age" => self.audit_max_age = positive_seconds("audit_max_age", value)?,
            "audit_max_edits" => {
                self.audit_max_edits =
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ConfigError::Invalid {
                            key: "audit_max_edits",
                            value: value.to_owned(),
                            reason: "expected a whole number ≥ 1",
                        })?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_are_the_kits() {
        let c = Config::default();
        assert_eq!(c.scheduler_max_interval, Duration::from_secs(300));
        assert_eq!(c.scheduler_sync_every, Duration::from_secs(180));
        assert_eq!(c.celery_max_retry, 3);
        assert_eq!(c.celery_retry_delay, Duration::from_secs(300));
        assert!(c.create_table);
        assert_eq!(c.broker_url, None);
        assert_eq!(c.scheduler_db_uri, DEFAULT_DB_URI);
    }

    #[test]
    fn every_key_is_read_from_its_upper_case_variable() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("SCHEDULER_DB_URI", "postgres://u:p@h/db"),
            ("SCHEDULER_MAX_INTERVAL", "12.5"),
            ("SCHEDULER_SYNC_EVERY", "60"),
            ("SCHEDULER_WATCH_INTERVAL", "0.25"),
            ("SCHEDULER_DB_TIMEOUT", "7"),
            ("CELERY_MAX_RETRY", "7"),
            ("CELERY_RETRY_DELAY", "0"),
            ("CREATE_TABLE", "False"),
            ("CELERY_BROKER_URL", "redis://localhost:6379/3"),
            ("BROKER_DEDUP_WINDOW", "600"),
            ("WORKER_CONCURRENCY", "5"),
            ("SHUTDOWN_TIMEOUT", "9"),
            ("SCHEDULER_MISFIRE_POLICY", "skip"),
            ("SCHEDULER_MISFIRE_GRACE_TIME", "2.5"),
            ("TIMEZONE", "Europe/Berlin"),
            ("HTTP_ADDR", "127.0.0.1:9808"),
            ("HTTP_TOKEN", "0123456789abcdef-token"),
            ("HTTP_TOKENS", "alice:alice-token-0123456789"),
            ("HTTP_TOKENS_FILE", "/etc/beat/operators"),
            ("HTTP_PUBLIC_READ", "yes"),
            ("AUDIT_MAX_AGE", "3600"),
            ("AUDIT_MAX_EDITS", "7"),
        ]))
        .unwrap();
        assert_eq!(c.http_tokens.len(), 1);
        assert_eq!(c.http_tokens[0].name(), "alice");
        assert!(!format!("{c:?}").contains("alice-token-0123456789"));
        assert_eq!(
            c.http_tokens_file.as_deref(),
            Some(Path::new("/etc/beat/operators"))
        );
        assert!(c.http_public_read);
        assert_eq!(c.audit_max_age, Duration::from_secs(3600));
        assert_eq!(c.audit_max_edits, 7);
        assert_eq!(c.http_addr, Some("127.0.0.1:9808".parse().unwrap()));
        assert_eq!(c.http_token.as_deref(), Some("0123456789abcdef-token"));
        assert!(!format!("{c:?}").contains("0123456789abcdef-token"));
        assert_eq!(c.scheduler_db_uri, "postgres://u:p@h/db");
        assert_eq!(c.scheduler_max_interval, Duration::from_millis(12_500));
        assert_eq!(c.scheduler_sync_every, Duration::from_secs(60));
        assert_eq!(c.scheduler_watch_interval, Duration::from_millis(250));
        assert_eq!(c.scheduler_db_timeout, Duration::from_secs(7));
        assert_eq!(c.celery_max_retry, 7);
        assert_eq!(c.celery_retry_delay, Duration::ZERO);
        assert!(!c.create_table);
        assert_eq!(c.broker_url.as_deref(), Some("redis://localhost:6379/3"));
        assert_eq!(c.broker_dedup_window, Duration::from_secs(600));
        assert_eq!(c.worker_concurrency, 5);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(9));
        assert_eq!(c.scheduler_misfire_policy, MisfirePolicy::Skip);
        assert_eq!(c.scheduler_misfire_grace_time, Duration::from_millis(2500));
        assert_eq!(c.timezone, "Europe/Berlin");
    }

    #[test]
    fn http_settings_are_checked_and_a_bad_token_is_not_repeated() {
        let mut c = Config::default();
        let e = c.set("http_addr", "localhost").unwrap_err().to_string();
        assert!(
            e.contains("http_addr") && e.contains("127.0.0.1:9808"),
            "{e}"
        );
        let e = c.set("http_token", "short-secret").unwrap_err().to_string();
        assert!(e.contains("http_token") && e.contains("16"), "{e}");
        assert!(!e.contains("short-secret"), "{e}");
    }

    #[test]
    fn the_zone_is_read_from_timezone_then_celerys_name_and_checked() {
        let mut c = Config::default();
        assert_eq!(c.timezone, "UTC");
        c.apply_env(env(&[("CELERY_TIMEZONE", "Asia/Kathmandu")]))
            .unwrap();
        assert_eq!(c.timezone, "Asia/Kathmandu");
        c.apply_env(env(&[
            ("TIMEZONE", "Pacific/Chatham"),
            ("CELERY_TIMEZONE", "Asia/Kathmandu"),
        ]))
        .unwrap();
        assert_eq!(c.timezone, "Pacific/Chatham", "TIMEZONE wins");
        let err = Config::default()
            .apply_env(env(&[("TIMEZONE", "Mars/Olympus_Mons")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timezone") && err.contains("Mars/Olympus_Mons"),
            "{err}"
        );
    }

    #[test]
    fn the_kits_default_prefixed_retry_variables_are_read_too() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("DEFAULT_CELERY_MAX_RETRY", "9"),
            ("DEFAULT_CELERY_RETRY_DELAY", "7"),
        ]))
        .unwrap();
        assert_eq!(
            (c.celery_max_retry, c.celery_retry_delay),
            (9, Duration::from_secs(7))
        );
        c.apply_env(env(&[
            ("CELERY_MAX_RETRY", "1"),
            ("DEFAULT_CELERY_MAX_RETRY", "9"),
        ]))
        .unwrap();
        assert_eq!(c.celery_max_retry, 1, "the documented name wins");
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (var, value, key) in [
            ("SCHEDULER_MAX_INTERVAL", "soon", "scheduler_max_interval"),
            ("SCHEDULER_MAX_INTERVAL", "0", "scheduler_max_interval"),
            ("SCHEDULER_SYNC_EVERY", "-1", "scheduler_sync_every"),
            ("CELERY_MAX_RETRY", "-3", "celery_max_retry"),
            ("CELERY_RETRY_DELAY", "NaN", "celery_retry_delay"),
            ("CREATE_TABLE", "maybe", "create_table"),
            ("WORKER_CONCURRENCY", "0", "worker_concurrency"),
            (
                "SCHEDULER_MISFIRE_POLICY",
                "never",
                "scheduler_misfire_policy",
            ),
        ] {
            let err = Config::default()
                .apply_env(env(&[(var, value)]))
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(key) && text.contains(value),
                "{var}={value}: {text}"
            );
        }
    }

    #[test]
    fn a_file_is_read_line_by_line() {
        let dir = std::env::temp_dir().join(format!("cdk-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("beat.conf");
        std::fs::write(
            &path,
            "# comment\nscheduler_max_interval = 30\ncelery_max_retry = \"2\"\n\n",
        )
        .unwrap();
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded.scheduler_max_interval, Duration::from_secs(30));
        assert_eq!(loaded.celery_max_retry, 2);

        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("no_such_key"), "{err}");
        std::fs::write(&path, "just words\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Syntax { line: 1, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
