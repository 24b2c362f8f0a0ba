//! Subscribers: fan-out at the pace, a kill and restart in the middle, signed unsubscribe
//! links, `.eml` files without an SMTP server, and the shipped schedule on PostgreSQL.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mail_parser::MessageParser;

use crate::policies::status_alert_policy;
use crate::schedule::{DB, SESSIONS, probe, schedule};
use crate::smtp_server::{Received, SmtpServer};
use crate::support::{Daemon, TestDb, http_get, schedule_dir, wait_for};

use super::{read, subjects};

/// A SQLite application with `users` opted in and a `session` table the probe checks:
/// dropping the table turns the status to degraded.
fn subscriber_schedule(app: &Path, smtp: &str, pace: u32) -> String {
    let alerts = format!(
        "from = \"MNW status <warden@example.org>\"\npublic_url = \"http://status.example.org\"\nbackoff = \"200ms\"\n\
         [alerts.subscribers]\n{SUBSCRIBERS}\nsigning_secret = \"a-test-secret-of-enough-length\"\npace = {pace}"
    );
    schedule()
        .product("MNW")
        .target(&format!("sqlite://{}", app.display()), "demo_schema = false")
        .alerts(smtp, &alerts)
        .job(probe("health-probe", "1s", &[DB, SESSIONS]))
        .table(status_alert_policy())
        .to_string()
}

/// The subscriber query and opt-out statement of the demo application on SQLite.
const SUBSCRIBERS: &str = "query = \"SELECT id, email FROM users WHERE status_alerts = 1 ORDER BY id\"\n\
                           opt_out = \"UPDATE users SET status_alerts = 0 WHERE id = $1\"";

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

/// What the outbox and the history hold, for a failure's message.
async fn outbox_summary(state: &Path) -> String {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", state.display())).await.unwrap();
    let counts: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT kind, state, COUNT(*), COUNT(claimed_by) FROM outbox GROUP BY kind, state ORDER BY kind, state",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let parents: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT kind, dedup_key, state, last_error FROM outbox WHERE kind <> 'notice' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT checked_at, status FROM health_history ORDER BY checked_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut changes = Vec::new();
    for (at, status) in &statuses {
        if changes.last().is_none_or(|(_, s): &(&String, &String)| *s != status) {
            changes.push((at, status));
        }
    }
    format!("outbox (kind, state, rows, claimed): {counts:?}\nnot notices: {parents:#?}\nstatus changes: {changes:?}")
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
    // A first start without subscribers records the status operational: a first probe that
    // found the application otherwise (seen in CI: `error` at the very first probe, then
    // operational) tells the subscribers of each change, a thousand notices a time, ahead of
    // the change this test makes.
    let with_subscribers = subscriber_schedule(&app, &smtp.url(), PACE);
    let start = with_subscribers.find("[alerts.subscribers]").unwrap();
    let end = start + with_subscribers[start..].find("pace = ").unwrap();
    let end = end + with_subscribers[end..].find('\n').unwrap() + 1;
    let quiet = format!("{}{}", &with_subscribers[..start], &with_subscribers[end..]);
    std::fs::write(&config, &quiet).unwrap();
    let warm = Daemon::start(dir.path(), &config);
    warm.wait_operational(Duration::from_secs(20));
    warm.wait_runs("health-probe", 2);
    assert_eq!(warm.terminate(Duration::from_secs(15)), Some(0));
    std::fs::write(&config, &with_subscribers).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
    daemon.wait_runs("health-probe", 1);
    let admin_before = smtp.messages().into_iter().filter(|m| m.to == ["ops@example.org"]).count();
    assert!(notices(&smtp).is_empty(), "nothing to tell before the change");

    sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    wait_for(Duration::from_secs(60), "300 notices", || (notices(&smtp).len() >= 300).then_some(()));
    let first_log = daemon.log.clone();
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
    if all_now.len() > USERS + 1 {
        let warnings = |log: &str| {
            log.lines()
                .filter(|l| !l.contains(" INFO ") || l.contains("status") || l.contains("subscriber"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "at most the in-flight notice twice: {} sent, {before} before the kill\n{}\n--- first daemon\n{}\n--- second\n{}",
            all_now.len(),
            outbox_summary(&dir.path().join("warden-state.db")).await,
            warnings(&std::fs::read_to_string(&first_log).unwrap_or_default()),
            warnings(&daemon.log()),
        );
    }
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
    assert_eq!(subjects(&admin[admin_before..]), ["MNW degraded — partial service failure"]);
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
    daemon.wait_operational(Duration::from_secs(20));
    daemon.wait_runs("health-probe", 1);

    // Counted from here: a first probe that found the application degraded (a slow start)
    // told its own notices before this test's change.
    let before = notices(&smtp).len();
    sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    wait_for(Duration::from_secs(20), "two notices", || (notices(&smtp).len() >= before + 2).then_some(()));
    let notice =
        notices(&smtp)[before..].iter().map(read).find(|m| m.to == ["user1@example.org"]).expect("a notice to user 1");
    assert_eq!(notice.subject, "MNW is partly unavailable");
    let told = "Current status of MNW: degraded (it was operational).";
    assert!(notice.text.contains(told), "{}\n{}", notice.text, daemon.log());
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
        notices(&smtp)[before..].iter().any(|m| read(m).subject == "MNW is back to normal").then_some(())
    });
    daemon.wait_runs("health-probe", 1);
    let recovery: Vec<Vec<String>> = notices(&smtp)[before..]
        .iter()
        .filter(|m| read(m).subject == "MNW is back to normal")
        .map(|m| m.to.clone())
        .collect();
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
    let alerts = format!(
        "[alerts]\nadmin = [\"ops@example.org\"]\n[alerts.subscribers]\n{SUBSCRIBERS}\n\
         signing_secret_file = \"secret/unsubscribe.key\""
    );
    let (dir, config) =
        schedule().product("MNW").table(alerts).job(probe("health-probe", "1s", &[DB, SESSIONS])).table(policy).write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
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
    daemon.wait_operational(Duration::from_secs(30));
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
