//! A finished run into the store: the run's end, its snapshot, every policy's state writes
//! and outbox rows, in ONE transaction (and the spool's runs, many in one).

use chrono::Utc;

use super::{DECIDED_KEY, NewOutboxRow, RunCommit, SpoolApply, StateStore, StoreError, decided_mark};
use crate::base::OutboxState;
use crate::db::{Pool, Ts};
use crate::health::Snapshot;

impl StateStore {
    /// Writes the run's end, its health snapshot, and every policy's state writes and
    /// outbox rows in ONE transaction: all of it lands, or none of it.
    pub async fn commit(&self, run: &RunCommit) -> Result<(), StoreError> {
        #[cfg(feature = "testing")]
        let injected = self.fail_next_commit.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "testing"))]
        let injected = false;
        let plain = run.decisions.iter().all(|d| d.state_writes.is_empty() && d.outbox.is_empty());
        if !injected
            && plain
            && let Some(id) = run.run_id
        {
            // With the runs ending about now, or alone when their group failed.
            if self.commit_in_group(id, run).await? {
                return Ok(());
            }
            return self.commit_plain(id, run).await;
        }
        self.write_runs(std::slice::from_ref(run), None).await
    }

    /// The common run, a claimed one that decided nothing to write: its end, its snapshot
    /// and the decision marks in one round trip (`PLAIN_POSTGRES`, `PLAIN_SQLITE`).
    async fn commit_plain(&self, id: i64, run: &RunCommit) -> Result<(), StoreError> {
        self.ready().await?;
        let checks = match &run.snapshot {
            Some(s) => Some(serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?),
            None => None,
        };
        let policies: Vec<&str> = run.decisions.iter().map(|d| d.policy.as_str()).collect();
        let snapshot = run.snapshot.as_ref();
        let now = Ts(Utc::now());
        // The same parameters on both backends; only how the policies' names travel differs.
        macro_rules! bound {
            ($sql:expr, $policies:expr) => {
                sqlx::query($sql)
                    .bind(id)
                    .bind(now)
                    .bind(run.outcome.as_str())
                    .bind(&run.error)
                    .bind(run.rows_affected.map(as_i64))
                    .bind(&run.detail)
                    .bind(run.lateness_ms.map(as_i64))
                    .bind(snapshot.map(|s| s.job.as_str()))
                    .bind(snapshot.map(|s| Ts(s.checked_at)))
                    .bind(snapshot.map(|s| s.status.as_str()))
                    .bind(snapshot.map(|s| as_i64(s.duration_ms)))
                    .bind(checks)
                    .bind(&self.replica)
                    .bind(&run.job)
                    .bind(DECIDED_KEY)
                    .bind(decided_mark(run.scheduled_at))
                    .bind($policies)
            };
        }
        match &self.pool {
            Pool::Postgres(p) => {
                bound!(PLAIN_POSTGRES, &policies).execute(p).await?;
                Ok(())
            }
            Pool::Sqlite(_) => {
                let policies = serde_json::to_string(&policies).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                self.execute_on_writer(bound!(PLAIN_SQLITE, policies)).await
            }
        }
    }

    /// Moves spooled runs into the store in ONE transaction. Each run's mark makes a replay
    /// of the same spool a no-op; rows already delivered from the spool land as delivered.
    pub async fn apply_spool(&self, runs: &[RunCommit], apply: SpoolApply<'_>) -> Result<(), StoreError> {
        self.write_runs(runs, Some(apply)).await
    }

    async fn write_runs(&self, runs: &[RunCommit], spool: Option<SpoolApply<'_>>) -> Result<(), StoreError> {
        self.ready().await?;
        #[cfg(feature = "testing")]
        let fail = self.fail_next_commit.swap(false, std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "testing"))]
        let fail = false;
        // SQLite writes on its writer connection, in this process's turn.
        if let Some((mut turn, options)) = self.sqlite_turn().await {
            let done = match turn.conn(&options).await {
                Ok(conn) => match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                    Ok(_) => self.write_and_end(Tx::Sqlite(conn), runs, spool, fail).await,
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            };
            turn.end(done.is_err()).await;
            return done;
        }
        let Pool::Postgres(p) = &self.pool else { unreachable!("a SQLite store has a writer") };
        self.write_and_end(Tx::Postgres(p.begin().await?), runs, spool, fail).await
    }

    /// Writes the runs in `tx` and commits it, or rolls it back on the first failure (or the
    /// failure a test injected).
    async fn write_and_end(
        &self,
        mut tx: Tx<'_>,
        runs: &[RunCommit],
        spool: Option<SpoolApply<'_>>,
        fail: bool,
    ) -> Result<(), StoreError> {
        // (On SQLite the turn also rolls back a transaction a failed COMMIT left open.)
        match self.write_each(&mut tx, runs, spool).await {
            Ok(()) if !fail => Ok(tx.commit().await?),
            Ok(()) => {
                tx.rollback().await?;
                #[cfg(feature = "testing")]
                return Err(StoreError::Injected);
                #[cfg(not(feature = "testing"))]
                unreachable!("only a test injects a failure")
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }

    async fn write_each(
        &self,
        tx: &mut Tx<'_>,
        runs: &[RunCommit],
        spool: Option<SpoolApply<'_>>,
    ) -> Result<(), StoreError> {
        let now = Ts(Utc::now());
        for (i, run) in runs.iter().enumerate() {
            if let Some(spool) = &spool
                && !tx.mark_applied(&spool.marks[i], now).await?
            {
                continue; // applied by an earlier drain that could not truncate the spool
            }
            let run_id = match run.run_id {
                Some(id) => match tx.end_claimed(id, run, now, &self.replica).await? {
                    Some(id) => Some(id),
                    None => continue,
                },
                // Ran while the store was unreachable: recorded now, unless another
                // replica claimed the occurrence meanwhile.
                None => tx.record_unclaimed(run, now, &self.replica).await?,
            };
            if let Some(s) = &run.snapshot {
                tx.insert_snapshot(s).await?;
            }
            for d in &run.decisions {
                // Decisions apply in occurrence order: the mark moves only forward, and
                // (for a decision that read it from the store) only from what it read.
                let plain = d.state_writes.is_empty() && d.outbox.is_empty();
                let read = if plain { None } else { d.read_mark.as_deref() };
                let mark = decided_mark(run.scheduled_at);
                if !tx.write_state(&d.policy, &run.job, DECIDED_KEY, Some(&mark), now, Guard::Forward { read }).await?
                    && !plain
                {
                    tracing::warn!(
                        policy = %d.policy,
                        job = %run.job,
                        scheduled = %run.scheduled_at,
                        "another decision for this job was committed first (a newer occurrence, or one from a state this evaluation had not seen); this one is dropped"
                    );
                    continue;
                }
                for (key, value) in &d.state_writes {
                    tx.write_state(&d.policy, &run.job, key, value.as_deref(), now, Guard::None).await?;
                }
                for row in &d.outbox {
                    let delivered = spool.as_ref().and_then(|s| s.delivered.get(&row.dedup_key)).map(|at| Ts(*at));
                    let silenced = spool.as_ref().and_then(|s| s.silenced.get(&row.dedup_key)).map(String::as_str);
                    let at = Placed { job: &run.job, policy: &d.policy, run_id, now };
                    tx.insert_outbox(row, at, delivered, silenced).await?;
                }
            }
        }
        Ok(())
    }
}

/// A plain commit on Postgres in ONE statement (atomic by itself). A run taken over
/// meanwhile (this replica was thought stopped) writes nothing. Each policy's decision mark
/// moves forward too, so an older occurrence committing later does not act on a state this
/// one has passed.
const PLAIN_POSTGRES: &str = "WITH r AS (UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, \
     rows_affected = $5, detail = $6, lateness_ms = $7 WHERE id = $1 AND replica = $13 RETURNING id), \
     m AS (INSERT INTO policy_state (plugin, job, key, value, updated_at) \
     SELECT p, $14, $15, $16, $2 FROM unnest($17::text[]) AS p WHERE EXISTS (SELECT 1 FROM r) \
     ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
     WHERE policy_state.value < excluded.value) \
     INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
     SELECT $8, $9, $10, $11, $12 WHERE $12 IS NOT NULL AND EXISTS (SELECT 1 FROM r)";

