//! The behaviour table of status-alert, natively (the host suite runs it again through
//! the built component).

use std::collections::BTreeMap;

use super::*;
use warden_policy::CheckResult;

const MIN: i64 = 60_000;

fn rules() -> Rules {
    Rules {
        product: "MNW".into(),
        cooldown_ms: 5 * MIN,
        failure_threshold: 1,
        success_threshold: 1,
        name_job: false,
        remind_every_ms: 0,
        escalate_after_ms: 0,
    }
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

#[test]
fn a_reminder_every_remind_every_while_bad_and_none_after_the_recovery() {
    let rules = Rules { remind_every_ms: 15 * MIN, ..rules() };
    let got = run(
        &rules,
        &[(O, 0), (E, MIN), (E, 10 * MIN), (E, 16 * MIN), (E, 20 * MIN), (E, 31 * MIN), (O, 32 * MIN), (O, 60 * MIN)],
    );
    assert_eq!(got[1], ["ticket:Critical", "email:MNW down — critical service failure", "notify:error"]);
    assert!(got[2].is_empty(), "not yet: {:?}", got[2]);
    assert_eq!(got[3], ["email:MNW still down — critical service failure (for 15m)"]);
    assert!(got[4].is_empty(), "15 minutes from the last reminder, not from the alert");
    assert_eq!(got[5], ["email:MNW still down — critical service failure (for 30m)"]);
    assert_eq!(got[6], ["email:MNW recovered — all services operational", "notify:operational"]);
    assert!(got[7].is_empty(), "no reminder once recovered: {:?}", got[7]);
    // Off by default.
    let quiet = run(&super::tests::rules(), &[(O, 0), (E, MIN), (E, 100 * MIN)]);
    assert!(quiet[2].is_empty());
}

#[test]
fn an_escalation_once_after_escalate_after_and_again_only_after_a_recovery() {
    let rules = Rules { escalate_after_ms: 30 * MIN, ..rules() };
    let mut state = BTreeMap::new();
    let mut step = |status: Status, at: i64| decide(&rules, &snap(status, at), at, &mut state);
    step(O, 0);
    step(E, MIN);
    assert!(step(E, 20 * MIN).iter().all(|a| !matches!(a, Action::OpenTicket(_))));
    let escalated: Vec<Ticket> = step(E, 31 * MIN)
        .into_iter()
        .filter_map(|a| match a {
            Action::OpenTicket(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].dedup_key, format!("escalation:error:{MIN}"));
    assert_eq!(escalated[0].title, "MNW escalated: down for 30m");
    assert!(matches!(escalated[0].priority, Priority::Critical));
    assert!(step(E, 60 * MIN).iter().all(|a| !matches!(a, Action::OpenTicket(_))), "once");
    step(O, 61 * MIN);
    step(E, 70 * MIN);
    let again = step(E, 101 * MIN);
    assert!(
        again
            .iter()
            .any(|a| matches!(a, Action::OpenTicket(t) if t.dedup_key == format!("escalation:error:{}", 70 * MIN))),
        "a new trouble escalates again: {again:?}"
    );
    assert_eq!(for_how_long(45_000), "45s");
    assert_eq!(for_how_long(150 * MIN), "2h30m");
    assert_eq!(for_how_long(26 * 60 * MIN), "1d2h");
}
