//! The outbox, for the dispatcher: leases, attempts, the subscriber fan-out, silencing,
//! re-driving. Rows enter it only with the run that decided them (`StateStore::commit`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{NewOutboxRow, StateStore, StoreError};
use crate::base::{OutboxKind, OutboxState};
use crate::db::{Pool, Ts};
use crate::with_pool;

/// Runs `$body`, a write returning `Result<_, sqlx::Error>`, with `$c` as its executor: on
/// SQLite the writer connection, in this process's turn (so the dispatcher's writes never
/// meet the runs' in SQLite's busy handler, and none can land on a pooled connection some
/// failure left inside a transaction); on Postgres the pool.
macro_rules! on_writer {
    ($store:expr, |$c:ident| $body:expr) => {{
        let store: &StateStore = $store;
        match store.sqlite_turn().await {
            Some((mut turn, options)) => {
                let done = match turn.conn(&options).await {
                    Ok($c) => $body,
                    Err(e) => Err(e),
                };
                turn.end(done.is_err()).await;
                done
            }
            None => {
                let crate::db::Pool::Postgres($c) = store.pool() else { unreachable!("a SQLite store has a writer") };
                $body
            }
        }
    }};
}

/// A row the dispatcher holds for delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub dedup_key: String,
    #[sqlx(try_from = "String")]
    pub kind: OutboxKind,
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
    #[sqlx(try_from = "String")]
    pub kind: OutboxKind,
    /// The action as JSON text.
    pub payload: String,
    pub job: Option<String>,
    pub policy: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: OutboxState,
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

/// The parent of a fan-out, once its notices are queued.
const EXPANDED: &str = "UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, \
                        claimed_by = NULL, last_error = $3 WHERE id = $1";

/// A fan-out on SQLite in one command: the children (`$1`, a JSON array) and the parent.
const EXPAND_SQLITE: &str = "BEGIN IMMEDIATE; \
     INSERT INTO outbox (dedup_key, kind, payload, job, policy, next_attempt_at, created_at, recipient) \
     SELECT c.value->>'key', c.value->>'kind', c.value->>'payload', p.job, p.policy, $2, $2, c.value->>'recipient' \
     FROM json_each($1) AS c, outbox AS p WHERE p.id = $3 ON CONFLICT (dedup_key) DO NOTHING; \
     UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, claimed_by = NULL, \
     last_error = $4 WHERE id = $3; \
     COMMIT";

