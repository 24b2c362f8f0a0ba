//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//!
//! Every metric warden defines is in `METRICS` below, with its HELP text, and the code
//! records it through that entry's constant, so a name and its help are written once. The
//! gauges a `sql-gauge` job defines (`warden_<metric>_<column>`) are the operator's own.

mod jobs;

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::base::{Gauge, Snapshot};

const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric warden defines: its name, kind and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

pub const JOB_RUNS: Metric = m("warden_job_runs_total", Kind::Counter, "Finished job runs, by job and outcome.");
pub const JOB_DURATION: Metric =
    m("warden_job_duration_seconds", Kind::Histogram, "How long each job's runs took, from claim to commit.");
pub const JOB_LATENESS: Metric = m(
    "warden_job_start_lateness_seconds",
    Kind::Histogram,
    "How long due runs waited for a slot (max_running) before they started.",
);
pub const JOB_LAST_RUN: Metric = m(
    "warden_job_last_run_timestamp_seconds",
    Kind::Gauge,
    "When each job's last run ended, in seconds since the Unix epoch.",
);
pub const JOB_PERIOD: Metric = m(
    "warden_job_period_seconds",
    Kind::Gauge,
    "Each scheduled job's period (for a cron job, the gap between its next two fire times).",
);
pub const STATUS: Metric = m("warden_status", Kind::Gauge, "A probe job's status: 0 operational, 1 degraded, 2 error.");
pub const CHECK_UP: Metric = m("warden_check_up", Kind::Gauge, "Whether a probe's check passed (1) or failed (0).");
pub const CHECK_DURATION: Metric =
    m("warden_check_duration_seconds", Kind::Gauge, "How long a probe's check took at its last run.");
pub const RELOADS: Metric =
    m("warden_config_reloads_total", Kind::Counter, "Configuration reloads, by result (ok or refused).");
pub const EVALUATIONS: Metric =
    m("warden_policy_evaluations_total", Kind::Counter, "Policy evaluations, by policy and outcome.");
pub const EVALUATION_DURATION: Metric =
    m("warden_policy_evaluation_duration_seconds", Kind::Histogram, "How long successful policy evaluations took.");
pub const QUARANTINED: Metric =
    m("warden_policy_quarantined", Kind::Gauge, "Whether a policy is quarantined after repeated failures.");
pub const SPOOL_RUNS: Metric =
    m("warden_spool_runs", Kind::Gauge, "Runs waiting in the local spool for the state store to return.");
pub const SPOOL_REJECTED: Metric = m(
    "warden_spool_rejected_runs_total",
    Kind::Counter,
    "Spooled runs the state store refused, set aside in a file beside the spool.",
);
pub const CLOCK_STEPS: Metric = m(
    "warden_clock_steps_total",
    Kind::Counter,
    "Steps of the wall clock against the monotonic one (NTP, an operator), by direction (forward, back).",
);
pub const CLOCK_SKEW: Metric = m(
    "warden_clock_skew_seconds",
    Kind::Gauge,
    "This replica's wall clock minus the PostgreSQL store's now(), measured at each heartbeat.",
);
pub const DISK_FULL: Metric = m(
    "warden_disk_full",
    Kind::Gauge,
    "Whether the last write to the state store or to the spool (label file) failed for lack of space.",
);
pub const RUNS_UNSTORED: Metric = m(
    "warden_runs_unstored_total",
    Kind::Counter,
    "Runs that neither the state store nor the spool's file could take, held in memory until one can.",
);
pub const OUTBOX_DELIVERED: Metric =
    m("warden_outbox_delivered_total", Kind::Counter, "Outbox rows delivered, by kind.");
pub const OUTBOX_RETRIED: Metric =
    m("warden_outbox_retried_total", Kind::Counter, "Delivery attempts that failed and will be retried, by kind.");
pub const OUTBOX_FAILED_TOTAL: Metric =
    m("warden_outbox_failed_total", Kind::Counter, "Outbox rows that failed for good, by kind.");
pub const OUTBOX_SILENCED_TOTAL: Metric =
    m("warden_outbox_silenced_total", Kind::Counter, "Outbox rows held back by a silence or maintenance window.");
