//! Raw SQL, as an operator runs it at a SQL prompt: for the tests and the
//! benchmark, which create databases, seed rows and edit them the way a
//! person would. The library offers no raw SQL; this goes through Diesel
//! directly, on a connection of its own (so on MySQL the edit triggers see
//! the edit, as they see any session but the beat's).

use diesel::connection::{Connection, SimpleConnection};

/// Runs `sql` (one or more statements) on the database `url` names:
/// `postgres://…`, `mysql://…`, `sqlite://path` or a plain SQLite path.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let run = |conn: &mut dyn SimpleConnection| conn.batch_execute(sql).map_err(|e| e.to_string());
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let mut conn = diesel::pg::PgConnection::establish(url).map_err(|e| e.to_string())?;
        return run(&mut conn);
    }
    if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        return mysql(url, sql);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let mut conn = diesel::sqlite::SqliteConnection::establish(path).map_err(|e| e.to_string())?;
    // The beat may hold the write lock for a moment: wait our turn.
    conn.batch_execute("PRAGMA busy_timeout = 10000")
        .map_err(|e| e.to_string())?;
    run(&mut conn)
}

#[cfg(feature = "mysql")]
fn mysql(url: &str, sql: &str) -> Result<(), String> {
    let url = format!("mysql://{}", &url[url.find("://").map_or(0, |i| i + 3)..]);
    let mut conn = diesel::mysql::MysqlConnection::establish(&url).map_err(|e| e.to_string())?;
    conn.batch_execute(sql).map_err(|e| e.to_string())
}

#[cfg(not(feature = "mysql"))]
fn mysql(_url: &str, _sql: &str) -> Result<(), String> {
    Err("this build has no MySQL/MariaDB support (the `mysql` feature)".into())
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The number `query` returns (one row, one BIGINT column named `n`).
pub fn number(url: &str, query: &str) -> Result<i64, String> {
    use diesel::RunQueryDsl;
    let lower = url.to_ascii_lowercase();
    let rows: Vec<Number> = if lower.starts_with("postgres") {
        let mut conn = diesel::pg::PgConnection::establish(url).map_err(|e| e.to_string())?;
        diesel::sql_query(query)
            .load(&mut conn)
            .map_err(|e| e.to_string())?
    } else if lower.starts_with("mysql") || lower.starts_with("mariadb") {
        return mysql_number(url, query);
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let mut conn =
            diesel::sqlite::SqliteConnection::establish(path).map_err(|e| e.to_string())?;
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .map_err(|e| e.to_string())?;
        diesel::sql_query(query)
            .load(&mut conn)
            .map_err(|e| e.to_string())?
    };
    rows.first()
        .map(|r| r.n)
        .ok_or_else(|| format!("no row from {query}"))
}

#[cfg(feature = "mysql")]
fn mysql_number(url: &str, query: &str) -> Result<i64, String> {
    use diesel::RunQueryDsl;
    let url = format!("mysql://{}", &url[url.find("://").map_or(0, |i| i + 3)..]);
    let mut conn = diesel::mysql::MysqlConnection::establish(&url).map_err(|e| e.to_string())?;
    let rows: Vec<Number> = diesel::sql_query(query)
        .load(&mut conn)
        .map_err(|e| e.to_string())?;
    rows.first()
        .map(|r| r.n)
        .ok_or_else(|| format!("no row from {query}"))
}

#[cfg(not(feature = "mysql"))]
fn mysql_number(_url: &str, _query: &str) -> Result<i64, String> {
    Err("this build has no MySQL/MariaDB support (the `mysql` feature)".into())
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
