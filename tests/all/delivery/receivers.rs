//! Receivers: each provider's request against an in-test HTTP server that checks its schema,
//! the recovery resolving PagerDuty and Opsgenie, the providers' answers (429 with
//! Retry-After, 500 then 200, 400), a silence on Slack, and the shipped schedule's switches
//! (Slack and PagerDuty from the environment, reminders) through the real daemon.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use warden::base::{ActionRecord, Matchers, OutboxKind, Status};
use warden::delivery::route::Router;
use warden::store::NewOutboxRow;

use super::Outbox;
use crate::schedule::schedule;
use crate::support::{Daemon, Proxy, TestDb, wait_for};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    /// Milliseconds since the server began.
    at_ms: u128,
}

/// An HTTP server answering each request with the next status scripted for the first
/// path prefix it matches (200 once the script runs out, or 202 for `/pd` and `/og` as
/// those providers answer; a 429 says `Retry-After: 1`), recording every request.
struct Provider {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Statuses to answer, by path prefix.
type Script = Vec<(String, Vec<u16>)>;

impl Provider {
    fn start(script: &[(&str, &[u16])]) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let script: Arc<Mutex<Script>> =
            Arc::new(Mutex::new(script.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()));
        let record = seen.clone();
        let began = Instant::now();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let mut headers = HashMap::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
                let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let status = {
                    let mut script = script.lock().unwrap();
                    match script.iter_mut().find(|(prefix, _)| path.starts_with(prefix.as_str())) {
                        Some((_, queue)) if !queue.is_empty() => queue.remove(0),
                        _ if path.starts_with("/pd") || path.starts_with("/og") => 202,
                        _ => 200,
                    }
                };
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                record.lock().unwrap().push(Seen { path, headers, body, at_ms: began.elapsed().as_millis() });
                let mut out = stream;
                let wait = if status == 429 { "retry-after: 1\r\n" } else { "" };
                let said = if status >= 400 { "invalid_payload" } else { "ok" };
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\n{wait}content-length: {}\r\nconnection: close\r\n\r\n{said}",
                    said.len()
                );
            }
        });
        Provider { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn at(&self, prefix: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path.starts_with(prefix)).cloned().collect()
    }
}

fn email(subject: &str) -> ActionRecord {
    ActionRecord::EmailAdmin { subject: subject.into(), body: format!("Status: …\nJob: probe\n({subject})\n") }
}

fn notify(status: Status) -> ActionRecord {
    ActionRecord::NotifySubscribers { status, previous: None }
}

const DOWN: &str = "MNW down — critical service failure";
const UP: &str = "MNW recovered — all services operational";

/// The rows of a down (a ticket, the email, the notice) and of the recovery after it, as
/// the router makes them with the incidents carried between the two as the store would.
fn down_and_up(router: &Router) -> (Vec<NewOutboxRow>, Vec<NewOutboxRow>) {
    let t0 = Utc::now().timestamp_millis();
    let ticket = ActionRecord::OpenTicket {
        title: "MNW down: status error".into(),
        body: "Status: Error\n".into(),
        priority: warden::base::Priority::Critical,
        dedup_key: format!("error:{t0}"),
    };
    let down = router.route(
        "status-alert",
        "probe",
        t0,
        Some(Status::Error),
        &[ticket, email(DOWN), notify(Status::Error)],
        &BTreeMap::new(),
    );
    let incidents: BTreeMap<String, String> =
        down.state_writes.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
    let up = router.route(
        "status-alert",
        "probe",
        t0 + 1000,
        Some(Status::Operational),
        &[email(UP), notify(Status::Operational)],
        &incidents,
    );
    (down.rows, up.rows)
}

