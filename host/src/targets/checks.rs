//! The connections the `db` and `sql` checks run on: at most one per slot, opened on first
//! use and kept between checks. This is a pool without sqlx's ping on release: sqlx's pool
//! pings every connection it takes back (a round trip to a SQLite connection's thread, or
//! to the server), as many round trips as the check's `SELECT 1` itself, 333 a second for
//! 10,000 probes every 30 s.
//!
//! A connection goes back only after its statement completed, or failed with the
//! database's own answer; one whose check timed out (its future dropped mid-statement) or
//! whose connection broke is closed, so the next check opens a fresh one and never reads
//! an answer meant for another. A Postgres connection idle for a while is pinged before
//! its check runs (the server may have closed it), as the pool's hand-out does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db::{PING_IDLE_AFTER, Pool};

/// A connection older than this is closed when its check ends (the server's memory for a
/// session grows with what it ran; the pool's default lifetime).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The checks' connections to one database, and the slots that bound them.
#[derive(Debug)]
pub struct CheckConnections {
    /// The pool whose options the connections are opened with.
    pool: Pool,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Conn {
    async fn close(self) {
        let _ = match self {
            Conn::Sqlite(c) => c.close().await,
            Conn::Postgres(c) => c.close().await,
        };
    }
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    opened: Instant,
    since: Instant,
}

/// A slot taken: a check may now open or reuse a connection. Taken before the check's clock
/// starts, so waiting for one is warden's queue, not the target's time.
pub struct Slot<'a> {
    owner: &'a CheckConnections,
    _permit: OwnedSemaphorePermit,
}

impl CheckConnections {
    pub fn new(pool: Pool, slots: usize) -> Self {
        Self { pool, slots: Arc::new(Semaphore::new(slots)), idle: Mutex::new(Vec::new()) }
    }

    /// Waits for a free slot.
    pub async fn slot(&self) -> Slot<'_> {
        let permit = self.slots.clone().acquire_owned().await.expect("the check slots are never closed");
        Slot { owner: self, _permit: permit }
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    fn put_back(&self, idle: Idle) {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(idle);
    }
}

impl Slot<'_> {
    /// Runs `sql` on a kept connection (or a new one); `fetch_one`: the statement must
    /// return a row. The database's message on failure.
    pub async fn run(&self, sql: &str, fetch_one: bool) -> Result<(), String> {
        let (mut conn, opened) = self.connection().await.map_err(|e| e.to_string())?;
        macro_rules! fetch {
            ($conn:expr) => {{
                let query = sqlx::query(sqlx::AssertSqlSafe(sql));
                if fetch_one {
                    query.fetch_one($conn).await.map(|_| ())
                } else {
                    query.fetch_optional($conn).await.map(|_| ())
                }
            }};
        }
        let result = match &mut conn {
            Conn::Sqlite(c) => fetch!(c),
            Conn::Postgres(c) => fetch!(c),
        };
        // The database answered (a row, or its own refusal): the connection is sound.
        let sound = matches!(&result, Ok(()) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound));
        if sound && opened.elapsed() < MAX_LIFETIME {
            self.owner.put_back(Idle { conn, opened, since: Instant::now() });
        } else if sound {
            // Said goodbye to off the check's clock.
            tokio::spawn(conn.close());
        }
        result.map_err(|e| e.to_string())
    }

    /// A kept connection (pinged first when it is a Postgres one idle for a while), or a
    /// new one.
    async fn connection(&self) -> Result<(Conn, Instant), sqlx::Error> {
        while let Some(Idle { mut conn, opened, since }) = self.owner.take_idle() {
            match &mut conn {
                Conn::Postgres(c) if since.elapsed() > PING_IDLE_AFTER => {
                    if c.ping().await.is_ok() {
                        return Ok((conn, opened));
                    }
                }
                _ => return Ok((conn, opened)),
            }
        }
        let conn = match &self.owner.pool {
            Pool::Sqlite(p) => Conn::Sqlite(p.connect_options().connect().await?),
            Pool::Postgres(p) => Conn::Postgres(p.connect_options().connect().await?),
        };
        Ok((conn, Instant::now()))
    }
}
