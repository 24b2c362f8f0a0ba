//! Silences: what they match, and creating, listing and ending them.

use chrono::{DateTime, Utc};

use super::{StateStore, StoreError};
use crate::base::{Matchers, OutboxKind};
use crate::db::Ts;
use crate::with_pool;

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

impl StateStore {
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
            .bind(matchers.kind.map(OutboxKind::as_str))
            .bind(Ts(starts_at))
            .bind(Ts(ends_at))
            .bind(comment)
            .bind(created_by)
            .bind(Ts(Utc::now()))
            // Every row fetched, so SQLite's commit at the statement's end is seen to fail.
            .fetch_all(p)
            .await?
            .into_iter()
            .next()
            .ok_or(StoreError::Corrupt("the new silence returned no id".into()))?))
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
                matchers: Matchers { job, policy, kind: kind.as_deref().and_then(OutboxKind::parse) },
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
}
