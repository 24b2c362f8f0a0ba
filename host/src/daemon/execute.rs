//! Running one occurrence of a job: claim it, run its task under the timeout, hand the
//! event to the policies listening to the job, and commit the run, the snapshot, the
//! policies' state writes and their outbox rows in one transaction.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::policies::PolicySet;
use crate::config::Job;
use crate::metrics;
use crate::runtime::{Capabilities, Evaluation};
use crate::store::{Decision, Outcome, RunCommit};
use crate::tasks::{self, Event, RunResult, TaskContext};

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
    /// Each policy's evaluation: its name and what it decided, or why it failed.
    pub evaluations: Vec<(String, Result<Evaluation, String>)>,
    /// Whether the run's writes were committed.
    pub committed: bool,
}

/// Runs an occurrence without policies.
pub async fn execute(job: &Job, scheduled: DateTime<Utc>, trigger: Trigger, ctx: &TaskContext) -> RunReport {
    execute_observed(job, scheduled, trigger, ctx, None, &|_| {}).await
}

/// Claims the occurrence, runs the task bounded by the job's timeout, evaluates the
/// policies and commits everything at once. `observe` sees the event as soon as the task
/// ends, before anything is written, so `/health` is fresh even while the store is down.
/// When the state store is unreachable the task still runs (a probe must report the
/// outage) and the run is logged unrecorded.
pub async fn execute_observed(
    job: &Job,
    scheduled: DateTime<Utc>,
    trigger: Trigger,
    ctx: &TaskContext,
    policies: Option<&PolicySet>,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport {
        job: job.name.clone(),
        run_id: None,
        outcome: Outcome::Skipped,
        error: None,
        rows_affected: None,
        detail: None,
        event: None,
        seconds: 0.0,
        claimed_elsewhere: false,
        evaluations: Vec::new(),
        committed: false,
    };
    match ctx.store.claim(&job.name, scheduled, trigger.as_str()).await {
        Ok(Some(id)) => report.run_id = Some(id),
        Ok(None) => {
            info!(job = %job.name, %scheduled, "occurrence already claimed by another process");
            report.detail = Some("claimed by another process".into());
            report.claimed_elsewhere = true;
            return report;
        }
        Err(e) => warn!(job = %job.name, error = %e, "state store unreachable; running the job unclaimed"),
    }
    let result = tokio::time::timeout(job.timeout.std(), tasks::run(job, ctx)).await;
    let output = match result {
        Ok(Ok(output)) => {
            report.outcome = Outcome::Ok;
            output
        }
        Ok(Err(e)) => {
            report.outcome = Outcome::Failed;
            report.error = Some(e.to_string());
            Default::default()
        }
        Err(_) => {
            report.outcome = Outcome::Timeout;
            report.error = Some(format!("timed out after {}", job.timeout));
            Default::default()
        }
    };
    report.rows_affected = output.rows_affected;
    report.detail = output.detail;
    let event = output.event.unwrap_or_else(|| {
        Event::RunFinished(RunResult {
            outcome: report.outcome.as_str().to_owned(),
            rows_affected: report.rows_affected,
            error: report.error.clone(),
        })
    });
    observe(&event);
    match &event {
        Event::Snapshot(snapshot) => metrics::record_snapshot(snapshot),
        Event::Gauges { gauges } => metrics::record_gauges(gauges),
        Event::RunFinished(_) => {}
    }

    let mut decisions = Vec::new();
    if let Some(set) = policies {
        for policy in set.for_job(&job.name) {
            let name = policy.name().to_owned();
            let state = match ctx.store.policy_state(&name).await {
                Ok(state) => state,
                Err(e) => {
                    warn!(policy = %name, error = %e, "cannot read the policy's state; not evaluated");
                    report.evaluations.push((name, Err(e.to_string())));
                    continue;
                }
            };
            let caps = Capabilities {
                sql: policy.spec.grants.sql_read.then(|| ctx.targets.db.clone()),
                s3: ctx.targets.s3.clone(),
            };
            let result = set.engine.evaluate(policy, &job.name, &event, state, Utc::now(), caps).await;
            match &result {
                Ok(evaluation) => {
                    metrics::record_evaluation(&name, "ok", evaluation.micros as f64 / 1e6);
                    for (level, message) in &evaluation.logs {
                        info!(policy = %name, level = %level, "{message}");
                    }
                    decisions.push(decision(&name, &job.name, scheduled, evaluation));
                }
                Err(e) => {
                    let outcome = if policy.is_quarantined() { "quarantined" } else { "failed" };
                    metrics::record_evaluation(&name, outcome, 0.0);
                    metrics::record_quarantine(&name, policy.is_quarantined());
                    let note = format!("policy {name}: {e}");
                    report.detail = Some(match report.detail.take() {
                        Some(d) => format!("{d}; {note}"),
                        None => note,
                    });
                    warn!(policy = %name, job = %job.name, error = %e, quarantined = policy.is_quarantined(), "policy evaluation failed");
                }
            }
            report.evaluations.push((name, result.map_err(|e| e.to_string())));
        }
    }

    let snapshot = match &event {
        Event::Snapshot(s) => Some(s),
        _ => None,
    };
    let commit = RunCommit {
        run_id: report.run_id,
        job: &job.name,
        outcome: report.outcome,
        error: report.error.as_deref(),
        rows_affected: report.rows_affected,
        detail: report.detail.as_deref(),
        snapshot,
        decisions: &decisions,
    };
    match ctx.store.commit(&commit).await {
        Ok(()) => report.committed = true,
        Err(e) => warn!(job = %job.name, run_id = ?report.run_id, error = %e, "could not record the run"),
    }
    report.seconds = started.elapsed().as_secs_f64();
    metrics::record_run(&job.name, report.outcome.as_str(), report.seconds);
    match &report.error {
        None => {
            info!(job = %job.name, outcome = report.outcome.as_str(), seconds = report.seconds, detail = report.detail.as_deref().unwrap_or(""), "job finished")
        }
        Some(e) => {
            warn!(job = %job.name, outcome = report.outcome.as_str(), seconds = report.seconds, error = %e, "job failed")
        }
    }
    report.event = Some(event);
    report
}

/// The outbox rows and state writes of one evaluation. Dedup keys are deterministic per
/// occurrence, so a retried commit never queues a notification twice.
fn decision(policy: &str, job: &str, scheduled: DateTime<Utc>, evaluation: &Evaluation) -> Decision {
    let outbox = evaluation
        .actions
        .iter()
        .enumerate()
        .filter_map(|(i, action)| {
            let kind = action.outbox_kind()?;
            let key = match action {
                crate::runtime::ActionRecord::OpenTicket { dedup_key, .. } => dedup_key.clone(),
                _ => format!("{policy}:{job}:{}:{i}", scheduled.timestamp_millis()),
            };
            let payload = serde_json::to_string(action).unwrap_or_default();
            Some((kind.to_owned(), key, payload))
        })
        .collect();
    Decision { policy: policy.to_owned(), state_writes: evaluation.state_writes.clone(), outbox }
}
