//! Maintenance tasks: `prune` (rows older than a retention) and `sql` (a statement run in
//! batches), both in small batches under a time budget so no statement holds locks long.

use std::time::Instant;

use chrono::Utc;

use super::{TaskError, TaskOutput, budget_spent};
use crate::config::{Prune, SqlStatement};
use crate::db::{Pool, Ts, quote_ident};
use crate::with_pool;

/// Deletes rows whose `column` is older than the retention, `batch_size` at a time.
pub async fn prune(pool: &Pool, prune: &Prune) -> Result<TaskOutput, TaskError> {
    let cutoff = Ts(Utc::now() - prune.older_than.chrono());
    let table = quote_ident(&prune.table);
    let column = quote_ident(&prune.column);
    // The row handle differs: `rowid` on SQLite, `ctid` on Postgres.
    let row_id = if pool.is_sqlite() { "rowid" } else { "ctid" };
    let sql =
        format!("DELETE FROM {table} WHERE {row_id} IN (SELECT {row_id} FROM {table} WHERE {column} < $1 LIMIT $2)");
    let batch = i64::try_from(prune.batch_size).unwrap_or(i64::MAX);
    let started = Instant::now();
    let (mut total, mut batches) = (0u64, 0u32);
    loop {
        let n = with_pool!(pool, |p| sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected());
        total += n;
        batches += 1;
        if n < prune.batch_size {
            break;
        }
        if budget_spent(started, prune.time_budget.std()) {
            return Ok(budget_note(total, batches));
        }
    }
    Ok(TaskOutput {
        rows_affected: Some(total),
        detail: Some(format!("{total} rows in {batches} batches")),
        event: None,
    })
}

/// Runs the statement (with `{batch}` replaced) until it affects no rows.
pub async fn sql_batches(pool: &Pool, task: &SqlStatement) -> Result<TaskOutput, TaskError> {
    let text =
        task.statement.for_sqlite(pool.is_sqlite()).ok_or(TaskError::NoSqlForBackend { backend: pool.backend() })?;
    let sql = text.replace("{batch}", &task.batch_size.to_string());
    let started = Instant::now();
    let (mut total, mut batches) = (0u64, 0u32);
    loop {
        let n = with_pool!(pool, |p| sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(p).await?.rows_affected());
        total += n;
        batches += 1;
        if n == 0 {
            break;
        }
        if budget_spent(started, task.time_budget.std()) {
            return Ok(budget_note(total, batches));
        }
    }
    Ok(TaskOutput {
        rows_affected: Some(total),
        detail: Some(format!("{total} rows in {batches} batches")),
        event: None,
    })
}

fn budget_note(total: u64, batches: u32) -> TaskOutput {
    TaskOutput {
        rows_affected: Some(total),
        detail: Some(format!("{total} rows in {batches} batches; time budget reached, the rest goes next run")),
        event: None,
    }
}
