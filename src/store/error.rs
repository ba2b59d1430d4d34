//! What goes wrong talking to the database, said without Diesel's types.

/// A failure to talk to the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `scheduler_db_uri` names no supported database.
    #[error("unsupported scheduler_db_uri {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached at start.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The driver's reason, password masked.
        reason: String,
    },
    /// No pooled connection became available (the database is down or
    /// overloaded).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("{statement}: {source}")]
    Query {
        /// Which statement.
        statement: &'static str,
        /// The database's error.
        source: DatabaseError,
    },
    /// The schema could not be created or upgraded.
    #[error("migrating the routines table failed: {0}")]
    Migration(String),
    /// The tables lack what this version needs (not created, or created by
    /// an older version) and `create_table` is off.
    #[error("the tables are missing or older than this version ({0}); run `beat migrate` or `diesel migration run`, or set create_table = true")]
    NotMigrated(String),
}

/// A statement's failure, as the database (through its driver) said it.
#[derive(Debug)]
pub struct DatabaseError(diesel::result::Error);

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DatabaseError {}

impl DatabaseError {
    /// Whether the statement lost a race with another transaction (a
    /// deadlock, a serialization failure).
    fn lost_a_race(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match &self.0 {
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
            // PostgreSQL's deadlock (40P01) has no kind of its own in Diesel.
            Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether the statement lost a race with another transaction (a
    /// deadlock, a serialization failure): nothing is wrong, and trying
    /// again at once will do. Not an outage.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, StoreError::Query { source, .. } if source.lost_a_race())
    }

    pub(super) fn checkout(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }

    pub(super) fn query(statement: &'static str, source: diesel::result::Error) -> Self {
        StoreError::Query {
            statement,
            source: DatabaseError(source),
        }
    }
}
