//! Heartbeat (push) monitors: each ping recorded (from any replica), and the newest one
//! read back by the heartbeat job's deadline check, the admin API and the status page.

use chrono::{DateTime, Utc};

use super::{StateStore, StoreError};
use crate::db::Ts;
use crate::with_pool;

/// The most of a ping's body kept (as the run's detail).
pub const MAX_PING_BODY: usize = 10 * 1024;

/// What a ping says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PingKind {
    /// The job ran and succeeded (`/ping/{job}`).
    Success,
    /// The job ran and failed (`/ping/{job}/fail`).
    Fail,
    /// The job started (`/ping/{job}/start`); not a ping that meets the deadline.
    Start,
}

impl PingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PingKind::Success => "success",
            PingKind::Fail => "fail",
            PingKind::Start => "start",
        }
    }

    pub fn parse(text: &str) -> Option<PingKind> {
        [PingKind::Success, PingKind::Fail, PingKind::Start].into_iter().find(|k| k.as_str() == text)
    }
}

/// A heartbeat job's newest pings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Pings {
    pub job: String,
    pub last_ping_at: DateTime<Utc>,
    pub last_kind: PingKind,
    /// The newest success or failure, and which.
    pub last_done_at: Option<DateTime<Utc>>,
    pub done_kind: Option<PingKind>,
    pub started_at: Option<DateTime<Utc>>,
    /// The body of the newest ping (capped).
    pub last_body: String,
    pub pings: i64,
}

type Row = (String, Ts, String, String, Option<Ts>, Option<String>, Option<Ts>, i64);

fn pings(row: Row) -> Option<Pings> {
    let (job, at, kind, body, done_at, done_kind, started_at, pings) = row;
    Some(Pings {
        job,
        last_ping_at: at.0,
        last_kind: PingKind::parse(&kind)?,
        last_done_at: done_at.map(|t| t.0),
        done_kind: done_kind.as_deref().and_then(PingKind::parse),
        started_at: started_at.map(|t| t.0),
        last_body: body,
        pings,
    })
}

const COLUMNS: &str = "job, last_ping_at, last_kind, last_body, last_done_at, done_kind, started_at, pings";

impl StateStore {
    /// Records one ping of a heartbeat job.
    pub async fn record_ping(
        &self,
        job: &str,
        kind: PingKind,
        body: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let mut end = body.len().min(MAX_PING_BODY);
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        let done = kind != PingKind::Start;
        let sql = "INSERT INTO heartbeats (job, last_ping_at, last_kind, last_body, last_done_at, done_kind, started_at, pings) \
                   VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN $2 END, CASE WHEN $5 THEN $3 END, CASE WHEN $5 THEN NULL ELSE $2 END, 1) \
                   ON CONFLICT (job) DO UPDATE SET last_ping_at = excluded.last_ping_at, last_kind = excluded.last_kind, \
                   last_body = excluded.last_body, \
                   last_done_at = COALESCE(excluded.last_done_at, heartbeats.last_done_at), \
                   done_kind = COALESCE(excluded.done_kind, heartbeats.done_kind), \
                   started_at = CASE WHEN $5 THEN heartbeats.started_at ELSE excluded.started_at END, \
                   pings = heartbeats.pings + 1";
        with_pool!(&self.pool, |p| sqlx::query(sql)
            .bind(job)
            .bind(Ts(at))
            .bind(kind.as_str())
            .bind(&body[..end])
            .bind(done)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// A heartbeat job's newest pings; `None` before its first.
    pub async fn pings(&self, job: &str) -> Result<Option<Pings>, StoreError> {
        self.ready().await?;
        let sql = format!("SELECT {COLUMNS} FROM heartbeats WHERE job = $1");
        let row: Option<Row> =
            with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(job).fetch_optional(p).await?);
        Ok(row.and_then(pings))
    }

    /// Every heartbeat job's newest pings, by job.
    pub async fn all_pings(&self) -> Result<Vec<Pings>, StoreError> {
        self.ready().await?;
        let sql = format!("SELECT {COLUMNS} FROM heartbeats ORDER BY job");
        let rows: Vec<Row> = with_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?);
        Ok(rows.into_iter().filter_map(pings).collect())
    }
}
