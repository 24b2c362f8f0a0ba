//! The state store: warden's own tables (`health_history`, `job_runs`, `policy_state`,
//! `outbox`) on SQLite or PostgreSQL.
//!
//! Architecture invariant: the store never touches the target database, and nothing
//! outside this module writes warden's tables.

mod spool;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
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

pub use spool::Spool;

/// The kinds of outbox rows: an admin email, a subscriber fan-out, one user's notice, a ticket.
pub const OUTBOX_KINDS: [&str; 4] = ["email", "subscribers", "notice", "ticket"];
/// The states of an outbox row.
pub const OUTBOX_STATES: [&str; 4] = ["pending", "delivered", "failed", "silenced"];

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
    #[error("state store: unreachable")]
    Unreachable,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Set once the schema exists and the migrations ran; a store that was down at start
    /// is prepared on first contact.
    ready: Arc<tokio::sync::OnceCell<()>>,
    url: String,
    /// Test hook: the next `commit` fails after writing everything, before COMMIT.
    fail_next_commit: Arc<std::sync::atomic::AtomicBool>,
}

/// One policy's decisions for one run: state writes and actions, committed together.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub policy: String,
    pub state_writes: BTreeMap<String, Option<String>>,
    pub outbox: Vec<NewOutboxRow>,
}

/// An action bound for the outbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewOutboxRow {
    pub kind: String,
    pub dedup_key: String,
    /// JSON
    pub payload: String,
    /// The user a subscriber notice goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

/// Everything a finished run writes, in one transaction. Owned, so it can wait in the
/// spool while the store is unreachable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunCommit {
    /// The claimed `job_runs` row; `None` when the store was unreachable at the claim.
    pub run_id: Option<i64>,
    pub job: String,
    pub scheduled_at: DateTime<Utc>,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub rows_affected: Option<u64>,
    pub detail: Option<String>,
    pub snapshot: Option<Snapshot>,
    pub decisions: Vec<Decision>,
}

/// A row the dispatcher holds for delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub dedup_key: String,
    pub kind: String,
    pub payload: String,
    pub job: Option<String>,
    pub policy: Option<String>,
    pub attempts: i32,
    pub created_at: Ts,
}

/// A row as the CLI and the admin API show it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    pub id: i64,
    /// One action of one transition: a resend carries the same key.
    pub dedup_key: String,
    /// `email`, `subscribers`, `notice` or `ticket`.
    pub kind: String,
    /// The action as JSON text.
    pub payload: String,
    pub job: Option<String>,
    pub policy: Option<String>,
    /// `pending`, `delivered`, `failed` or `silenced`.
    pub state: String,
    pub attempts: i32,
    #[serde(serialize_with = "ser_ts")]
    #[schema(value_type = DateTime<Utc>)]
    pub next_attempt_at: Ts,
    #[serde(serialize_with = "ser_ts")]
    #[schema(value_type = DateTime<Utc>)]
    pub created_at: Ts,
    #[serde(serialize_with = "ser_opt_ts")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub delivered_at: Option<Ts>,
    pub last_error: Option<String>,
}

fn ser_ts<S: serde::Serializer>(ts: &Ts, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.0.to_rfc3339())
}

fn ser_opt_ts<S: serde::Serializer>(ts: &Option<Ts>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => s.serialize_str(&ts.0.to_rfc3339()),
        None => s.serialize_none(),
    }
}

/// What a silence or a maintenance window matches; an absent field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Matchers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `email`, `subscribers` (also the per-user notices), `notice` or `ticket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Matchers {
    pub fn matches(&self, job: Option<&str>, policy: Option<&str>, kind: &str) -> bool {
        let field = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
        let kind_ok = match self.kind.as_deref() {
            None => true,
            Some("subscribers") => kind == "subscribers" || kind == "notice",
            Some(k) => k == kind,
        };
        field(&self.job, job) && field(&self.policy, policy) && kind_ok
    }
}

