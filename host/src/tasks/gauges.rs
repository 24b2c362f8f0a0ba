//! Gauge tasks: the target pool, Postgres connection use, and `sql-gauge` queries.

use sqlx::{Column, Row};

use super::{Event, Gauge, TaskError, TaskOutput};
use crate::config::PerBackend;
use crate::db::Pool;
use crate::with_pool;

/// Most rows a `sql-gauge` query may turn into gauges.
const MAX_GAUGE_ROWS: usize = 1000;

fn gauge(name: &str, value: f64) -> Gauge {
    Gauge { name: name.to_owned(), labels: Vec::new(), value }
}

/// warden's pool to the target: open, idle, active and maximum connections.
pub fn pool_stats(pool: &Pool) -> TaskOutput {
    let (size, idle, max) = pool.stats();
    let gauges = vec![
        gauge("db_pool_size", f64::from(size)),
        gauge("db_pool_idle", f64::from(idle)),
        gauge("db_pool_active", f64::from(size.saturating_sub(idle))),
        gauge("db_pool_max", f64::from(max)),
    ];
    TaskOutput { event: Some(Event::Gauges { gauges }), ..Default::default() }
}

/// Client backends against `max_connections` (Postgres); "not applicable" on SQLite.
pub async fn pg_activity(pool: &Pool) -> Result<TaskOutput, TaskError> {
    let Pool::Postgres(pg) = pool else {
        return Ok(TaskOutput { detail: Some("not applicable: the target is SQLite".into()), ..Default::default() });
    };
    let (backends, max): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::float8, \
                current_setting('max_connections')::float8",
    )
    .fetch_one(pg)
    .await?;
    let gauges = vec![
        gauge("pg_client_backends", backends),
        gauge("pg_max_connections", max),
        gauge("pg_connection_ratio", if max > 0.0 { backends / max } else { 0.0 }),
    ];
    let detail = format!("{backends} of {max} connections");
    Ok(TaskOutput { detail: Some(detail), event: Some(Event::Gauges { gauges }), ..Default::default() })
}

/// Each row of the query becomes gauges: text columns are labels, numeric columns are
/// values named `<metric>_<column>`.
pub async fn sql_gauge(pool: &Pool, metric: &str, query: &PerBackend) -> Result<TaskOutput, TaskError> {
    let sql = query.for_sqlite(pool.is_sqlite()).ok_or(TaskError::NoSqlForBackend { backend: pool.backend() })?;
    let mut gauges = Vec::new();
    let rows = with_pool!(pool, |p| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?;
        rows.iter().take(MAX_GAUGE_ROWS).map(read_row).collect::<Vec<_>>()
    });
    let row_count = rows.len();
    for (labels, values) in rows {
        for (column, value) in values {
            gauges.push(Gauge { name: format!("{metric}_{column}"), labels: labels.clone(), value });
        }
    }
    let detail = format!("{row_count} rows, {} gauges", gauges.len());
    Ok(TaskOutput { detail: Some(detail), event: Some(Event::Gauges { gauges }), ..Default::default() })
}

type Labels = Vec<(String, String)>;

fn read_row<R>(row: &R) -> (Labels, Vec<(String, f64)>)
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name().to_owned();
        if let Ok(v) = row.try_get::<f64, _>(i) {
            values.push((name, v));
        } else if let Ok(v) = row.try_get::<i64, _>(i) {
            values.push((name, v as f64));
        } else if let Ok(v) = row.try_get::<i32, _>(i) {
            values.push((name, f64::from(v)));
        } else if let Ok(v) = row.try_get::<String, _>(i) {
            labels.push((name, v));
        }
    }
    (labels, values)
}
