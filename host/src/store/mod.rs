//! The state store: warden's own tables (`health_history`, `job_runs`, `policy_state`,
//! `outbox`, `silences`, `job_pauses`, `spool_applied`) on SQLite or PostgreSQL. Here:
//! opening, claims, runs and their one-transaction commit, reads for the API; beside it
//! `outbox.rs` (the dispatcher's queries), `silences.rs` and `spool.rs`.
//!
//! Architecture invariant: the store never touches the target database, and nothing
//! outside this module writes warden's tables.

mod commit;
mod group;
mod heartbeats;
mod history;
mod known;
mod outbox;
mod replicas;
mod silences;
mod spool;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;

use crate::base::OutboxKind;
use crate::config::{DbUrl, StateConfig};
use crate::db::{Pool, PoolSettings, Ts};
use crate::health::{Snapshot, Status};
use crate::with_pool;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The schema warden's tables live in on PostgreSQL.
pub const PG_SCHEMA: &str = "warden";

pub use crate::base::Matchers;
pub use heartbeats::{MAX_PING_BODY, PingKind, Pings};
pub use outbox::{OutboxEntry, OutboxRow};
pub use replicas::{ABANDONED, Replica, Takeover};
pub use silences::Silence;
pub use spool::Spool;

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
    #[cfg(feature = "testing")]
    #[error("state store: commit failed (injected by a test)")]
    Injected,
    #[error("state store: unreachable")]
    Unreachable,
    #[error("state store: busy (no answer in time, though it answers)")]
    Busy,
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
    /// SQLite has one writer at a time: warden's own writes take turns here (and the hot
    /// ones use the connection it keeps). `None` on Postgres.
    write_gate: Option<Arc<writer::WriteGate>>,
    /// Postgres: a connection of its own for the heartbeat and takeovers, so runs holding
    /// every connection of `pool` never make this replica look stopped to the others.
    beat_pool: Option<sqlx::PgPool>,
    /// The group writers of claims and plain commits (`group.rs`), started on first use.
    groups: group::Groups,
    /// Test hook: the next `commit` fails after writing everything, before COMMIT.
    #[cfg(feature = "testing")]
    fail_next_commit: Arc<std::sync::atomic::AtomicBool>,
}

/// Every policy's state for one job: policy → key → value.
pub type JobStates = HashMap<String, BTreeMap<String, String>>;

/// A job's state as SQLite's claim returns it: a JSON array of (policy, key, value).
fn states_of_triples(triples: &str) -> Result<JobStates, StoreError> {
    let triples: Vec<(String, String, String)> =
        serde_json::from_str(triples).map_err(|e| StoreError::Corrupt(format!("policy_state: {e}")))?;
    let mut states = JobStates::new();
    for (policy, key, value) in triples {
        states.entry(policy).or_default().insert(key, value);
    }
    Ok(states)
}

/// One policy's decisions for one run: state writes and actions, committed together.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub policy: String,
    pub state_writes: BTreeMap<String, Option<String>>,
    pub outbox: Vec<NewOutboxRow>,
    /// The policy's `DECIDED_KEY` as the evaluation read it (`""`: none yet). Given, the
    /// decision applies only if no other was committed for the job since; `None` (a spooled
    /// or hand-made decision): only if none newer was.
    #[serde(default)]
    pub read_mark: Option<String>,
}

/// The `policy_state` key holding the occurrence (zero-padded epoch milliseconds) of the
/// newest decision committed for a (policy, job): decisions apply in occurrence order, and
/// one made from a state that changed meanwhile is dropped. Hidden from the policy.
pub const DECIDED_KEY: &str = "warden:decided";

/// `DECIDED_KEY`'s value for an occurrence: fixed width, so text order is time order.
pub fn decided_mark(scheduled: DateTime<Utc>) -> String {
    format!("{:016}", scheduled.timestamp_millis().max(0))
}

