//! A finished run into the store: the run's end, its snapshot, every policy's state writes
//! and outbox rows, in ONE transaction (and the spool's runs, many in one).

use chrono::Utc;

use super::{DECIDED_KEY, RunCommit, SpoolApply, StateStore, StoreError, decided_mark};
use crate::base::OutboxState;
use crate::db::{Pool, Ts};
use crate::with_pool;

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
            && let (Pool::Postgres(p), Some(id)) = (&self.pool, run.run_id)
        {
            return self.commit_plain(p, id, run).await;
        }
        self.write_runs(std::slice::from_ref(run), None).await
    }

    /// The common run on Postgres, a claimed one that decided nothing to write: its end and
    /// its snapshot in ONE statement (atomic by itself), one round trip instead of four.
    async fn commit_plain(&self, p: &sqlx::PgPool, id: i64, run: &RunCommit) -> Result<(), StoreError> {
        self.ready().await?;
        let checks = match &run.snapshot {
            Some(s) => Some(serde_json::to_string(&s.checks).map_err(|e| StoreError::Corrupt(e.to_string()))?),
            None => None,
        };
        // A run taken over meanwhile (this replica was thought stopped) writes nothing.
        // Each policy's decision mark moves forward too, so an older occurrence committing
        // later does not act on a state this one has passed.
        let sql = "WITH r AS (UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, \
                   detail = $6, lateness_ms = $7 WHERE id = $1 AND replica = $13 RETURNING id), \
                   m AS (INSERT INTO policy_state (plugin, job, key, value, updated_at) \
                   SELECT p, $14, $15, $16, $2 FROM unnest($17::text[]) AS p WHERE EXISTS (SELECT 1 FROM r) \
                   ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
                   WHERE policy_state.value < excluded.value) \
                   INSERT INTO health_history (job, checked_at, status, duration_ms, checks) \
                   SELECT $8, $9, $10, $11, $12 WHERE $12 IS NOT NULL AND EXISTS (SELECT 1 FROM r)";
        let policies: Vec<&str> = run.decisions.iter().map(|d| d.policy.as_str()).collect();
        let snapshot = run.snapshot.as_ref();
        sqlx::query(sql)
            .bind(id)
            .bind(Ts(Utc::now()))
            .bind(run.outcome.as_str())
            .bind(&run.error)
            .bind(run.rows_affected.map(|r| i64::try_from(r).unwrap_or(i64::MAX)))
            .bind(&run.detail)
            .bind(run.lateness_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)))
            .bind(snapshot.map(|s| s.job.as_str()))
            .bind(snapshot.map(|s| Ts(s.checked_at)))
            .bind(snapshot.map(|s| s.status.as_str()))
            .bind(snapshot.map(|s| i64::try_from(s.duration_ms).unwrap_or(i64::MAX)))
            .bind(checks)
            .bind(&self.replica)
            .bind(&run.job)
            .bind(DECIDED_KEY)
            .bind(decided_mark(run.scheduled_at))
            .bind(&policies)
            .execute(p)
            .await?;
        Ok(())
    }

    /// Moves spooled runs into the store in ONE transaction. Each run's mark makes a replay
    /// of the same spool a no-op; rows already delivered from the spool land as delivered.
    pub async fn apply_spool(&self, runs: &[RunCommit], apply: SpoolApply<'_>) -> Result<(), StoreError> {
        self.write_runs(runs, Some(apply)).await
    }

    async fn write_runs(&self, runs: &[RunCommit], spool: Option<SpoolApply<'_>>) -> Result<(), StoreError> {
        self.ready().await?;
        let _turn = self.write_turn().await;
        let now = Ts(Utc::now());
        #[cfg(feature = "testing")]
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
                let lateness = run.lateness_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
                let run_id = match run.run_id {
                    Some(id) => {
                        let updated = sqlx::query(
                            "UPDATE job_runs SET finished_at = $2, outcome = $3, error = $4, rows_affected = $5, detail = $6, \
                             lateness_ms = $7 WHERE id = $1 AND replica = $8",
                        )
                        .bind(id)
                        .bind(now)
                        .bind(run.outcome.as_str())
                        .bind(&run.error)
                        .bind(rows)
                        .bind(&run.detail)
                        .bind(lateness)
                        .bind(&self.replica)
                        .execute(&mut *tx)
                        .await?;
                        if updated.rows_affected() == 0 {
                            let holder: Option<String> = sqlx::query_scalar("SELECT replica FROM job_runs WHERE id = $1")
                                .bind(id)
                                .fetch_optional(&mut *tx)
                                .await?;
                            let Some(holder) = holder else {
                                return Err(StoreError::Corrupt(format!("run {id} of {} is not in job_runs", run.job)));
                            };
                            // Taken over: another replica thought this one stopped, recorded
                            // the run abandoned and ran the occurrence again. Its result stands.
                            tracing::warn!(job = %run.job, run = id, by = %holder, "the run was taken over by another replica; its result is dropped");
                            continue;
                        }
                        Some(id)
                    }
                    // Ran while the store was unreachable: recorded now, unless another
                    // replica claimed the occurrence meanwhile.
                    None => sqlx::query_scalar(
                        "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, finished_at, outcome, error, rows_affected, detail, lateness_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (job, scheduled_at) DO NOTHING RETURNING id",
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
                    .bind(lateness)
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
                    // Decisions apply in occurrence order: the mark moves only forward, and
                    // (for a decision that read it from the store) only from what it read.
                    let plain = d.state_writes.is_empty() && d.outbox.is_empty();
                    let occ = if plain { None } else { d.read_mark.as_deref() };
                    let moved = sqlx::query(
                        "INSERT INTO policy_state (plugin, job, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
                         WHERE policy_state.value < excluded.value AND ($6 IS NULL OR policy_state.value = $6)",
                    )
                    .bind(&d.policy)
                    .bind(&run.job)
                    .bind(DECIDED_KEY)
                    .bind(decided_mark(run.scheduled_at))
                    .bind(now)
                    .bind(occ)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 0 && !plain {
                        tracing::warn!(
                            policy = %d.policy,
                            job = %run.job,
                            scheduled = %run.scheduled_at,
                            "another decision for this job was committed first (a newer occurrence, or one from a state this evaluation had not seen); this one is dropped"
                        );
                        continue;
                    }
                    for (key, value) in &d.state_writes {
                        match value {
                            Some(v) => {
                                sqlx::query(
                                    "INSERT INTO policy_state (plugin, job, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                                     ON CONFLICT (plugin, job, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                                )
                                .bind(&d.policy)
                                .bind(&run.job)
                                .bind(key)
                                .bind(v)
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                            }
                            None => {
                                sqlx::query("DELETE FROM policy_state WHERE plugin = $1 AND job = $2 AND key = $3")
                                    .bind(&d.policy)
                                    .bind(&run.job)
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
                            (Some(_), _) => OutboxState::Delivered,
                            (None, Some(_)) => OutboxState::Silenced,
                            (None, None) => OutboxState::Pending,
                        };
                        sqlx::query(
                            "INSERT INTO outbox (dedup_key, kind, payload, job, policy, run_id, state, next_attempt_at, created_at, delivered_at, last_error) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) \
                             ON CONFLICT (dedup_key) DO UPDATE SET state = 'delivered', delivered_at = excluded.delivered_at \
                             WHERE outbox.state = 'pending' AND excluded.state = 'delivered'",
                        )
                        .bind(&row.dedup_key)
                        .bind(row.kind.as_str())
                        .bind(&row.payload)
                        .bind(&run.job)
                        .bind(&d.policy)
                        .bind(run_id)
                        .bind(state.as_str())
                        .bind(now)
                        .bind(delivered)
                        .bind(silenced)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            #[cfg(feature = "testing")]
            if fail {
                tx.rollback().await?;
                return Err(StoreError::Injected);
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
