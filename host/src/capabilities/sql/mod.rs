//! `warden:policy/sql` (grant "sql:read"): one query on the granted database, checked by
//! `guard` and run on the policies' own read-only connections (`targets::policy`), under a
//! statement timeout, returning at most `limits.sql_rows` rows.

use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::{Column, Row};

use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::sql::{Cell, Host};
use crate::targets::PolicyDb;
use crate::targets::policy::STATEMENT_TIMEOUT;

pub mod guard;

impl Host for PluginCtx {
    async fn query(&mut self, statement: String) -> wasmtime::Result<Result<Vec<Vec<Cell>>, String>> {
        if !self.grants.sql_read {
            return Ok(Err("sql:read is not granted to this policy (add \"sql:read\" to its `grants`)".into()));
        }
        let Some(db) = self.caps.sql.clone() else {
            return Ok(Err("no target database to query".into()));
        };
        let backend = if db.is_sqlite() { guard::Backend::Sqlite } else { guard::Backend::Postgres };
        if let Err(refused) = guard::check(backend, &statement) {
            return Ok(Err(refused));
        }
        Ok(read_only(&db, &statement, self.limits.sql_rows as usize).await)
    }
}

/// Runs the checked statement. A connection a call did not leave clean (timed out, or its
/// transaction not ended) is closed instead of going back to the pool.
pub async fn read_only(db: &PolicyDb, statement: &str, cap: usize) -> Result<Vec<Vec<Cell>>, String> {
    let text = sqlx::AssertSqlSafe(statement.to_owned());
    let timed_out = || format!("statement timed out after {}s", STATEMENT_TIMEOUT.as_secs());
    match db {
        PolicyDb::Postgres(pg) => {
            if let Some(why) = pg.refused() {
                return Err(why);
            }
            let mut conn = pg.pool.acquire().await.map_err(|e| pg.refused().unwrap_or_else(|| e.to_string()))?;
            // The pool's release rolls the transaction back and drops advisory locks
            // (`targets::policy`), so the caller waits for two round trips, not four.
            let run = async {
                sqlx::raw_sql("BEGIN READ ONLY").execute(&mut *conn).await.map_err(|e| e.to_string())?;
                collect(sqlx::query(text).fetch(&mut *conn), cap).await
            };
            match tokio::time::timeout(STATEMENT_TIMEOUT + std::time::Duration::from_secs(1), run).await {
                Ok(rows) => rows,
                Err(_) => {
                    // Cut off mid-statement: the connection's state is unknown, so it goes.
                    conn.close_on_drop();
                    Err(timed_out())
                }
            }
        }
        PolicyDb::Sqlite(lite) => {
            let mut conn = lite.acquire().await.map_err(|e| e.to_string())?;
            // SQLite has no statement timeout: a progress handler interrupts the statement
            // at the deadline (a single step of a runaway query never yields otherwise).
            let deadline = Instant::now() + STATEMENT_TIMEOUT;
            conn.lock_handle()
                .await
                .map_err(|e| e.to_string())?
                .set_progress_handler(10_000, move || Instant::now() < deadline);
            let rows = collect(sqlx::query(text).fetch(&mut *conn), cap).await;
            match rows {
                Err(e) if e.contains("interrupted") => Err(timed_out()),
                other => other,
            }
        }
    }
}

async fn collect<R, S>(mut rows: S, cap: usize) -> Result<Vec<Vec<Cell>>, String>
where
    R: Row,
    S: futures_util::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(|e| e.to_string())? {
        if out.len() == cap {
            return Err(format!("more than {cap} rows; add a LIMIT"));
        }
        let cells = (0..row.columns().len())
            .map(|i| {
                if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                    v.map_or(Cell::Null, Cell::Integer)
                } else if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
                    v.map_or(Cell::Null, |v| Cell::Integer(i64::from(v)))
                } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                    v.map_or(Cell::Null, Cell::Real)
                } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                    v.map_or(Cell::Null, |b| Cell::Integer(i64::from(b)))
                } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                    v.map_or(Cell::Null, Cell::Text)
                } else {
                    Cell::Text(format!("<unsupported {} value>", row.columns()[i].name()))
                }
            })
            .collect();
        out.push(cells);
    }
    Ok(out)
}
