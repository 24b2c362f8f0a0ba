//! Health snapshots and the status rule of the original monitor.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Overall status, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Operational,
    Degraded,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Operational => "operational",
            Status::Degraded => "degraded",
            Status::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operational" => Some(Status::Operational),
            "degraded" => Some(Status::Degraded),
            "error" => Some(Status::Error),
            _ => None,
        }
    }

    /// 0 operational, 1 degraded, 2 error: the value of the `warden_status` gauge.
    pub fn level(self) -> f64 {
        match self {
            Status::Operational => 0.0,
            Status::Degraded => 1.0,
            Status::Error => 2.0,
        }
    }
}

/// The result of one check in a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub name: String,
    pub kind: String,
    pub critical: bool,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The named database or bucket it checked (none: the default target).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
}

/// One probe's outcome, as stored in `health_history` and served by `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub job: String,
    pub status: Status,
    pub checked_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub checks: Vec<CheckResult>,
}

/// All checks pass → operational; a critical check failed → error; otherwise degraded.
/// With `db` the only critical check this is exactly the original monitor's rule.
pub fn derive_status(checks: &[CheckResult]) -> Status {
    if checks.iter().any(|c| !c.ok && c.critical) {
        Status::Error
    } else if checks.iter().any(|c| !c.ok) {
        Status::Degraded
    } else {
        Status::Operational
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, critical: bool, ok: bool) -> CheckResult {
        CheckResult { name: name.into(), kind: name.into(), critical, ok, error: None, duration_ms: 1, target: None }
    }

    #[test]
    fn status_rule_of_the_original_monitor() {
        // (db ok, s3 ok, sessions ok) -> status, with db the only critical check.
        let table = [
            ((true, true, true), Status::Operational),
            ((true, false, true), Status::Degraded),
            ((true, true, false), Status::Degraded),
            ((true, false, false), Status::Degraded),
            ((false, true, true), Status::Error),
            ((false, false, false), Status::Error),
        ];
        for ((db, s3, sessions), want) in table {
            let checks = [check("db", true, db), check("s3", false, s3), check("sessions", false, sessions)];
            assert_eq!(derive_status(&checks), want, "db={db} s3={s3} sessions={sessions}");
        }
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in [Status::Operational, Status::Degraded, Status::Error] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert!(Status::Operational < Status::Degraded && Status::Degraded < Status::Error);
    }
}
