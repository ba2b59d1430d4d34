//! Configuration: the kit's keys, from code, environment variables or a file.
//!
//! Every key has the name celery-sqlalchemy-kit gives it, and the
//! environment variable is that name in upper case (`broker_url` is read
//! from `CELERY_BROKER_URL`, as Celery names it; the retry settings also
//! from the kit's `DEFAULT_CELERY_MAX_RETRY` and `DEFAULT_CELERY_RETRY_DELAY`). A file holds `key = value`
//! lines; environment variables override the file, which overrides the
//! defaults.

mod keys;
mod operators;
mod secrets;
mod values;

pub(crate) use operators::{check_unique, TokenSecret};
pub use operators::{read_tokens_file, OperatorToken};
pub(crate) use secrets::redact_message;
pub use secrets::redact_url;

use crate::schedule::MisfirePolicy;
use chrono_tz::Tz;
use keys::keys;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use values::{
    at_least_one, boolean, misfire_policy, non_negative_seconds, positive_seconds, socket_address,
    some_path, some_text, text, time_zone, unquote, whole_number,
};

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
    /// A line of a configuration file whose value is rejected.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The configuration file.
        path: String,
        /// Its line number, from 1.
        line: usize,
        /// Why the value is rejected.
        source: Box<ConfigError>,
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

