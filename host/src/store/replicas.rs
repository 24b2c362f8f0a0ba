//! Replicas sharing one store: heartbeats, the live set they take turns in, taking over
//! a replica whose heartbeat stopped, and the values every replica must share.

use chrono::{DateTime, Utc};

use super::{StateStore, StoreError};
use crate::db::Ts;
use crate::with_pool;

/// A live replica, as its last heartbeat said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// The address it serves HTTP on.
    pub listen: String,
    pub heartbeat_at: DateTime<Utc>,
}

/// What taking over stopped replicas found.
#[derive(Debug, Default)]
pub struct Takeover {
    /// The replicas whose heartbeat stopped, now removed.
    pub replicas: Vec<String>,
    /// Their runs that were still `running`: now recorded abandoned, to be run again.
    pub abandoned: Vec<(String, DateTime<Utc>)>,
    /// Their outbox leases, released.
    pub leases: u64,
}

/// The error text of an abandoned run; a claim may take such an occurrence over.
pub const ABANDONED: &str = "abandoned: the process running it stopped before it ended";

impl StateStore {
    /// Records this replica's heartbeat and returns every live replica (a heartbeat within
    /// `live_for`), sorted by id; this one is always among them.
    pub async fn heartbeat(&self, listen: &str, live_for: std::time::Duration) -> Result<Vec<Replica>, StoreError> {
        self.ready().await?;
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(live_for).unwrap_or_default();
        let _turn = self.write_turn().await;
        let rows: Vec<(String, String, Ts)> = with_pool!(&self.beat_pool(), |p| {
            sqlx::query(
                "INSERT INTO replicas (id, started_at, heartbeat_at, listen) VALUES ($1, $2, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, listen = excluded.listen",
            )
            .bind(&self.replica)
            .bind(Ts(now))
            .bind(listen)
            .execute(p)
            .await?;
            sqlx::query_as("SELECT id, listen, heartbeat_at FROM replicas WHERE heartbeat_at >= $1 ORDER BY id")
                .bind(Ts(cutoff))
                .fetch_all(p)
                .await?
        });
        let mut live: Vec<Replica> =
            rows.into_iter().map(|(id, listen, Ts(heartbeat_at))| Replica { id, listen, heartbeat_at }).collect();
        if !live.iter().any(|r| r.id == self.replica) {
            live.push(Replica { id: self.replica.clone(), listen: listen.to_owned(), heartbeat_at: now });
            live.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(live)
    }

    /// This replica's wall clock minus the store's (PostgreSQL's `clock_timestamp()`), read
    /// against the middle of the round trip; `None` on SQLite, where there is one clock.
    pub async fn clock_skew(&self) -> Result<Option<chrono::TimeDelta>, StoreError> {
        let Some(pool) = &self.beat_pool else { return Ok(None) };
        let before = Utc::now();
        let Ts(theirs) = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
        let after = Utc::now();
        Ok(Some(before + (after - before) / 2 - theirs))
    }

    /// Takes over every replica whose heartbeat is older than `live_for`, in one
    /// transaction (so two replicas never take over the same one): its `running` runs are
    /// recorded abandoned, its outbox leases released, its row removed.
    pub async fn take_over_stopped(&self, live_for: std::time::Duration) -> Result<Takeover, StoreError> {
        self.ready().await?;
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(live_for).unwrap_or_default();
        let _turn = self.write_turn().await;
        let mut takeover = Takeover::default();
        with_pool!(&self.beat_pool(), |p| {
            let mut tx = p.begin().await?;
            let gone: Vec<String> = sqlx::query_scalar("DELETE FROM replicas WHERE heartbeat_at < $1 RETURNING id")
                .bind(Ts(cutoff))
                .fetch_all(&mut *tx)
                .await?;
            for id in &gone {
                let runs: Vec<(String, Ts)> = sqlx::query_as(
                    "UPDATE job_runs SET outcome = 'failed', finished_at = $2, error = $3 \
                     WHERE outcome = 'running' AND replica = $1 RETURNING job, scheduled_at",
                )
                .bind(id)
                .bind(Ts(now))
                .bind(ABANDONED)
                .fetch_all(&mut *tx)
                .await?;
                takeover.abandoned.extend(runs.into_iter().map(|(job, Ts(at))| (job, at)));
                takeover.leases += sqlx::query(
                    "UPDATE outbox SET claimed_by = NULL, next_attempt_at = $2 WHERE claimed_by = $1 AND state = 'pending'",
                )
                .bind(id)
                .bind(Ts(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            takeover.replicas = gone;
        });
        Ok(takeover)
    }

    /// Leaves the live set (a clean shutdown): the others take its turns at once, and its
    /// outbox leases are due again.
    pub async fn leave(&self) -> Result<(), StoreError> {
        self.ready().await?;
        let _turn = self.write_turn().await;
        with_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM replicas WHERE id = $1").bind(&self.replica).execute(p).await?;
            sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, next_attempt_at = $2 WHERE claimed_by = $1 AND state = 'pending'",
            )
            .bind(&self.replica)
            .bind(Ts(Utc::now()))
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Occurrences another replica skipped (its previous run of the job was still going)
    /// since `since`: an idle replica may run them (a claim takes a skipped occurrence over).
    pub async fn skipped_elsewhere(&self, since: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        self.ready().await?;
        let rows: Vec<(String, Ts)> = with_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT job, scheduled_at FROM job_runs WHERE outcome = 'skipped' AND scheduled_at > $1 AND replica <> $2",
            )
            .bind(Ts(since))
            .bind(&self.replica)
            .fetch_all(p)
            .await?
        });
        Ok(rows.into_iter().map(|(job, Ts(at))| (job, at)).collect())
    }

    /// A value every replica shares: the stored one, or `make()`'s, stored by whichever
    /// replica came first.
    pub async fn shared_setting(&self, key: &str, make: impl FnOnce() -> String) -> Result<String, StoreError> {
        self.ready().await?;
        let _turn = self.write_turn().await;
        let value = make();
        Ok(with_pool!(&self.pool, |p| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(&value)
                .execute(p)
                .await?;
            sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE key = $1").bind(key).fetch_one(p).await?
        }))
    }
}
