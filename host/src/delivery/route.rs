//! Routes: which receivers an action goes to, as outbox rows, and the incidents they open.
//!
//! An `email-admin` or `open-ticket` action is matched against `[[routes]]` in order (the
//! first match ends the search unless it says `continue`); none matching, the default route
//! sends email to `admin` and tickets to `tickets`, as before routes existed. Subscriber
//! notices are not routed. A firing row to a receiver that keeps incidents (PagerDuty,
//! Opsgenie, the ticket webhook) notes the incident's key in the policy's state for the job
//! (`warden:incident:<receiver>`, hidden from the policy, committed with the decision); the
//! evaluation that announces the job operational again resolves each noted incident with
//! its key and forgets it.
//!
//! Pure: no IO; the daemon calls it while building a run's decisions.

use std::collections::{BTreeMap, HashMap};

use crate::base::{ActionRecord, Alert, AlertEvent, OutboxKind, Priority, Stage, Status};
use crate::config::{ADMIN_RECEIVER, Config, ReceiverKind, Route, RouteKind, TICKETS_RECEIVER};
use crate::store::NewOutboxRow;

/// The `policy_state` keys noting open incidents start with this (then the receiver's name).
pub const INCIDENT_KEY: &str = "warden:incident:";

/// The routes and what the router needs to know of each receiver.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// Configured receivers: kind and whether it is on.
    receivers: HashMap<String, (ReceiverKind, bool)>,
}

/// What one evaluation's actions become.
#[derive(Debug, Default, PartialEq)]
pub struct Routed {
    pub rows: Vec<NewOutboxRow>,
    /// Incidents noted (`Some`) or resolved (`None`), by state key.
    pub state_writes: BTreeMap<String, Option<String>>,
}