#[tokio::test]
async fn every_receiver_gets_its_provider_s_schema_and_the_recovery_resolves_pagerduty_and_opsgenie() {
    let p = Provider::start(&[]);
    let receivers = format!(
        r#"
[receivers.hook]
kind = "webhook"
url = "{hook}"
headers = {{ Authorization = "Bearer hook-token" }}

[receivers.slack]
kind = "slack"
url = "{slack}"

[receivers.teams]
kind = "teams"
url = "{teams}"

[receivers.discord]
kind = "discord"
url = "{discord}"

[receivers.pd]
kind = "pagerduty"
routing_key = "R0UTINGKEY"
url = "{pd}"

[receivers.og]
kind = "opsgenie"
api_key = "GENIEKEY"
url = "{og}"

[receivers.phone]
kind = "ntfy"
url = "{ntfy}"
token = "tk_phone"
tags = ["prod"]

[[routes]]
kind = "email"
receivers = ["hook", "slack", "teams", "discord", "pd", "og", "phone"]

[[routes]]
kind = "ticket"
receivers = ["tickets", "pd"]
"#,
        hook = p.url("/hook/SECRET"),
        slack = p.url("/slack/T0/B0/SECRET"),
        teams = p.url("/teams/workflows/SECRET"),
        discord = p.url("/discord/api/webhooks/1/SECRET"),
        pd = p.url("/pd/v2/enqueue"),
        og = p.url("/og"),
        ntfy = p.url("/ntfy/alerts"),
    );
    let tickets = format!("[alerts]\nbackoff = \"50ms\"\n[alerts.tickets]\nwebhook = \"{}\"\n", p.url("/tickets"));
    let (outbox, config) = Outbox::start_schedule(schedule().product("MNW").table(tickets).table(receivers)).await;
    let (down, up) = down_and_up(&Router::new(&config));
    outbox.queue(down).await;
    let settled = |s: &[(String, String, i32)]| !s.is_empty() && s.iter().all(|(_, st, _)| st == "delivered");
    outbox.wait_states("the down delivered", settled).await;
    outbox.queue(up).await;
    let states = outbox.wait_states("the recovery delivered", settled).await;
    // Down: the ticket to the webhook and PagerDuty, the email to 7 receivers, the notice;
    // up: 5 messages, PagerDuty's resolve, Opsgenie's close, the ticket's resolve, the notice.
    assert_eq!(states.len(), 2 + 7 + 1 + 5 + 3 + 1, "{states:#?}");

    let hook = p.at("/hook/SECRET");
    assert_eq!(hook.len(), 2);
    assert_eq!(hook[0].headers["authorization"], "Bearer hook-token");
    assert_eq!(hook[0].headers["content-type"], "application/json");
    for (seen, event, summary) in [(&hook[0], "firing", DOWN), (&hook[1], "resolved", UP)] {
        let b = &seen.body;
        assert_eq!(
            (b["version"].as_str(), b["event"].as_str(), b["summary"].as_str()),
            (Some("1"), Some(event), Some(summary))
        );
        assert_eq!(
            (b["job"].as_str(), b["product"].as_str(), b["receiver"].as_str()),
            (Some("probe"), Some("MNW"), Some("hook"))
        );
        assert!(
            b["body"].as_str().unwrap().contains(summary) && b["at"].as_str().is_some() && b["incident"].is_string(),
            "{b}"
        );
    }

    let slack = p.at("/slack/");
    assert_eq!(slack.len(), 2);
    let s = &slack[0].body;
    assert!(s["text"].as_str().unwrap().ends_with(DOWN), "{s}");
    assert_eq!(s["blocks"][0]["type"], "header");
    assert_eq!(s["blocks"][0]["text"]["type"], "plain_text");
    assert_eq!(s["blocks"][0]["text"]["text"], DOWN);
    assert_eq!(s["blocks"][1]["type"], "section");
    assert_eq!(s["blocks"][1]["text"]["type"], "mrkdwn");
    assert_eq!(s["blocks"][2]["type"], "context");
    assert!(slack[1].body["text"].as_str().unwrap().contains(UP));

    let teams = p.at("/teams/");
    assert_eq!(teams.len(), 2);
    let t = &teams[0].body;
    assert_eq!(t["type"], "message");
    let card = &t["attachments"][0];
    assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert_eq!(card["content"]["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
    assert!(card["content"]["version"].is_string());
    assert_eq!(card["content"]["body"][0]["type"], "TextBlock");
    assert_eq!(card["content"]["body"][0]["text"], DOWN);

    let discord = p.at("/discord/");
    assert_eq!(discord.len(), 2);
    let d = &discord[0].body;
    assert_eq!(d["content"], DOWN);
    assert_eq!(d["embeds"][0]["title"], DOWN);
    assert!(d["embeds"][0]["description"].as_str().unwrap().contains(DOWN));
    assert!(d["embeds"][0]["color"].is_u64() && d["embeds"][0]["fields"].is_array());

    // PagerDuty: the ticket and the email trigger one incident; the recovery resolves it.
    let pd = p.at("/pd/v2/enqueue");
    let actions: Vec<&str> = pd.iter().map(|s| s.body["event_action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["trigger", "trigger", "resolve"], "{pd:#?}");
    let keys: std::collections::BTreeSet<&str> = pd.iter().map(|s| s.body["dedup_key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 1, "one incident: {keys:?}");
    for trigger in &pd[..2] {
        let b = &trigger.body;
        assert_eq!(b["routing_key"], "R0UTINGKEY");
        assert_eq!(b["payload"]["severity"], "critical");
        assert_eq!(b["payload"]["source"], "probe");
        assert!(b["payload"]["summary"].is_string() && b["payload"]["custom_details"]["body"].is_string(), "{b}");
    }
    assert_eq!(pd[2].body["routing_key"], "R0UTINGKEY");
    assert!(pd[2].body.get("payload").is_none(), "a resolve carries no payload");

    // Opsgenie: create with the incident as alias, then close by alias.
    let og = p.at("/og/");
    assert_eq!(og.len(), 2, "{og:#?}");
    assert_eq!(og[0].path, "/og/v2/alerts");
    assert_eq!(og[0].headers["authorization"], "GenieKey GENIEKEY");
    let alias = og[0].body["alias"].as_str().unwrap();
    assert_eq!(og[0].body["message"], DOWN);
    assert_eq!(og[0].body["priority"], "P1");
    let encoded: String = alias
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(og[1].path, format!("/og/v2/alerts/{encoded}/close?identifierType=alias"));
    assert_eq!(og[1].body["source"], "warden");

    // ntfy: JSON publishing to the server root, the topic from the URL.
    let ntfy = p.at("/ntfy");
    assert_eq!(ntfy.len(), 2);
    assert_eq!(ntfy[0].path, "/ntfy");
    assert_eq!(ntfy[0].headers["authorization"], "Bearer tk_phone");
    let n = &ntfy[0].body;
    assert_eq!(
        (n["topic"].as_str(), n["title"].as_str(), n["priority"].as_u64()),
        (Some("alerts"), Some(DOWN), Some(5))
    );
    assert_eq!(n["tags"], serde_json::json!(["rotating_light", "prod"]));
    assert_eq!(ntfy[1].body["tags"][0], "white_check_mark");

    // The ticket webhook: opened, then resolved with the ticket's dedup key.
    let tickets = p.at("/tickets");
    let events: Vec<(&str, &str)> =
        tickets.iter().map(|s| (s.body["event"].as_str().unwrap(), s.body["dedup_key"].as_str().unwrap())).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "opened");
    assert_eq!(events[1], ("resolved", events[0].1));
}

/// 429 with Retry-After waits it out; 500 then 200 is delivered once; 400 fails at once
/// with the provider's message and without the URL's secret path.
#[tokio::test]
async fn provider_answers_are_retried_waited_out_or_failed_at_once() {
    let p = Provider::start(&[("/slack/throttled", &[429]), ("/slack/flaky", &[500]), ("/slack/bad", &[400])]);
    let receivers = ["throttled", "flaky", "bad"]
        .map(|name| {
            format!("[receivers.{name}]\nkind = \"slack\"\nurl = \"{}\"\n", p.url(&format!("/slack/{name}/SECRET")))
        })
        .join("\n");
    let routes = "[[routes]]\nkind = \"email\"\nreceivers = [\"throttled\", \"flaky\", \"bad\"]\n";
    let alerts = "[alerts]\nbackoff = \"50ms\"\nmax_backoff = \"100ms\"\n";
    let (outbox, config) =
        Outbox::start_schedule(schedule().product("MNW").table(alerts).table(receivers).table(routes)).await;
    let routed =
        Router::new(&config).route("status-alert", "probe", 1, Some(Status::Error), &[email(DOWN)], &BTreeMap::new());
    outbox.queue(routed.rows).await;
    let states =
        outbox.wait_states("three settled", |s| s.len() == 3 && s.iter().all(|(_, st, _)| st != "pending")).await;
    let by_key: HashMap<String, (String, i32)> = states.into_iter().map(|(k, st, n)| (k, (st, n))).collect();
    let state = |name: &str| by_key.iter().find(|(k, _)| k.ends_with(&format!(":{name}"))).unwrap().1.clone();
    assert_eq!(state("throttled"), ("delivered".to_owned(), 2));
    assert_eq!(state("flaky"), ("delivered".to_owned(), 2));
    assert_eq!(state("bad"), ("failed".to_owned(), 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let throttled = p.at("/slack/throttled");
    assert_eq!(throttled.len(), 2, "429, then 200");
    assert!(
        throttled[1].at_ms - throttled[0].at_ms >= 1000,
        "retried {} ms after the 429",
        throttled[1].at_ms - throttled[0].at_ms
    );
    assert_eq!(p.at("/slack/flaky").len(), 2, "500 then 200: sent twice, delivered once");
    assert_eq!(p.at("/slack/bad").len(), 1, "400: never retried");
    let failed = outbox.store.outbox_page(Some(warden::base::OutboxState::Failed), 10, None).await.unwrap();
    let error = failed[0].last_error.clone().unwrap();
    assert!(error.contains("400") && error.contains("invalid_payload"), "{error}");
    assert!(!error.contains("SECRET") && !error.contains("/slack/"), "{error}");
}

#[tokio::test]
async fn a_silence_holds_back_a_slack_message_like_an_email() {
    let p = Provider::start(&[]);
    let receivers = format!("[receivers.slack]\nkind = \"slack\"\nurl = \"{}\"\n", p.url("/slack/SECRET"));
    let routes = "[[routes]]\nkind = \"email\"\nreceivers = [\"admin\", \"slack\"]\n";
    let alerts = "[alerts]\nadmin = [\"ops@example.org\"]\n";
    let (outbox, config) =
        Outbox::start_schedule(schedule().product("MNW").table(alerts).table(receivers).table(routes)).await;
    let silence = Matchers { kind: Some(OutboxKind::Slack), ..Matchers::default() };
    let now = Utc::now();
    outbox
        .store
        .create_silence(&silence, now, now + chrono::Duration::hours(1), "slack is noisy", "test")
        .await
        .unwrap();
    let routed =
        Router::new(&config).route("status-alert", "probe", 2, Some(Status::Error), &[email(DOWN)], &BTreeMap::new());
    outbox.queue(routed.rows).await;
    let states =
        outbox.wait_states("both settled", |s| s.len() == 2 && s.iter().all(|(_, st, _)| st != "pending")).await;
    let kinds: Vec<(&str, &str)> =
        states.iter().map(|(k, st, _)| (if k.ends_with(":slack") { "slack" } else { "email" }, st.as_str())).collect();
    assert_eq!(kinds, [("email", "delivered"), ("slack", "silenced")]);
    assert!(p.at("/").is_empty(), "nothing reached Slack");
}

/// The shipped schedule, unchanged, with SLACK_WEBHOOK_URL, PAGERDUTY_ROUTING_KEY (and
/// PAGERDUTY_EVENTS_URL) and ALERT_REMIND_EVERY set: the target database cut and restored
/// reaches Slack as the down, reminders and the recovery, and PagerDuty opens one incident
/// and resolves it; no reminder after the recovery.
#[test]
fn the_shipped_schedule_tells_slack_and_pagerduty_from_the_environment() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    rt.block_on(async {
        let pool = db.pool().await;
        for sql in ["CREATE SCHEMA tower_sessions", "CREATE TABLE tower_sessions.session (id TEXT PRIMARY KEY)"] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let target = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let p = Provider::start(&[]);
    let dir = crate::deploy::shipped_dir();
    let (slack, pd) = (p.url("/slack/T0/B0/SECRET"), p.url("/pd/v2/enqueue"));
    let env = [
        ("DATABASE_URL", target.as_str()),
        ("HEALTH_CHECK_INTERVAL_SECS", "1"),
        ("ALERT_COOLDOWN_SECS", "0"),
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("PAGERDUTY_ROUTING_KEY", "R0UTINGKEY"),
        ("PAGERDUTY_EVENTS_URL", pd.as_str()),
        ("ALERT_REMIND_EVERY", "2s"),
    ];
    let daemon = Daemon::start_with_env(dir.path(), &dir.path().join("schedules.toml"), &env);
    daemon.wait_operational(Duration::from_secs(60));
    let texts = |p: &Provider| -> Vec<String> {
        p.at("/slack/").iter().map(|s| s.body["text"].as_str().unwrap_or_default().to_owned()).collect()
    };
    proxy.cut();
    wait_for(Duration::from_secs(60), "the down and a reminder on Slack, and PagerDuty's trigger", || {
        let texts = texts(&p);
        let down = texts.iter().any(|t| t.ends_with(DOWN));
        let reminded = texts.iter().any(|t| t.contains("MNW still down"));
        (down && reminded && !p.at("/pd/").is_empty()).then_some(())
    });
    proxy.restore();
    wait_for(Duration::from_secs(60), "the recovery on Slack and PagerDuty's resolve", || {
        let resolved = p.at("/pd/").iter().any(|s| s.body["event_action"] == "resolve");
        (texts(&p).iter().any(|t| t.ends_with(UP)) && resolved).then_some(())
    });
    let told = texts(&p).len();
    daemon.wait_runs("health-probe", 4);
    let after: Vec<String> = texts(&p).into_iter().skip(told).collect();
    assert!(after.is_empty(), "nothing after the recovery (no reminder): {after:?}");

    let pd = p.at("/pd/");
    let keys: std::collections::BTreeSet<&str> = pd.iter().map(|s| s.body["dedup_key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 1, "one incident: {pd:#?}");
    let actions: Vec<&str> = pd.iter().map(|s| s.body["event_action"].as_str().unwrap()).collect();
    assert_eq!(actions.last(), Some(&"resolve"));
    assert_eq!(actions.iter().filter(|a| **a == "resolve").count(), 1, "{actions:?}");
    assert!(pd.iter().all(|s| s.body["routing_key"] == "R0UTINGKEY"));
    let texts = texts(&p);
    let downs = texts.iter().filter(|t| t.ends_with(DOWN)).count();
    assert_eq!(downs, 1, "one down, then reminders: {texts:?}");
    // The admin's mail goes on as before: written as .eml files without SMTP_URL.
    let mails = std::fs::read_dir(dir.path().join("mail")).map(|d| d.count()).unwrap_or(0);
    assert!(mails >= 3, "down, reminder and recovery mailed too: {mails}");
    assert!(!daemon.log().contains("SECRET"), "the webhook's secret path is never logged");
    drop(daemon);
    rt.block_on(db.drop_db());
}

/// status-alert's `escalate_after` through the daemon and its routes: the trouble's ticket
/// takes the default route, the escalation (once, after 2 s) the `stage = "escalation"` route
/// to a second receiver, and the ticket system is not sent the escalation.
#[test]
fn an_escalation_after_escalate_after_goes_to_the_escalation_route() {
    let p = Provider::start(&[]);
    let component = crate::policies::plugins_dir().join("status-alert.wasm");
    let missing = r#"{ name = "orders", kind = "sql", query = "SELECT COUNT(*) FROM orders_that_do_not_exist" }"#;
    let (dir, path) = schedule()
        .product("MNW")
        .table(format!("[receivers.pager]\nkind = \"webhook\"\nurl = \"{}\"\n", p.url("/pager/SECRET")))
        .table("[[routes]]\nstage = \"escalation\"\nreceivers = [\"pager\"]\n")
        .job(crate::schedule::probe("orders-db", "1s", &[crate::schedule::DB, missing]))
        .table(crate::schedule::policy(
            "status-alert",
            &component,
            &["orders-db"],
            r#"config = { cooldown = "0s", escalate_after = "2s" }"#,
        ))
        .write();
    let daemon = Daemon::start(dir.path(), &path);
    let escalated = wait_for(Duration::from_secs(60), "the escalation at the pager", || {
        let seen = p.at("/pager/");
        (!seen.is_empty()).then_some(seen)
    });
    daemon.wait_runs("orders-db", 3);
    let seen = p.at("/pager/");
    assert_eq!(seen.len(), 1, "escalated once: {seen:#?}");
    let b = &escalated[0].body;
    assert_eq!(
        (b["stage"].as_str(), b["event"].as_str(), b["priority"].as_str()),
        (Some("escalation"), Some("firing"), Some("critical"))
    );
    assert!(b["summary"].as_str().unwrap().starts_with("MNW escalated: degraded for "), "{b}");
    assert_eq!(b["job"], "orders-db");
    // The trouble's own ticket took the default route: a file in ./tickets, opened once.
    let opened: Vec<serde_json::Value> = std::fs::read_dir(dir.path().join("tickets"))
        .unwrap()
        .flatten()
        .map(|f| serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap())
        .collect();
    let titles: Vec<&str> = opened.iter().filter_map(|t| t["title"].as_str()).collect();
    assert_eq!(titles, ["MNW degraded: status degraded"], "the escalation is not a ticket here: {opened:#?}");
}
