//! Running one occurrence of a job: claim it, run its task under the timeout, hand the
//! event to the policies listening to the job, and commit the run, the snapshot, the
//! policies' state writes and their outbox rows in one transaction.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

use super::RunContext;
use crate::config::Job;
use crate::delivery::route::{INCIDENT_KEY, Router};
use crate::metrics;
use crate::runtime::PolicySet;
use crate::runtime::{Capabilities, Evaluation};
use crate::store::{DECIDED_KEY, Decision, JobStates, Outcome, RunCommit, StoreError};
use crate::tasks::{self, Event, RunResult};

/// How an occurrence was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
    /// An occurrence another replica skipped or abandoned.
    Takeover,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Manual => "manual",
            Trigger::Takeover => "takeover",
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
    /// Whether the run's writes went to the local spool instead.
    pub spooled: bool,
    /// Whether it left alerts for the dispatcher (in the outbox or the spool).
    pub queued_alerts: bool,
    /// The task ended before the policies were loaded: its event waits for them (and the
    /// run is recorded once they decided).
    pub deferred: bool,
}

/// Runs an occurrence without policies.
pub async fn execute(job: &Job, scheduled: DateTime<Utc>, trigger: Trigger, ctx: &RunContext) -> RunReport {
    execute_observed(job, scheduled, trigger, ctx, None, &|_| {}).await
}

/// Claims the occurrence, runs the task bounded by the job's timeout, evaluates the
/// policies and commits everything at once. `observe` sees the event as soon as the task
/// ends, before anything is written, so `/health` is fresh even while the store is down.
/// When the state store is unreachable the task still runs (a probe must report the
/// outage), the policies decide from their last known state, and the whole commit goes to
/// the local spool, from which the dispatcher sends the alerts and which moves into the
/// store when it returns.
pub async fn execute_observed(
    job: &Job,
    scheduled: DateTime<Utc>,
    trigger: Trigger,
    ctx: &RunContext,
    policies: Option<&PolicySet>,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    let at = Occurrence { scheduled, trigger, claimed: None, lateness: None };
    run(job, at, ctx, policies, observe).await
}

/// How long a claim waits out a busy store (every connection in use) before the
/// occurrence is given up; a busy store is never taken for an unreachable one.
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

#[allow(clippy::too_many_arguments)]
/// An occurrence as the daemon runs it, with the policies loaded.
pub(super) async fn execute_at(
    job: &Job,
    at: Occurrence,
    ctx: &RunContext,
    policies: &PolicySet,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    run(job, at, ctx, Some(policies), observe).await
}

async fn run(
    job: &Job,
    at: Occurrence,
    ctx: &RunContext,
    policies: Option<&PolicySet>,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> RunReport {
    // With policies listening, the claim also reads their state for this job (one round
    // trip on Postgres).
    let wants_state = policies.is_some_and(|set| set.for_job(&job.name).next().is_some());
    match start(job, at, ctx, wants_state, observe).await {
        Ok(ran) => finish(job, ran, ctx, policies).await,
        Err(report) => report,
    }
}

/// Which occurrence a run is, and how it came to run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Occurrence {
    pub scheduled: DateTime<Utc>,
    pub trigger: Trigger,
    /// Claimed by the caller already (a run-now).
    pub claimed: Option<i64>,
    /// How long it waited for a slot after it was due.
    pub lateness: Option<std::time::Duration>,
}

/// A run whose task has ended, before its policies decide and it is recorded.
pub(super) struct Ran {
    pub(super) report: RunReport,
    event: Event,
    at: Occurrence,
    started: Instant,
    started_at: DateTime<Utc>,
    /// The claim reached the store (and the spool moved in): the run commits there.
    store_up: bool,
    /// The policies' state read with the claim, when it is still current.
    claimed_states: Option<JobStates>,
}

impl Ran {
    /// Its policies' state is read again when they decide (they decide later than the claim).
    pub(super) fn forget_claimed_state(&mut self) {
        self.claimed_states = None;
    }
}