/// Where a routed action goes.
enum Target {
    Admin,
    Tickets,
    Receiver(String, ReceiverKind),
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            routes: config.routes.clone(),
            receivers: config.receivers.iter().map(|r| (r.name.clone(), (r.kind, r.enabled))).collect(),
        }
    }

    /// The receivers (on) an action goes to, in route order, each once.
    pub fn receivers_for(
        &self,
        kind: RouteKind,
        priority: Priority,
        stage: Stage,
        policy: &str,
        job: &str,
    ) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            let matches = route.kind.is_none_or(|k| k == kind)
                && route.priority.is_none_or(|p| priority >= p)
                && route.stage.is_none_or(|s| s == stage)
                && route.policy.as_deref().is_none_or(|p| p == policy)
                && route.job.as_deref().is_none_or(|j| j == job);
            if !matches {
                continue;
            }
            matched = true;
            for name in &route.receivers {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
            if !route.continue_matching {
                break;
            }
        }
        if !matched {
            out.push(match kind {
                RouteKind::Email => ADMIN_RECEIVER,
                RouteKind::Ticket => TICKETS_RECEIVER,
            });
        }
        out.retain(|name| self.target(name).is_some());
        out
    }

    fn target(&self, name: &str) -> Option<Target> {
        match name {
            ADMIN_RECEIVER => Some(Target::Admin),
            TICKETS_RECEIVER => Some(Target::Tickets),
            other => match self.receivers.get(other) {
                Some((kind, true)) => Some(Target::Receiver(other.to_owned(), *kind)),
                _ => None,
            },
        }
    }

    /// The outbox rows of one evaluation's actions, and the incidents they note or resolve.
    /// `observed` is the status of the snapshot evaluated (none for other events); `incidents`
    /// the policy's `INCIDENT_KEY` entries for the job as read. Dedup keys are deterministic
    /// per occurrence, so a retried commit never queues anything twice.
    pub fn route(
        &self,
        policy: &str,
        job: &str,
        at_ms: i64,
        observed: Option<Status>,
        actions: &[ActionRecord],
        incidents: &BTreeMap<String, String>,
    ) -> Routed {
        let mut routed = Routed::default();
        let mut open: BTreeMap<String, String> = incidents.clone();
        // What the evaluation announced: the status a subscriber notice tells, or else the
        // snapshot's.
        let announced = actions
            .iter()
            .find_map(|a| match a {
                ActionRecord::NotifySubscribers { status, .. } => Some(*status),
                _ => None,
            })
            .or(observed);
        let mut recovery_summary = None;
        for (i, action) in actions.iter().enumerate() {
            let key = |to: &str| format!("{policy}:{job}:{at_ms}:{i}:{to}");
            match action {
                ActionRecord::EmailAdmin { subject, body } => {
                    let event =
                        if announced == Some(Status::Operational) { AlertEvent::Resolved } else { AlertEvent::Firing };
                    if event == AlertEvent::Resolved {
                        recovery_summary.get_or_insert_with(|| (subject.clone(), body.clone()));
                    }
                    let priority = Priority::of_status(announced);
                    for name in self.receivers_for(RouteKind::Email, priority, Stage::Alert, policy, job) {
                        let Some(target) = self.target(name) else { continue };
                        match target {
                            Target::Admin => routed.rows.push(row(
                                OutboxKind::Email,
                                format!("{policy}:{job}:{at_ms}:{i}"),
                                serde_json::to_string(action).unwrap_or_default(),
                            )),
                            // An email's recovery is told to the ticket system as the resolve
                            // of what it opened, below.
                            Target::Tickets if event == AlertEvent::Resolved => {}
                            Target::Tickets => {
                                let ticket_key = key(name);
                                note_ticket(&mut open, &ticket_key);
                                let ticket = ActionRecord::OpenTicket {
                                    title: subject.clone(),
                                    body: body.clone(),
                                    priority,
                                    dedup_key: ticket_key.clone(),
                                };
                                let payload = serde_json::to_string(&ticket).unwrap_or_default();
                                routed.rows.push(row(OutboxKind::Ticket, ticket_key, payload));
                            }
                            Target::Receiver(_, kind) if kind.has_incidents() && event == AlertEvent::Resolved => {}
                            Target::Receiver(name, kind) => {
                                let incident = incident_for(&mut open, &name, kind, policy, job, at_ms);
                                let alert = Alert {
                                    receiver: name.clone(),
                                    event,
                                    summary: subject.clone(),
                                    body: body.clone(),
                                    priority,
                                    status: announced,
                                    incident,
                                    stage: Stage::Alert,
                                    at_ms,
                                };
                                routed.rows.push(alert_row(kind, key(&name), &alert));
                            }
                        }
                    }
                }
                ActionRecord::OpenTicket { title, body, priority, dedup_key } => {
                    // The host scoped the policy's key by policy and job (`runtime::convert`).
                    let own = dedup_key.strip_prefix(&format!("{policy}:{job}:")).unwrap_or(dedup_key);
                    let stage = if own.starts_with("escalation:") { Stage::Escalation } else { Stage::Alert };
                    for name in self.receivers_for(RouteKind::Ticket, *priority, stage, policy, job) {
                        let Some(target) = self.target(name) else { continue };
                        match target {
                            Target::Tickets => {
                                note_ticket(&mut open, dedup_key);
                                let payload = serde_json::to_string(action).unwrap_or_default();
                                routed.rows.push(row(OutboxKind::Ticket, dedup_key.clone(), payload));
                            }
                            Target::Admin => {
                                let email = ActionRecord::EmailAdmin { subject: title.clone(), body: body.clone() };
                                let payload = serde_json::to_string(&email).unwrap_or_default();
                                routed.rows.push(row(OutboxKind::Email, key(name), payload));
                            }
                            Target::Receiver(name, kind) => {
                                let incident = incident_for(&mut open, &name, kind, policy, job, at_ms);
                                let alert = Alert {
                                    receiver: name.clone(),
                                    event: AlertEvent::Firing,
                                    summary: title.clone(),
                                    body: body.clone(),
                                    priority: *priority,
                                    status: observed,
                                    incident,
                                    stage,
                                    at_ms,
                                };
                                routed.rows.push(alert_row(kind, key(&name), &alert));
                            }
                        }
                    }
                }
                ActionRecord::NotifySubscribers { .. } => routed.rows.push(row(
                    OutboxKind::Subscribers,
                    format!("{policy}:{job}:{at_ms}:{i}"),
                    serde_json::to_string(action).unwrap_or_default(),
                )),
                ActionRecord::Log { .. } => {}
            }
        }
        let recovered = announced == Some(Status::Operational)
            && actions
                .iter()
                .any(|a| matches!(a, ActionRecord::EmailAdmin { .. } | ActionRecord::NotifySubscribers { .. }));
        if recovered {
            let (summary, body) = recovery_summary.unwrap_or_else(|| (format!("{job} recovered"), String::new()));
            for (state_key, value) in std::mem::take(&mut open) {
                let name = &state_key[INCIDENT_KEY.len()..];
                let keys: Vec<String> = if name == TICKETS_RECEIVER {
                    serde_json::from_str(&value).unwrap_or_default()
                } else {
                    vec![value]
                };
                let kind = match self.target(name) {
                    Some(Target::Tickets) => Some(OutboxKind::Ticket),
                    Some(Target::Receiver(_, kind)) => Some(kind.outbox_kind()),
                    // Removed or turned off since it opened: nothing to tell it.
                    _ => None,
                };
                if let Some(kind) = kind {
                    for incident in keys {
                        let alert = Alert {
                            receiver: name.to_owned(),
                            event: AlertEvent::Resolved,
                            summary: summary.clone(),
                            body: body.clone(),
                            priority: Priority::Normal,
                            status: Some(Status::Operational),
                            incident: incident.clone(),
                            stage: Stage::Alert,
                            at_ms,
                        };
                        let payload = serde_json::to_string(&alert).unwrap_or_default();
                        routed.rows.push(row(kind, format!("resolve:{name}:{incident}"), payload));
                    }
                }
                routed.state_writes.insert(state_key, None);
            }
        } else {
            for (state_key, value) in open {
                if incidents.get(&state_key) != Some(&value) {
                    routed.state_writes.insert(state_key, Some(value));
                }
            }
        }
        routed
    }
}

