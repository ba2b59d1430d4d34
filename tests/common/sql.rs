//! Raw SQL, as an operator runs it at a SQL prompt: for the tests and the
//! benchmark, which create databases, seed rows and edit them the way a
//! person would. The library offers no raw SQL; this goes through Diesel
//! directly, on a connection of its own (so on MySQL the edit triggers see
//! the edit, as they see any session but the beat's).

use diesel::connection::{Connection, SimpleConnection};
use diesel::deserialize::QueryableByName;
use diesel::pg::{Pg, PgConnection};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::RunQueryDsl;

/// A connection of its own to one database.
enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
    #[cfg(feature = "mysql")]
    Mysql(diesel::mysql::MysqlConnection),
}

/// A row type readable on every backend this build has.
#[cfg(feature = "mysql")]
trait Row:
    QueryableByName<Pg> + QueryableByName<Sqlite> + QueryableByName<diesel::mysql::Mysql> + 'static
{
}
#[cfg(feature = "mysql")]
impl<T> Row for T where
    T: QueryableByName<Pg>
        + QueryableByName<Sqlite>
        + QueryableByName<diesel::mysql::Mysql>
        + 'static
{
}
#[cfg(not(feature = "mysql"))]
trait Row: QueryableByName<Pg> + QueryableByName<Sqlite> + 'static {}
#[cfg(not(feature = "mysql"))]
impl<T> Row for T where T: QueryableByName<Pg> + QueryableByName<Sqlite> + 'static {}

impl Conn {
    /// Connects to the database `url` names: `postgres://…`, `mysql://…`
    /// (or `mariadb://…`), `sqlite://path` or a plain SQLite path.
    fn to(url: &str) -> Result<Conn, String> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return PgConnection::establish(url)
                .map(Conn::Pg)
                .map_err(|e| e.to_string());
        }
        if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            return Conn::mysql(url);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let mut conn = SqliteConnection::establish(path).map_err(|e| e.to_string())?;
        // The beat may hold the write lock for a moment: wait our turn.
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .map_err(|e| e.to_string())?;
        Ok(Conn::Sqlite(conn))
    }

    #[cfg(feature = "mysql")]
    fn mysql(url: &str) -> Result<Conn, String> {
        let url = format!("mysql://{}", &url[url.find("://").map_or(0, |i| i + 3)..]);
        diesel::mysql::MysqlConnection::establish(&url)
            .map(Conn::Mysql)
            .map_err(|e| e.to_string())
    }

    #[cfg(not(feature = "mysql"))]
    fn mysql(_url: &str) -> Result<Conn, String> {
        Err("this build has no MySQL/MariaDB support (the `mysql` feature)".into())
    }

    fn execute(&mut self, sql: &str) -> Result<(), String> {
        let result = match self {
            Conn::Pg(c) => c.batch_execute(sql),
            Conn::Sqlite(c) => c.batch_execute(sql),
            #[cfg(feature = "mysql")]
            Conn::Mysql(c) => c.batch_execute(sql),
        };
        result.map_err(|e| e.to_string())
    }

    fn load<T: Row>(&mut self, query: &str) -> Result<Vec<T>, String> {
        let query = diesel::sql_query(query);
        let result = match self {
            Conn::Pg(c) => query.load(c),
            Conn::Sqlite(c) => query.load(c),
            #[cfg(feature = "mysql")]
            Conn::Mysql(c) => query.load(c),
        };
        result.map_err(|e| e.to_string())
    }
}

/// Runs `sql` (one or more statements) on the database `url` names:
/// `postgres://…`, `mysql://…`, `sqlite://path` or a plain SQLite path.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    Conn::to(url)?.execute(sql)
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The number `query` returns (one row, one BIGINT column named `n`).
pub fn number(url: &str, query: &str) -> Result<i64, String> {
    let rows: Vec<Number> = Conn::to(url)?.load(query)?;
    rows.first()
        .map(|r| r.n)
        .ok_or_else(|| format!("no row from {query}"))
}

/// Whether the routine called `name` is marked edited (`needs_sync`): the
/// triggers' mark, which the beat clears when it plans the row.
pub fn needs_sync(url: &str, name: &str) -> bool {
    let query = format!("SELECT COUNT(*) AS n FROM routines WHERE name = '{name}' AND needs_sync");
    number(url, &query).expect("reading needs_sync") > 0
}

/// Whether the row of id `id` lost its name to another (`name_unique` is
/// NULL for every row but the one that runs).
pub fn duplicate_name(url: &str, id: &str) -> bool {
    let query =
        format!("SELECT COUNT(*) AS n FROM routines WHERE id = '{id}' AND name_unique IS NULL");
    number(url, &query).expect("reading name_unique") > 0
}

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    s: String,
}

/// The texts `query` returns (one TEXT column named `s`), in its order.
pub fn texts(url: &str, query: &str) -> Result<Vec<String>, String> {
    let rows: Vec<Text> = Conn::to(url)?.load(query)?;
    Ok(rows.into_iter().map(|r| r.s).collect())
}

/// The schema as the database's catalog describes it: tables and their
/// columns, indexes, constraints, triggers and functions, one line each,
/// sorted; and the migrations recorded, with when each ran.
pub fn schema(url: &str) -> Vec<String> {
    let lower = url.to_ascii_lowercase();
    let queries: &[&str] = if lower.starts_with("postgres") {
        &[
            "SELECT CONCAT_WS(' ', table_name, column_name, data_type, character_maximum_length, \
             is_nullable, column_default) AS s FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1",
            "SELECT indexdef AS s FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
            "SELECT CONCAT_WS(' ', conrelid::regclass, conname, pg_get_constraintdef(oid)) AS s \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
            "SELECT CONCAT_WS(' ', event_object_table, trigger_name, action_timing, \
             event_manipulation, action_condition, action_statement) AS s \
             FROM information_schema.triggers ORDER BY 1",
            "SELECT CONCAT_WS(' ', p.proname, md5(p.prosrc)) AS s FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1",
            "SELECT CONCAT_WS(' ', version, run_on) AS s FROM __diesel_schema_migrations ORDER BY 1",
        ]
    } else if lower.starts_with("mysql") || lower.starts_with("mariadb") {
        &[
            "SELECT CONCAT_WS(' ', table_name, column_name, column_type, is_nullable, \
             column_default, extra) AS s FROM information_schema.columns \
             WHERE table_schema = DATABASE() ORDER BY 1",
            "SELECT CONCAT_WS(' ', table_name, index_name, seq_in_index, column_name, non_unique) AS s \
             FROM information_schema.statistics WHERE table_schema = DATABASE() ORDER BY 1",
            "SELECT CONCAT_WS(' ', event_object_table, trigger_name, action_timing, \
             event_manipulation, MD5(action_statement)) AS s FROM information_schema.triggers \
             WHERE trigger_schema = DATABASE() ORDER BY 1",
            "SELECT CONCAT_WS(' ', routine_name, MD5(routine_definition)) AS s \
             FROM information_schema.routines WHERE routine_schema = DATABASE() ORDER BY 1",
            "SELECT CONCAT_WS(' ', version, run_on) AS s FROM __diesel_schema_migrations ORDER BY 1",
        ]
    } else {
        &[
            "SELECT type || ' ' || name || ' ' || COALESCE(sql, '') AS s FROM sqlite_master ORDER BY 1",
            "SELECT version || ' ' || run_on AS s FROM __diesel_schema_migrations ORDER BY 1",
        ]
    };
    queries
        .iter()
        .flat_map(|q| texts(url, q).unwrap_or_else(|e| panic!("{q}: {e}")))
        .collect()
}
