//! The connections a policy's `sql:read` grant queries through: never the jobs' pool, and
//! unable to write by construction.
//!
//! - SQLite: the file opened read-only (`SQLITE_OPEN_READONLY`), attaching impossible
//!   (`SQLITE_LIMIT_ATTACHED` = 0) and an authorizer that allows reading and nothing else
//!   (no pragma, no ATTACH, no write, no transaction, no extension or file function).
//! - PostgreSQL: connections of their own (the target's `policy_url`, else its `url`), each
//!   checked when it opens: a superuser, a member of `pg_read_server_files`,
//!   `pg_write_server_files` or `pg_execute_server_program`, or a role that can use warden's
//!   own schema is refused, with the SQL that creates a proper role. Every connection starts
//!   read-only (`default_transaction_read_only`) under a statement timeout.
//!
//! The statement itself is checked first by `capabilities::sql::guard`; these are the walls
//! that hold when a check of ours does not.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::config::DbUrl;

/// The longest a granted statement may run, on the server and in the host.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections a policy pool keeps: policies query rarely and briefly.
const POLICY_CONNECTIONS: u32 = 2;

/// A read-only pool for the policies granted one database.
#[derive(Debug, Clone)]
pub enum PolicyDb {
    Sqlite(SqlitePool),
    Postgres(Box<PgPolicy>),
}

/// The PostgreSQL side: the pool, how it connects (for `verify`), and the last refusal of
/// its role, so calls meanwhile are told why at once instead of waiting for the pool.
#[derive(Debug, Clone)]
pub struct PgPolicy {
    pub pool: PgPool,
    options: PgConnectOptions,
    refused: Arc<Mutex<Option<(String, Instant)>>>,
}

/// How long a refused role is taken as refused before a call tries to connect again.
const REFUSAL_HELD: Duration = Duration::from_secs(60);

impl PgPolicy {
    /// Why the role was refused, if it was within the last minute.
    pub fn refused(&self) -> Option<String> {
        let held = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().filter(|(_, at)| at.elapsed() < REFUSAL_HELD).map(|(why, _)| why.clone())
    }
}

/// What checking a grant's connection found.
#[derive(Debug)]
pub enum Verified {
    Ok,
    /// The database did not answer: the check runs again on every connection it opens.
    Unreachable(String),
    Refused(String),
}

