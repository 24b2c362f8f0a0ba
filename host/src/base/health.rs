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

/// What a public reader (`/health`, the status page) may know of a failed check: a fixed
/// class, never what the target answered (a body, a `Location`, another host's error). The
/// detailed error stays in the admin API and the log.
pub fn reason_class(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("status ") {
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if rest.contains("redirect from https") {
            return "redirect to http refused".into();
        }
        if !code.is_empty() {
            return format!("status {code}");
        }
    }
    if let Some(at) = lower.find("expires in ") {
        let days: String = lower[at + 11..].chars().take_while(char::is_ascii_digit).collect();
        let unit = if days == "1" { "day" } else { "days" };
        return format!("TLS certificate expires in {days} {unit}");
    }
    let classes: [(&[&str], &str); 9] = [
        (&["timed out", "timeout", "deadline"], "timeout"),
        (&["refused"], "connection refused"),
        (&["dns", "lookup", "resolve", "name or service"], "DNS error"),
        (&["certificate", "tls", "handshake"], "TLS error"),
        (&["redirect"], "too many redirects"),
        (&["latency"], "too slow"),
        (&["the body", "json", "expected"], "unexpected answer"),
        (&["connect", "reset", "closed", "broken pipe", "unreachable"], "connection failed"),
        (&["database", "sql", "table", "column", "permission", "pool"], "database error"),
    ];
    for (needles, class) in classes {
        if needles.iter().any(|n| lower.contains(n)) {
            return class.into();
        }
    }
    "failed".into()
}

/// The snapshot as a public reader sees it: each failed check's error as its reason class.
pub fn public(snapshot: &Snapshot) -> Snapshot {
    let mut out = snapshot.clone();
    for check in &mut out.checks {
        check.error = check.error.as_deref().map(reason_class);
    }
    out
}

#[cfg(test)]
mod reason_tests {
    #[test]
    fn a_public_reason_is_a_class_never_the_targets_words() {
        let cases = [
            ("status 500 (expected 2xx)", "status 500"),
            ("status 302: a redirect from https to http refused", "redirect to http refused"),
            ("status 301: a redirect to `http://internal.example/admin?token=s3cr3t`", "status 301"),
            ("certificate for example.org expires in 5 days (< 14)", "TLS certificate expires in 5 days"),
            ("connect 10.0.0.7:5432: Connection refused (os error 111)", "connection refused"),
            ("timed out after 5s", "timeout"),
            ("the body does not contain \"ok\" (it starts \"<html>secret internal page\")", "unexpected answer"),
            ("/status is \"down: disk /var full on db-7\", expected \"up\"", "unexpected answer"),
            ("error returned from database: relation \"session\" does not exist", "database error"),
            ("something nobody foresaw", "failed"),
        ];
        for (error, class) in cases {
            assert_eq!(super::reason_class(error), class, "{error}");
        }
    }
}
