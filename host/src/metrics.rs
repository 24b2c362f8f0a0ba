//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//!
//! Names: `warden_job_runs_total{job,outcome}`, `warden_job_duration_seconds{job}`,
//! `warden_job_start_lateness_seconds` (queueing before a run started),
//! `warden_status{job}` (0 operational, 1 degraded, 2 error), `warden_check_up{job,check}`,
//! `warden_check_duration_seconds{job,check}`, `warden_config_reloads_total{result}` and one
//! gauge per task measurement (`warden_db_pool_*`, `warden_pg_*`, `warden_storage_fill_*`).
//! Delivery: `warden_outbox_pending{kind}` and `warden_outbox_failed{kind}` (rows now in
//! that state), `warden_outbox_delivered_total{kind}`, `warden_outbox_retried_total{kind}`,
//! `warden_outbox_failed_total{kind}` (attempts), `warden_spool_runs` and
//! `warden_spool_rejected_runs_total`.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Snapshot;
use crate::tasks::Gauge;

const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full("warden_job_start_lateness_seconds".into()), LATENESS_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program); then ours
            // renders nothing, which `/metrics` shows plainly rather than crashing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn record_run(job: &str, outcome: &str, seconds: f64) {
    counter!("warden_job_runs_total", "job" => job.to_owned(), "outcome" => outcome.to_owned()).increment(1);
    if outcome != "skipped" {
        histogram!("warden_job_duration_seconds", "job" => job.to_owned()).record(seconds);
    }
}

pub fn record_snapshot(snapshot: &Snapshot) {
    let job = snapshot.job.clone();
    gauge!("warden_status", "job" => job.clone()).set(snapshot.status.level());
    for check in &snapshot.checks {
        let up = if check.ok { 1.0 } else { 0.0 };
        gauge!("warden_check_up", "job" => job.clone(), "check" => check.name.clone()).set(up);
        gauge!("warden_check_duration_seconds", "job" => job.clone(), "check" => check.name.clone())
            .set(check.duration_ms as f64 / 1000.0);
    }
}

/// How long a due run waited for a slot before it started (all jobs in one histogram, so
/// 10,000 jobs do not make 10,000 more series).
pub fn record_lateness(_job: &str, seconds: f64) {
    histogram!("warden_job_start_lateness_seconds").record(seconds);
}

pub fn record_gauges(gauges: &[Gauge]) {
    for g in gauges {
        let labels: Vec<metrics::Label> =
            g.labels.iter().map(|(k, v)| metrics::Label::new(k.clone(), v.clone())).collect();
        gauge!(format!("warden_{}", g.name), labels).set(g.value);
    }
}

pub fn record_reload(ok: bool) {
    counter!("warden_config_reloads_total", "result" => if ok { "ok" } else { "refused" }).increment(1);
}

pub fn record_evaluation(policy: &str, outcome: &str, seconds: f64) {
    counter!("warden_policy_evaluations_total", "policy" => policy.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    if outcome == "ok" {
        histogram!("warden_policy_evaluation_duration_seconds", "policy" => policy.to_owned()).record(seconds);
    }
}

pub fn record_quarantine(policy: &str, quarantined: bool) {
    gauge!("warden_policy_quarantined", "policy" => policy.to_owned()).set(if quarantined { 1.0 } else { 0.0 });
}

/// Runs waiting in the local spool for the state store.
pub fn record_spool(runs: usize) {
    metrics::gauge!("warden_spool_runs").set(runs as f64);
}

/// One delivery attempt's result: `delivered`, `retried` or `failed`.
pub fn record_delivery(kind: crate::base::OutboxKind, result: &str) {
    let name = match result {
        "delivered" => "warden_outbox_delivered_total",
        "retried" => "warden_outbox_retried_total",
        "silenced" => "warden_outbox_silenced_total",
        _ => "warden_outbox_failed_total",
    };
    counter!(name, "kind" => kind.as_str()).increment(1);
}

/// Rows now pending and failed per kind, from the store's counts.
pub fn record_outbox_counts(counts: &[(String, String, i64)]) {
    use crate::base::{OutboxKind, OutboxState};
    for kind in OutboxKind::ALL {
        for state in [OutboxState::Pending, OutboxState::Failed, OutboxState::Silenced] {
            let n = counts
                .iter()
                .filter(|(k, s, _)| k == kind.as_str() && s == state.as_str())
                .map(|(.., n)| *n)
                .sum::<i64>();
            gauge!(format!("warden_outbox_{state}"), "kind" => kind.as_str()).set(n as f64);
        }
    }
}

/// Spooled runs the state store refused, set aside in a file beside the spool.
pub fn record_spool_rejected(runs: usize) {
    counter!("warden_spool_rejected_runs_total").increment(runs as u64);
}
