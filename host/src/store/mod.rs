//! The state store: warden's own tables (`health_history`, `job_runs`, `policy_state`,
//! `outbox`) on SQLite or PostgreSQL.
//!
//! Architecture invariant: the store never touches the target database, and nothing
//! outside this module writes warden's tables.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;

use crate::config::{DbUrl, StateConfig};
use crate::db::{Pool, PoolSettings, Ts};
use crate::health::{Snapshot, Status};
use crate::with_pool;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The schema warden's tables live in on PostgreSQL.
pub const PG_SCHEMA: &str = "warden";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("state store {url}: migrations failed: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("state store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state store: stored health snapshot is unreadable: {0}")]
    Corrupt(String),
    #[error("state store: commit failed (injected by a test)")]
    Injected,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Ok,
    Failed,
    Timeout,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Skipped => "skipped",
        }
    }
}

/// A row of `job_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub scheduled_at: Ts,
    pub trigger: String,
    pub replica: String,
    pub started_at: Ts,
    pub finished_at: Option<Ts>,
    pub outcome: String,
    pub error: Option<String>,
    pub rows_affected: Option<i64>,
    pub detail: Option<String>,
}

#[derive(sqlx::FromRow)]
struct HealthRow {
    job: String,
    checked_at: Ts,
    status: String,
    duration_ms: i64,
    checks: String,
}

/// The state store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    pool: Pool,
    replica: String,
    /// Test hook: the next `commit` fails after writing everything, before COMMIT.
    fail_next_commit: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One policy's decisions for one run: state writes and actions, committed together.
#[derive(Debug, Clone)]
pub struct Decision {
    pub policy: String,
    pub state_writes: std::collections::BTreeMap<String, Option<String>>,
    /// (outbox kind, dedup key, JSON payload)
    pub outbox: Vec<(String, String, String)>,
}

/// Everything a finished run writes, in one transaction.
#[derive(Debug, Clone)]
pub struct RunCommit<'a> {
    pub run_id: Option<i64>,
    pub job: &'a str,
    pub outcome: Outcome,
    pub error: Option<&'a str>,
    pub rows_affected: Option<u64>,
    pub detail: Option<&'a str>,
    pub snapshot: Option<&'a Snapshot>,
    pub decisions: &'a [Decision],
}

const RUN_COLUMNS: &str =
    "id, job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, rows_affected, detail";

impl StateStore {
    /// Opens the store and runs its migrations, creating the SQLite file (or the Postgres
    /// schema) on first start.
    pub async fn open(config: &StateConfig) -> Result<Self, StoreError> {
        let url = config.url.display();
        let settings = PoolSettings { max_connections: 5, acquire_timeout: Duration::from_secs(5), lazy: false };
        if let DbUrl::Postgres(_) = &config.url {
            // The schema must exist before the pool's search_path can point at it.
            let plain = Pool::open(&config.url, settings, None)
                .await
                .map_err(|source| StoreError::Open { url: url.clone(), source })?;
            plain
                .execute(&format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
                .await
                .map_err(|source| StoreError::Open { url: url.clone(), source })?;
            plain.close().await;
        }
        let pool = Pool::open(&config.url, settings, Some(PG_SCHEMA))
            .await
            .map_err(|source| StoreError::Open { url: url.clone(), source })?;
        let migrated = match &pool {
            Pool::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await,
            Pool::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await,
        };
        migrated.map_err(|source| StoreError::Migrate { url, source })?;
        let replica = format!("{}-{}-{:04x}", hostname(), std::process::id(), rand::random::<u16>());
        Ok(Self { pool, replica, fail_next_commit: Default::default() })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Claims an occurrence by inserting its `job_runs` row. `None` means another
    /// process (or an earlier run of this one) already claimed it.
    pub async fn claim(&self, job: &str, scheduled: DateTime<Utc>, trigger: &str) -> Result<Option<i64>, StoreError> {
        let sql = "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, outcome) \
                   VALUES ($1, $2, $3, $4, $5, 'running') ON CONFLICT (job, scheduled_at) DO NOTHING RETURNING id";
        let now = Ts(Utc::now());
        let id: Option<i64> = with_pool!(&self.pool, |p| {
            sqlx::query_scalar(sql)
                .bind(job)
                .bind(Ts(scheduled))
                .bind(trigger)
                .bind(&self.replica)
                .bind(now)
                .fetch_optional(p)
                .await?
        });
        Ok(id)
    }

    /// Records an occurrence skipped because the previous run was still going.
    pub async fn record_skip(&self, job: &str, scheduled: DateTime<Utc>, reason: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, finished_at, outcome, detail) \
                   VALUES ($1, $2, 'schedule', $3, $4, $4, 'skipped', $5) ON CONFLICT (job, scheduled_at) DO NOTHING";
        let now = Ts(Utc::now());
        with_pool!(&self.pool, |p| {
            sqlx::query(sql)
                .bind(job)
                .bind(Ts(scheduled))
                .bind(&self.replica)
                .bind(now)
                .bind(reason)
                .execute(p)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// The newest run of every job that has one.
    pub async fn last_runs(&self) -> Result<HashMap<String, RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job)");
        let rows: Vec<RunRow> =
            with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(p).await?);
        Ok(rows.into_iter().map(|r| (r.job.clone(), r)).collect())
    }

    /// The latest occurrence each job actually ran (skips do not count): the input to catch-up.
    pub async fn last_ran(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let sql = "SELECT job, MAX(scheduled_at) FROM job_runs WHERE outcome <> 'skipped' GROUP BY job";
        let rows: Vec<(String, Ts)> = with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?);
        Ok(rows.into_iter().map(|(job, ts)| (job, ts.0)).collect())
    }