fn row(kind: OutboxKind, dedup_key: String, payload: String) -> NewOutboxRow {
    NewOutboxRow { kind, dedup_key, payload, recipient: None }
}

fn alert_row(kind: ReceiverKind, dedup_key: String, alert: &Alert) -> NewOutboxRow {
    row(kind.outbox_kind(), dedup_key, serde_json::to_string(alert).unwrap_or_default())
}

/// The open incident's key at `receiver`, or a new one (noted) for a receiver that keeps
/// incidents; others get the occurrence's key.
fn incident_for(
    open: &mut BTreeMap<String, String>,
    receiver: &str,
    kind: ReceiverKind,
    policy: &str,
    job: &str,
    at_ms: i64,
) -> String {
    let fresh = format!("warden/{policy}/{job}/{at_ms}");
    if !kind.has_incidents() {
        return fresh;
    }
    open.entry(format!("{INCIDENT_KEY}{receiver}")).or_insert(fresh).clone()
}

/// Notes an open ticket (the ticket system may hold several for one trouble).
fn note_ticket(open: &mut BTreeMap<String, String>, ticket: &str) {
    let entry = open.entry(format!("{INCIDENT_KEY}{TICKETS_RECEIVER}")).or_insert_with(|| "[]".to_owned());
    let mut keys: Vec<String> = serde_json::from_str(entry).unwrap_or_default();
    if !keys.iter().any(|k| k == ticket) {
        keys.push(ticket.to_owned());
    }
    *entry = serde_json::to_string(&keys).unwrap_or_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: Vec<Route>) -> Router {
        Router {
            routes,
            receivers: [
                ("slack", ReceiverKind::Slack, true),
                ("pd", ReceiverKind::Pagerduty, true),
                ("og", ReceiverKind::Opsgenie, true),
                ("off", ReceiverKind::Discord, false),
            ]
            .into_iter()
            .map(|(n, k, on)| (n.to_owned(), (k, on)))
            .collect(),
        }
    }

    fn email(subject: &str) -> ActionRecord {
        ActionRecord::EmailAdmin { subject: subject.into(), body: "Status: Error\n".into() }
    }

    fn ticket(key: &str, priority: Priority) -> ActionRecord {
        ActionRecord::OpenTicket { title: "down".into(), body: "b".into(), priority, dedup_key: key.into() }
    }

    fn notify(status: Status) -> ActionRecord {
        ActionRecord::NotifySubscribers { status, previous: None }
    }

    #[test]
    fn a_table_of_actions_goes_to_its_receivers() {
        let r = |receivers: &[&str]| receivers.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let routes = vec![
            Route { stage: Some(Stage::Escalation), receivers: r(&["pd"]), ..Route::default() },
            Route { job: Some("orders".into()), receivers: r(&["og"]), ..Route::default() },
            Route {
                kind: Some(RouteKind::Email),
                receivers: r(&["admin", "slack", "off"]),
                continue_matching: true,
                ..Route::default()
            },
            Route { priority: Some(Priority::Critical), receivers: r(&["pd"]), ..Route::default() },
        ];
        let router = router(routes);
        let table: &[(RouteKind, Priority, Stage, &str, &[&str])] = &[
            // The job's own route, first match, stops.
            (RouteKind::Email, Priority::Critical, Stage::Alert, "orders", &["og"]),
            // Email: admin and Slack (the receiver that is off is passed by), and continues
            // to the critical route.
            (RouteKind::Email, Priority::Critical, Stage::Alert, "ledger", &["admin", "slack", "pd"]),
            (RouteKind::Email, Priority::High, Stage::Alert, "ledger", &["admin", "slack"]),
            // A critical ticket: the critical route; a lower one: no route, the default.
            (RouteKind::Ticket, Priority::Critical, Stage::Alert, "ledger", &["pd"]),
            (RouteKind::Ticket, Priority::High, Stage::Alert, "ledger", &["tickets"]),
            // An escalation goes to PagerDuty before anything else is asked.
            (RouteKind::Ticket, Priority::Critical, Stage::Escalation, "orders", &["pd"]),
        ];
        for (kind, priority, stage, job, want) in table {
            assert_eq!(
                router.receivers_for(*kind, *priority, *stage, "status-alert", job),
                *want,
                "{kind:?} {priority:?} {stage:?} {job}"
            );
        }
        // No routes at all: today's behaviour.
        let none = router_default();
        assert_eq!(none.receivers_for(RouteKind::Email, Priority::High, Stage::Alert, "p", "j"), ["admin"]);
        assert_eq!(none.receivers_for(RouteKind::Ticket, Priority::High, Stage::Alert, "p", "j"), ["tickets"]);
    }

    fn router_default() -> Router {
        router(Vec::new())
    }

    #[test]
    fn without_routes_the_rows_are_today_s() {
        let actions = [ticket("error:5", Priority::Critical), email("down"), notify(Status::Error)];
        let routed =
            router_default().route("status-alert", "probe", 5, Some(Status::Error), &actions, &BTreeMap::new());
        let rows: Vec<(OutboxKind, &str)> = routed.rows.iter().map(|r| (r.kind, r.dedup_key.as_str())).collect();
        assert_eq!(
            rows,
            [
                (OutboxKind::Ticket, "error:5"),
                (OutboxKind::Email, "status-alert:probe:5:1"),
                (OutboxKind::Subscribers, "status-alert:probe:5:2")
            ]
        );
        assert_eq!(routed.rows[1].payload, serde_json::to_string(&actions[1]).unwrap());
        assert_eq!(
            routed.state_writes,
            BTreeMap::from([("warden:incident:tickets".to_owned(), Some(r#"["error:5"]"#.to_owned()))])
        );
    }

    #[test]
    fn the_recovery_resolves_what_the_trouble_opened_with_the_same_keys() {
        let routes = vec![
            Route {
                kind: Some(RouteKind::Ticket),
                receivers: vec!["tickets".into(), "pd".into(), "og".into()],
                ..Route::default()
            },
            Route { kind: Some(RouteKind::Email), receivers: vec!["slack".into(), "pd".into()], ..Route::default() },
        ];
        let router = router(routes);
        let down = router.route(
            "status-alert",
            "probe",
            1000,
            Some(Status::Error),
            &[ticket("error:1000", Priority::Critical), email("down"), notify(Status::Error)],
            &BTreeMap::new(),
        );
        let alert = |row: &NewOutboxRow| serde_json::from_str::<Alert>(&row.payload).unwrap();
        let pd: Vec<Alert> = down.rows.iter().filter(|r| r.kind == OutboxKind::Pagerduty).map(alert).collect();
        assert_eq!(pd.len(), 2, "the ticket and the email both trigger");
        assert!(pd.iter().all(|a| a.incident == "warden/status-alert/probe/1000" && a.event == AlertEvent::Firing));
        let noted: BTreeMap<String, String> =
            down.state_writes.iter().map(|(k, v)| (k.clone(), v.clone().unwrap())).collect();
        assert_eq!(noted.len(), 3, "tickets, pd and og: {noted:?}");

        // A reminder while down: the same incident, nothing new noted.
        let again = router.route("status-alert", "probe", 2000, Some(Status::Error), &[email("still down")], &noted);
        assert!(again.state_writes.is_empty());
        assert!(
            again
                .rows
                .iter()
                .filter(|r| r.kind == OutboxKind::Pagerduty)
                .all(|r| alert(r).incident == "warden/status-alert/probe/1000")
        );

        let up = router.route(
            "status-alert",
            "probe",
            3000,
            Some(Status::Operational),
            &[email("recovered"), notify(Status::Operational)],
            &noted,
        );
        let resolves: Vec<(OutboxKind, Alert)> =
            up.rows.iter().filter(|r| r.dedup_key.starts_with("resolve:")).map(|r| (r.kind, alert(r))).collect();
        let kinds: Vec<OutboxKind> = resolves.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [OutboxKind::Opsgenie, OutboxKind::Pagerduty, OutboxKind::Ticket]);
        assert!(resolves.iter().all(|(_, a)| a.event == AlertEvent::Resolved && a.summary == "recovered"));
        assert_eq!(resolves[1].1.incident, "warden/status-alert/probe/1000");
        assert_eq!(resolves[2].1.incident, "error:1000");
        // Slack is told the recovery as a message; PagerDuty and Opsgenie only resolve.
        let slack: Vec<Alert> = up.rows.iter().filter(|r| r.kind == OutboxKind::Slack).map(alert).collect();
        assert_eq!(slack.len(), 1);
        assert_eq!(slack[0].event, AlertEvent::Resolved);
        assert!(up.state_writes.values().all(Option::is_none) && up.state_writes.len() == 3, "all forgotten");

        // Nothing open: a recovery resolves nothing.
        let quiet =
            router.route("status-alert", "probe", 4000, Some(Status::Operational), &[email("up")], &BTreeMap::new());
        assert!(quiet.rows.iter().all(|r| !r.dedup_key.starts_with("resolve:")));
    }

    #[test]
    fn an_escalation_ticket_is_its_own_stage() {
        let routes = vec![Route { stage: Some(Stage::Escalation), receivers: vec!["pd".into()], ..Route::default() }];
        let routed = router(routes).route(
            "status-alert",
            "probe",
            7,
            Some(Status::Error),
            &[
                ticket("status-alert:probe:escalation:error:1", Priority::Critical),
                ticket("status-alert:probe:error:1", Priority::Critical),
            ],
            &BTreeMap::new(),
        );
        let kinds: Vec<OutboxKind> = routed.rows.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [OutboxKind::Pagerduty, OutboxKind::Ticket]);
    }
}
