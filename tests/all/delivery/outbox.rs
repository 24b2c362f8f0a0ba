//! The dispatcher in this process on a SQLite store: retries, `failed` and re-drive, TLS,
//! the ticket webhook, and spooled notices.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warden::base::OutboxKind;
use warden::store::{Decision, NewOutboxRow, RunCommit};

use crate::schedule::schedule;
use crate::smtp_server::{SmtpServer, TlsMode};
use crate::support::{TestDb, warden};

use super::{Outbox, email, pg_proxy, read, subjects, ticket};

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

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_sent_while_the_store_is_locked_is_recorded_once_it_frees_and_nothing_else_is_sent_meanwhile() {
    use sqlx::Connection;
    let smtp = SmtpServer::start();
    let outbox = Outbox::start(&format!(
        "admin = [\"ops@example.org\"]\nfrom = \"warden@example.org\"\nsmtp = \"{}\"\nbackoff = \"100ms\"\n",
        smtp.url()
    ))
    .await;
    let state = outbox.path.parent().unwrap().join("warden-state.db");
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", state.display())).await.unwrap();

    // The mail reaches the server; before warden hears the 250, another process takes the
    // store's write lock and keeps it past warden's busy timeout (5 s).
    smtp.hold(true);
    outbox.queue(vec![email("locked", "sent while the store is locked")]).await;
    smtp.wait_for(1, Duration::from_secs(10));
    outbox.queue(vec![email("after", "queued while the first is sent")]).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut locker).await.unwrap();
    smtp.hold(false);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let pending = outbox.states().await;
    assert_eq!(smtp.count(), 1, "nothing more is sent while the first send is unrecorded");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    let states =
        outbox.wait_states("both delivered", |s| s.len() == 2 && s.iter().all(|(_, st, _)| st == "delivered")).await;
    assert!(
        pending.iter().all(|(k, st, _)| k != "locked" || st == "pending"),
        "recorded only after the lock: {pending:?}"
    );
    assert!(states.iter().all(|(.., attempts)| *attempts == 1), "one attempt each, recorded once: {states:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        subjects(&smtp.messages()),
        ["sent while the store is locked", "queued while the first is sent"],
        "each once"
    );
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
/// `Idempotency-Key` (200 once the script runs out; a 429 says `Retry-After: 1`), recording
/// every request (with the pseudo-header `:received` in milliseconds since the server began).
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
        let began = std::time::Instant::now();
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
                headers.insert(":received".into(), began.elapsed().as_millis().to_string());
                seen.lock().unwrap().push((headers, serde_json::from_slice(&body).unwrap()));
                let mut out = stream;
                let wait = if status == 429 { "retry-after: 1\r\n" } else { "" };
                let _ = write!(out, "HTTP/1.1 {status} X\r\n{wait}content-length: 2\r\nconnection: close\r\n\r\nno");
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

/// A 429 with `Retry-After: 1` is retried no sooner than a second later, though the backoff
/// is 50 ms, and delivered once.
#[tokio::test]
async fn a_ticket_answered_429_waits_out_its_retry_after() {
    let hook = Webhook::start(&[("status-alert:slow", &[429])]);
    let outbox = Outbox::start(&format!(
        "backoff = \"50ms\"\nmax_backoff = \"100ms\"\n[alerts.tickets]\nwebhook = \"http://{}/tickets\"\n",
        hook.addr
    ))
    .await;
    outbox.queue(vec![ticket("status-alert:slow", "MNW down")]).await;
    let states = outbox.wait_states("the ticket delivered", |s| s.iter().all(|(_, st, _)| st == "delivered")).await;
    assert_eq!(states, [("status-alert:slow".to_owned(), "delivered".to_owned(), 2)]);
    let received: Vec<u64> =
        hook.requests.lock().unwrap().iter().map(|(h, _)| h[":received"].parse().unwrap()).collect();
    assert_eq!(received.len(), 2, "429, then 200");
    assert!(received[1] - received[0] >= 1000, "retried {} ms after the 429", received[1] - received[0]);
}

/// A webhook's path is its secret (Slack and Teams put the token there): the error kept on
/// the row, which the admin API shows, names the host only.
#[tokio::test]
async fn a_webhook_s_secret_path_stays_out_of_the_row_s_error() {
    let closed = crate::support::free_port();
    let outbox = Outbox::start(&format!(
        "backoff = \"1h\"\n[alerts.tickets]\nwebhook = \"http://127.0.0.1:{closed}/services/T0/B0/SECRETTOKEN\"\n"
    ))
    .await;
    outbox.queue(vec![ticket("status-alert:hidden", "MNW down")]).await;
    let entries = loop {
        let entries = outbox.store.outbox_page(None, 10, None).await.unwrap();
        if entries.iter().any(|e| e.last_error.is_some()) {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = entries[0].last_error.clone().unwrap();
    assert!(error.contains(&format!("http://127.0.0.1:{closed}/***")), "{error}");
    assert!(!error.contains("SECRETTOKEN") && !error.contains("services"), "{error}");
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
    let (dir, path) = schedule().write();
    let config = warden::config::load(&path).unwrap();
    let ctx = warden::daemon::open(&config).await.unwrap();
    let run = |job: &str, key: &str| {
        let decision = Decision {
            policy: "p".into(),
            state_writes: BTreeMap::new(),
            outbox: vec![email(key, key)],
            read_mark: None,
        };
        RunCommit::ok(job, vec![decision])
    };
    // A run the store refuses (as a constraint would: a trigger raises on its job).
    let db = dir.path().join("warden-state.db");
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON job_runs WHEN NEW.job = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(&raw)
    .await
    .unwrap();
    raw.close().await;
    ctx.spool.push(run("poison", "poison")).unwrap();
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
    ctx.spool.push(run("probe", "fine")).unwrap();
    ctx.spool.drain(&ctx.store).await.unwrap();
    let keys: Vec<String> = ctx.store.outbox().await.unwrap().into_iter().map(|r| r.1).collect();
    assert_eq!(keys, ["fine"]);
}
