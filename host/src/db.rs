//! Database pools for both roles (target and state store), on SQLite or PostgreSQL.
//!
//! SQL that is the same on both backends is written once with `$1` placeholders (sqlx's
//! SQLite driver reads them too); what differs is written beside its use or in the
//! migrations.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Database, Decode, Encode, PgPool, Postgres, Sqlite, SqlitePool, Type};

use crate::config::DbUrl;

/// A pool on one of the two backends.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
#[macro_export]
macro_rules! with_pool {
    ($pool_expr:expr, |$pool:ident| $body:expr) => {
        match $pool_expr {
            $crate::db::Pool::Sqlite($pool) => $body,
            $crate::db::Pool::Postgres($pool) => $body,
        }
    };
}

/// How a pool is opened.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Open connections on first use, so warden starts while the database is down.
    pub lazy: bool,
    /// A SQLite file warden keeps (its state, or the demo application it creates): created
    /// when missing, in WAL mode. An application's file is opened as it is: a missing one
    /// is a failure to report, and its journal mode is the application's (switching it
    /// needs a lock no busy timeout waits for, so a probe would fail while the
    /// application reads).
    pub warden_owns: bool,
}

/// A Postgres connection idle longer than this is pinged before it is used again (the
/// pool's hand-out, and the checks' kept connections in `targets::checks`).
pub(crate) const PING_IDLE_AFTER: Duration = Duration::from_secs(10);

impl Pool {
    pub async fn open(url: &DbUrl, settings: PoolSettings, pg_schema: Option<&str>) -> Result<Self, sqlx::Error> {
        match url {
            DbUrl::Sqlite(path) => {
                if settings.warden_owns
                    && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = SqliteConnectOptions::new().filename(path).busy_timeout(Duration::from_secs(5));
                if settings.warden_owns {
                    options = options
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        // In WAL mode NORMAL is crash-safe for the process (a commit survives
                        // warden being killed); only an OS crash or power loss can undo the
                        // last commits. FULL would sync on every commit: 10,000 runs a round.
                        .synchronous(SqliteSynchronous::Normal);
                    // A statement that writes many rows inside a transaction (a group
                    // commit's) keeps a statement journal; past 64 KiB SQLite spills it to a
                    // temporary file, created and deleted on disk for every such statement.
                    options = options.pragma("temp_store", "memory");
                }
                // A file does not hang up: no ping before each hand-out (a round trip to the
                // connection's thread, as many as the statement itself).
                let pool = SqlitePoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .test_before_acquire(false);
                let pool =
                    if settings.lazy { pool.connect_lazy_with(options) } else { pool.connect_with(options).await? };
                Ok(Pool::Sqlite(pool))
            }
            DbUrl::Postgres(url) => {
                let mut options = PgConnectOptions::from_str(url)?;
                if let Some(schema) = pg_schema {
                    options = options.options([("search_path", schema)]);
                }
                // A connection is pinged when it goes back to the pool; one handed out again
                // soon after needs no second ping (a round trip per statement), one idle for
                // a while does (the server may have closed it meanwhile).
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            // A failed ping: the pool drops it and hands out another.
                            Ok(meta.idle_for <= PING_IDLE_AFTER || sqlx::Connection::ping(conn).await.is_ok())
                        })
                    });
                let pool =
                    if settings.lazy { pool.connect_lazy_with(options) } else { pool.connect_with(options).await? };
                Ok(Pool::Postgres(pool))
            }
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Pool::Sqlite(_))
    }

    pub fn backend(&self) -> &'static str {
        if self.is_sqlite() { "sqlite" } else { "postgres" }
    }

    /// (open connections, idle connections, configured maximum).
    pub fn stats(&self) -> (u32, u32, u32) {
        with_pool!(self, |p| (
            p.size(),
            u32::try_from(p.num_idle()).unwrap_or(u32::MAX),
            p.options().get_max_connections()
        ))
    }

    /// Runs a statement and returns the rows it affected.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(with_pool!(self, |p| sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(p).await?.rows_affected()))
    }

    pub async fn close(&self) {
        with_pool!(self, |p| p.close().await)
    }
}

/// A UTC timestamp bound natively on each backend: `timestamptz` on Postgres, SQLite's
/// own `YYYY-MM-DD HH:MM:SS.SSS` text (what `datetime('now')` writes, so SQL written
/// against SQLite compares correctly with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub DateTime<Utc>);

impl Ts {
    /// The text SQLite stores, for SQL that builds rows from JSON.
    pub fn sqlite_text(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let text = self.sqlite_text();
        <String as Encode<'_, Sqlite>>::encode(text, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<'r, Sqlite>>::decode(value)?))
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut <Postgres as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<'r, Postgres>>::decode(value)?))
    }
}

/// Quotes a checked `name` or `schema.name` identifier.
pub fn quote_ident(ident: &str) -> String {
    ident.split('.').map(|part| format!("\"{part}\"")).collect::<Vec<_>>().join(".")
}