/// The same on SQLite, which has no writing CTE: the statements between `BEGIN IMMEDIATE`
/// and `COMMIT`, sent as ONE command on the writer connection (one wake-up of its thread,
/// where a transaction through the pool takes a dozen). The policies' names are a JSON array.
const PLAIN_SQLITE: &str = "BEGIN IMMEDIATE; \
     UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, detail = $6, \
     lateness_ms = $7 WHERE id = $1 AND replica = $13; \
     INSERT INTO policy_state (plugin, job, key, value, updated_at) \
     SELECT p.value, $14, $15, $16, $2 FROM json_each($17) AS p \
     WHERE EXISTS (SELECT 1 FROM job_runs WHERE id = $1 AND replica = $13) \
     ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
     WHERE policy_state.value < excluded.value; \
     INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
     SELECT $8, $9, $10, $11, $12 WHERE $12 IS NOT NULL \
     AND EXISTS (SELECT 1 FROM job_runs WHERE id = $1 AND replica = $13); \
     COMMIT";

/// One write transaction on either backend; the steps of a commit are its methods, each
/// one statement written once.
enum Tx<'c> {
    /// The writer connection, inside `BEGIN IMMEDIATE`.
    Sqlite(&'c mut sqlx::SqliteConnection),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

macro_rules! on_tx {
    ($tx:expr, |$t:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite($t) => $body,
            Tx::Postgres($t) => $body,
        }
    };
}

