//! The behaviour table of status-alert, natively (the host suite runs it again through
//! the built component).

use std::collections::BTreeMap;

use super::*;
use warden_policy::CheckResult;

const MIN: i64 = 60_000;

fn rules() -> Rules {
    Rules { product: "MNW".into(), cooldown_ms: 5 * MIN, failure_threshold: 1, success_threshold: 1, name_job: false }
}

fn snap(status: Status, at: i64) -> Snapshot {
    let check = |name: &str, ok: bool| CheckResult {
        name: name.into(),
        kind: name.into(),
        critical: name == "db",
        ok,
        error: (!ok).then(|| "connection refused".to_owned()),
        duration_ms: 3,
    };
    Snapshot {
        job: "health-probe".into(),
        status,
        checked_at_ms: at,
        duration_ms: 12,
        checks: vec![
            check("db", status != Status::Error),
            check("s3", status == Status::Operational),
            check("sessions", true),
        ],
    }
}

/// A compact view of the actions: "email:<subject>", "notify:<status>", "ticket:<priority>".
fn run(rules: &Rules, steps: &[(Status, i64)]) -> Vec<Vec<String>> {
    let mut state = BTreeMap::new();
    steps
        .iter()
        .map(|&(status, at)| {
            decide(rules, &snap(status, at), at, &mut state)
                .into_iter()
                .filter_map(|a| match a {
                    Action::EmailAdmin(e) => Some(format!("email:{}", e.subject)),
                    Action::NotifySubscribers(n) => Some(format!("notify:{}", n.status.name())),
                    Action::OpenTicket(t) => Some(format!(
                        "ticket:{}",
                        match t.priority {
                            Priority::Critical => "Critical",
                            Priority::High => "High",
                            Priority::Normal => "Normal",
                            Priority::Low => "Low",
                        }
                    )),
                    Action::Log(_) => None,
                })
                .collect()
        })
        .collect()
}

use Status::{Degraded as D, Error as E, Operational as O};

#[test]
fn bootstrap_operational_is_silent_but_bootstrap_error_is_told() {
    assert_eq!(run(&rules(), &[(O, 0), (O, MIN)]), vec![Vec::<String>::new(), vec![]]);
    assert_eq!(
        run(&rules(), &[(E, 0)]),
        vec![vec!["ticket:Critical", "email:MNW down — critical service failure", "notify:error"]]
    );
}

#[test]
fn transitions_email_notify_and_ticket_by_priority() {
    let got = run(&rules(), &[(O, 0), (D, 10 * MIN), (E, 20 * MIN), (O, 30 * MIN)]);
    assert_eq!(got[1], ["ticket:High", "email:MNW degraded — partial service failure", "notify:degraded"]);
    assert_eq!(got[2], ["ticket:Critical", "email:MNW down — critical service failure", "notify:error"]);
    assert_eq!(got[3], ["email:MNW recovered — all services operational", "notify:operational"]);
}

#[test]
fn one_shared_cooldown_and_the_recovery_is_told_when_it_ends() {
    let got = run(&rules(), &[(O, 0), (D, MIN), (O, 2 * MIN), (O, 5 * MIN), (O, 6 * MIN), (O, 7 * MIN)]);
    assert_eq!(got[1], ["ticket:High", "email:MNW degraded — partial service failure", "notify:degraded"]);
    assert!(got[2].is_empty(), "recovery inside the cooldown is held back: {:?}", got[2]);
    assert!(got[3].is_empty(), "cooldown not over yet (4 min)");
    assert_eq!(got[4], ["email:MNW recovered — all services operational", "notify:operational"]);
    assert!(got[5].is_empty(), "told once");
}

#[test]
fn no_trailing_notice_when_the_status_is_back_to_what_was_told() {
    let got = run(&rules(), &[(O, 0), (D, MIN), (O, 2 * MIN), (D, 3 * MIN), (D, 10 * MIN)]);
    assert_eq!(got[3], ["ticket:High"], "a second ticket, but the email is under cooldown");
    assert!(got[4].is_empty(), "degraded was already told: {:?}", got[4]);
}

#[test]
fn thresholds_need_consecutive_results() {
    let rules = Rules { failure_threshold: 3, success_threshold: 2, ..rules() };
    let got = run(&rules, &[(O, 0), (D, MIN), (D, 2 * MIN), (O, 3 * MIN), (D, 4 * MIN), (D, 5 * MIN), (D, 6 * MIN)]);
    assert!(got[1..6].iter().all(Vec::is_empty), "{got:?}");
    assert_eq!(got[6][0], "ticket:High");
    let back = run(&rules, &[(E, 0), (O, 10 * MIN), (O, 11 * MIN)]);
    assert!(back[1].is_empty());
    assert_eq!(back[2], ["email:MNW recovered — all services operational", "notify:operational"]);
}

#[test]
fn the_body_lists_status_previous_checks_and_duration() {
    let text = body(&snap(D, 0), Some(O));
    assert_eq!(
        text,
        "Status: Degraded\nPrevious status: Operational\nJob: health-probe\nDB: OK\nS3: FAIL (connection refused)\nSessions: OK\nCheck duration: 12 ms\n"
    );
}

#[test]
fn config_defaults_and_errors() {
    let empty = Config(|_: &str| None);
    let r = Rules::from_config(&empty).unwrap();
    assert_eq!((r.cooldown_ms, r.failure_threshold, r.product.as_str()), (5 * MIN, 1, "warden"));
    let bad = Config(|k: &str| (k == "failure_threshold").then(|| "0".to_owned()));
    assert!(Rules::from_config(&bad).unwrap_err().contains("failure_threshold"));
}

#[test]
fn a_ticket_s_key_comes_from_the_evaluation_s_clock_not_the_snapshot_s() {
    // Two replicas running one occurrence take their snapshots milliseconds apart; the host
    // gives both the occurrence as the clock, so both decide on the same ticket.
    let key = |checked_at: i64| {
        let mut state = BTreeMap::from([(LAST.to_owned(), "operational".to_owned())]);
        decide(&rules(), &snap(Status::Error, checked_at), 10 * MIN, &mut state)
            .into_iter()
            .find_map(|a| match a {
                Action::OpenTicket(t) => Some(t.dedup_key),
                _ => None,
            })
            .expect("a ticket")
    };
    assert_eq!(key(10 * MIN + 3), key(10 * MIN + 41));
    assert_eq!(key(0), format!("error:{}", 10 * MIN));
}