/// A row of `silences`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Silence {
    pub id: i64,
    #[serde(flatten)]
    pub matchers: Matchers,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub comment: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// A spooled run being moved into the store: its replay mark, the rows the dispatcher
/// already delivered from the spool (dedup key → when) and those it held back (→ why).
pub struct SpoolApply<'a> {
    pub marks: &'a [String],
    pub delivered: &'a HashMap<String, DateTime<Utc>>,
    pub silenced: &'a HashMap<String, String>,
}

const RUN_COLUMNS: &str =
    "id, job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, rows_affected, detail";

impl StateStore {
    /// Opens the store and runs its migrations, creating the SQLite file (or the Postgres
    /// schema) on first start. A Postgres store that cannot be reached is opened lazily and
    /// prepared on first contact, so warden starts (and spools) while it is down.
    pub async fn open(config: &StateConfig) -> Result<Self, StoreError> {
        let url = config.url.display();
        let settings = PoolSettings { max_connections: 5, acquire_timeout: Duration::from_secs(3), lazy: false };
        let pool = match Pool::open(&config.url, settings, Some(PG_SCHEMA)).await {
            Ok(pool) => pool,
            Err(e) if matches!(config.url, DbUrl::Postgres(_)) && unreachable(&e) => {
                tracing::warn!(url = %url, error = %e, "state store unreachable at start; decisions go to the local spool until it returns");
                Pool::open(&config.url, PoolSettings { lazy: true, ..settings }, Some(PG_SCHEMA))
                    .await
                    .map_err(|source| StoreError::Open { url: url.clone(), source })?
            }
            Err(source) => return Err(StoreError::Open { url, source }),
        };
        let replica = format!("{}-{}-{:04x}", hostname(), std::process::id(), rand::random::<u16>());
        let store = Self { pool, replica, ready: Default::default(), url, fail_next_commit: Default::default() };
        match store.ready().await {
            Ok(()) => {}
            Err(StoreError::Query(e)) if unreachable(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// Creates the schema and runs the migrations once per process, on first contact.
    async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                if let Pool::Postgres(p) = &self.pool {
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")))
                        .execute(p)
                        .await?;
                }
                let migrated = match &self.pool {
                    Pool::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await,
                    Pool::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await,
                };
                migrated.map_err(|source| match source {
                    sqlx::migrate::MigrateError::Execute(e) if unreachable(&e) => StoreError::Query(e),
                    source => StoreError::Migrate { url: self.url.clone(), source },
                })
            })
            .await
            .map(|_| ())
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
        self.ready().await?;
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
        self.ready().await?;
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
        state: Option<&str>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.ready().await?;
        let sql = "SELECT id, dedup_key, kind, payload, job, policy, state, attempts, next_attempt_at, created_at, \
                   delivered_at, last_error FROM outbox WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id < $2) \
                   ORDER BY id DESC LIMIT $3";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(state).bind(before).bind(limit).fetch_all(p).await?))
    }

    /// Snapshot counts per status since `since`: the input to uptime.
    pub async fn status_counts(&self, since: DateTime<Utc>) -> Result<Vec<(String, i64)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT status, COUNT(*) FROM health_history WHERE checked_at >= $1 GROUP BY status";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(Ts(since)).fetch_all(p).await?))
    }

    /// (time, status) of every snapshot since `since`, oldest first: the chart and transitions.
    pub async fn status_series(&self, since: DateTime<Utc>) -> Result<Vec<(DateTime<Utc>, Status)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT checked_at, status FROM health_history WHERE checked_at >= $1 ORDER BY checked_at, id";
        let rows: Vec<(Ts, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(Ts(since)).fetch_all(p).await?);
        Ok(rows.into_iter().filter_map(|(t, s)| Some((t.0, Status::parse(&s)?))).collect())
    }

    /// Jobs an operator paused.
    pub async fn paused_jobs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.ready().await?;
        let rows: Vec<String> =
            with_pool!(&self.pool, |p| sqlx::query_scalar("SELECT job FROM job_pauses").fetch_all(p).await?);
        Ok(rows.into_iter().collect())
    }

    /// Pauses or resumes a job; kept across restarts.
    pub async fn set_paused(&self, job: &str, paused: bool) -> Result<(), StoreError> {
        self.ready().await?;
        if paused {
            let sql = "INSERT INTO job_pauses (job, paused_at) VALUES ($1, $2) ON CONFLICT (job) DO NOTHING";
            with_pool!(&self.pool, |p| sqlx::query(sql).bind(job).bind(Ts(Utc::now())).execute(p).await.map(|_| ())?);
        } else {
            let sql = "DELETE FROM job_pauses WHERE job = $1";
            with_pool!(&self.pool, |p| sqlx::query(sql).bind(job).execute(p).await.map(|_| ())?);
        }
        Ok(())
    }

    /// The newest stored snapshot, so `/health` answers right after a restart.
    pub async fn latest_health(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.health_page(None, None, 1, None).await?.pop().map(|(_, s)| s))
    }

    /// Writes the run's end, its health snapshot, and every policy's state writes and
    /// outbox rows in ONE transaction: all of it lands, or none of it.
    pub async fn commit(&self, run: &RunCommit) -> Result<(), StoreError> {
        self.write_runs(std::slice::from_ref(run), None).await
    }

    /// Moves spooled runs into the store in ONE transaction. Each run's mark makes a replay
    /// of the same spool a no-op; rows already delivered from the spool land as delivered.
    pub async fn apply_spool(&self, runs: &[RunCommit], apply: SpoolApply<'_>) -> Result<(), StoreError> {
        self.write_runs(runs, Some(apply)).await
    }

    async fn write_runs(&self, runs: &[RunCommit], spool: Option<SpoolApply<'_>>) -> Result<(), StoreError> {
        self.ready().await?;
        let now = Ts(Utc::now());
        let fail = self.fail_next_commit.swap(false, std::sync::atomic::Ordering::SeqCst);
        let mut checks = Vec::with_capacity(runs.len());
        for run in runs {
            checks.push(match &run.snapshot {
                Some(s) => Some(serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?),
                None => None,
            });
        }
        with_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for (i, run) in runs.iter().enumerate() {
                if let Some(spool) = &spool {
                    let marked = sqlx::query(
                        "INSERT INTO spool_applied (id, applied_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&spool.marks[i])
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if marked.rows_affected() == 0 {
                        continue; // applied by an earlier drain that could not truncate the spool
                    }
                }
                let rows = run.rows_affected.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
                let run_id = match run.run_id {
                    Some(id) => {
                        sqlx::query(
                            "UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, detail = $6 WHERE id = $1",
                        )
                        .bind(id)
                        .bind(now)
                        .bind(run.outcome.as_str())
                        .bind(&run.error)
                        .bind(rows)
                        .bind(&run.detail)
                        .execute(&mut *tx)
                        .await?;
                        Some(id)
                    }
                    // Ran while the store was unreachable: recorded now, unless another
                    // replica claimed the occurrence meanwhile.
                    None => sqlx::query_scalar(
                        "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, rows_affected, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (job, scheduled_at) DO NOTHING RETURNING id",
                    )
                    .bind(&run.job)
                    .bind(Ts(run.scheduled_at))
                    .bind(&run.trigger)
                    .bind(&self.replica)
                    .bind(Ts(run.started_at))
                    .bind(now)
                    .bind(run.outcome.as_str())
                    .bind(&run.error)
                    .bind(rows)
                    .bind(&run.detail)
                    .fetch_optional(&mut *tx)
                    .await?,
                };
                if let (Some(s), Some(checks)) = (&run.snapshot, &checks[i]) {
                    sqlx::query("INSERT INTO health_history (job, checked_at, status, duration_ms, checks) VALUES ($1, $2, $3, $4, $5)")
                        .bind(&s.job)
                        .bind(Ts(s.checked_at))
                        .bind(s.status.as_str())
                        .bind(i64::try_from(s.duration_ms).unwrap_or(i64::MAX))
                        .bind(checks)
                        .execute(&mut *tx)
                        .await?;
                }
                for d in &run.decisions {
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
                    for row in &d.outbox {
                        let delivered = spool.as_ref().and_then(|s| s.delivered.get(&row.dedup_key)).map(|at| Ts(*at));
                        let silenced = spool.as_ref().and_then(|s| s.silenced.get(&row.dedup_key));
                        let state = match (delivered, silenced) {
                            (Some(_), _) => "delivered",
                            (None, Some(_)) => "silenced",
                            (None, None) => "pending",
                        };
                        sqlx::query(
                            "INSERT INTO outbox (dedup_key, kind, payload, job, policy, run_id, state, next_attempt_at, created_at, delivered_at, last_error) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) \
                             ON CONFLICT (dedup_key) DO UPDATE SET state = 'delivered', delivered_at = excluded.delivered_at \
                             WHERE outbox.state = 'pending' AND excluded.state = 'delivered'",
                        )
                        .bind(&row.dedup_key)
                        .bind(&row.kind)
                        .bind(&row.payload)
                        .bind(&run.job)
                        .bind(&d.policy)
                        .bind(run_id)
                        .bind(state)
                        .bind(now)
                        .bind(delivered)
                        .bind(silenced)
                        .execute(&mut *tx)
                        .await?;
                    }
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

    // ---- the outbox, for the dispatcher ----------------------------------------------

    /// Leases up to `limit` due pending rows of `kinds` to this process until `lease`
    /// from now, oldest due first. Replicas sharing a Postgres store never get the same row.
    pub async fn claim_due(&self, kinds: &[&str], limit: i64, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        self.ready().await?;
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let kinds = kinds.iter().map(|k| format!("'{}'", k.replace('\'', ""))).collect::<Vec<_>>().join(", ");
        let lock = if self.pool.is_sqlite() { "" } else { " FOR UPDATE SKIP LOCKED" };
        let sql = format!(
            "UPDATE outbox SET next_attempt_at = $1, claimed_by = $2 WHERE id IN (\
               SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $3 AND kind IN ({kinds}) \
               ORDER BY next_attempt_at, id LIMIT $4{lock}) \
             RETURNING id, dedup_key, kind, payload, job, policy, attempts, created_at"
        );
        let mut rows: Vec<OutboxRow> = with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(Ts(until))
            .bind(&self.replica)
            .bind(Ts(now))
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Records as failed every run still `running` that started before `started_before`:
    /// the process that ran it stopped (killed, or aborted at shutdown) before it could say
    /// how it ended. Returns how many. A later commit of the same run (from the spool)
    /// still writes its real outcome.
    pub async fn reap_abandoned(&self, started_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.ready().await?;
        let sql = "UPDATE job_runs SET outcome = 'failed', finished_at = $2, error = $3 \
                   WHERE outcome = 'running' AND started_at < $1";
        let error = "abandoned: the process running it stopped before it ended";
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql)
            .bind(Ts(started_before))
            .bind(Ts(Utc::now()))
            .bind(error)
            .execute(p)
            .await?
            .rows_affected()))
    }

    /// Whether only one process uses this store (SQLite).
    pub fn is_single_process(&self) -> bool {
        self.pool.is_sqlite()
    }

    /// Gives back every lease: on SQLite only one process uses the store, so a lease left
    /// from before a restart is stale and its row is due again at once.
    pub async fn release_stale_claims(&self) -> Result<u64, StoreError> {
        self.ready().await?;
        if !self.pool.is_sqlite() {
            return Ok(0);
        }
        let sql = "UPDATE outbox SET next_attempt_at = $1, claimed_by = NULL WHERE state = 'pending' AND claimed_by IS NOT NULL";
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql).bind(Ts(Utc::now())).execute(p).await?.rows_affected()))
    }

    pub async fn mark_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, claimed_by = NULL, \
                   last_error = NULL WHERE id = $1";
        with_pool!(&self.pool, |p| sqlx::query(sql).bind(id).bind(Ts(Utc::now())).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// Records a failed attempt: due again at `next`, or failed for good when `next` is `None`.
    pub async fn mark_attempt(&self, id: i64, error: &str, next: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        match next {
            Some(next) => self.reschedule(id, "pending", next, error, 1).await,
            None => self.reschedule(id, "failed", Utc::now(), error, 1).await,
        }
    }

    /// Puts a row back until `next` without counting an attempt: what it needs is down.
    pub async fn defer(&self, id: i64, error: &str, next: DateTime<Utc>) -> Result<(), StoreError> {
        self.reschedule(id, "pending", next, error, 0).await
    }

    async fn reschedule(
        &self,
        id: i64,
        state: &str,
        next: DateTime<Utc>,
        error: &str,
        attempts: i32,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = $2, next_attempt_at = $3, attempts = attempts + $5, claimed_by = NULL, \
                   last_error = $4 WHERE id = $1";
        with_pool!(&self.pool, |p| sqlx::query(sql)
            .bind(id)
            .bind(state)
            .bind(Ts(next))
            .bind(error)
            .bind(attempts)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Replaces a `subscribers` row by one `notice` row per recipient, in one transaction:
    /// after a crash either the whole fan-out is queued or the parent is still pending.
    pub async fn expand(&self, parent: &OutboxRow, children: &[NewOutboxRow], note: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let now = Ts(Utc::now());
        with_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for child in children {
                sqlx::query(
                    "INSERT INTO outbox (dedup_key, kind, payload, job, policy, next_attempt_at, created_at, recipient) \
                     SELECT $1, $2, $3, job, policy, $4, $4, $6 FROM outbox WHERE id = $5 ON CONFLICT (dedup_key) DO NOTHING",
                )
                .bind(&child.dedup_key)
                .bind(&child.kind)
                .bind(&child.payload)
                .bind(now)
                .bind(parent.id)
                .bind(&child.recipient)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, claimed_by = NULL, \
                 last_error = $3 WHERE id = $1",
            )
            .bind(parent.id)
            .bind(now)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Whether a newer row of the same kind from the same policy is queued: a status notice
    /// that waited out an outage is not told after the status it was overtaken by.
    pub async fn superseded(&self, row: &OutboxRow) -> Result<bool, StoreError> {
        self.ready().await?;
        let sql = "SELECT COUNT(*) FROM outbox WHERE kind = $1 AND policy = $2 AND id > $3";
        let newer: i64 = with_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(&row.kind)
            .bind(&row.policy)
            .bind(row.id)
            .fetch_one(p)
            .await?);
        Ok(newer > 0)
    }

    /// Records a silence; returns its id.
    pub async fn create_silence(
        &self,
        matchers: &Matchers,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        comment: &str,
        created_by: &str,
    ) -> Result<i64, StoreError> {
        self.ready().await?;
        let sql = "INSERT INTO silences (job, policy, kind, starts_at, ends_at, comment, created_by, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
        Ok(with_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(&matchers.job)
            .bind(&matchers.policy)
            .bind(&matchers.kind)
            .bind(Ts(starts_at))
            .bind(Ts(ends_at))
            .bind(comment)
            .bind(created_by)
            .bind(Ts(Utc::now()))
            .fetch_one(p)
            .await?))
    }

    /// Silences not yet ended at `now` (active or still to come), or all of them.
    pub async fn silences(&self, now: DateTime<Utc>, include_ended: bool) -> Result<Vec<Silence>, StoreError> {
        self.ready().await?;
        let sql = "SELECT id, job, policy, kind, starts_at, ends_at, comment, created_by, created_at FROM silences \
                   WHERE $1 OR ends_at > $2 ORDER BY id DESC LIMIT 500";
        type Row = (i64, Option<String>, Option<String>, Option<String>, Ts, Ts, String, String, Ts);
        let rows: Vec<Row> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(include_ended).bind(Ts(now)).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, job, policy, kind, starts_at, ends_at, comment, created_by, created_at)| Silence {
                id,
                matchers: Matchers { job, policy, kind },
                starts_at: starts_at.0,
                ends_at: ends_at.0,
                comment,
                created_by,
                created_at: created_at.0,
            })
            .collect())
    }

    /// Ends a silence now; false when there is no such silence still running.
    pub async fn expire_silence(&self, id: i64) -> Result<bool, StoreError> {
        self.ready().await?;
        let now = Ts(Utc::now());
        let sql = "UPDATE silences SET ends_at = $2 WHERE id = $1 AND ends_at > $2";
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql).bind(id).bind(now).execute(p).await?.rows_affected()) == 1)
    }

    /// Records a row as silenced: kept, visible, never sent.
    pub async fn mark_silenced(&self, id: i64, why: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'silenced', last_error = $2, claimed_by = NULL WHERE id = $1";
        with_pool!(&self.pool, |p| sqlx::query(sql).bind(id).bind(why).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// Stops notices queued for a user who just opted out: recorded as silenced, never sent.
    pub async fn cancel_notices(&self, recipient: &str) -> Result<u64, StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'silenced', last_error = 'recipient unsubscribed', claimed_by = NULL \
                   WHERE kind = 'notice' AND state = 'pending' AND recipient = $1";
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql).bind(recipient).execute(p).await?.rows_affected()))
    }

    /// Row counts by (kind, state).
    pub async fn outbox_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT kind, state, COUNT(*) FROM outbox GROUP BY kind, state";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Makes failed rows (one, or all) pending again with a fresh attempt budget.
    pub async fn redrive(&self, id: Option<i64>) -> Result<u64, StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $2, claimed_by = NULL \
                   WHERE state = 'failed' AND ($1 IS NULL OR id = $1)";
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql).bind(id).bind(Ts(Utc::now())).execute(p).await?.rows_affected()))
    }

    /// A policy's stored state.
    pub async fn policy_state(&self, policy: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.ready().await?;
        let sql = "SELECT key, value FROM policy_state WHERE plugin = $1";
        let rows: Vec<(String, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(policy).fetch_all(p).await?);
        Ok(rows.into_iter().collect())
    }

    /// Outbox rows as (kind, dedup key, payload, policy, state), oldest first.
    pub async fn outbox(&self) -> Result<Vec<(String, String, String, Option<String>, String)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT kind, dedup_key, payload, policy, state FROM outbox ORDER BY id";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Test hook: makes the next `commit` write everything and then roll back.
    #[doc(hidden)]
    pub fn fail_next_commit(&self) {
        self.fail_next_commit.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn count_health(&self) -> Result<i64, StoreError> {
        self.ready().await?;
        Ok(with_pool!(&self.pool, |p| sqlx::query_scalar("SELECT COUNT(*) FROM health_history").fetch_one(p).await?))
    }
}

fn snapshot_of(row: HealthRow) -> Result<Snapshot, StoreError> {
    let status = Status::parse(&row.status).ok_or_else(|| StoreError::Corrupt(row.status.clone()))?;
    let checks = serde_json::from_str(&row.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Snapshot {
        job: row.job,
        status,
        checked_at: row.checked_at.0,
        duration_ms: u64::try_from(row.duration_ms).unwrap_or_default(),
        checks,
    })
}

/// Whether an error means the database could not be reached (as opposed to refusing a query).
pub fn unreachable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
        || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