/// How a `policy_state` write is guarded.
enum Guard<'a> {
    None,
    /// A decision mark: only forward, and (given what the evaluation read) only from it.
    Forward {
        read: Option<&'a str>,
    },
}

/// Where an outbox row comes from.
struct Placed<'a> {
    job: &'a str,
    policy: &'a str,
    run_id: Option<i64>,
    now: Ts,
}

pub(super) fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Tx<'_> {
    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(conn) => sqlx::query("COMMIT").execute(conn).await.map(|_| ()),
            Tx::Postgres(t) => t.commit().await,
        }
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(conn) => sqlx::query("ROLLBACK").execute(conn).await.map(|_| ()),
            Tx::Postgres(t) => t.rollback().await,
        }
    }

    /// Marks a spooled run applied; false when an earlier drain applied it already.
    async fn mark_applied(&mut self, mark: &str, now: Ts) -> Result<bool, sqlx::Error> {
        let sql = "INSERT INTO spool_applied (id, applied_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
        let done = on_tx!(self, |t| sqlx::query(sql).bind(mark).bind(now).execute(&mut **t).await?.rows_affected());
        Ok(done > 0)
    }

    /// Writes the end of a claimed run; its id, or `None` when the run was taken over
    /// (another replica thought this one stopped, recorded the run abandoned and ran the
    /// occurrence again: its result stands). A run missing from `job_runs` (its claim was
    /// lost: a disk that filled as it committed) is recorded anew, as an unclaimed one is.
    async fn end_claimed(
        &mut self,
        id: i64,
        run: &RunCommit,
        now: Ts,
        replica: &str,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, detail = $6, \
                   lateness_ms = $7 WHERE id = $1 AND replica = $8";
        let updated = on_tx!(self, |t| sqlx::query(sql)
            .bind(id)
            .bind(now)
            .bind(run.outcome.as_str())
            .bind(&run.error)
            .bind(run.rows_affected.map(as_i64))
            .bind(&run.detail)
            .bind(run.lateness_ms.map(as_i64))
            .bind(replica)
            .execute(&mut **t)
            .await?
            .rows_affected());
        if updated > 0 {
            return Ok(Some(id));
        }
        let holder: Option<String> = on_tx!(self, |t| sqlx::query_scalar("SELECT replica FROM job_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **t)
            .await?);
        let Some(holder) = holder else {
            tracing::warn!(job = %run.job, run = id, "the run's claim is not in job_runs (lost as it was written); the run is recorded anew");
            return Ok(self.record_unclaimed(run, now, replica).await?);
        };
        tracing::warn!(job = %run.job, run = id, by = %holder, "the run was taken over by another replica; its result is dropped");
        Ok(None)
    }

    /// Records a run that was never claimed (the store was unreachable): its id, or `None`
    /// when another replica claimed the occurrence meanwhile.
    async fn record_unclaimed(&mut self, run: &RunCommit, now: Ts, replica: &str) -> Result<Option<i64>, sqlx::Error> {
        let sql = "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, \
                   rows_affected, detail, lateness_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                   ON CONFLICT (job, scheduled_at) DO NOTHING RETURNING id";
        Ok(on_tx!(self, |t| sqlx::query_scalar(sql)
            .bind(&run.job)
            .bind(Ts(run.scheduled_at))
            .bind(&run.trigger)
            .bind(replica)
            .bind(Ts(run.started_at))
            .bind(now)
            .bind(run.outcome.as_str())
            .bind(&run.error)
            .bind(run.rows_affected.map(as_i64))
            .bind(&run.detail)
            .bind(run.lateness_ms.map(as_i64))
            .fetch_optional(&mut **t)
            .await?))
    }

    async fn insert_snapshot(&mut self, s: &Snapshot) -> Result<(), StoreError> {
        let checks = serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sql =
            "INSERT INTO health_history (job, checked_at, status, duration_ms, checks) VALUES ($1, $2, $3, $4, $5)";
        on_tx!(self, |t| sqlx::query(sql)
            .bind(&s.job)
            .bind(Ts(s.checked_at))
            .bind(s.status.as_str())
            .bind(as_i64(s.duration_ms))
            .bind(&checks)
            .execute(&mut **t)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Writes (`Some`) or deletes (`None`) one `policy_state` key; false when the guard
    /// held the write back.
    async fn write_state(
        &mut self,
        policy: &str,
        job: &str,
        key: &str,
        value: Option<&str>,
        now: Ts,
        guard: Guard<'_>,
    ) -> Result<bool, sqlx::Error> {
        let (sql, read) = match (value, guard) {
            (None, _) => ("DELETE FROM policy_state WHERE plugin = $1 AND job = $2 AND key = $3", None),
            (Some(_), Guard::None) => (
                "INSERT INTO policy_state (plugin, job, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                None,
            ),
            (Some(_), Guard::Forward { read }) => (
                "INSERT INTO policy_state (plugin, job, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
                 WHERE policy_state.value < excluded.value AND ($6 IS NULL OR policy_state.value = $6)",
                Some(read),
            ),
        };
        let written = on_tx!(self, |t| {
            let q = sqlx::query(sql).bind(policy).bind(job).bind(key);
            let q = match value {
                Some(v) => q.bind(v).bind(now),
                None => q,
            };
            let q = match read {
                Some(read) => q.bind(read),
                None => q,
            };
            q.execute(&mut **t).await?.rows_affected()
        });
        Ok(written > 0)
    }

    /// Inserts an outbox row: pending, or as the spool already delivered or silenced it.
    /// A pending row already there is marked delivered when the spool delivered it.
    async fn insert_outbox(
        &mut self,
        row: &NewOutboxRow,
        at: Placed<'_>,
        delivered: Option<Ts>,
        silenced: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let state = match (delivered, silenced) {
            (Some(_), _) => OutboxState::Delivered,
            (None, Some(_)) => OutboxState::Silenced,
            (None, None) => OutboxState::Pending,
        };
        let sql = "INSERT INTO outbox (dedup_key, kind, payload, job, policy, run_id, state, next_attempt_at, created_at, \
                   delivered_at, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) \
                   ON CONFLICT (dedup_key) DO UPDATE SET state = 'delivered', delivered_at = excluded.delivered_at \
                   WHERE outbox.state = 'pending' AND excluded.state = 'delivered'";
        on_tx!(self, |t| sqlx::query(sql)
            .bind(&row.dedup_key)
            .bind(row.kind.as_str())
            .bind(&row.payload)
            .bind(at.job)
            .bind(at.policy)
            .bind(at.run_id)
            .bind(state.as_str())
            .bind(at.now)
            .bind(delivered)
            .bind(silenced)
            .execute(&mut **t)
            .await?
            .rows_affected());
        Ok(())
    }
}