pub const OUTBOX_PENDING: Metric = m("warden_outbox_pending", Kind::Gauge, "Outbox rows now pending, by kind.");
pub const OUTBOX_FAILED: Metric = m("warden_outbox_failed", Kind::Gauge, "Outbox rows now failed, by kind.");
pub const OUTBOX_SILENCED: Metric = m("warden_outbox_silenced", Kind::Gauge, "Outbox rows now silenced, by kind.");
pub const DB_POOL_SIZE: Metric =
    m("warden_db_pool_size", Kind::Gauge, "Connections open in warden's pool to the target.");
pub const DB_POOL_IDLE: Metric =
    m("warden_db_pool_idle", Kind::Gauge, "Idle connections in warden's pool to the target.");
pub const DB_POOL_ACTIVE: Metric =
    m("warden_db_pool_active", Kind::Gauge, "Connections in use in warden's pool to the target.");
pub const DB_POOL_MAX: Metric =
    m("warden_db_pool_max", Kind::Gauge, "The most connections warden's pool to the target opens.");
pub const PG_BACKENDS: Metric =
    m("warden_pg_client_backends", Kind::Gauge, "Client backends connected to the target Postgres.");
pub const PG_MAX_CONNECTIONS: Metric =
    m("warden_pg_max_connections", Kind::Gauge, "The target Postgres' max_connections.");
pub const PG_CONNECTION_RATIO: Metric =
    m("warden_pg_connection_ratio", Kind::Gauge, "Client backends over max_connections on the target Postgres.");

/// Every metric warden defines, described to the exporter at start.
pub const METRICS: &[Metric] = &[
    JOB_RUNS,
    JOB_DURATION,
    JOB_LATENESS,
    JOB_LAST_RUN,
    JOB_PERIOD,
    STATUS,
    CHECK_UP,
    CHECK_DURATION,
    RELOADS,
    EVALUATIONS,
    EVALUATION_DURATION,
    QUARANTINED,
    SPOOL_RUNS,
    SPOOL_REJECTED,
    CLOCK_STEPS,
    CLOCK_SKEW,
    DISK_FULL,
    RUNS_UNSTORED,
    OUTBOX_DELIVERED,
    OUTBOX_RETRIED,
    OUTBOX_FAILED_TOTAL,
    OUTBOX_SILENCED_TOTAL,
    OUTBOX_PENDING,
    OUTBOX_FAILED,
    OUTBOX_SILENCED,
    DB_POOL_SIZE,
    DB_POOL_IDLE,
    DB_POOL_ACTIVE,
    DB_POOL_MAX,
    PG_BACKENDS,
    PG_MAX_CONNECTIONS,
    PG_CONNECTION_RATIO,
];

fn describe_all() {
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.help),
            Kind::Gauge => describe_gauge!(metric.name, metric.help),
            Kind::Histogram => describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(JOB_LATENESS.name.into()), LATENESS_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program); then ours
            // renders nothing, which `/metrics` shows plainly rather than crashing.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_all();
            }
            handle
        })
        .clone()
}

/// `GET /metrics`: the registry's series, then the per-job ones.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    jobs::render(&mut out);
    out
}

/// A finished run (the per-job series are kept apart from the registry: `jobs.rs`).
pub fn record_run(job: &str, outcome: &str, seconds: f64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    jobs::run(job, outcome, seconds, now.as_secs_f64());
}

/// A scheduled job's period, for "no run for three periods" alerts.
pub fn record_job_period(job: &str, period: std::time::Duration) {
    jobs::period(job, period.as_secs_f64());
}

pub fn record_snapshot(snapshot: &Snapshot) {
    let checks = snapshot.checks.iter().map(|c| (c.name.as_str(), c.ok, c.duration_ms as f64 / 1000.0));
    jobs::snapshot(&snapshot.job, snapshot.status.level(), checks);
}

/// Drops the series of the jobs a reload removed.
pub fn retain_jobs(keep: impl Fn(&str) -> bool) {
    jobs::retain(keep);
}

/// How long a due run waited for a slot before it started (all jobs in one histogram, so
/// 10,000 jobs do not make 10,000 more series).
pub fn record_lateness(_job: &str, seconds: f64) {
    histogram!(JOB_LATENESS.name).record(seconds);
}