impl PolicyDb {
    /// Opens lazily: nothing connects until a policy queries (or `verify` runs).
    pub fn open(target: &DbUrl, policy_url: Option<&str>) -> Result<Self, sqlx::Error> {
        match target {
            DbUrl::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .create_if_missing(false)
                    .busy_timeout(Duration::from_secs(1));
                let pool = SqlitePoolOptions::new()
                    .max_connections(POLICY_CONNECTIONS)
                    .acquire_timeout(STATEMENT_TIMEOUT)
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            let mut handle = conn.lock_handle().await?;
                            sqlite_seal::seal(handle.as_raw_handle());
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                Ok(PolicyDb::Sqlite(pool))
            }
            DbUrl::Postgres(url) => {
                let url = policy_url.unwrap_or(url);
                let options = PgConnectOptions::from_str(url)?.application_name("warden-policy").options([
                    ("default_transaction_read_only", "on".to_owned()),
                    ("statement_timeout", STATEMENT_TIMEOUT.as_millis().to_string()),
                    ("lock_timeout", "1000".to_owned()),
                    ("idle_in_transaction_session_timeout", "10000".to_owned()),
                ]);
                let refused: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
                let held = refused.clone();
                let pool = PgPoolOptions::new()
                    .max_connections(POLICY_CONNECTIONS)
                    .acquire_timeout(STATEMENT_TIMEOUT)
                    .idle_timeout(Duration::from_secs(300))
                    // As the jobs' pools: a ping only after a while idle, not on every call.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            Ok(meta.idle_for <= crate::db::PING_IDLE_AFTER
                                || sqlx::Connection::ping(conn).await.is_ok())
                        })
                    })
                    // Nothing a call did outlives it: its transaction is rolled back (which
                    // undoes any setting it made) and no session-level advisory lock stays
                    // held. Done as the connection goes back, off the caller's time; one that
                    // cannot be reset is closed.
                    .after_release(|conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql("ROLLBACK; SELECT pg_advisory_unlock_all()").execute(conn).await.map(|_| true)
                        })
                    })
                    .after_connect(move |conn, _| {
                        let held = held.clone();
                        Box::pin(async move {
                            let verdict = check_role(conn).await?;
                            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                            *held = verdict.clone().map(|why| (why, Instant::now()));
                            match verdict {
                                None => Ok(()),
                                Some(why) => Err(sqlx::Error::Configuration(why.into())),
                            }
                        })
                    })
                    .connect_lazy_with(options.clone());
                Ok(PolicyDb::Postgres(Box::new(PgPolicy { pool, options, refused })))
            }
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, PolicyDb::Sqlite(_))
    }

    /// Opens one connection now, which runs the role check; `state` is warden's own store,
    /// which a grant must not reach.
    pub async fn verify(&self, target: &DbUrl, state: &DbUrl) -> Verified {
        if let (DbUrl::Sqlite(t), DbUrl::Sqlite(s)) = (target, state)
            && same_file(t, s)
        {
            return Verified::Refused(format!(
                "the target database {} is warden's own state file: a policy reading it would read warden's \
                 state and secrets; keep the state in a file of its own ([state] url)",
                t.display()
            ));
        }
        match self {
            PolicyDb::Sqlite(p) => match p.acquire().await {
                Ok(_) => Verified::Ok,
                Err(e) => Verified::Unreachable(e.to_string()),
            },
            // One connection of its own, not the pool's: the pool retries a refused
            // connection until its timeout and keeps only that it timed out.
            PolicyDb::Postgres(pg) => {
                let mut conn = match sqlx::ConnectOptions::connect(&pg.options).await {
                    Ok(conn) => conn,
                    Err(e) => return Verified::Unreachable(e.to_string()),
                };
                let verdict = check_role(&mut conn).await;
                let _ = sqlx::Connection::close(conn).await;
                match verdict {
                    Ok(None) => Verified::Ok,
                    Ok(Some(why)) => Verified::Refused(why),
                    Err(e) => Verified::Unreachable(e.to_string()),
                }
            }
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Why a PostgreSQL connection's role may not serve a grant (it could leave the database or
/// read warden's state); `None`: it may.
async fn check_role(conn: &mut sqlx::PgConnection) -> Result<Option<String>, sqlx::Error> {
    let row: (String, String, bool, bool, bool, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, current_database()::text, r.rolsuper, \
           pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'), \
           pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'), \
           pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'), \
           EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = $1 AND has_schema_privilege(n.oid, 'USAGE')) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .bind(crate::store::PG_SCHEMA)
    .fetch_one(&mut *conn)
    .await?;
    let (role, database, superuser, read_files, write_files, programs, state) = row;
    let why = if superuser {
        "a superuser"
    } else if read_files || write_files || programs {
        "a member of pg_read_server_files, pg_write_server_files or pg_execute_server_program"
    } else if state {
        "able to use warden's own schema"
    } else {
        return Ok(None);
    };
    Ok(Some(role_advice(&role, &database, why)))
}

/// The refusal, with the few lines of SQL that make a role a grant may use.
pub fn role_advice(role: &str, database: &str, why: &str) -> String {
    let db = database.replace('"', "\"\"");
    format!(
        "the sql:read grant's connection logs in as `{role}`, {why}: a policy could reach the server's files, \
         programs or warden's state through it. Give policies a role of their own:\n\
         \x20   CREATE ROLE warden_policy LOGIN PASSWORD '…';\n\
         \x20   GRANT CONNECT ON DATABASE \"{db}\" TO warden_policy;\n\
         \x20   GRANT USAGE ON SCHEMA public TO warden_policy;\n\
         \x20   GRANT SELECT ON ALL TABLES IN SCHEMA public TO warden_policy;\n\
         and name it in schedules.toml: policy_url = \"postgres://warden_policy:…@HOST/{database}\" under [targets] \
         (or the [targets.databases.NAME] the grant names)"
    )
}

/// The raw SQLite calls sqlx does not wrap: the attach limit and the authorizer.
#[allow(unsafe_code)]
mod sqlite_seal {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::ptr::NonNull;

    use libsqlite3_sys as ffi;

    /// Functions the authorizer refuses: native code and files.
    const REFUSED: &[&[u8]] = &[b"load_extension", b"readfile", b"writefile", b"edit", b"fts3_tokenizer"];

    pub fn seal(db: NonNull<ffi::sqlite3>) {
        // SAFETY: `db` is an open connection, held exclusively by sqlx's lock for this call;
        // both functions only set fields of the connection. The callback is a plain function
        // with no user data.
        unsafe {
            ffi::sqlite3_limit(db.as_ptr(), ffi::SQLITE_LIMIT_ATTACHED, 0);
            ffi::sqlite3_set_authorizer(db.as_ptr(), Some(authorize), std::ptr::null_mut());
        }
    }

    /// Reading is allowed; everything else (writes, DDL, pragmas, ATTACH, transactions,
    /// savepoints, ANALYZE, the refused functions) is denied when the statement is prepared.
    unsafe extern "C" fn authorize(
        _: *mut c_void,
        action: c_int,
        _: *const c_char,
        function: *const c_char,
        _: *const c_char,
        _: *const c_char,
    ) -> c_int {
        match action {
            ffi::SQLITE_SELECT | ffi::SQLITE_READ | ffi::SQLITE_RECURSIVE => ffi::SQLITE_OK,
            ffi::SQLITE_FUNCTION if !function.is_null() => {
                // SAFETY: for SQLITE_FUNCTION SQLite passes the function's name, a
                // NUL-terminated string valid for this call.
                let name = unsafe { CStr::from_ptr(function) }.to_bytes().to_ascii_lowercase();
                if REFUSED.contains(&name.as_slice()) { ffi::SQLITE_DENY } else { ffi::SQLITE_OK }
            }
            _ => ffi::SQLITE_DENY,
        }
    }
}
