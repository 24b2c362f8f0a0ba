//! Running one occurrence of a job: claim it, run its task under the timeout, record it.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::config::Job;
use crate::metrics;
use crate::store::Outcome;
use crate::tasks::{self, Event, TaskContext};

/// How an occurrence was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Manual => "manual",
        }
    }
}

/// What happened to one occurrence.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: Option<i64>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub rows_affected: Option<u64>,
    pub detail: Option<String>,
    pub event: Option<Event>,
    pub seconds: f64,
    /// Another process had already claimed this occurrence; nothing ran here.
    pub claimed_elsewhere: bool,
}

/// Claims the occurrence, runs the task bounded by the job's timeout, and records the
/// run, the health snapshot and the metrics. When the state store is unreachable the
/// task still runs (a probe must report the outage) and the run is logged unrecorded.
pub async fn execute(job: &Job, scheduled: DateTime<Utc>, trigger: Trigger, ctx: &TaskContext) -> RunReport {
    execute_observed(job, scheduled, trigger, ctx, &|_| {}).await
}

/// As `execute`, handing the task's event to `observe` as soon as the task ends, before
/// anything is written, so `/health` is fresh even while the state store is slow or down.
pub async fn execute_observed(
    job: &Job,
    scheduled: DateTime<Utc>,
    trigger: Trigger,
    ctx: &TaskContext,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    let started = Instant::now();
    let run_id = match ctx.store.claim(&job.name, scheduled, trigger.as_str()).await {
        Ok(Some(id)) => Some(id),
        Ok(None) => {
            info!(job = %job.name, %scheduled, "occurrence already claimed by another process");
            return RunReport {
                job: job.name.clone(),
                run_id: None,
                outcome: Outcome::Skipped,
                error: None,
                rows_affected: None,
                detail: Some("claimed by another process".into()),
                event: None,
                seconds: 0.0,
                claimed_elsewhere: true,
            };
        }
        Err(e) => {
            warn!(job = %job.name, error = %e, "state store unreachable; running the job unclaimed");
            None
        }
    };
    let result = tokio::time::timeout(job.timeout.std(), tasks::run(job, ctx)).await;
    let seconds = started.elapsed().as_secs_f64();
    let (outcome, error, output) = match result {
        Ok(Ok(output)) => (Outcome::Ok, None, output),
        Ok(Err(e)) => (Outcome::Failed, Some(e.to_string()), Default::default()),
        Err(_) => (Outcome::Timeout, Some(format!("timed out after {}", job.timeout)), Default::default()),
    };
    if let Some(event) = &output.event {
        observe(event);
    }
    match &output.event {
        Some(Event::Snapshot(snapshot)) => {
            metrics::record_snapshot(snapshot);
            if let Err(e) = ctx.store.insert_health(snapshot).await {
                warn!(job = %job.name, error = %e, "could not store the health snapshot");
            }
        }
        Some(Event::Gauges { gauges }) => metrics::record_gauges(gauges),
        None => {}
    }
    if let Some(id) = run_id {
        let recorded =
            ctx.store.finish(id, outcome, error.as_deref(), output.rows_affected, output.detail.as_deref()).await;
        if let Err(e) = recorded {
            warn!(job = %job.name, run_id = id, error = %e, "could not record the run");
        }
    }
    metrics::record_run(&job.name, outcome.as_str(), seconds);
    match &error {
        None => {
            info!(job = %job.name, outcome = outcome.as_str(), seconds, detail = output.detail.as_deref().unwrap_or(""), "job finished")
        }
        Some(e) => warn!(job = %job.name, outcome = outcome.as_str(), seconds, error = %e, "job failed"),
    }
    RunReport {
        job: job.name.clone(),
        run_id,
        outcome,
        error,
        rows_affected: output.rows_affected,
        detail: output.detail,
        event: output.event,
        seconds,
        claimed_elsewhere: false,
    }
}