/// An action bound for the outbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewOutboxRow {
    pub kind: OutboxKind,
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
    /// How long the run waited for a slot after it was due (queueing, not the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness_ms: Option<u64>,
    pub snapshot: Option<Snapshot>,
    pub decisions: Vec<Decision>,
}

impl RunCommit {
    /// A successful manual run of `job`, scheduled and started now, that decided
    /// `decisions`: what tests and benches commit without running a task.
    pub fn ok(job: &str, decisions: Vec<Decision>) -> RunCommit {
        let now = Utc::now();
        RunCommit {
            run_id: None,
            job: job.to_owned(),
            scheduled_at: now,
            trigger: "manual".to_owned(),
            started_at: now,
            outcome: Outcome::Ok,
            error: None,
            rows_affected: None,
            detail: None,
            lateness_ms: None,
            snapshot: None,
            decisions,
        }
    }
}

/// A spooled run being moved into the store: its replay mark, the rows the dispatcher
/// already delivered from the spool (dedup key → when) and those it held back (→ why).
pub struct SpoolApply<'a> {
    pub marks: &'a [String],
    pub delivered: &'a HashMap<String, DateTime<Utc>>,
    pub silenced: &'a HashMap<String, String>,
}

/// The claim of an occurrence: inserting its `job_runs` row. An occurrence skipped (by a
/// replica whose previous run was still going) or abandoned (by a replica that stopped) is
/// taken over; any other row means the occurrence is claimed already. `$6` is `ABANDONED`.
const CLAIM: &str = "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, outcome) \
     VALUES ($1, $2, $3, $4, $5, 'running') ON CONFLICT (job, scheduled_at) DO UPDATE SET \
     trigger = excluded.trigger, replica = excluded.replica, started_at = excluded.started_at, \
     outcome = 'running', finished_at = NULL, error = NULL, detail = NULL \
     WHERE job_runs.outcome = 'skipped' OR (job_runs.outcome = 'failed' AND job_runs.error = $6)";

const RUN_COLUMNS: &str =
    "id, job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, rows_affected, detail";

