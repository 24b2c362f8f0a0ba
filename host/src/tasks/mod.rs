//! Built-in host tasks: what a due job does. Each task returns what it saw as an event;
//! the daemon records it and hands it to the policies subscribed to the job.
//!
//! Architecture invariant: tasks never write warden's state tables themselves and never
//! send anything; they read or maintain the target (or prune the state store when a job
//! says `db = "state"`) and report.

mod gauges;
mod heartbeat;
mod maintenance;
mod net;
mod probe;

use std::time::Duration;

use crate::config::{DbRole, Job, Task};
use crate::db::Pool;
use crate::store::StateStore;
use crate::targets::Targets;

pub use crate::base::{Event, Gauge, RunResult};
pub use probe::run_probe;

/// What a task needs: the targets and the state store (for `db = "state"` maintenance).
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    pub targets: &'a Targets,
    pub store: &'a StateStore,
}

impl TaskContext<'_> {
    fn db(&self, role: &DbRole) -> Result<&Pool, TaskError> {
        match role {
            DbRole::Target => Ok(&self.targets.db),
            DbRole::State => Ok(self.store.pool()),
            DbRole::Named(name) => self
                .targets
                .database(Some(name))
                .map(|(pool, _)| pool)
                .ok_or_else(|| TaskError::Failed(format!("no database named `{name}`"))),
        }
    }
}

/// The result of a successful task.
#[derive(Debug, Clone, Default)]
pub struct TaskOutput {
    pub rows_affected: Option<u64>,
    pub detail: Option<String>,
    pub event: Option<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("no SQL for the {backend} backend in this job")]
    NoSqlForBackend { backend: &'static str },
    #[error("{0}")]
    Failed(String),
}

/// Runs a job's task once. The caller bounds it with the job's timeout.
pub async fn run(job: &Job, ctx: TaskContext<'_>) -> Result<TaskOutput, TaskError> {
    match &job.task {
        Task::Probe { checks } => {
            let snapshot = run_probe(&job.name, checks, ctx.targets).await;
            let detail = format!("status {}", snapshot.status.as_str());
            Ok(TaskOutput { detail: Some(detail), event: Some(Event::Snapshot(snapshot)), ..Default::default() })
        }
        Task::PoolStats => Ok(gauges::pool_stats(&ctx.targets.db)),
        Task::PgActivity => gauges::pg_activity(&ctx.targets.db).await,
        Task::SqlGauge { db, metric, query } => gauges::sql_gauge(ctx.db(db)?, metric, query).await,
        Task::Prune(prune) => maintenance::prune(ctx.db(&prune.db)?, prune).await,
        Task::Sql(sql) => maintenance::sql_batches(ctx.db(&sql.db)?, sql).await,
        Task::Heartbeat(heartbeat) => heartbeat::check(&job.name, heartbeat, ctx.store).await,
    }
}

fn budget_spent(started: std::time::Instant, budget: Duration) -> bool {
    started.elapsed() >= budget
}
