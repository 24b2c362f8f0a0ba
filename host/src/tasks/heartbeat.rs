//! The `heartbeat` task: a push monitor's deadline. Its job runs at a cadence of its own
//! (and at once after each ping); each run reads the newest pings from the store and reports
//! a snapshot with one critical check, `heartbeat`: operational while the last success came
//! in time, error when the deadline passed without one or the job reported failure. Before
//! the first ping nothing is reported (a new monitor is not down), as healthchecks.io does.

use chrono::{DateTime, Utc};

use super::{TaskError, TaskOutput};
use crate::base::Event;
use crate::config::{Expect, Heartbeat};
use crate::health::{CheckResult, Snapshot, derive_status};
use crate::store::{PingKind, Pings, StateStore};

/// What the deadline says at `now`: `Ok` or why not.
pub fn verdict(heartbeat: &Heartbeat, pings: &Pings, now: DateTime<Utc>) -> Result<(), String> {
    let grace = heartbeat.grace.chrono();
    let Some(done_at) = pings.last_done_at else {
        return Err(format!("started at {} and no ping since", rfc(pings.last_ping_at)));
    };
    let due = match &heartbeat.expect {
        Expect::Period(period) => {
            let deadline = done_at + period.chrono() + grace;
            (now > deadline).then(|| format!("expected every {period} (grace {})", heartbeat.grace))
        }
        Expect::Cron(spec) => spec
            .latest_at_or_before(now - grace)
            .filter(|due| done_at < *due)
            .map(|due| format!("expected by {} (grace {})", rfc(due), heartbeat.grace)),
    };
    if let Some(expected) = due {
        return Err(format!("no ping since {}: {expected}", rfc(done_at)));
    }
    if pings.done_kind == Some(PingKind::Fail) {
        let said: String = pings.last_body.chars().take(200).collect();
        let said = if said.trim().is_empty() { String::new() } else { format!(": {}", said.trim()) };
        return Err(format!("the job reported failure at {}{said}", rfc(done_at)));
    }
    Ok(())
}

fn rfc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub async fn check(job: &str, heartbeat: &Heartbeat, store: &StateStore) -> Result<TaskOutput, TaskError> {
    let Some(pings) = store.pings(job).await.map_err(|e| TaskError::Failed(format!("reading the pings: {e}")))? else {
        return Ok(TaskOutput { detail: Some("waiting for the first ping".into()), ..Default::default() });
    };
    let now = Utc::now();
    let outcome = verdict(heartbeat, &pings, now);
    let results = vec![CheckResult {
        name: "heartbeat".into(),
        kind: "heartbeat".into(),
        critical: true,
        ok: outcome.is_ok(),
        error: outcome.err(),
        duration_ms: 0,
        target: None,
    }];
    let snapshot = Snapshot {
        job: job.to_owned(),
        status: derive_status(&results),
        checked_at: now,
        duration_ms: 0,
        checks: results,
    };
    let detail = if pings.last_body.is_empty() { None } else { Some(pings.last_body.clone()) };
    Ok(TaskOutput { detail, event: Some(Event::Snapshot(snapshot)), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn pinged(kind: PingKind, when: &str) -> Pings {
        Pings {
            job: "backup".into(),
            last_ping_at: at(when),
            last_kind: kind,
            last_done_at: (kind != PingKind::Start).then(|| at(when)),
            done_kind: (kind != PingKind::Start).then_some(kind),
            started_at: None,
            last_body: if kind == PingKind::Fail { "disk full".into() } else { String::new() },
            pings: 1,
        }
    }

    #[test]
    fn a_ping_meets_its_deadline_until_period_and_grace_have_passed() {
        let hb = Heartbeat {
            expect: Expect::Period(Duration::from_secs(3600)),
            grace: Duration::from_secs(300),
            token: String::new(),
        };
        let p = pinged(PingKind::Success, "2026-12-03T10:00:00Z");
        assert_eq!(verdict(&hb, &p, at("2026-12-03T11:04:59Z")), Ok(()));
        assert_eq!(
            verdict(&hb, &p, at("2026-12-03T11:05:01Z")),
            Err("no ping since 2026-12-03T10:00:00Z: expected every 1h (grace 5m)".into())
        );
        let failed = pinged(PingKind::Fail, "2026-12-03T10:00:00Z");
        assert_eq!(
            verdict(&hb, &failed, at("2026-12-03T10:01:00Z")),
            Err("the job reported failure at 2026-12-03T10:00:00Z: disk full".into())
        );
    }

    #[test]
    fn a_cron_heartbeat_wants_a_ping_by_each_time_plus_grace() {
        let spec = crate::schedule::ScheduleSpec::cron("0 0 3 * * *", chrono_tz::UTC, Duration::default()).unwrap();
        let hb = Heartbeat { expect: Expect::Cron(spec), grace: Duration::from_secs(3600), token: String::new() };
        let p = pinged(PingKind::Success, "2026-12-02T03:10:00Z");
        assert_eq!(verdict(&hb, &p, at("2026-12-03T03:59:00Z")), Ok(()), "within the grace of today's 03:00");
        assert!(verdict(&hb, &p, at("2026-12-03T04:01:00Z")).unwrap_err().contains("expected by 2026-12-03T03:00:00Z"));
        let today = pinged(PingKind::Success, "2026-12-03T03:20:00Z");
        assert_eq!(verdict(&hb, &today, at("2026-12-03T09:00:00Z")), Ok(()));
    }
}
