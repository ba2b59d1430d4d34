//! The registry of beats (`beats`): its rows, and the statements that
//! write and read it (registering, heartbeats, a stop, pruning).

use super::history::time;
use super::models::format_timestamp;
use super::pool::Pools;
use super::sql::history::millis;
use super::{RoutineStore, StoreError};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel::Connection;
use diesel::{QueryableByName, RunQueryDsl};
use std::time::Duration;

/// A beat as the `beats` table records it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BeatRow {
    /// The beat's id (a fresh uuid at every start).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The crate version it runs.
    pub version: String,
    /// When it started (the database's clock, naive UTC).
    pub started_at: Option<NaiveDateTime>,
    /// Its last heartbeat (the database's clock, naive UTC).
    pub heartbeat_at: Option<NaiveDateTime>,
    /// When it stopped cleanly.
    pub stopped_at: Option<NaiveDateTime>,
    /// The tasks it runs in-process.
    pub tasks: Vec<String>,
    /// Whether it sends other tasks to Celery.
    pub broker: bool,
    /// How long ago its last heartbeat was, by the database's clock.
    pub silent_for: Duration,
}

impl BeatRow {
    /// Whether it is alive: not stopped, and heard from within `dead_after`.
    pub fn is_alive(&self, dead_after: Duration) -> bool {
        self.stopped_at.is_none() && self.silent_for <= dead_after
    }
}

#[derive(QueryableByName)]
struct RawBeat {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    host: String,
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Nullable<Text>)]
    started_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    heartbeat_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    stopped_at: Option<String>,
    #[diesel(sql_type = Text)]
    tasks: String,
    #[diesel(sql_type = Bool)]
    broker: bool,
    #[diesel(sql_type = Nullable<Text>)]
    db_now: Option<String>,
}

impl From<RawBeat> for BeatRow {
    fn from(raw: RawBeat) -> Self {
        let heartbeat_at = time(raw.heartbeat_at);
        let silent_for = match (heartbeat_at, time(raw.db_now)) {
            (Some(beat), Some(now)) => (now - beat).to_std().unwrap_or_default(),
            _ => Duration::MAX,
        };
        BeatRow {
            id: raw.id,
            host: raw.host,
            pid: raw.pid,
            version: raw.version,
            started_at: time(raw.started_at),
            heartbeat_at,
            stopped_at: time(raw.stopped_at),
            tasks: serde_json::from_str(&raw.tasks).unwrap_or_default(),
            broker: raw.broker,
            silent_for,
        }
    }
}

/// Who this beat is, for its registration.
#[derive(Debug, Clone)]
pub(crate) struct BeatInfo {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) tasks: String,
    pub(crate) broker: bool,
}

/// The registry of beats (`beats`), from [`RoutineStore::beats`].
#[derive(Debug, Clone, Copy)]
pub struct Beats<'s>(&'s RoutineStore);

impl RoutineStore {
    /// The registry of beats (`beats`).
    pub fn beats(&self) -> Beats<'_> {
        Beats(self)
    }
}

impl Beats<'_> {
    /// Records this beat in `beats` (at start, and again should its row
    /// have gone).
    pub(crate) fn register(&self, beat: &BeatInfo) -> Result<(), StoreError> {
        with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.register)
                .bind::<Text, _>(&beat.id)
                .bind::<Text, _>(&beat.host)
                .bind::<Integer, _>(beat.pid)
                .bind::<Text, _>(env!("CARGO_PKG_VERSION"))
                .bind::<Text, _>(&beat.tasks)
                .bind::<Bool, _>(beat.broker)
                .execute(conn)
                .map(drop)
                .map_err(|e| StoreError::query("register_beat", e))
        })
    }

    /// Says this beat is alive. Returns whether its row was there.
    pub(crate) fn heartbeat(&self, beat_id: &str) -> Result<bool, StoreError> {
        with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.heartbeat)
                .bind::<Text, _>(beat_id)
                .execute(conn)
                .map(|n| n > 0)
                .map_err(|e| StoreError::query("heartbeat", e))
        })
    }

    /// At a clean stop: this beat's runs that never ended are abandoned
    /// (or forgotten, without history), and the beat is marked stopped.
    pub(crate) fn stopped(
        &self,
        beat_id: &str,
        now: DateTime<Utc>,
        history: bool,
    ) -> Result<usize, StoreError> {
        let now = format_timestamp(now);
        with_history_conn!(self.0, |conn, sql| {
            conn.transaction(|conn| {
                let ended = match history {
                    true => diesel::sql_query(&sql.end_own_runs)
                        .bind::<Text, _>(&now)
                        .bind::<Text, _>(beat_id)
                        .execute(conn)?,
                    false => diesel::sql_query(&sql.forget_own_runs)
                        .bind::<Text, _>(beat_id)
                        .execute(conn)?,
                };
                diesel::sql_query(&sql.stopped)
                    .bind::<Text, _>(beat_id)
                    .execute(conn)?;
                Ok(ended)
            })
            .map_err(|e| StoreError::query("beat_stopped", e))
        })
    }

    /// Deletes beats silent for longer than `age`.
    pub(crate) fn prune(&self, age: Duration) -> Result<usize, StoreError> {
        with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.prune_beats)
                .bind::<BigInt, _>(millis(age))
                .execute(conn)
                .map_err(|e| StoreError::query("prune_beats", e))
        })
    }

    /// Every beat recorded, newest first.
    pub fn list(&self) -> Result<Vec<BeatRow>, StoreError> {
        with_history_conn!(self.0, |conn, sql| {
            let rows: Vec<RawBeat> = diesel::sql_query(&sql.beats)
                .load(conn)
                .map_err(|e| StoreError::query("beats", e))?;
            Ok(rows.into_iter().map(BeatRow::from).collect())
        })
    }
}