pub fn record_gauges(gauges: &[Gauge]) {
    for g in gauges {
        describe_gauge!(format!("warden_{}", g.name), "A column of a sql-gauge job's query, one series per row.");
        let labels: Vec<metrics::Label> =
            g.labels.iter().map(|(k, v)| metrics::Label::new(k.clone(), v.clone())).collect();
        gauge!(format!("warden_{}", g.name), labels).set(g.value);
    }
}

pub fn record_reload(ok: bool) {
    counter!(RELOADS.name, "result" => if ok { "ok" } else { "refused" }).increment(1);
}

pub fn record_evaluation(policy: &str, outcome: &str, seconds: f64) {
    counter!(EVALUATIONS.name, "policy" => policy.to_owned(), "outcome" => outcome.to_owned()).increment(1);
    if outcome == "ok" {
        histogram!(EVALUATION_DURATION.name, "policy" => policy.to_owned()).record(seconds);
    }
}

pub fn record_quarantine(policy: &str, quarantined: bool) {
    gauge!(QUARANTINED.name, "policy" => policy.to_owned()).set(if quarantined { 1.0 } else { 0.0 });
}

/// Runs waiting in the local spool for the state store.
pub fn record_spool(runs: usize) {
    gauge!(SPOOL_RUNS.name).set(runs as f64);
}

/// One delivery attempt's result: `delivered`, `retried` or `failed`.
pub fn record_delivery(kind: crate::base::OutboxKind, result: &str) {
    let name = match result {
        "delivered" => OUTBOX_DELIVERED.name,
        "retried" => OUTBOX_RETRIED.name,
        "silenced" => OUTBOX_SILENCED_TOTAL.name,
        _ => OUTBOX_FAILED_TOTAL.name,
    };
    counter!(name, "kind" => kind.as_str()).increment(1);
}

/// Rows now pending and failed per kind, from the store's counts.
pub fn record_outbox_counts(counts: &[(String, String, i64)]) {
    use crate::base::{OutboxKind, OutboxState};
    for kind in OutboxKind::ALL {
        for (state, metric) in [
            (OutboxState::Pending, OUTBOX_PENDING),
            (OutboxState::Failed, OUTBOX_FAILED),
            (OutboxState::Silenced, OUTBOX_SILENCED),
        ] {
            let n = counts
                .iter()
                .filter(|(k, s, _)| k == kind.as_str() && s == state.as_str())
                .map(|(.., n)| *n)
                .sum::<i64>();
            gauge!(metric.name, "kind" => kind.as_str()).set(n as f64);
        }
    }
}

/// Spooled runs the state store refused, set aside in a file beside the spool.
pub fn record_spool_rejected(runs: usize) {
    counter!(SPOOL_REJECTED.name).increment(runs as u64);
}

/// The wall clock stepped by `seconds` (negative: back).
pub fn record_clock_step(seconds: f64) {
    counter!(CLOCK_STEPS.name, "direction" => if seconds < 0.0 { "back" } else { "forward" }).increment(1);
}

/// This replica's clock minus the store's.
pub fn record_clock_skew(seconds: f64) {
    gauge!(CLOCK_SKEW.name).set(seconds);
}

/// Whether the last write to `file` (`state` or `spool`) failed for lack of space.
pub fn record_disk_full(file: &'static str, full: bool) {
    gauge!(DISK_FULL.name, "file" => file).set(if full { 1.0 } else { 0.0 });
}

/// A run neither the store nor the spool's file could take.
pub fn record_unstored_run() {
    counter!(RUNS_UNSTORED.name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_help_and_a_unit_where_it_has_one() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric listed twice");
        for m in METRICS {
            assert!(m.name.starts_with("warden_") && !m.help.is_empty(), "{m:?}");
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "counters end in _total: {m:?}");
            if m.kind == Kind::Histogram {
                assert!(m.name.ends_with("_seconds"), "durations in seconds: {m:?}");
            }
        }
    }

    #[test]
    fn the_task_gauges_are_in_the_table() {
        for name in [
            "db_pool_size",
            "db_pool_idle",
            "db_pool_active",
            "db_pool_max",
            "pg_client_backends",
            "pg_max_connections",
            "pg_connection_ratio",
        ] {
            let full = format!("warden_{name}");
            assert!(METRICS.iter().any(|m| m.name == full), "{full}");
        }
    }
}
