//! `warden:policy/sql` (grant "sql:read"): one query on the target database in a READ ONLY
//! transaction, under a statement timeout, returning at most `limits.sql_rows` rows.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{Column, Row};

use crate::db::Pool;
use crate::runtime::PluginCtx;
use crate::runtime::bindings::warden::policy::sql::{Cell, Host};

/// The longest a granted query may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl Host for PluginCtx {
    async fn query(&mut self, statement: String) -> wasmtime::Result<Result<Vec<Vec<Cell>>, String>> {
        if !self.grants.sql_read {
            return Ok(Err("sql:read is not granted to this policy (add \"sql:read\" to its `grants`)".into()));
        }
        let Some(pool) = self.caps.sql.clone() else {
            return Ok(Err("no target database to query".into()));
        };
        let cap = self.limits.sql_rows as usize;
        let run = read_only(&pool, &statement, cap);
        Ok(match tokio::time::timeout(STATEMENT_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(format!("statement timed out after {}s", STATEMENT_TIMEOUT.as_secs())),
        })
    }
}

async fn read_only(pool: &Pool, statement: &str, cap: usize) -> Result<Vec<Vec<Cell>>, String> {
    let text = sqlx::AssertSqlSafe(statement.to_owned());
    match pool {
        Pool::Postgres(pg) => {
            let mut tx = pg.begin().await.map_err(|e| e.to_string())?;
            let timeout = format!("SET LOCAL statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
            sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await.map_err(|e| e.to_string())?;
            sqlx::query(sqlx::AssertSqlSafe(timeout)).execute(&mut *tx).await.map_err(|e| e.to_string())?;
            let rows = collect(sqlx::query(text).fetch(&mut *tx), cap).await;
            tx.rollback().await.map_err(|e| e.to_string())?;
            rows
        }
        Pool::Sqlite(lite) => {
            let mut conn = lite.acquire().await.map_err(|e| e.to_string())?;
            sqlx::query("PRAGMA query_only = 1").execute(&mut *conn).await.map_err(|e| e.to_string())?;
            let rows = collect(sqlx::query(text).fetch(&mut *conn), cap).await;
            sqlx::query("PRAGMA query_only = 0").execute(&mut *conn).await.map_err(|e| e.to_string())?;
            rows
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