/// Claims the occurrence and runs the task under its timeout; `Err` is a run that ended
/// there (claimed elsewhere, or given up).
pub(super) async fn start(
    job: &Job,
    at: Occurrence,
    ctx: &RunContext,
    wants_state: bool,
    observe: &(dyn Fn(&Event) + Send + Sync),
) -> Result<Ran, RunReport> {
    let Occurrence { scheduled, trigger, claimed, lateness } = at;
    let started = Instant::now();
    let started_at = Utc::now();
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
        spooled: false,
        queued_alerts: false,
        deferred: false,
    };
    if let Some(late) = lateness {
        metrics::record_lateness(&job.name, late.as_secs_f64());
    }
    let claim = match claimed {
        Some(id) => Ok(Some((id, None))),
        None => claim(job, scheduled, trigger, wants_state, ctx).await,
    };
    let mut claimed_states = None;
    match claim {
        Ok(Some((id, states))) => {
            report.run_id = Some(id);
            claimed_states = states;
        }
        Ok(None) => {
            info!(job = %job.name, %scheduled, "occurrence already claimed by another process");
            report.detail = Some("claimed by another process".into());
            report.claimed_elsewhere = true;
            return Err(report);
        }
        Err(e) if ctx.store.is_unreachable(&e) => {
            // With replicas, one of them runs and sends through the outage.
            if let Some(fleet) = &ctx.fleet
                && fleet.outage_role().await == super::replicas::Role::Hold
            {
                info!(job = %job.name, %scheduled, "state store unreachable; another replica leads through the outage, so this one does not run the occurrence");
                report.detail = Some("held: another replica leads through the store outage".into());
                return Err(report);
            }
            metrics::record_disk_full("state", e.is_disk_full());
            warn!(job = %job.name, error = %e, "{}; running the job unclaimed", e.outage())
        }
        Err(e) => {
            // Busy past all patience, or the store refused the claim: running it unclaimed
            // could run it twice across replicas, so this occurrence is given up, loudly.
            error!(job = %job.name, %scheduled, error = %e, "could not claim the occurrence; it is not run");
            metrics::record_run(&job.name, "unclaimed", 0.0);
            report.error = Some(format!("could not claim the occurrence: {e}"));
            return Err(report);
        }
    }
    // While anything waits in the spool, the store is behind it: drain first, or keep
    // spooling so the policies' writes land in order.
    let mut store_up = report.run_id.is_some();
    let spooled_before = !ctx.spool.is_empty();
    if store_up
        && !ctx.spool.is_empty()
        && let Err(e) = ctx.spool.drain(&ctx.store).await
    {
        warn!(error = %e, "could not move the spool into the state store; spooling this run too");
        store_up = false;
    }
    if spooled_before {
        // The spool's runs moved in (or still wait): the state read with the claim is stale.
        claimed_states = None;
    }
    let result = tokio::time::timeout(job.timeout.std(), tasks::run(job, ctx.task())).await;
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

    Ok(Ran { report, event, at, started, started_at, store_up, claimed_states })
}

