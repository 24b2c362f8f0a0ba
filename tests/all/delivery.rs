//! Alert delivery through real servers: an SMTP server over TCP (`smtp_server.rs`), an
//! HTTP server for the ticket webhook, real PostgreSQL cut off by a proxy, and the real
//! `warden` binary killed in the middle of a fan-out.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use mail_parser::MessageParser;
use tokio::sync::{Notify, watch};
use warden::base::OutboxKind;
use warden::delivery::{Channels, Dispatcher};
use warden::store::{Decision, NewOutboxRow, RunCommit, StateStore};

use crate::policies::status_alert_policy;
use crate::smtp_server::{Received, SmtpServer, TlsMode};
use crate::support::{Daemon, Proxy, TestDb, http, http_get, schedule_dir, wait_for, warden};

// ---- reading mail -----------------------------------------------------------------

/// The parts of a received message the tests look at, decoded.
#[derive(Debug)]
struct Mail {
    to: Vec<String>,
    subject: String,
    message_id: String,
    list_unsubscribe: Option<String>,
    list_unsubscribe_post: Option<String>,
    text: String,
    html: Option<String>,
}

fn read(m: &Received) -> Mail {
    let parsed = MessageParser::default().parse(m.data.as_bytes()).expect("a parsable message");
    let raw_header = |name: &str| parsed.header_raw(name).map(|v| v.trim().to_owned());
    Mail {
        to: m.to.clone(),
        subject: parsed.subject().unwrap_or_default().to_owned(),
        message_id: parsed.message_id().unwrap_or_default().to_owned(),
        list_unsubscribe: raw_header("List-Unsubscribe"),
        list_unsubscribe_post: raw_header("List-Unsubscribe-Post"),
        text: parsed.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        html: parsed.body_html(0).map(|t| t.into_owned()),
    }
}

fn subjects(messages: &[Received]) -> Vec<String> {
    messages.iter().map(|m| read(m).subject).collect()
}

// ---- a dispatcher in this process, on a SQLite store --------------------------------

struct Outbox {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: StateStore,
    stop: watch::Sender<bool>,
    _lanes: tokio::task::JoinSet<()>,
}

impl Outbox {
    /// A store and a running dispatcher for `alerts` (the body of `[alerts]`).
    async fn start(alerts: &str) -> Outbox {
        let (dir, path) = schedule_dir(&format!("version = 1\nproduct = \"MNW\"\n[alerts]\n{alerts}\n"));
        let config = warden::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let ctx = warden::daemon::open(&config).await.unwrap();
        let channels = Arc::new(Channels::new(&config, ctx.targets.clone()).unwrap());
        let (_keep, rx) = watch::channel(channels);
        std::mem::forget(_keep);
        let (stop, stopped) = watch::channel(false);
        let lanes = Dispatcher::new(ctx.store.clone(), ctx.spool.clone(), rx, Arc::new(Notify::new())).spawn(stopped);
        Outbox { _dir: dir, path, store: ctx.store, stop, _lanes: lanes }
    }

    async fn queue(&self, rows: Vec<NewOutboxRow>) {
        queue(&self.store, rows).await;
    }