    /// A job's runs, newest first.
    pub async fn runs(&self, job: &str, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE job = $1 ORDER BY id DESC LIMIT $2");
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(job)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// The newest stored snapshot, so `/health` answers right after a restart.
    pub async fn latest_health(&self) -> Result<Option<Snapshot>, StoreError> {
        let sql = "SELECT job, checked_at, status, duration_ms, checks FROM health_history ORDER BY id DESC LIMIT 1";
        let row: Option<HealthRow> = with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_optional(p).await?);
        let Some(row) = row else { return Ok(None) };
        let status = Status::parse(&row.status).ok_or_else(|| StoreError::Corrupt(row.status.clone()))?;
        let checks = serde_json::from_str(&row.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(Snapshot {
            job: row.job,
            status,
            checked_at: row.checked_at.0,
            duration_ms: u64::try_from(row.duration_ms).unwrap_or_default(),
            checks,
        }))
    }

    /// Writes the run's end, its health snapshot, and every policy's state writes and
    /// outbox rows in ONE transaction: all of it lands, or none of it.
    pub async fn commit(&self, run: &RunCommit<'_>) -> Result<(), StoreError> {
        let now = Ts(Utc::now());
        let fail = self.fail_next_commit.swap(false, std::sync::atomic::Ordering::SeqCst);
        let checks = match run.snapshot {
            Some(s) => Some(serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?),
            None => None,
        };
        with_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            if let Some(id) = run.run_id {
                let rows = run.rows_affected.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
                sqlx::query(
                    "UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, detail = $6 WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .bind(run.outcome.as_str())
                .bind(run.error)
                .bind(rows)
                .bind(run.detail)
                .execute(&mut *tx)
                .await?;
            }
            if let (Some(s), Some(checks)) = (run.snapshot, &checks) {
                sqlx::query("INSERT INTO health_history (job, checked_at, status, duration_ms, checks) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&s.job)
                    .bind(Ts(s.checked_at))
                    .bind(s.status.as_str())
                    .bind(i64::try_from(s.duration_ms).unwrap_or(i64::MAX))
                    .bind(checks)
                    .execute(&mut *tx)
                    .await?;
            }
            for d in run.decisions {
                for (key, value) in &d.state_writes {
                    match value {
                        Some(v) => {
                            sqlx::query(
                                "INSERT INTO policy_state (plugin, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                            )
                            .bind(&d.policy)
                            .bind(key)
                            .bind(v)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM policy_state WHERE plugin = $1 AND key = $2")
                                .bind(&d.policy)
                                .bind(key)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                for (kind, dedup_key, payload) in &d.outbox {
                    sqlx::query(
                        "INSERT INTO outbox (dedup_key, kind, payload, job, policy, run_id, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (dedup_key) DO NOTHING",
                    )
                    .bind(dedup_key)
                    .bind(kind)
                    .bind(payload)
                    .bind(run.job)
                    .bind(&d.policy)
                    .bind(run.run_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if fail {
                tx.rollback().await?;
                return Err(StoreError::Injected);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A policy's stored state.
    pub async fn policy_state(&self, policy: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let sql = "SELECT key, value FROM policy_state WHERE plugin = $1";
        let rows: Vec<(String, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(policy).fetch_all(p).await?);
        Ok(rows.into_iter().collect())
    }

    /// Outbox rows as (kind, dedup key, payload, policy, state), oldest first.
    pub async fn outbox(&self) -> Result<Vec<(String, String, String, Option<String>, String)>, StoreError> {
        let sql = "SELECT kind, dedup_key, payload, policy, state FROM outbox ORDER BY id";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Test hook: makes the next `commit` write everything and then roll back.
    #[doc(hidden)]
    pub fn fail_next_commit(&self) {
        self.fail_next_commit.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn count_health(&self) -> Result<i64, StoreError> {
        Ok(with_pool!(&self.pool, |p| sqlx::query_scalar("SELECT COUNT(*) FROM health_history").fetch_one(p).await?))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