keys! {
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
    ///
    /// Each key is declared once, below: its field, its default, how its text
    /// is read, and how it is shown (passwords and tokens never are).
    pub struct Config {
        /// `scheduler_db_uri`: `postgres://…`, `sqlite://path` or a plain SQLite path.
        scheduler_db_uri: String = DEFAULT_DB_URI.to_owned(), text, url;
        /// `scheduler_max_interval`: the longest the scheduler sleeps between checks.
        scheduler_max_interval: Duration = Duration::from_secs(300), positive_seconds, plain;
        /// `scheduler_sync_every`: the longest time between full re-checks of the
        /// table for rows whose next run is missing (edits are seen sooner: see
        /// `scheduler_watch_interval`).
        scheduler_sync_every: Duration = Duration::from_secs(180), positive_seconds, plain;
        /// `scheduler_watch_interval`: how often the beat looks for edited rows.
        /// An edit takes effect within this time.
        scheduler_watch_interval: Duration = Duration::from_millis(500), positive_seconds, plain;
        /// `scheduler_db_timeout`: the bound on each statement, lock wait and
        /// idle transaction of the beat's database sessions (PostgreSQL:
        /// `statement_timeout`, `lock_timeout`,
        /// `idle_in_transaction_session_timeout`, TCP keepalives; MariaDB:
        /// `max_statement_time`, `innodb_lock_wait_timeout`,
        /// `idle_transaction_timeout`). A beat frozen or cut off mid-claim
        /// holds its rows no longer than this.
        scheduler_db_timeout: Duration = DEFAULT_DB_TIMEOUT, positive_seconds, plain;
        /// `celery_max_retry`: how often a failed in-process task is retried.
        celery_max_retry: u32 = 3, whole_number, plain;
        /// `celery_retry_delay`: the wait before each retry.
        celery_retry_delay: Duration = Duration::from_secs(300), non_negative_seconds, plain;
        /// `create_table`: create or upgrade the schema at start.
        create_table: bool = true, boolean, plain;
        /// `broker_url`: where Celery messages go (`redis://…`); `None` runs only
        /// in-process tasks.
        broker_url: Option<String> = None, some_text, some_url;
        /// `broker_dedup_window`: how long Redis remembers the task id of each
        /// run pushed to it, so that a run claimed again (after a crash or a
        /// failed commit) is not pushed twice. Costs 100 to 120 bytes of Redis
        /// memory per run within the window.
        broker_dedup_window: Duration = Duration::from_secs(3600), positive_seconds, plain;
        /// `worker_concurrency`: worker pool threads (default: CPU count).
        worker_concurrency: usize = std::thread::available_parallelism().map_or(2, |n| n.get()), at_least_one, plain;
        /// `shutdown_timeout`: how long a stop waits for running tasks.
        shutdown_timeout: Duration = Duration::from_secs(30), non_negative_seconds, plain;
        /// `scheduler_misfire_policy`: what to do with a run missed by more than
        /// the grace time (a routine's schedule JSON may override it).
        scheduler_misfire_policy: MisfirePolicy = MisfirePolicy::FireOnce, misfire_policy, plain;
        /// `scheduler_misfire_grace_time`: how late a run may start before it
        /// counts as missed.
        scheduler_misfire_grace_time: Duration = Duration::from_secs(1), non_negative_seconds, plain;
        /// `timezone`: the IANA zone whose wall clock crontabs match when their
        /// schedule JSON names none (`TIMEZONE`, else Celery's
        /// `CELERY_TIMEZONE`). Intervals are elapsed time and ignore it.
        timezone: Tz = Tz::UTC, time_zone, plain;
        /// `history`: record every dispatch in `routine_runs`. Off, only
        /// in-process runs are recorded, while they last (so that no other beat
        /// overlaps them), and nothing is kept.
        history: bool = true, boolean, plain;
        /// `history_max_age`: runs older than this are pruned, and beats
        /// silent for longer (with the history off too).
        history_max_age: Duration = Duration::from_secs(7 * 86_400), positive_seconds, plain;
        /// `history_max_runs`: the runs kept per routine, newest first.
        history_max_runs: usize = 100, at_least_one, plain;
        /// `scheduler_heartbeat_interval`: how often the beat says it is alive
        /// in the `beats` table (and prunes the history, and looks for dead
        /// beats).
        scheduler_heartbeat_interval: Duration = Duration::from_secs(2), positive_seconds, plain;
        /// `scheduler_dead_after`: a beat silent for longer is dead: its
        /// unfinished in-process runs are marked lost, and their routines may
        /// run on another beat.
        scheduler_dead_after: Duration = Duration::from_secs(10), positive_seconds, plain;
        /// `http_addr`: where `/metrics`, `/healthz`, `/readyz` and the
        /// dashboard listen (`127.0.0.1:9808`); off when unset.
        http_addr: Option<SocketAddr> = None, socket_address, plain;
        /// `http_token`: a token shared by every operator (at least 16
        /// characters; the audit trail names its holder `http_token`). With
        /// any token configured (this, `http_tokens` or `http_tokens_file`),
        /// the dashboard's pages need a login and its changes are allowed;
        /// without one it is read-only and open. Never printed.
        http_token: Option<String> = None, operators::shared_token, secret;
        /// `http_tokens`: named operators, `alice:TOKEN,bob:TOKEN` (each token
        /// at least 16 characters, or given as `sha256:HEX`), so that the audit
        /// trail says who changed what. Never printed.
        http_tokens: Vec<OperatorToken> = Vec::new(), operators::named_tokens, plain;
        /// `http_tokens_file`: a file of named operators, one
        /// `name:sha256:HEX` a line (`beat token NAME` prints one), read when
        /// the listener starts.
        http_tokens_file: Option<std::path::PathBuf> = None, some_path, plain;
        /// `http_public_read`: with a token configured, let anyone read the
        /// dashboard's pages (changes still need a login). Off by default:
        /// pages show routines' kwargs, which may hold secrets.
        http_public_read: bool = false, boolean, plain;
        /// `audit_max_age`: edits in the audit trail (`routine_edits`) older
        /// than this are pruned.
        audit_max_age: Duration = Duration::from_secs(90 * 86_400), positive_seconds, plain;
        /// `audit_max_edits`: the edits kept per routine, newest first.
        audit_max_edits: usize = 100, at_least_one, plain;
    }
}

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
        Config::load_with(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment `lookup` gives.
    fn load_with(
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
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
            let known = config.set(key, value).map_err(|e| ConfigError::Line {
                path: shown.clone(),
                line: index + 1,
                source: Box::new(e),
            })?;
            if !known {
                return Err(ConfigError::UnknownKey {
                    path: shown.clone(),
                    line: index + 1,
                    key: key.to_owned(),
                });
            }
        }
        config.apply_env(lookup)?;
        Ok(config)
    }

    /// Overrides keys from an environment (`lookup` maps a variable name to
    /// its value). Empty values are ignored.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for key in KEY_NAMES {
            let var = match *key {
                "broker_url" => "CELERY_BROKER_URL".to_owned(),
                _ => key.to_ascii_uppercase(),
            };
            // The kit reads its retry settings from DEFAULT_-prefixed names;
            // Celery names the zone CELERY_TIMEZONE.
            let value = lookup(&var).or_else(|| match *key {
                "celery_max_retry" | "celery_retry_delay" => lookup(&format!("DEFAULT_{var}")),
                "timezone" => lookup("CELERY_TIMEZONE"),
                _ => None,
            });
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                self.set(key, value.trim())?;
            }
        }
        Ok(())
    }

    /// Checks what no single key can: the keys against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.scheduler_dead_after < self.scheduler_heartbeat_interval * 2 {
            // A live beat would look dead between its heartbeats, and its
            // routines would run twice at once.
            return Err(ConfigError::Invalid {
                key: "scheduler_dead_after",
                value: format!("{:?}", self.scheduler_dead_after),
                reason: "must be at least twice scheduler_heartbeat_interval",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