    async fn states(&self) -> Vec<(String, String, i32)> {
        self.store
            .outbox_page(None, 1000, None)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| (e.dedup_key, e.state.to_string(), e.attempts))
            .collect()
    }

    async fn wait_states(
        &self,
        what: &str,
        done: impl Fn(&[(String, String, i32)]) -> bool,
    ) -> Vec<(String, String, i32)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let states = self.states().await;
            if done(&states) {
                return states;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {states:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Commits rows as one policy decision of one run.
async fn queue(store: &StateStore, rows: Vec<NewOutboxRow>) {
    static N: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let decisions =
        vec![Decision { policy: "test".into(), state_writes: BTreeMap::new(), outbox: rows, read_mark: None }];
    let run =
        RunCommit { scheduled_at: Utc::now() + chrono::Duration::milliseconds(n), ..RunCommit::ok("probe", decisions) };
    store.commit(&run).await.unwrap();
}

fn email(key: &str, subject: &str) -> NewOutboxRow {
    let payload =
        serde_json::json!({ "kind": "email-admin", "subject": subject, "body": format!("body of {subject}") });
    NewOutboxRow { kind: OutboxKind::Email, dedup_key: key.into(), payload: payload.to_string(), recipient: None }
}

fn ticket(key: &str, title: &str) -> NewOutboxRow {
    let payload = serde_json::json!({
        "kind": "open-ticket", "title": title, "body": "details", "priority": "critical", "dedup_key": key,
    });
    NewOutboxRow { kind: OutboxKind::Ticket, dedup_key: key.into(), payload: payload.to_string(), recipient: None }
}

#[tokio::test]
async fn smtp_down_for_several_attempts_then_up_delivers_every_alert_once() {
    let smtp = SmtpServer::start();
    smtp.refuse_next_sessions(4); // connections greeted with 421
    let outbox = Outbox::start(&format!(
        "admin = [\"ops@example.org\", \"oncall@example.org\"]\nfrom = \"MNW status <warden@example.org>\"\n\
         smtp = \"{}\"\nbackoff = \"100ms\"\nmax_backoff = \"400ms\"\n",
        smtp.url()
    ))
    .await;
    outbox.queue(vec![email("a", "MNW down — critical service failure"), email("b", "second")]).await;
    outbox.queue(vec![email("c", "third")]).await;

    let states =
        outbox.wait_states("three deliveries", |s| s.len() == 3 && s.iter().all(|(_, st, _)| st == "delivered")).await;
    assert!(states.iter().any(|(.., attempts)| *attempts >= 2), "some row needed a retry: {states:?}");
    // Then a 451 after DATA (the server took the message but deferred it): retried too.
    smtp.defer(true);
    outbox.queue(vec![email("d", "fourth")]).await;
    outbox
        .wait_states("a deferred attempt", |s| s.iter().any(|(k, st, n)| k == "d" && st == "pending" && *n >= 1))
        .await;
    smtp.defer(false);
    outbox.wait_states("the fourth delivery", |s| s.iter().all(|(_, st, _)| st == "delivered")).await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    let messages = smtp.messages();
    let mut got = subjects(&messages);
    got.sort();
    assert_eq!(got, ["MNW down — critical service failure", "fourth", "second", "third"], "each alert once");
    assert!(smtp.sessions() >= 5, "the refused sessions happened");
    let first = messages.iter().map(read).find(|m| m.subject.starts_with("MNW down")).unwrap();
    assert_eq!(first.to, ["ops@example.org", "oncall@example.org"]);
    assert_eq!(first.text.trim(), "body of MNW down — critical service failure");
    assert!(first.message_id.ends_with(".warden@example.org"), "{}", first.message_id);
    assert_eq!(messages[0].from, "warden@example.org");
}

#[tokio::test]
async fn a_row_out_of_attempts_is_failed_visible_and_can_be_re_driven() {
    let smtp = SmtpServer::start();
    smtp.refuse_next_sessions(1000);
    let outbox = Outbox::start(&format!(
        "admin = [\"ops@example.org\"]\nsmtp = \"{}\"\nbackoff = \"50ms\"\nmax_backoff = \"100ms\"\nmax_attempts = 3\n",
        smtp.url()
    ))
    .await;
    outbox.queue(vec![email("lost?", "never lost")]).await;
    let states = outbox.wait_states("the row to fail", |s| s.iter().all(|(_, st, _)| st == "failed")).await;
    assert_eq!(states, [("lost?".to_owned(), "failed".to_owned(), 3)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outbox.states().await[0].2, 3, "no attempt after failing");

    // Visible on the command line, with the reason.
    let dir = outbox.path.parent().unwrap();
    let (code, out, err) =
        warden(dir, &["--config", outbox.path.to_str().unwrap(), "outbox", "list", "--state", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lost?") && out.contains("421"), "{out}");

    smtp.refuse_next_sessions(0);
    let (code, out, err) = warden(dir, &["--config", outbox.path.to_str().unwrap(), "outbox", "retry", "--all-failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 row(s) pending again"), "{out}");
    outbox.wait_states("the re-driven delivery", |s| s.iter().all(|(_, st, _)| st == "delivered")).await;
    assert_eq!(subjects(&smtp.wait_for(1, Duration::from_secs(5))), ["never lost"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_notice_waits_out_a_target_outage_without_spending_its_attempts() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL, status_alerts BOOLEAN NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users VALUES (1, 'ann@example.org', true), (2, 'bob@example.org', true)")
        .execute(&pool)
        .await
        .unwrap();
    let (proxy, target) = pg_proxy(&db);
    let smtp = SmtpServer::start();
    proxy.cut();
    let outbox = Outbox::start(&format!(
        "admin = [\"ops@example.org\"]\nsmtp = \"{}\"\nbackoff = \"50ms\"\nmax_backoff = \"100ms\"\nmax_attempts = 2\n\
         [alerts.subscribers]\nquery = \"SELECT id, email FROM users WHERE status_alerts ORDER BY id\"\n\
         opt_out = \"UPDATE users SET status_alerts = false WHERE id = $1\"\n\
         signing_secret = \"a-test-secret-of-enough-length\"\npace = 0\n\
         [targets]\ndatabase = \"{target}\"\n",
        smtp.url()
    ))
    .await;
    let notify = warden::runtime::ActionRecord::NotifySubscribers {
        status: warden::health::Status::Error,
        previous: Some(warden::health::Status::Operational),
    };
    let row = NewOutboxRow {
        kind: OutboxKind::Subscribers,
        dedup_key: "down".into(),
        payload: serde_json::to_string(&notify).unwrap(),
        recipient: None,
    };
    outbox.queue(vec![row]).await;

    // Many rounds of 50 ms backoff: with attempts spent it would have failed after two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = outbox.store.outbox_page(None, 10, None).await.unwrap();
    assert_eq!((rows.len(), rows[0].state.as_str(), rows[0].attempts), (1, "pending", 0), "{rows:?}");
    assert!(rows[0].last_error.as_deref().unwrap().contains("subscriber query"), "{rows:?}");

    proxy.restore();
    let got = smtp.wait_for(2, Duration::from_secs(30));
    let mut to: Vec<String> = got.iter().map(|m| read(m).to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["ann@example.org", "bob@example.org"]);
    drop(outbox);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_goes_over_starttls_or_implicit_tls_with_auth_and_an_untrusted_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    for (mode, scheme, query) in [(TlsMode::StartTls, "smtp", "?tls=required"), (TlsMode::Implicit, "smtps", "")] {
        let (smtp, ca) = SmtpServer::start_tls(mode);
        let ca_file = certs.path().join(format!("{scheme}-ca.pem"));
        std::fs::write(&ca_file, ca).unwrap();
        let outbox = Outbox::start(&format!(
            "admin = [\"ops@example.org\"]\nsmtp = \"{scheme}://alerts:s3cret@{}{query}\"\nsmtp_ca = \"{}\"\n",
            smtp.addr,
            ca_file.display()
        ))
        .await;
        outbox.queue(vec![email("a", &format!("over {mode:?}"))]).await;
        let got = smtp.wait_for(1, Duration::from_secs(20));
        assert_eq!(subjects(&got), [format!("over {mode:?}")]);
        assert!(got[0].tls, "{mode:?}: the message came in clear");
        assert_eq!(got[0].auth, Some(("alerts".to_owned(), "s3cret".to_owned())), "{mode:?}");
    }

    // Without `smtp_ca` the self-signed certificate is not trusted: nothing is sent, and the
    // row waits with the reason.
    let (smtp, _) = SmtpServer::start_tls(TlsMode::StartTls);
    let outbox = Outbox::start(&format!(
        "admin = [\"ops@example.org\"]\nsmtp = \"smtp://alerts:s3cret@{}?tls=required\"\nbackoff = \"100ms\"\n",
        smtp.addr
    ))
    .await;
    outbox.queue(vec![email("b", "untrusted")]).await;
    outbox.wait_states("a failed attempt", |s| s.iter().any(|(_, st, n)| st == "pending" && *n >= 1)).await;
    let rows = outbox.store.outbox_page(None, 10, None).await.unwrap();
    let error = rows[0].last_error.as_deref().unwrap_or_default().to_lowercase();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(smtp.count(), 0);
}

// ---- the ticket webhook --------------------------------------------------------------

/// An HTTP server answering each request with the next status scripted for its
/// `Idempotency-Key` (200 once the script runs out), recording every request.
struct Webhook {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// A request's headers (lower-case names) and JSON body.
type Request = (HashMap<String, String>, serde_json::Value);

impl Webhook {
    fn start(script: &[(&str, &[u16])]) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<_>>> = Default::default();
        let script: Arc<Mutex<HashMap<String, Vec<u16>>>> =
            Arc::new(Mutex::new(script.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
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
                let key = headers.get("idempotency-key").cloned().unwrap_or_default();
                let status = {
                    let mut script = script.lock().unwrap();
                    let queue = script.entry(key).or_default();
                    if queue.is_empty() { 200 } else { queue.remove(0) }
                };
                seen.lock().unwrap().push((headers, serde_json::from_slice(&body).unwrap()));
                let mut out = stream;
                let _ = write!(out, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno");
            }
        });
        Webhook { addr, requests }
    }
}

#[tokio::test]
async fn tickets_go_to_the_webhook_5xx_is_retried_and_4xx_fails_at_once() {
    let hook = Webhook::start(&[("status-alert:retry", &[500]), ("status-alert:bad", &[400])]);
    let outbox = Outbox::start(&format!(
        "backoff = \"50ms\"\nmax_backoff = \"100ms\"\n[alerts.tickets]\nwebhook = \"http://{}/tickets\"\n",
        hook.addr
    ))
    .await;
    outbox.queue(vec![ticket("status-alert:retry", "MNW down"), ticket("status-alert:bad", "rejected")]).await;
    let states = outbox
        .wait_states("both tickets settled", |s| s.len() == 2 && s.iter().all(|(_, st, _)| st != "pending"))
        .await;
    assert_eq!(
        states,
        [
            ("status-alert:retry".to_owned(), "delivered".to_owned(), 2),
            ("status-alert:bad".to_owned(), "failed".to_owned(), 1)
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = hook.requests.lock().unwrap().clone();
    let keys: Vec<&str> = requests.iter().map(|(h, _)| h["idempotency-key"].as_str()).collect();
    let retried = keys.iter().filter(|k| **k == "status-alert:retry").count();
    let bad = keys.iter().filter(|k| **k == "status-alert:bad").count();
    assert_eq!((retried, bad), (2, 1), "500 then 200: sent twice, delivered once; 400: never retried");
    let (headers, body) = requests.iter().find(|(h, _)| h["idempotency-key"] == "status-alert:retry").unwrap();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["title"], "MNW down");
    assert_eq!(body["priority"], "critical");
    assert_eq!(body["dedup_key"], "status-alert:retry");
    assert_eq!(body["product"], "MNW");
    let failed = outbox.store.outbox_page(Some(warden::base::OutboxState::Failed), 10, None).await.unwrap();
    assert!(failed[0].last_error.as_deref().unwrap().contains("400"), "{:?}", failed[0].last_error);
}

// ---- end to end: the binary, Postgres, the proxy --------------------------------------

fn probe_schedule(target: &str, state: &str, smtp: &str, extra_alerts: &str) -> String {
    let policy = status_alert_policy();
    format!(
        r#"version = 1
product = "MNW"
[targets]
database = "{target}"
[state]
url = "{state}"
[alerts]
admin = ["ops@example.org"]
from = "MNW status <warden@example.org>"
smtp = "{smtp}"
backoff = "200ms"
max_backoff = "1s"
{extra_alerts}
[[job]]
name = "health-probe"
every = "1s"
timeout = "5s"
task = "probe"
checks = [{{ name = "db", kind = "db", critical = true, timeout = "1s" }}]
{policy}"#,
    )
}

fn pg_proxy(db: &TestDb) -> (Proxy, String) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(url, db.url, "the test database URL names 127.0.0.1:5432: {}", db.url);
    (proxy, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_down_and_back_sends_the_down_mail_then_the_recovery_and_nothing_else() {
    let db = TestDb::create().await;
    let (proxy, target) = pg_proxy(&db);
    let smtp = SmtpServer::start();
    let (dir, config) = schedule_dir(&probe_schedule(&target, "sqlite://state.db", &smtp.url(), ""));
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));
    daemon.wait_runs("health-probe", 2);
    assert_eq!(smtp.count(), 0, "the first operational status is not told");

    proxy.cut();
    let down = smtp.wait_for(1, Duration::from_secs(20));
    let mail = read(&down[0]);
    assert_eq!(mail.subject, "MNW down — critical service failure");
    assert_eq!(mail.to, ["ops@example.org"]);
    for needle in ["Status: Error", "Previous status: Operational", "DB: FAIL"] {
        assert!(mail.text.contains(needle), "{needle} in {}", mail.text);
    }
    daemon.wait_runs("health-probe", 2);
    proxy.restore();
    let both = smtp.wait_for(2, Duration::from_secs(20));
    assert_eq!(read(&both[1]).subject, "MNW recovered — all services operational");
    daemon.wait_runs("health-probe", 3);
    assert_eq!(subjects(&smtp.messages()).len(), 2, "nothing else: {:?}", subjects(&smtp.messages()));

    // The counter moves at each delivery; the pending gauge is recounted every 5 s.
    wait_for(Duration::from_secs(15), "delivery metrics", || {
        let (_, body) = daemon.get("/metrics");
        (body.contains("warden_outbox_delivered_total{kind=\"email\"} 2")
            && body.contains("warden_outbox_pending{kind=\"email\"} 0"))
        .then_some(())
    });
    drop(daemon);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_state_store_on_the_database_that_goes_down_the_alert_still_goes_out_and_the_spool_drains() {
    let db = TestDb::create().await;
    let (proxy, url) = pg_proxy(&db);
    let smtp = SmtpServer::start();
    let (dir, config) = schedule_dir(&probe_schedule(&url, &url, &smtp.url(), ""));
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));
    daemon.wait_runs("health-probe", 2);

    proxy.cut();
    let down = smtp.wait_for(1, Duration::from_secs(30));
    assert_eq!(read(&down[0]).subject, "MNW down — critical service failure");
    let spool = dir.path().join(".warden/spool.jsonl");
    assert!(std::fs::read_to_string(&spool).unwrap().contains("MNW down"), "the decision waits in the spool");

    // warden dies while the store is still down; the new process starts without it and
    // must neither lose the spool nor tell the outage twice.
    drop(daemon);
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "a probe after the restart", || (daemon.get("/health").0 == 503).then_some(()));
    daemon.wait_runs("health-probe", 3);
    assert_eq!(smtp.count(), 1, "the restart told nothing new: {:?}", subjects(&smtp.messages()));

    proxy.restore();
    let both = smtp.wait_for(2, Duration::from_secs(30));
    assert_eq!(read(&both[1]).subject, "MNW recovered — all services operational");
    let pool = db.pool().await;
    let rows: Vec<(String, String)> =
        wait_for(Duration::from_secs(20), "the outbox to hold both alerts as delivered", || {
            let rows: Vec<(String, String)> = futures_block(
                sqlx::query_as("SELECT payload, state FROM warden.outbox WHERE kind = 'email' ORDER BY id")
                    .fetch_all(&pool),
            );
            (rows.len() == 2 && rows.iter().all(|(_, s)| s == "delivered")).then_some(rows)
        });
    assert!(rows[0].0.contains("MNW down"), "the spooled alert moved into the outbox: {rows:?}");
    let spooled_runs: i64 =
        futures_block(sqlx::query_scalar("SELECT COUNT(*) FROM warden.spool_applied").fetch_one(&pool));
    assert!(spooled_runs >= 2, "runs from both processes moved in: {spooled_runs}");
    assert_eq!(std::fs::read_to_string(&spool).unwrap(), "", "the spool is empty once drained");
    daemon.wait_runs("health-probe", 2);
    assert_eq!(smtp.count(), 2, "nothing else: {:?}", subjects(&smtp.messages()));
    drop(daemon);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silence_holds_back_the_alert_even_from_the_spool_and_across_a_restart() {
    const TOKEN: &str = "spool-silence-token-0123456789";
    let db = TestDb::create().await;
    let (proxy, url) = pg_proxy(&db);
    let smtp = SmtpServer::start();
    let (dir, config) = schedule_dir(&probe_schedule(&url, &url, &smtp.url(), ""));
    let env = [("WARDEN_ADMIN_TOKEN", TOKEN)];
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));

    // The operator silences the probe for a database upgrade: the very database that holds
    // warden's state goes down.
    let bearer = format!("Bearer {TOKEN}");
    let body = r#"{"job": "health-probe", "duration": "1h", "comment": "database upgrade"}"#;
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let (code, created) = http(daemon.addr, "POST", "/admin/silences", &headers, body).unwrap();
    assert_eq!(code, 201, "{created}");
    let kept = dir.path().join(".warden/silences.json");
    wait_for(Duration::from_secs(15), "the silences kept beside the spool", || {
        std::fs::read_to_string(&kept).ok()?.contains("database upgrade").then_some(())
    });
    proxy.cut();
    let spool = dir.path().join(".warden/spool.jsonl");
    wait_for(Duration::from_secs(30), "the down alert held back in the spool", || {
        std::fs::read_to_string(&spool).ok()?.contains("silenced by silence").then_some(())
    });
    assert_eq!(smtp.count(), 0, "{:?}", subjects(&smtp.messages()));

    // A restart while the store is still down sends nothing either.
    drop(daemon);
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    wait_for(Duration::from_secs(20), "a probe after the restart", || (daemon.get("/health").0 == 503).then_some(()));
    daemon.wait_runs("health-probe", 3);
    assert_eq!(smtp.count(), 0, "{:?}", subjects(&smtp.messages()));

    // Back: both alerts are in the outbox, silenced with the reason, and none was sent.
    proxy.restore();
    let pool = db.pool().await;
    let rows: Vec<(String, String, Option<String>)> =
        wait_for(Duration::from_secs(30), "both alerts recorded as silenced", || {
            let rows: Vec<(String, String, Option<String>)> = futures_block(
                sqlx::query_as("SELECT payload, state, last_error FROM warden.outbox WHERE kind = 'email' ORDER BY id")
                    .fetch_all(&pool),
            );
            (rows.len() == 2 && rows.iter().all(|(_, s, _)| s == "silenced")).then_some(rows)
        });
    assert!(rows[0].0.contains("MNW down"), "{rows:?}");
    assert!(rows[1].0.contains("MNW recovered"), "{rows:?}");
    for (_, _, why) in &rows {
        assert!(why.as_deref().unwrap_or_default().contains("database upgrade"), "{rows:?}");
    }
    daemon.wait_runs("health-probe", 2);
    assert_eq!(smtp.count(), 0, "nothing was sent: {:?}", subjects(&smtp.messages()));
    drop(daemon);
    pool.close().await;
    db.drop_db().await;
}

/// Runs a future to completion from synchronous test code inside a multi-thread runtime.
fn futures_block<T>(f: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).unwrap()
}

// ---- subscribers: fan-out, pace, kill and restart, unsubscribe ------------------------

/// A SQLite application with `users` opted in and a `session` table the probe checks:
/// dropping the table turns the status to degraded.
fn subscriber_schedule(app: &Path, smtp: &str, pace: u32) -> String {
    let policy = status_alert_policy();
    format!(
        r#"version = 1
product = "MNW"
[targets]
database = "sqlite://{}"
demo_schema = false
[alerts]
admin = ["ops@example.org"]
from = "MNW status <warden@example.org>"
smtp = "{smtp}"
public_url = "http://status.example.org"
backoff = "200ms"
[alerts.subscribers]
query = "SELECT id, email FROM users WHERE status_alerts = 1 ORDER BY id"
opt_out = "UPDATE users SET status_alerts = 0 WHERE id = $1"
signing_secret = "a-test-secret-of-enough-length"
pace = {pace}
[[job]]
name = "health-probe"
every = "1s"
task = "probe"
checks = [
  {{ name = "db", kind = "db", critical = true }},
  {{ name = "sessions", kind = "sql", query = "SELECT COUNT(*) FROM session" }},
]
{policy}"#,
        app.display(),
    )
}

async fn app_db(path: &Path, users: usize) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, status_alerts INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE session (id TEXT)").execute(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for i in 1..=users {
        sqlx::query("INSERT INTO users VALUES ($1, $2, 1)")
            .bind(i as i64)
            .bind(format!("user{i}@example.org"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO users VALUES (100000, 'never@example.org', 0)").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    pool
}

fn notices(smtp: &SmtpServer) -> Vec<Received> {
    smtp.messages().into_iter().filter(|m| m.to != ["ops@example.org"]).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_subscribers_are_told_once_each_at_the_pace_across_a_kill_and_restart() {
    const USERS: usize = 1000;
    // At up to 20/s one notice is in flight at a time, so a kill may repeat only that one.
    const PACE: u32 = 20;
    let smtp = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.db");
    let pool = app_db(&app, USERS).await;
    let config = dir.path().join("schedules.toml");
    std::fs::write(&config, subscriber_schedule(&app, &smtp.url(), PACE)).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));
    daemon.wait_runs("health-probe", 1);

    sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    wait_for(Duration::from_secs(60), "300 notices", || (notices(&smtp).len() >= 300).then_some(()));
    drop(daemon); // SIGKILL in the middle of the fan-out
    let before = notices(&smtp).len();
    assert!(before < USERS, "the kill came in the middle ({before} sent)");
    let daemon = Daemon::start(dir.path(), &config);
    let all = wait_for(Duration::from_secs(120), "every subscriber told", || {
        let n = notices(&smtp);
        let users: std::collections::HashSet<Vec<String>> = n.iter().map(|m| m.to.clone()).collect();
        (users.len() == USERS).then_some(n)
    });
    daemon.wait_runs("health-probe", 2);
    let all_now = notices(&smtp);
    assert!(all_now.len() <= USERS + 1, "at most the in-flight notice twice: {} sent", all_now.len());
    assert!(all_now.len() >= all.len());
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for m in &all_now {
        *per_user.entry(m.to[0].clone()).or_default() += 1;
    }
    assert!(!per_user.contains_key("never@example.org"), "only opted-in users");
    assert!(per_user.values().filter(|n| **n > 1).count() <= 1, "none twice but the one in flight");

    // Never faster than the pace: no one-second window holds more than PACE (+1 for the
    // window edge) notices.
    let times: Vec<Instant> = all_now.iter().map(|m| m.at).collect();
    let mut most = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
        most = most.max(in_window);
    }
    assert!(most <= PACE as usize + 1, "{most} notices in one second; pace {PACE}");

    let admin: Vec<Received> = smtp.messages().into_iter().filter(|m| m.to == ["ops@example.org"]).collect();
    assert_eq!(subjects(&admin), ["MNW degraded — partial service failure"]);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_link_unsubscribes_and_a_tampered_one_is_refused() {
    let smtp = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.db");
    let pool = app_db(&app, 2).await;
    let config = dir.path().join("schedules.toml");
    std::fs::write(&config, subscriber_schedule(&app, &smtp.url(), 10)).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));
    daemon.wait_runs("health-probe", 1);

    sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    wait_for(Duration::from_secs(20), "two notices", || (notices(&smtp).len() >= 2).then_some(()));
    let notice = notices(&smtp).into_iter().map(|m| read(&m)).find(|m| m.to == ["user1@example.org"]).unwrap();
    assert_eq!(notice.subject, "MNW is partly unavailable");
    assert!(notice.text.contains("Current status of MNW: degraded (it was operational)."), "{}", notice.text);
    let html = notice.html.clone().expect("an HTML part");
    assert!(html.contains("<strong>degraded</strong>"), "{html}");
    let header = notice.list_unsubscribe.clone().expect("List-Unsubscribe");
    let link = header.trim_start_matches('<').trim_end_matches('>').to_owned();
    assert!(link.starts_with("http://status.example.org/unsubscribe?u=1&a=status-alerts&s="), "{link}");
    assert!(notice.text.contains(&link), "the text part carries the link");
    assert!(html.contains(&link.replace('&', "&amp;")), "the HTML part carries the link");
    assert_eq!(notice.list_unsubscribe_post.as_deref(), Some("List-Unsubscribe=One-Click"));

    let path = link.trim_start_matches("http://status.example.org");
    let opted_in = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT status_alerts FROM users WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // GET only asks (mail scanners fetch links).
    let (code, page) = http_get(daemon.addr, path).unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<form method=\"post\""), "{page}");
    assert_eq!(opted_in(1).await, 1);
    // A tampered signature, or user 1's signature on user 2: 403, nothing changes.
    let sig = link.rsplit("s=").next().unwrap();
    let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    for bad in [path.replace(sig, &flipped), path.replace("u=1", "u=2")] {
        let (code, _) = http_post(daemon.addr, &bad, "List-Unsubscribe=One-Click");
        assert_eq!(code, 403, "{bad}");
    }
    assert_eq!((opted_in(1).await, opted_in(2).await), (1, 1));
    // The one-click POST opts out; repeating it is harmless.
    for _ in 0..2 {
        let (code, body) = http_post(daemon.addr, path, "List-Unsubscribe=One-Click");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("no longer receive"), "{body}");
    }
    assert_eq!((opted_in(1).await, opted_in(2).await), (0, 1));

    // The recovery notice reaches user 2 only.
    sqlx::query("CREATE TABLE session (id TEXT)").execute(&pool).await.unwrap();
    wait_for(Duration::from_secs(20), "the recovery notice", || {
        notices(&smtp).iter().any(|m| read(m).subject == "MNW is back to normal").then_some(())
    });
    daemon.wait_runs("health-probe", 1);
    let recovery: Vec<Vec<String>> =
        notices(&smtp).iter().filter(|m| read(m).subject == "MNW is back to normal").map(|m| m.to.clone()).collect();
    assert_eq!(recovery, [vec!["user2@example.org".to_owned()]]);
    drop(daemon);
}

fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, response)
}

#[test]
fn with_no_smtp_server_mail_is_written_as_eml_files_and_the_log_says_where() {
    let policy = status_alert_policy();
    let (dir, config) = schedule_dir(&format!(
        r#"version = 1
product = "MNW"
[alerts]
admin = ["ops@example.org"]
[alerts.subscribers]
query = "SELECT id, email FROM users WHERE status_alerts = 1"
opt_out = "UPDATE users SET status_alerts = 0 WHERE id = $1"
signing_secret_file = "secret/unsubscribe.key"
[[job]]
name = "health-probe"
every = "1s"
task = "probe"
checks = [{{ name = "db", kind = "db", critical = true }}, {{ name = "sessions", kind = "sql", query = "SELECT COUNT(*) FROM session" }}]
{policy}"#,
    ));
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "operational", || (daemon.get("/health").0 == 200).then_some(()));
    assert!(daemon.log().contains(&format!(".eml files in {}", dir.path().join("mail").display())), "{}", daemon.log());
    // The demo application: drop its session table and the status degrades.
    let app = dir.path().join("demo-app.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", app.display())).await.unwrap();
        sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    });
    // The signing secret was created on first start, readable by its owner only.
    let key = dir.path().join("secret/unsubscribe.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().len(), 64);
    let files = wait_for(Duration::from_secs(20), "an .eml file", || {
        let files: Vec<_> = std::fs::read_dir(dir.path().join("mail")).ok()?.flatten().map(|e| e.path()).collect();
        let eml: Vec<_> = files
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "eml")
                    && p.file_name().unwrap().to_string_lossy().starts_with("email-")
            })
            .collect();
        (!eml.is_empty()).then_some(eml)
    });
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let parsed = MessageParser::default().parse(text.as_bytes()).unwrap();
    assert_eq!(parsed.subject(), Some("MNW degraded — partial service failure"));
    let log = wait_for(Duration::from_secs(5), "the log line", || {
        let log = daemon.log();
        log.contains(&format!("written to {}", files[0].display())).then_some(log)
    });
    assert!(log.contains("delivered"), "{log}");
    // The demo users 1 and 3 opted in: their notices are files too.
    let notices = wait_for(Duration::from_secs(20), "two notice files", || {
        let n = std::fs::read_dir(dir.path().join("mail"))
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("notice-"))
            .count();
        (n == 2).then_some(n)
    });
    assert_eq!(notices, 2);
}

