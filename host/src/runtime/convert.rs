//! Between warden's types and the WIT types: events in, actions out (checked and capped).

use chrono::{DateTime, Utc};

use super::bindings::types as wit;
use super::{EvalError, MAX_ACTIONS, MAX_OUTPUT_BYTES};
pub use crate::base::{ActionRecord, Priority};
use crate::health::{CheckResult, Snapshot, Status};
use crate::tasks::{Event, Gauge};

fn status_to_wit(s: Status) -> wit::Status {
    match s {
        Status::Operational => wit::Status::Operational,
        Status::Degraded => wit::Status::Degraded,
        Status::Error => wit::Status::Error,
    }
}

fn status_from_wit(s: wit::Status) -> Status {
    match s {
        wit::Status::Operational => Status::Operational,
        wit::Status::Degraded => Status::Degraded,
        wit::Status::Error => Status::Error,
    }
}

fn check_to_wit(c: &CheckResult) -> wit::CheckResult {
    wit::CheckResult {
        name: c.name.clone(),
        kind: c.kind.clone(),
        critical: c.critical,
        ok: c.ok,
        error: c.error.clone(),
        duration_ms: c.duration_ms,
    }
}

fn snapshot_to_wit(s: &Snapshot) -> wit::Snapshot {
    wit::Snapshot {
        job: s.job.clone(),
        status: status_to_wit(s.status),
        checked_at_ms: s.checked_at.timestamp_millis(),
        duration_ms: s.duration_ms,
        checks: s.checks.iter().map(check_to_wit).collect(),
    }
}

fn gauge_to_wit(g: &Gauge) -> wit::Gauge {
    wit::Gauge {
        name: g.name.clone(),
        labels: g.labels.iter().map(|(k, v)| wit::Label { key: k.clone(), value: v.clone() }).collect(),
        value: g.value,
    }
}

/// The WIT event for a job's event at `at`.
pub fn event_to_wit(event: &Event, job: &str, at: DateTime<Utc>) -> wit::Event {
    match event {
        Event::Snapshot(s) => wit::Event::Snapshot(snapshot_to_wit(s)),
        Event::Gauges { gauges } => wit::Event::Gauges(wit::GaugeSet {
            job: job.to_owned(),
            at_ms: at.timestamp_millis(),
            gauges: gauges.iter().map(gauge_to_wit).collect(),
        }),
        Event::RunFinished(r) => wit::Event::RunFinished(wit::RunResult {
            job: job.to_owned(),
            outcome: r.outcome.clone(),
            rows_affected: r.rows_affected,
            error: r.error.clone(),
            at_ms: at.timestamp_millis(),
        }),
    }
}

fn level_name(l: wit::Level) -> &'static str {
    match l {
        wit::Level::Debug => "debug",
        wit::Level::Info => "info",
        wit::Level::Warn => "warn",
        wit::Level::Error => "error",
    }
}

/// Checks and converts what the guest returned; log actions are also added to `logs`.
/// A ticket's dedup key is scoped by the plugin and the job, so two jobs (or two plugins)
/// never share a ticket by accident.
pub fn actions_from_wit(
    plugin: &str,
    job: &str,
    actions: Vec<wit::Action>,
    logs: &mut Vec<(String, String)>,
) -> Result<Vec<ActionRecord>, EvalError> {
    if actions.len() > MAX_ACTIONS {
        return Err(EvalError::Oversized(format!("{} actions; at most {MAX_ACTIONS}", actions.len())));
    }
    let mut out = Vec::with_capacity(actions.len());
    let mut bytes = 0usize;
    for action in actions {
        let record = match action {
            wit::Action::EmailAdmin(e) => ActionRecord::EmailAdmin { subject: e.subject, body: e.body },
            wit::Action::NotifySubscribers(n) => ActionRecord::NotifySubscribers {
                status: status_from_wit(n.status),
                previous: n.previous.map(status_from_wit),
            },
            wit::Action::OpenTicket(t) => ActionRecord::OpenTicket {
                title: t.title,
                body: t.body,
                priority: match t.priority {
                    wit::Priority::Low => Priority::Low,
                    wit::Priority::Normal => Priority::Normal,
                    wit::Priority::High => Priority::High,
                    wit::Priority::Critical => Priority::Critical,
                },
                dedup_key: format!("{plugin}:{job}:{}", t.dedup_key),
            },
            wit::Action::Log(l) => {
                logs.push((level_name(l.level).to_owned(), l.message.clone()));
                ActionRecord::Log { level: level_name(l.level).to_owned(), message: l.message }
            }
        };
        bytes += record.text_len();
        if bytes > MAX_OUTPUT_BYTES {
            return Err(EvalError::Oversized(format!("more than {MAX_OUTPUT_BYTES} bytes of text")));
        }
        out.push(record);
    }
    Ok(out)
}