impl StateStore {
    /// Opens the store and runs its migrations, creating the SQLite file (or the Postgres
    /// schema) on first start. A Postgres store that cannot be reached is opened lazily and
    /// prepared on first contact, so warden starts (and spools) while it is down.
    pub async fn open(config: &StateConfig) -> Result<Self, StoreError> {
        let url = config.url.display();
        let settings = PoolSettings {
            max_connections: config.pool,
            acquire_timeout: Duration::from_secs(3),
            lazy: false,
            warden_owns: true,
        };
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
        let is_sqlite = pool.is_sqlite();
        let beat_pool = match &pool {
            Pool::Postgres(p) => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
            Pool::Sqlite(_) => None,
        };
        let replica = format!("{}-{}-{:04x}", hostname(), std::process::id(), rand::random::<u16>());
        let store = Self {
            pool,
            replica,
            ready: Default::default(),
            write_gate: is_sqlite.then(Default::default),
            beat_pool,
            groups: Default::default(),
            url,
            #[cfg(feature = "testing")]
            fail_next_commit: Default::default(),
        };
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

    /// Waits for this process's turn to write (SQLite); nothing to wait for on Postgres.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, writer::Writer>> {
        match &self.write_gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        }
    }

    /// SQLite: the turn to write and the options its connection opens with.
    pub(super) async fn sqlite_turn(&self) -> Option<(writer::Turn<'_>, Arc<sqlx::sqlite::SqliteConnectOptions>)> {
        match (&self.pool, &self.write_gate) {
            (Pool::Sqlite(p), Some(gate)) => Some((writer::Turn::take(gate).await, p.connect_options())),
            _ => None,
        }
    }

    /// Executes one command on the SQLite writer connection, in this process's turn.
    pub(super) async fn execute_on_writer<'q, E>(&self, query: E) -> Result<(), StoreError>
    where
        E: sqlx::Execute<'q, sqlx::Sqlite> + 'q,
    {
        let Some((mut turn, options)) = self.sqlite_turn().await else { unreachable!("a SQLite store has a writer") };
        let done = match turn.conn(&options).await {
            Ok(conn) => sqlx::Executor::execute(conn, query).await.map(|_| ()),
            Err(e) => Err(e),
        };
        turn.end(done.is_err()).await;
        Ok(done?)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where heartbeats and takeovers go: a pool of their own on Postgres.
    fn beat_pool(&self) -> Pool {
        match &self.beat_pool {
            Some(p) => Pool::Postgres(p.clone()),
            None => self.pool.clone(),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Claims an occurrence by inserting its `job_runs` row. `None` means another
    /// process (or an earlier run of this one) already claimed it.
    pub async fn claim(&self, job: &str, scheduled: DateTime<Utc>, trigger: &str) -> Result<Option<i64>, StoreError> {
        self.ready().await?;
        // With the occurrences due about now (`group.rs`), or alone when their group failed.
        if let Some(claimed) = self.claim_in_group(job, scheduled, trigger).await {
            return Ok(claimed.map(|(id, _)| id));
        }
        let sql = format!("{CLAIM} RETURNING id");
        let now = Ts(Utc::now());
        if let Some((mut turn, options)) = self.sqlite_turn().await {
            let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(job)
                .bind(Ts(scheduled))
                .bind(trigger)
                .bind(&self.replica)
                .bind(now)
                .bind(ABANDONED);
            // Every row fetched, never `fetch_optional`: SQLite commits an autocommit
            // statement when it is stepped to its end, and a commit that fails then (a full
            // disk) must be seen; a statement dropped after its first row hides it, and the
            // id it returned belongs to a row that was rolled back.
            let id = match turn.conn(&options).await {
                Ok(conn) => q.fetch_all(conn).await.map(|ids| ids.into_iter().next()),
                Err(e) => Err(e),
            };
            turn.end(id.is_err()).await;
            return Ok(id?);
        }
        let Pool::Postgres(p) = &self.pool else { unreachable!("SQLite claims on its writer") };
        let id: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(job)
            .bind(Ts(scheduled))
            .bind(trigger)
            .bind(&self.replica)
            .bind(now)
            .bind(ABANDONED)
            .fetch_optional(p)
            .await?;
        Ok(id)
    }

    /// Claims an occurrence and reads every policy's state for its job: one round trip on
    /// Postgres (the insert and the read in one statement), two on SQLite. `None`: claimed
    /// elsewhere.
    pub async fn claim_with_state(
        &self,
        job: &str,
        scheduled: DateTime<Utc>,
        trigger: &str,
    ) -> Result<Option<(i64, JobStates)>, StoreError> {
        self.ready().await?;
        if let Some(claimed) = self.claim_in_group(job, scheduled, trigger).await {
            return Ok(claimed);
        }
        if let Some((mut turn, options)) = self.sqlite_turn().await {
            // SQLite has no writing CTE, but RETURNING may hold a subquery: the claim and the
            // state in one statement all the same, the state as a JSON array of triples.
            let sql = format!(
                "{CLAIM} RETURNING id, (SELECT json_group_array(json_array(plugin, key, value)) \
                 FROM policy_state WHERE job = $1)"
            );
            let q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(job)
                .bind(Ts(scheduled))
                .bind(trigger)
                .bind(&self.replica)
                .bind(Ts(Utc::now()))
                .bind(ABANDONED);
            // Every row fetched, so a failed commit is seen (see `claim`).
            let row: Result<Option<(i64, String)>, _> = match turn.conn(&options).await {
                Ok(conn) => q.fetch_all(conn).await.map(|rows| rows.into_iter().next()),
                Err(e) => Err(e),
            };
            turn.end(row.is_err()).await;
            let Some((id, triples)) = row? else { return Ok(None) };
            return Ok(Some((id, states_of_triples(&triples)?)));
        }
        let Pool::Postgres(p) = &self.pool else { unreachable!("SQLite claims on its writer") };
        let sql = format!(
            "WITH c AS ({CLAIM} RETURNING id) SELECT c.id, s.plugin, s.key, s.value FROM c LEFT JOIN policy_state s ON s.job = $1"
        );
        type Row = (i64, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(job)
            .bind(Ts(scheduled))
            .bind(trigger)
            .bind(&self.replica)
            .bind(Ts(Utc::now()))
            .bind(ABANDONED)
            .fetch_all(p)
            .await?;
        let Some(id) = rows.first().map(|r| r.0) else { return Ok(None) };
        let mut states = JobStates::new();
        for (_, policy, key, value) in rows {
            if let (Some(policy), Some(key), Some(value)) = (policy, key, value) {
                states.entry(policy).or_default().insert(key, value);
            }
        }
        Ok(Some((id, states)))
    }

    /// Records an occurrence skipped because the previous run was still going.
    pub async fn record_skip(&self, job: &str, scheduled: DateTime<Utc>, reason: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let _turn = self.write_turn().await;
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

    /// Records as failed every run still `running` that started before `started_before`:
    /// the process that ran it stopped (killed, or aborted at shutdown) before it could say
    /// how it ended. Returns how many. A later commit of the same run (from the spool)
    /// still writes its real outcome.
    pub async fn reap_abandoned(&self, started_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.ready().await?;
        let sql = "UPDATE job_runs SET outcome = 'failed', finished_at = $2, error = $3 \
                   WHERE outcome = 'running' AND started_at < $1";
        let error = ABANDONED;
        Ok(with_pool!(&self.pool, |p| sqlx::query(sql)
            .bind(Ts(started_before))
            .bind(Ts(Utc::now()))
            .bind(error)
            .execute(p)
            .await?
            .rows_affected()))
    }

    /// Whether the store answers a trivial statement (on a pooled connection).
    pub async fn ping(&self) -> bool {
        with_pool!(&self.pool, |p| sqlx::query("SELECT 1").execute(p).await.is_ok())
    }

    /// What a statement that got no answer in time met: a store that is busy (every
    /// connection in use, or it still answers a ping within `ping`) or one that is
    /// unreachable.
    pub async fn after_timeout(&self, ping: Duration) -> StoreError {
        let (size, idle, max) = self.pool.stats();
        if (size >= max && idle == 0) || tokio::time::timeout(ping, self.ping()).await.is_ok_and(|ok| ok) {
            StoreError::Busy
        } else {
            StoreError::Unreachable
        }
    }

    /// Whether only one process uses this store (SQLite).
    pub fn is_single_process(&self) -> bool {
        self.pool.is_sqlite()
    }

    /// A policy's stored state for one job: a policy listening to several jobs keeps each
    /// job's state apart.
    pub async fn policy_state(&self, policy: &str, job: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.ready().await?;
        let sql = "SELECT key, value FROM policy_state WHERE plugin = $1 AND job = $2";
        let rows: Vec<(String, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(policy).bind(job).fetch_all(p).await?);
        Ok(rows.into_iter().collect())
    }

    /// Every policy's stored state for one job, in one query: what a run's evaluations read.
    pub async fn job_states(&self, job: &str) -> Result<JobStates, StoreError> {
        self.ready().await?;
        let sql = "SELECT plugin, key, value FROM policy_state WHERE job = $1";
        let rows: Vec<(String, String, String)> =
            with_pool!(&self.pool, |p| sqlx::query_as(sql).bind(job).fetch_all(p).await?);
        let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for (policy, key, value) in rows {
            out.entry(policy).or_default().insert(key, value);
        }
        Ok(out)
    }

    /// Gives state kept from before it was per job (job `''`) to every job its policy
    /// listens to, then drops the old rows. Returns how many policies had such state.
    pub async fn assign_unscoped_state(&self, policy: &str, jobs: &[String]) -> Result<u64, StoreError> {
        self.ready().await?;
        let copy = "INSERT INTO policy_state (plugin, job, key, value, updated_at) \
                    SELECT plugin, $2, key, value, updated_at FROM policy_state WHERE plugin = $1 AND job = '' \
                    ON CONFLICT (plugin, job, key) DO NOTHING";
        let drop = "DELETE FROM policy_state WHERE plugin = $1 AND job = ''";
        let dropped = with_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for job in jobs.iter().filter(|j| !j.is_empty()) {
                sqlx::query(copy).bind(policy).bind(job).execute(&mut *tx).await?;
            }
            let dropped = sqlx::query(drop).bind(policy).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            dropped
        });
        Ok(u64::from(dropped > 0))
    }
}

/// Test hooks, built only with the `testing` feature (the test suite and benches turn it on).
#[cfg(feature = "testing")]
impl StateStore {
    /// Outbox rows as (kind, dedup key, payload, policy, state), oldest first.
    pub async fn outbox(&self) -> Result<Vec<(String, String, String, Option<String>, String)>, StoreError> {
        self.ready().await?;
        let sql = "SELECT kind, dedup_key, payload, policy, state FROM outbox ORDER BY id";
        Ok(with_pool!(&self.pool, |p| sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Makes the next `commit` write everything and then roll back.
    pub fn fail_next_commit(&self) {
        self.fail_next_commit.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stored snapshots.
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

/// Whether an error means the database could not be reached, or cannot take writes because
/// its disk is full (as opposed to refusing a query): an outage either way, waited out with the
/// spool. A pool timeout counts: sqlx retries a refused connect until the acquire timeout.
/// Where the pool is at hand, `StateStore::is_busy` tells a busy pool from an unreachable server.
pub fn unreachable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
        || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
        || disk_full(e)
}

/// Whether the database said its disk is full: SQLite's `SQLITE_FULL` (13), PostgreSQL's
/// `disk_full` (53100).
pub fn disk_full(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "13" || c == "53100"))
}

impl StoreError {
    /// Whether the store failed because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Query(q) if disk_full(q))
    }

    /// What kind of outage this is, for a log line: the disk full, or unreachable.
    pub fn outage(&self) -> &'static str {
        if self.is_disk_full() { "the state store's disk is full" } else { "state store unreachable" }
    }
}

impl StateStore {
    /// Whether `e` only says the store is busy: the pool timed out while every connection it
    /// may open was open and in use (by warden's own runs, or held up by a lock). A busy
    /// store is waited for; only a failed connect or statement makes it unreachable.
    pub fn is_busy(&self, e: &StoreError) -> bool {
        match e {
            StoreError::Busy => true,
            StoreError::Query(sqlx::Error::PoolTimedOut) => {
                let (size, idle, max) = self.pool.stats();
                size >= max && idle == 0
            }
            // SQLite's SQLITE_BUSY / SQLITE_LOCKED past the busy timeout: another writer.
            StoreError::Query(sqlx::Error::Database(d)) if self.pool.is_sqlite() => {
                d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|n| matches!(n & 0xff, 5 | 6))
            }
            _ => false,
        }
    }

    /// Whether `e` means the store could not be reached (a failed connect, a dropped
    /// connection, a server shutting down), as opposed to busy or refusing.
    pub fn is_unreachable(&self, e: &StoreError) -> bool {
        match e {
            StoreError::Unreachable => true,
            StoreError::Query(q) => unreachable(q) && !self.is_busy(e),
            _ => false,
        }
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    #[test]
    fn decision_marks_sort_as_their_occurrences_do() {
        let a = super::decided_mark(Utc.timestamp_millis_opt(999).unwrap());
        let b = super::decided_mark(Utc.timestamp_millis_opt(1_764_633_600_000).unwrap());
        assert_eq!(a.len(), b.len());
        assert!(a < b, "{a} {b}");
    }
}