impl StateStore {
    /// Leases up to `limit` due pending rows of `kinds` to this process until `lease`
    /// from now, oldest due first. Replicas sharing a Postgres store never get the same row.
    pub async fn claim_due(
        &self,
        kinds: &[OutboxKind],
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.ready().await?;
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let kinds = kinds.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
        let lock = if self.pool.is_sqlite() { "" } else { " FOR UPDATE SKIP LOCKED" };
        let sql = format!(
            "UPDATE outbox SET next_attempt_at = $1, claimed_by = $2 WHERE id IN (\
               SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $3 AND kind IN ({kinds}) \
               ORDER BY next_attempt_at, id LIMIT $4{lock}) \
             RETURNING id, dedup_key, kind, payload, job, policy, attempts, created_at"
        );
        let mut rows: Vec<OutboxRow> = on_writer!(self, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(Ts(until))
            .bind(&self.replica)
            .bind(Ts(now))
            .bind(limit)
            .fetch_all(c)
            .await)?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Gives back every lease: on SQLite only one process uses the store, so a lease left
    /// from before a restart is stale and its row is due again at once.
    pub async fn release_stale_claims(&self) -> Result<u64, StoreError> {
        self.ready().await?;
        if !self.pool.is_sqlite() {
            return Ok(0);
        }
        let sql = "UPDATE outbox SET next_attempt_at = $1, claimed_by = NULL WHERE state = 'pending' AND claimed_by IS NOT NULL";
        Ok(on_writer!(self, |c| sqlx::query(sql).bind(Ts(Utc::now())).execute(c).await.map(|r| r.rows_affected()))?)
    }

    pub async fn mark_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, claimed_by = NULL, \
                   last_error = NULL WHERE id = $1";
        on_writer!(self, |c| sqlx::query(sql)
            .bind(id)
            .bind(Ts(Utc::now()))
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
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
        on_writer!(self, |c| sqlx::query(sql)
            .bind(id)
            .bind(state)
            .bind(Ts(next))
            .bind(error)
            .bind(attempts)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Replaces a `subscribers` row by one `notice` row per recipient, in one transaction:
    /// after a crash either the whole fan-out is queued or the parent is still pending.
    pub async fn expand(&self, parent: &OutboxRow, children: &[NewOutboxRow], note: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let now = Ts(Utc::now());
        if self.pool.is_sqlite() {
            // One command on the writer: the children as a JSON array.
            let json: Vec<serde_json::Value> = children
                .iter()
                .map(|c| {
                    serde_json::json!({"key": c.dedup_key, "kind": c.kind.as_str(), "payload": c.payload, "recipient": c.recipient})
                })
                .collect();
            let json = serde_json::to_string(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            return self
                .execute_on_writer(sqlx::query(EXPAND_SQLITE).bind(json).bind(now).bind(parent.id).bind(note))
                .await;
        }
        let Pool::Postgres(p) = &self.pool else { unreachable!("SQLite expands on its writer") };
        let mut tx = p.begin().await?;
        for child in children {
            sqlx::query(
                "INSERT INTO outbox (dedup_key, kind, payload, job, policy, next_attempt_at, created_at, recipient) \
                 SELECT $1, $2, $3, job, policy, $4, $4, $6 FROM outbox WHERE id = $5 ON CONFLICT (dedup_key) DO NOTHING",
            )
            .bind(&child.dedup_key)
            .bind(child.kind.as_str())
            .bind(&child.payload)
            .bind(now)
            .bind(parent.id)
            .bind(&child.recipient)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(EXPANDED).bind(parent.id).bind(now).bind(note).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a newer row of the same kind from the same policy about the same job is
    /// queued: a status notice that waited out an outage is not told after the status it
    /// was overtaken by.
    pub async fn superseded(&self, row: &OutboxRow) -> Result<bool, StoreError> {
        self.ready().await?;
        let sql =
            "SELECT COUNT(*) FROM outbox WHERE kind = $1 AND policy = $2 AND job IS NOT DISTINCT FROM $3 AND id > $4";
        let newer: i64 = with_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(row.kind.as_str())
            .bind(&row.policy)
            .bind(&row.job)
            .bind(row.id)
            .fetch_one(p)
            .await?);
        Ok(newer > 0)
    }

    /// Records a row as superseded: kept, visible with why, never sent. Earlier attempts'
    /// error stays in the note.
    pub async fn mark_superseded(&self, id: i64, why: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'superseded', last_error = CASE WHEN last_error IS NULL THEN $2 \
                   ELSE $2 || ' (earlier attempts failed: ' || last_error || ')' END, claimed_by = NULL WHERE id = $1";
        on_writer!(self, |c| sqlx::query(sql).bind(id).bind(why).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Records a row as silenced: kept, visible, never sent.
    pub async fn mark_silenced(&self, id: i64, why: &str) -> Result<(), StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'silenced', last_error = $2, claimed_by = NULL WHERE id = $1";
        on_writer!(self, |c| sqlx::query(sql).bind(id).bind(why).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stops notices queued for a user who just opted out: recorded as silenced, never sent.
    pub async fn cancel_notices(&self, recipient: &str) -> Result<u64, StoreError> {
        self.ready().await?;
        let sql = "UPDATE outbox SET state = 'silenced', last_error = 'recipient unsubscribed', claimed_by = NULL \
                   WHERE kind = 'notice' AND state = 'pending' AND recipient = $1";
        Ok(on_writer!(self, |c| sqlx::query(sql).bind(recipient).execute(c).await.map(|r| r.rows_affected()))?)
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
        Ok(on_writer!(self, |c| sqlx::query(sql)
            .bind(id)
            .bind(Ts(Utc::now()))
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?)
    }
}