#[tokio::test]
async fn a_status_notice_overtaken_by_a_newer_one_is_not_told() {
    let smtp = SmtpServer::start();
    // The demo application (created on first start) has users 1 and 3 opted in.
    let outbox = Outbox::start(&format!(
        "smtp = \"{}\"\n[alerts.subscribers]\nquery = \"SELECT id, email FROM users WHERE status_alerts = 1\"\n\
         opt_out = \"UPDATE users SET status_alerts = 0 WHERE id = $1\"\nsigning_secret = \"a-test-secret-of-enough-length\"\n",
        smtp.url()
    ))
    .await;
    let change = |key: &str, status: &str, previous: &str| NewOutboxRow {
        kind: OutboxKind::Subscribers,
        dedup_key: key.into(),
        payload: serde_json::json!({ "kind": "notify-subscribers", "status": status, "previous": previous })
            .to_string(),
        recipient: None,
    };
    // Both queued before the dispatcher reached them (say, the application database was down).
    outbox.queue(vec![change("down", "error", "operational"), change("up", "operational", "error")]).await;
    let states =
        outbox.wait_states("two notices sent", |s| s.iter().filter(|(_, st, _)| st != "pending").count() == 4).await;
    let keys: Vec<(&str, &str)> = states.iter().map(|(k, st, _)| (k.as_str(), st.as_str())).collect();
    assert_eq!(
        keys,
        [("down", "superseded"), ("up", "delivered"), ("up:1", "delivered"), ("up:3", "delivered")],
        "the overtaken notice has a state of its own, not `delivered`"
    );
    let entries = outbox.store.outbox_page(None, 10, None).await.unwrap();
    let down = entries.iter().find(|e| e.dedup_key == "down").unwrap();
    assert!(down.last_error.as_deref().unwrap().contains("superseded"), "{down:?}");
    let messages = smtp.wait_for(2, Duration::from_secs(10));
    assert_eq!(subjects(&messages), ["MNW is back to normal", "MNW is back to normal"]);
    let mut to: Vec<String> = messages.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["ada@example.org", "linus@example.org"]);
}