/// The policies listening to the job decide on the run's event, and the run, its snapshot
/// and their decisions are committed in one transaction (or spooled).
pub(super) async fn finish(job: &Job, ran: Ran, ctx: &RunContext, policies: Option<&PolicySet>) -> RunReport {
    let Ran { mut report, event, at, started, started_at, mut store_up, mut claimed_states } = ran;
    let Occurrence { scheduled, trigger, lateness, .. } = at;
    let mut decisions = Vec::new();
    if let Some(set) = policies {
        let listening: Vec<_> = set.for_job(&job.name).collect();
        // Every listening policy's state for this job, in one query.
        let mut states = if !store_up || listening.is_empty() {
            None
        } else if let Some(states) = claimed_states.take() {
            Some(states)
        } else {
            match ctx.store.job_states(&job.name).await {
                Ok(states) => Some(states),
                Err(e) => {
                    warn!(job = %job.name, error = %e, "cannot read the policies' state; deciding from the last known state");
                    store_up = false;
                    None
                }
            }
        };
        for policy in listening {
            let name = policy.name().to_owned();
            let (mut state, from_store) = match states.as_mut() {
                Some(states) => {
                    let state = states.remove(&name).unwrap_or_default();
                    ctx.spool.remember(&name, &job.name, &state);
                    (state, true)
                }
                None => (ctx.spool.state(&name, &job.name), false),
            };
            // Read from the store, the decision applies only if no other came first; from
            // the spool's memory, only if none newer did.
            let mark = state.remove(DECIDED_KEY);
            let read_mark = from_store.then(|| mark.unwrap_or_default());
            // The incidents its alerts opened are the host's, as the mark is.
            let incidents: std::collections::BTreeMap<String, String> =
                state.extract_if(.., |k, _| k.starts_with(INCIDENT_KEY)).collect();
            let caps = Capabilities {
                sql: ctx.targets.granted_sql(&policy.spec),
                s3: ctx.targets.granted_bucket(&policy.spec),
            };
            // The clock is the occurrence's: every replica deciding on it sees the same time,
            // so what a policy derives from it (a ticket's dedup key) is the same too.
            let result = set.engine.evaluate(policy, &job.name, &event, state, scheduled, caps).await;
            match &result {
                Ok(evaluation) => {
                    metrics::record_evaluation(&name, "ok", evaluation.micros as f64 / 1e6);
                    for (level, message) in &evaluation.logs {
                        info!(policy = %name, level = %level, "{message}");
                    }
                    let observed = match &event {
                        Event::Snapshot(s) => Some(s.status),
                        _ => None,
                    };
                    let decided = Decided { scheduled, observed, incidents: &incidents, read_mark: read_mark.clone() };
                    decisions.push(decision(&ctx.router, &name, &job.name, evaluation, decided));
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

    let commit = RunCommit {
        run_id: report.run_id,
        job: job.name.clone(),
        scheduled_at: scheduled,
        trigger: trigger.as_str().to_owned(),
        started_at,
        outcome: report.outcome,
        error: report.error.clone(),
        rows_affected: report.rows_affected,
        detail: report.detail.clone(),
        lateness_ms: lateness.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        snapshot: match &event {
            Event::Snapshot(s) => Some(s.clone()),
            _ => None,
        },
        decisions,
    };
    report.queued_alerts = commit.decisions.iter().any(|d| !d.outbox.is_empty());
    let stored = if store_up { commit_patiently(&commit, ctx).await } else { Err(StoreError::Unreachable) };
    // A replica that holds through an outage spools nothing (it would send from its
    // spool): the leader decides this change from the state last committed.
    let held = match &stored {
        Err(e) if ctx.store.is_unreachable(e) => match &ctx.fleet {
            Some(fleet) => fleet.outage_role().await == super::replicas::Role::Hold,
            None => false,
        },
        _ => false,
    };
    match &stored {
        Ok(()) => metrics::record_disk_full("state", false),
        // Not tried (the claim found the store out, and said why): the gauge stands.
        Err(StoreError::Unreachable) => {}
        Err(e) => metrics::record_disk_full("state", e.is_disk_full()),
    }
    match stored {
        Ok(()) => {
            ctx.spool.committed(&commit);
            report.committed = true;
        }
        Err(e) if held => {
            warn!(job = %job.name, error = %e, "state store unreachable and another replica leads through the outage; this run's decisions are left to it");
            report.queued_alerts = false;
        }
        Err(e) => {
            // On disk or, when the spool's own disk is full, in memory (`Spool::push` says so).
            let on_disk = ctx.spool.push(with_whole_state(commit, &ctx.spool)).is_ok();
            report.spooled = true;
            warn!(job = %job.name, error = %e, spool = %ctx.spool.path().display(), on_disk, "{}; run spooled", e.outage());
        }
    }
    metrics::record_spool(ctx.spool.len());
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

/// Claims the occurrence, waiting while the store is merely busy (every connection in use).
async fn claim(
    job: &Job,
    scheduled: DateTime<Utc>,
    trigger: Trigger,
    wants_state: bool,
    ctx: &RunContext,
) -> Result<Option<(i64, Option<JobStates>)>, StoreError> {
    // Fast or failed fast: never longer than half the job's period, so a store that does
    // not answer (a cut connection) is noticed well within one interval.
    let patience = Instant::now() + claim_patience(job);
    loop {
        let attempt = async {
            if wants_state {
                ctx.store
                    .claim_with_state(&job.name, scheduled, trigger.as_str())
                    .await
                    .map(|c| c.map(|(id, s)| (id, Some(s))))
            } else {
                ctx.store.claim(&job.name, scheduled, trigger.as_str()).await.map(|c| c.map(|id| (id, None)))
            }
        };
        let Ok(attempt) = tokio::time::timeout_at(patience.into(), attempt).await else {
            // Past patience: a store that still answers a ping is busy (a lock, a full pool),
            // and the occurrence is given up; one that does not is unreachable.
            let met = ctx.store.after_timeout(std::time::Duration::from_secs(1)).await;
            if matches!(met, StoreError::Busy) {
                warn!(job = %job.name, %scheduled, "state store busy: the claim got no answer in time; the occurrence is not run");
            }
            return Err(met);
        };
        match attempt {
            Err(e) if ctx.store.is_busy(&e) && Instant::now() < patience => {
                warn!(job = %job.name, "state store busy (every connection in use); the claim waits");
            }
            other => return other,
        }
    }
}

/// A spooled decision carries the policy's whole state after it, not only what changed:
/// a decision moved in later may be dropped as older than one another replica spooled (the
/// leader of an outage decides from the freshest state it learned from its peers), and the
/// newest one that lands must then bring the whole state with it.
fn with_whole_state(mut commit: RunCommit, spool: &crate::store::Spool) -> RunCommit {
    for d in &mut commit.decisions {
        let mut state = spool.state(&d.policy, &commit.job);
        state.remove(DECIDED_KEY);
        let mut whole: std::collections::BTreeMap<String, Option<String>> =
            state.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in &d.state_writes {
            whole.insert(k.clone(), v.clone());
        }
        d.state_writes = whole;
    }
    commit
}

/// How long a claim may take: half the period of an `every` job (at least 200 ms), at most
/// `BUSY_PATIENCE`.
fn claim_patience(job: &Job) -> std::time::Duration {
    match &job.schedule {
        crate::schedule::ScheduleSpec::Every { period, .. } => {
            (period.std() / 2).clamp(std::time::Duration::from_millis(200), BUSY_PATIENCE)
        }
        crate::schedule::ScheduleSpec::Cron { .. } => BUSY_PATIENCE,
    }
}

/// Commits the run, waiting while the store is merely busy; an unreachable store (or one
/// busy past all patience) is answered by the caller with the spool.
async fn commit_patiently(commit: &RunCommit, ctx: &RunContext) -> Result<(), StoreError> {
    let patience = Instant::now() + BUSY_PATIENCE;
    loop {
        match ctx.store.commit(commit).await {
            Err(e) if ctx.store.is_busy(&e) && Instant::now() < patience => {
                warn!(job = %commit.job, "state store busy (every connection in use); the commit waits");
            }
            other => return other,
        }
    }
}

/// What a decision is made of besides the evaluation.
struct Decided<'a> {
    scheduled: DateTime<Utc>,
    /// The status of the snapshot evaluated.
    observed: Option<crate::health::Status>,
    /// The policy's open incidents for the job, as read.
    incidents: &'a std::collections::BTreeMap<String, String>,
    read_mark: Option<String>,
}

/// The outbox rows (routed to their receivers) and state writes of one evaluation. Dedup
/// keys are deterministic per occurrence, so a retried commit never queues a notification
/// twice.
fn decision(router: &Router, policy: &str, job: &str, evaluation: &Evaluation, decided: Decided<'_>) -> Decision {
    let at_ms = decided.scheduled.timestamp_millis();
    let routed = router.route(policy, job, at_ms, decided.observed, &evaluation.actions, decided.incidents);
    // The decision mark and the incidents are the host's: a policy cannot write them.
    let mut state_writes = evaluation.state_writes.clone();
    state_writes.retain(|k, _| !k.starts_with("warden:"));
    state_writes.extend(routed.state_writes);
    Decision { policy: policy.to_owned(), state_writes, outbox: routed.rows, read_mark: decided.read_mark }
}
