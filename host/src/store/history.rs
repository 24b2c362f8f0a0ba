//! Reading the history back: the newest runs, pages of runs, snapshots and outbox rows,
//! and the status counts and series behind uptime and the chart.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{HealthRow, OutboxEntry, RUN_COLUMNS, RunRow, StateStore, StoreError, snapshot_of};
use crate::base::OutboxState;
use crate::db::Ts;
use crate::health::{Snapshot, Status};
use crate::with_pool;

impl StateStore {
    /// The newest run of every job that has one.
    pub async fn last_runs(&self) -> Result<HashMap<String, RunRow>, StoreError> {
        self.ready().await?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job)");
        let rows: Vec<RunRow> =
            with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(p).await?);
        Ok(rows.into_iter().map(|r| (r.job.clone(), r)).collect())
    }

    /// The latest occurrence each job actually ran (skips do not count): the input to catch-up.
    pub async fn last_ran(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        self.ready().await?;
        let sql = "SELECT job, MAX(scheduled_at) FROM job_runs WHERE outcome <> 'skipped' GROUP BY job";
        let rows: Vec<(String, Ts)> = with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?);
        Ok(rows.into_iter().map(|(job, ts)| (job, ts.0)).collect())
    }

    /// A job's runs, newest first, older than `before` (an id) when given.
    pub async fn runs_page(&self, job: &str, limit: i64, before: Option<i64>) -> Result<Vec<RunRow>, StoreError> {
        self.ready().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE job = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(job)
            .bind(before)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// Stored snapshots with their ids, newest first, within `[from, to]` when given.
    pub async fn health_page(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<(i64, Snapshot)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT id, job, checked_at, status, duration_ms, checks FROM health_history \
                   WHERE ($1 IS NULL OR checked_at >= $1) AND ($2 IS NULL OR checked_at <= $2) AND ($3 IS NULL OR id < $3) \
                   ORDER BY id DESC LIMIT $4";
        let rows: Vec<(i64, String, Ts, String, i64, String)> = with_pool!(&self.pool, |p| sqlx::query_as(sql)
            .bind(from.map(Ts))
            .bind(to.map(Ts))
            .bind(before)
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.into_iter()
            .map(|(id, job, checked_at, status, duration_ms, checks)| {
                let row = HealthRow { job, checked_at, status, duration_ms, checks };
                Ok((id, snapshot_of(row)?))
            })
            .collect()
    }

    /// Outbox rows, newest first, optionally in one state, older than `before` when given.
    pub async fn outbox_page(
        &self,
        state: Option<OutboxState>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.ready().await?;
        let sql = "SELECT id, dedup_key, kind, payload, job, policy, state, attempts, next_attempt_at, created_at, \
                   delivered_at, last_error FROM outbox WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id < $2) \
                   ORDER BY id DESC LIMIT $3";
        let state = state.map(OutboxState::as_str);
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(state).bind(before).bind(limit).fetch_all(p).await?))
    }

    /// (snapshots, of which `error`) of `jobs` since each of `since`, oldest window first
    /// (the status page's uptime over 30 d, 7 d, 24 h): one pass over the oldest window,
    /// counted in SQL.
    pub async fn uptime_windows(
        &self,
        since: [DateTime<Utc>; 3],
        jobs: &[String],
    ) -> Result<[(i64, i64); 3], StoreError> {
        self.ready().await?;
        let sql = format!(
            "SELECT count(*), count(*) FILTER (WHERE status = 'error'), \
                    count(*) FILTER (WHERE checked_at >= $3), count(*) FILTER (WHERE checked_at >= $3 AND status = 'error'), \
                    count(*) FILTER (WHERE checked_at >= $4), count(*) FILTER (WHERE checked_at >= $4 AND status = 'error') \
             FROM health_history WHERE job IN {} AND checked_at >= $2",
            self.job_list()
        );
        let jobs = serde_json::to_string(jobs).unwrap_or_default();
        let row: (i64, i64, i64, i64, i64, i64) = with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(jobs)
            .bind(Ts(since[0]))
            .bind(Ts(since[1]))
            .bind(Ts(since[2]))
            .fetch_one(p)
            .await?);
        Ok([(row.0, row.1), (row.2, row.3), (row.4, row.5)])
    }

    /// The worst status of `jobs` in each of `count` buckets of `bucket_secs` from `since`,
    /// oldest first (the status page's chart), aggregated in SQL.
    pub async fn status_buckets(
        &self,
        since: DateTime<Utc>,
        bucket_secs: i64,
        count: usize,
        jobs: &[String],
    ) -> Result<Vec<Option<Status>>, StoreError> {
        self.ready().await?;
        let bucket = if self.pool.is_sqlite() {
            "(CAST(strftime('%s', checked_at) AS INTEGER) - CAST(strftime('%s', $2) AS INTEGER)) / $3"
        } else {
            "CAST(floor(extract(epoch FROM (checked_at - $2)) / $3) AS BIGINT)"
        };
        let sql = format!(
            "SELECT {bucket} AS b, max(CASE status WHEN 'error' THEN 2 WHEN 'degraded' THEN 1 ELSE 0 END) \
             FROM health_history WHERE job IN {} AND checked_at >= $2 GROUP BY b",
            self.job_list()
        );
        let jobs = serde_json::to_string(jobs).unwrap_or_default();
        let rows: Vec<(i64, i32)> = with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(jobs)
            .bind(Ts(since))
            .bind(bucket_secs)
            .fetch_all(p)
            .await?);
        let mut out = vec![None; count];
        for (b, worst) in rows {
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| out.get_mut(b)) {
                *slot = Some(match worst {
                    2 => Status::Error,
                    1 => Status::Degraded,
                    _ => Status::Operational,
                });
            }
        }
        Ok(out)
    }

    /// Each of `jobs`' status changes since `since`, newest first, at most `max`: (when, job,
    /// from, to), found in SQL (`LAG` over each job's snapshots).
    pub async fn status_changes(
        &self,
        since: DateTime<Utc>,
        max: i64,
        jobs: &[String],
    ) -> Result<Vec<(DateTime<Utc>, String, Status, Status)>, StoreError> {
        self.ready().await?;
        let sql = format!(
            "SELECT checked_at, job, previous, status FROM ( \
               SELECT checked_at, job, status, LAG(status) OVER (PARTITION BY job ORDER BY checked_at, id) AS previous \
               FROM health_history WHERE job IN {} AND checked_at >= $2) AS s \
             WHERE previous <> status ORDER BY checked_at DESC LIMIT $3",
            self.job_list()
        );
        let jobs = serde_json::to_string(jobs).unwrap_or_default();
        let rows: Vec<(Ts, String, String, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(jobs)
                .bind(Ts(since))
                .bind(max)
                .fetch_all(p)
                .await?);
        Ok(rows
            .into_iter()
            .filter_map(|(at, job, from, to)| Some((at.0, job, Status::parse(&from)?, Status::parse(&to)?)))
            .collect())
    }

    /// The newest snapshot of each of `jobs` that has one: one statement, an index seek per
    /// job (start-up reads it for every probe and heartbeat).
    pub async fn newest_of(&self, jobs: &[String]) -> Result<Vec<Snapshot>, StoreError> {
        self.ready().await?;
        let sql = format!(
            "SELECT job, checked_at, status, duration_ms, checks FROM health_history WHERE id IN ( \
               SELECT (SELECT x.id FROM health_history x WHERE x.job = j.value \
                       ORDER BY x.checked_at DESC, x.id DESC LIMIT 1) FROM {} AS j)",
            self.job_list()
        );
        let jobs = serde_json::to_string(jobs).unwrap_or_default();
        let rows: Vec<(String, Ts, String, i64, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(jobs).fetch_all(p).await?);
        rows.into_iter()
            .map(|(job, checked_at, status, duration_ms, checks)| {
                snapshot_of(HealthRow { job, checked_at, status, duration_ms, checks })
            })
            .collect()
    }

    /// `(SELECT …)` over the JSON array of job names bound as `$1`, per backend; its one
    /// column is `value`.
    fn job_list(&self) -> &'static str {
        if self.pool.is_sqlite() {
            "(SELECT value FROM json_each($1))"
        } else {
            "(SELECT jsonb_array_elements_text($1::jsonb) AS value)"
        }
    }

    /// One job's newest snapshot status, and its snapshot counts per status since `since`:
    /// what its badge says.
    pub async fn job_health(
        &self,
        job: &str,
        since: DateTime<Utc>,
    ) -> Result<(Option<Status>, Vec<(String, i64)>), StoreError> {
        self.ready().await?;
        let newest = "SELECT status FROM health_history WHERE job = $1 ORDER BY checked_at DESC, id DESC LIMIT 1";
        let counts = "SELECT status, COUNT(*) FROM health_history WHERE job = $1 AND checked_at >= $2 GROUP BY status";
        let status: Option<String> =
            with_pool!(&self.pool, |p| sqlx::query_scalar(newest).bind(job).fetch_optional(p).await?);
        let counts = with_pool!(&self.pool, |p| sqlx::query_as(counts).bind(job).bind(Ts(since)).fetch_all(p).await?);
        Ok((status.as_deref().and_then(Status::parse), counts))
    }
}
