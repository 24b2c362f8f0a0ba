//! The `probe` task: named checks, each bounded by its own timeout, run concurrently.

use std::time::Instant;

use chrono::Utc;
use futures_util::future::join_all;

use crate::config::{Check, CheckKind};
use crate::health::{CheckResult, Snapshot, derive_status};
use crate::targets::Targets;

/// Runs every check; a hung dependency becomes a failed check at its timeout. The probe's
/// duration is its slowest check's: the checks run together, and time spent waiting for a
/// pool connection is not the target's.
pub async fn run_probe(job: &str, checks: &[Check], targets: &Targets) -> Snapshot {
    let checked_at = Utc::now();
    let results = join_all(checks.iter().map(|check| run_check(check, targets))).await;
    Snapshot {
        job: job.to_owned(),
        status: derive_status(&results),
        checked_at,
        duration_ms: results.iter().map(|c| c.duration_ms).max().unwrap_or(0),
        checks: results,
    }
}

async fn run_check(check: &Check, targets: &Targets) -> CheckResult {
    // A database check waits for a free slot first (bounded by the job's timeout), then
    // starts its clock: the check measures the target, not warden's queue.
    let database = targets.database(check.target.as_deref());
    let slot = match check.kind {
        CheckKind::Db | CheckKind::Sql { .. } => match database {
            Some((_, checks)) => Some(checks.slot().await),
            None => None,
        },
        CheckKind::S3 | CheckKind::Http(_) | CheckKind::Tcp { .. } | CheckKind::Tls { .. } => None,
    };
    let started = Instant::now();
    let work = async {
        let no_database = || format!("no database named `{}`", check.target.as_deref().unwrap_or_default());
        match (&check.kind, &slot, database) {
            (CheckKind::Db, Some(slot), _) => slot.run("SELECT 1", true).await,
            (CheckKind::Sql { query }, Some(slot), Some((db, _))) => match query.for_sqlite(db.is_sqlite()) {
                None => Err(format!("no query for the {} backend", db.backend())),
                Some(sql) => slot.run(sql, false).await,
            },
            (CheckKind::Db | CheckKind::Sql { .. }, _, _) => Err(no_database()),
            (CheckKind::S3, _, _) => match targets.bucket(check.target.as_deref()) {
                // Not configured counts as OK, as in the original monitor.
                None => Ok(()),
                Some(bucket) => bucket.head().await,
            },
            (CheckKind::Http(http), _, _) => super::net::http(http).await,
            (CheckKind::Tcp { address }, _, _) => super::net::tcp(address).await,
            (CheckKind::Tls { address, min_days, ca_file }, _, _) => {
                super::net::tls(address, *min_days, ca_file.as_deref()).await
            }
        }
    };
    let outcome = match tokio::time::timeout(check.timeout.std(), work).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}", check.timeout)),
    };
    CheckResult {
        name: check.name.clone(),
        kind: kind_name(&check.kind).to_owned(),
        critical: check.critical,
        ok: outcome.is_ok(),
        error: outcome.err(),
        duration_ms: millis(started),
        target: check.target.clone(),
    }
}

fn kind_name(kind: &CheckKind) -> &'static str {
    match kind {
        CheckKind::Db => "db",
        CheckKind::S3 => "s3",
        CheckKind::Sql { .. } => "sql",
        CheckKind::Http(_) => "http",
        CheckKind::Tcp { .. } => "tcp",
        CheckKind::Tls { .. } => "tls",
    }
}

fn millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