#[tokio::test]
async fn spooled_runs_the_store_refuses_are_set_aside_and_do_not_block_the_rest() {
    let (dir, path) = schedule_dir("version = 1\n");
    let config = warden::config::load(&path).unwrap();
    let ctx = warden::daemon::open(&config).await.unwrap();
    let run = |run_id: Option<i64>, key: &str| {
        let decision = Decision {
            policy: "p".into(),
            state_writes: BTreeMap::new(),
            outbox: vec![email(key, key)],
            read_mark: None,
        };
        RunCommit { run_id, ..RunCommit::ok("probe", vec![decision]) }
    };
    // A run the store cannot take (its outbox row names a job run that does not exist).
    ctx.spool.push(run(Some(999_999), "poison")).unwrap();
    assert_eq!(ctx.spool.drain(&ctx.store).await.unwrap(), 1);
    assert!(ctx.spool.is_empty());
    assert!(ctx.store.outbox().await.unwrap().is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path().join(".warden"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("rejected"))
        .collect();
    assert_eq!(aside.len(), 1, "set aside in one file");
    assert!(std::fs::read_to_string(aside[0].path()).unwrap().contains("poison"));
    // The next one flows.
    ctx.spool.push(run(None, "fine")).unwrap();
    ctx.spool.drain(&ctx.store).await.unwrap();
    let keys: Vec<String> = ctx.store.outbox().await.unwrap().into_iter().map(|r| r.1).collect();
    assert_eq!(keys, ["fine"]);
}

#[test]
fn the_shipped_schedule_on_postgres_with_the_demo_schema_tells_its_opted_in_subscribers() {
    let smtp = SmtpServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules.toml")).unwrap();
    let plugins = crate::policies::plugins_dir();
    let body = shipped
        .replace("[targets]\n", "[targets]\ndemo_schema = true\n")
        .replace("component = \"plugins/", &format!("component = \"{}/", plugins.display()));
    let (dir, config) = schedule_dir(&body);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("SMTP_URL", &smtp.url()),
        ("HEALTH_CHECK_INTERVAL_SECS", "1"),
        ("ALERT_COOLDOWN_SECS", "0"),
    ];
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    wait_for(Duration::from_secs(30), "an operational probe", || (daemon.get("/health").0 == 200).then_some(()));
    // The application loses its sessions table: degraded, and the opted-in users are told.
    rt.block_on(async {
        let pool = db.pool().await;
        sqlx::query("DROP TABLE tower_sessions.session").execute(&pool).await.unwrap();
        pool.close().await;
    });
    let messages = smtp.wait_for(3, Duration::from_secs(30));
    let mut to: Vec<String> = messages.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["ada@example.org", "admin@localhost", "linus@example.org"], "{:?}", subjects(&messages));
    assert_eq!(
        subjects(&messages).iter().filter(|s| s.as_str() == "MNW degraded — partial service failure").count(),
        1
    );
    drop(daemon);
    rt.block_on(db.drop_db());
}
