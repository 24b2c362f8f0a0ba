//! Replicas: three `warden run` processes on one PostgreSQL state store take turns at a
//! 2 s probe, answer `/health` alike, sign unsubscribe links with one secret, and take over
//! one killed with `kill -9`. On SQLite a second `warden run` on the same state is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::policies::status_alert_policy;
use crate::schedule::{DB, Job, SESSIONS, job, probe, schedule};
use crate::smtp_server::SmtpServer;
use crate::support::{Daemon, TestDb, http, schedule_dir};

fn replica_schedule(state: &str, app: &Path, smtp: &str) -> String {
    let alerts = "public_url = \"http://status.example.org\"\nbackoff = \"200ms\"\n[alerts.subscribers]\n\
                  query = \"SELECT id, email FROM users WHERE status_alerts = 1 ORDER BY id\"\n\
                  opt_out = \"UPDATE users SET status_alerts = 0 WHERE id = $1\"\n\
                  signing_secret_file = \".warden/signing-secret\"";
    schedule()
        .product("MNW")
        .state(state)
        .target(&format!("sqlite://{}", app.display()), "demo_schema = false")
        .alerts(smtp, alerts)
        .job(probe("health-probe", "2s", &[DB, SESSIONS]))
        .table(status_alert_policy())
        .to_string()
}

/// Alerts that retry fast, for the outage tests.
const FAST_RETRY: &str = "backoff = \"200ms\"\nmax_backoff = \"1s\"";

/// The probe of the outage tests: every 2 s, each check under 1 s.
fn outage_probe(checks: &[&str]) -> Job {
    probe("health-probe", "2s", checks).with("timeout = \"5s\"")
}

/// The probe's runs in the store: (scheduled_at, replica, outcome), oldest first.
async fn runs(pool: &sqlx::PgPool) -> Vec<(DateTime<Utc>, String, String)> {
    sqlx::query_as(
        "SELECT scheduled_at, replica, outcome FROM warden.job_runs WHERE job = 'health-probe' ORDER BY scheduled_at",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn app_db(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    for sql in [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, status_alerts INTEGER NOT NULL)",
        "INSERT INTO users VALUES (1, 'user1@example.org', 1), (2, 'user2@example.org', 1)",
        "CREATE TABLE session (id TEXT)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool
}

fn health_checked_at(daemon: &Daemon) -> DateTime<Utc> {
    let (_, body) = daemon.get("/health");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["checked_at"].as_str().and_then(|t| t.parse().ok()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_take_turns_agree_share_one_secret_and_take_over_one_killed() {
    let db = TestDb::create().await;
    let smtp = SmtpServer::start();
    let shared = tempfile::tempdir().unwrap();
    let app = shared.path().join("app.db");
    let app_pool = app_db(&app).await;
    // Each replica in its own folder: its own spool and its own (absent) secret file.
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (dir, config) = schedule_dir(&replica_schedule(&db.url, &app, &smtp.url()));
            let daemon = Daemon::start(dir.path(), &config);
            (dir, daemon)
        })
        .collect();
    let pool = db.pool().await;

    // 30 s: every occurrence once, every replica its share.
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        seen = runs(&pool).await;
        if seen.len() >= 15 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM warden.replicas ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(ids.len(), 3, "three live replicas: {ids:?}");
    // Counted from the third occurrence on: the first ones ran before all three were live.
    let counted = &seen[3..];
    for id in &ids {
        let share = counted.iter().filter(|(_, r, _)| r == id).count();
        assert!(share * 5 >= counted.len(), "{id} ran {share} of {}: {seen:?}", counted.len());
    }
    for pair in counted.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 2, "an occurrence missing or doubled: {seen:?}");
    }
    assert!(seen.iter().all(|(_, _, o)| o != "skipped"), "{seen:?}");

    // The peer endpoint answers only to the replicas' shared token.
    let (code, _) = http(replicas[0].1.addr, "GET", "/peer/status", &[], "").unwrap();
    assert_eq!(code, 401, "no token");
    let (code, _) = http(replicas[0].1.addr, "GET", "/peer/states", &[("Authorization", "Bearer wrong")], "").unwrap();
    assert_eq!(code, 401, "a wrong token");
    let token: String = sqlx::query_scalar("SELECT value FROM warden.settings WHERE key = 'peer_token'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let bearer = format!("Bearer {token}");
    let (code, body) = http(replicas[0].1.addr, "GET", "/peer/status", &[("Authorization", &bearer)], "").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"store_up\":true"), "{body}");

    // One answer: every replica's /health shows the fleet's newest snapshot.
    let times: Vec<DateTime<Utc>> = replicas.iter().map(|(_, d)| health_checked_at(d)).collect();
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    // Within one interval: the replica that just ran a probe shows it, the others show it
    // from the store within a heartbeat, or still the one before (2 s older, plus how late
    // each started).
    assert!(spread <= chrono::Duration::milliseconds(2_500), "/health differs by {spread} between replicas: {times:?}");

    // A status change: one admin mail and one notice per subscriber, whichever replica
    // decided; an unsubscribe link from that mail verifies on every replica.
    sqlx::query("DROP TABLE session").execute(&app_pool).await.unwrap();
    let messages = smtp.wait_for(3, Duration::from_secs(30));
    let admin = messages.iter().filter(|m| m.to == ["ops@example.org"]).count();
    assert_eq!(admin, 1, "one admin mail: {:?}", messages.iter().map(|m| &m.to).collect::<Vec<_>>());
    let notice = messages.iter().find(|m| m.to == ["user1@example.org"]).expect("user 1 told");
    let link = notice
        .data
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .and_then(|l| l.strip_suffix('>'))
        .expect("a List-Unsubscribe header")
        .to_owned();
    let path = link.trim_start_matches("http://status.example.org").to_owned();
    for (_, daemon) in &replicas {
        let (code, page) = http(daemon.addr, "GET", &path, &[], "").unwrap();
        assert_eq!(code, 200, "the link verifies on {}: {page}", daemon.addr);
    }
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (code, body) = http(replicas[2].1.addr, "POST", &path, &form, "List-Unsubscribe=One-Click").unwrap();
    assert_eq!(code, 200, "{body}");

    // kill -9 of one replica: within the takeover window the others take its turns, and
    // from then on no occurrence is missing and no run is left `running`.
    let mut replicas = replicas;
    let (_dir, mut killed) = replicas.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let killed_at = Utc::now();
    let window = chrono::Duration::seconds(10);
    let deadline = Instant::now() + Duration::from_secs(40);
    while runs(&pool).await.iter().filter(|(at, ..)| *at > killed_at + window).count() < 5 {
        assert!(Instant::now() < deadline, "no five occurrences after the takeover window: {:?}", runs(&pool).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all = runs(&pool).await;
    let after: Vec<_> = all.iter().filter(|(at, ..)| *at > killed_at + window).collect();
    for pair in after.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 2, "an occurrence missing after the takeover: {all:?}");
    }
    let live: Vec<String> =
        sqlx::query_scalar("SELECT id FROM warden.replicas ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(live.len(), 2, "the killed replica was removed: {live:?}");
    let stuck: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM warden.job_runs WHERE outcome = 'running' AND started_at < now() - interval '5 seconds'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stuck, 0, "no run left running: {all:?}");
    for (_, d) in replicas {
        assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.replicas").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "a clean shutdown leaves the table");
    pool.close().await;
    db.drop_db().await;
}

/// A replica that stopped mid-run (its heartbeat 20 s old, a run still `running`, a mail
/// leased): the live one records the run abandoned and runs the occurrence again, and the
/// leased mail goes out at once instead of after the lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_replica_s_run_is_run_again_and_its_leases_released() {
    let db = TestDb::create().await;
    let smtp = SmtpServer::start();
    let (dir, config) = schedule().state(&db.url).alerts(&smtp.url(), "").job(job("tick", "1h", "pool-stats")).write();
    let daemon = Daemon::start(dir.path(), &config);
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let live: String = loop {
        if let Some(id) = sqlx::query_scalar("SELECT id FROM warden.replicas").fetch_optional(&pool).await.unwrap() {
            break id;
        }
        assert!(Instant::now() < deadline, "no heartbeat: {}", daemon.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let scheduled = Utc::now() - chrono::Duration::seconds(3);
    for (sql, at) in [
        (
            "INSERT INTO warden.replicas (id, started_at, heartbeat_at, listen) VALUES ('ghost', $1, $1, '127.0.0.1:1')",
            Utc::now() - chrono::Duration::seconds(20),
        ),
        (
            "INSERT INTO warden.job_runs (job, scheduled_at, trigger, replica, started_at, outcome) VALUES ('tick', $1, 'schedule', 'ghost', $1, 'running')",
            scheduled,
        ),
        (
            "INSERT INTO warden.outbox (dedup_key, kind, payload, state, next_attempt_at, created_at, claimed_by) VALUES \
          ('ghost:mail', 'email', '{\"kind\":\"email-admin\",\"subject\":\"leased by ghost\",\"body\":\"b\"}', 'pending', $1 + interval '1 minute', $1, 'ghost')",
            Utc::now(),
        ),
    ] {
        sqlx::query(sql).bind(at).execute(&pool).await.unwrap();
    }
    let seeded = Instant::now();

    // The lease is released: the mail leaves well before the ghost's 60 s lease ends.
    let mail = smtp.wait_for(1, Duration::from_secs(30));
    assert!(mail[0].data.contains("leased by ghost"), "{}", mail[0].data);
    assert!(seeded.elapsed() < Duration::from_secs(40), "sent only after the lease ran out");
    // The run is recorded abandoned and run again by the live replica.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rerun = loop {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT trigger, replica, outcome FROM warden.job_runs WHERE job = 'tick' AND scheduled_at = $1",
        )
        .bind(scheduled)
        .fetch_optional(&pool)
        .await
        .unwrap();
        match row {
            Some(row) if row.2 == "ok" => break row,
            row => assert!(Instant::now() < deadline, "not run again: {row:?}\n{}", daemon.log()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rerun, ("takeover".to_owned(), live, "ok".to_owned()));
    let ghosts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM warden.replicas WHERE id = 'ghost'").fetch_one(&pool).await.unwrap();
    assert_eq!(ghosts, 0, "the stopped replica left the live set");
    let log = daemon.log();
    assert!(log.contains("their runs are recorded abandoned and run again"), "{log}");
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    pool.close().await;
    db.drop_db().await;
}

#[test]
fn a_second_warden_run_on_one_sqlite_state_is_refused() {
    let (dir, config) = schedule().job(job("tick", "1s", "pool-stats")).write();
    let first = Daemon::start(dir.path(), &config);
    let out = std::process::Command::new(crate::support::warden_bin())
        .args(["run", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("another `warden run`") && stderr.contains("only one process"), "{stderr}");
    assert!(stderr.contains(&first.child.id().to_string()), "names the holder: {stderr}");
    assert_eq!(first.terminate(Duration::from_secs(15)), Some(0));
}

/// One decision of policy `p` for job `probe` at `at`, as an evaluation that read
/// `read_mark` would make it: `status` written, and a "down" mail when `mail` is set.
fn decided(id: i64, at: DateTime<Utc>, status: &str, mail: bool, read_mark: &str) -> warden::store::RunCommit {
    use warden::store::{Decision, NewOutboxRow, RunCommit};
    let outbox = mail
        .then(|| NewOutboxRow {
            kind: warden::base::OutboxKind::Email,
            dedup_key: format!("p:probe:{}:0", at.timestamp_millis()),
            payload: serde_json::json!({ "kind": "email-admin", "subject": "down", "body": "down" }).to_string(),
            recipient: None,
        })
        .into_iter()
        .collect();
    let state_writes = [("last_status".to_owned(), Some(status.to_owned()))].into_iter().collect();
    let decision = Decision { policy: "p".into(), state_writes, outbox, read_mark: Some(read_mark.to_owned()) };
    RunCommit { run_id: Some(id), scheduled_at: at, ..RunCommit::ok("probe", vec![decision]) }
}

/// Runs holding every connection of the store's pool do not stop the heartbeat (it has a
/// connection of its own), so a busy replica never looks stopped to the others.
#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_is_recorded_while_runs_hold_every_connection() {
    use warden::config::{DbUrl, StateConfig};
    use warden::db::Pool;
    use warden::store::StateStore;
    let db = TestDb::create().await;
    let store = StateStore::open(&StateConfig { url: DbUrl::Postgres(db.url.clone()), pool: 2 }).await.unwrap();
    let Pool::Postgres(pool) = store.pool() else { unreachable!() };
    let held = [pool.begin().await.unwrap(), pool.begin().await.unwrap()];

    // A claim has no connection to run on...
    let claim = tokio::time::timeout(Duration::from_secs(1), store.claim("probe", Utc::now(), "schedule")).await;
    assert!(claim.is_err(), "the pool is full, so the claim waits: {claim:?}");
    // ...while the heartbeat is recorded at once, and so is a takeover round.
    let beat = tokio::time::timeout(Duration::from_secs(2), store.heartbeat("127.0.0.1:1", Duration::from_secs(10)))
        .await
        .expect("the heartbeat did not wait for the pool")
        .unwrap();
    assert_eq!(beat.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [store.replica()]);
    tokio::time::timeout(Duration::from_secs(2), store.take_over_stopped(Duration::from_secs(10)))
        .await
        .expect("the takeover round did not wait for the pool")
        .unwrap();
    let admin = db.pool().await;
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.replicas WHERE listen = '127.0.0.1:1'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
    drop(held);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_apply_in_occurrence_order_and_never_from_a_state_passed_by() {
    use warden::config::{DbUrl, StateConfig};
    use warden::store::{DECIDED_KEY, RunCommit, StateStore};
    let db = TestDb::create().await;
    let store = StateStore::open(&StateConfig { url: DbUrl::Postgres(db.url.clone()), pool: 2 }).await.unwrap();
    let t0 = Utc::now();
    let at = |k: i64| t0 + chrono::Duration::seconds(2 * k);
    let mut ids = Vec::new();
    for k in 0..4 {
        ids.push(store.claim("probe", at(k), "schedule").await.unwrap().unwrap());
    }
    let status = || async { store.policy_state("p", "probe").await.unwrap().get("last_status").cloned() };
    let mails = || async { store.outbox().await.unwrap().len() };

    // Occurrence 1 decided nothing to write (a plain run) and committed first; occurrence
    // 0, hanging until now, then finds the target down: too late, dropped whole.
    let plain = RunCommit {
        run_id: Some(ids[1]),
        scheduled_at: at(1),
        ..RunCommit::ok(
            "probe",
            vec![warden::store::Decision {
                policy: "p".into(),
                state_writes: Default::default(),
                outbox: Vec::new(),
                read_mark: Some(String::new()),
            }],
        )
    };
    store.commit(&plain).await.unwrap();
    store.commit(&decided(ids[0], at(0), "error", true, "")).await.unwrap();
    assert_eq!(status().await, None, "an older occurrence does not move the state");
    assert_eq!(mails().await, 0, "nor send anything");

    // Occurrences 2 and 3 both read the state occurrence 1 left; 2 decides "down" first, so
    // 3's "down", decided from a state that is gone, is dropped: one mail, not two.
    let mark = store.policy_state("p", "probe").await.unwrap().get(DECIDED_KEY).cloned().unwrap();
    store.commit(&decided(ids[2], at(2), "error", true, &mark)).await.unwrap();
    store.commit(&decided(ids[3], at(3), "error", true, &mark)).await.unwrap();
    assert_eq!(status().await.as_deref(), Some("error"));
    assert_eq!(mails().await, 1, "one down mail");
    // Every run's end is recorded all the same.
    let finished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.job_runs WHERE outcome = 'ok'")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(finished, 4);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_store_outage_three_replicas_send_one_down_and_one_recovered() {
    let db = TestDb::create().await;
    // State store and target on one PostgreSQL, reached through a proxy the test cuts.
    let proxy = crate::support::Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let smtp = SmtpServer::start();
    let subscribers = "[alerts.subscribers]\nquery = \"SELECT id, email FROM users WHERE status_alerts = TRUE ORDER BY id\"\n\
                       opt_out = \"UPDATE users SET status_alerts = false WHERE id = $1::bigint\"\n\
                       signing_secret_file = \".warden/signing-secret\"";
    let body = schedule()
        .product("MNW")
        .target(&url, "demo_schema = true")
        .state(&url)
        .alerts(&smtp.url(), FAST_RETRY)
        .table(subscribers)
        .job(outage_probe(&[r#"{ name = "db", kind = "db", critical = true, timeout = "1s" }"#]))
        .table(status_alert_policy())
        .to_string();
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (dir, config) = schedule_dir(&body);
            let daemon = Daemon::start(dir.path(), &config);
            (dir, daemon)
        })
        .collect();
    let pool = db.pool().await;
    let ok_runs = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM warden.job_runs WHERE outcome = 'ok'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.replicas").fetch_one(&pool).await.unwrap();
        if live == 3 && ok_runs(pool.clone()).await >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "three replicas running the probe");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(smtp.count(), 0, "the first operational status is not told");

    proxy.cut();
    let logs = |replicas: &[(tempfile::TempDir, Daemon)]| {
        replicas.iter().map(|(_, d)| d.log()).collect::<Vec<_>>().join("\n=====\n")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.count() < 1 {
        assert!(Instant::now() < deadline, "no down mail during the outage:\n{}", logs(&replicas));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down = smtp.messages();
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.restore();
    let both = smtp.wait_for(2, Duration::from_secs(40));
    // Proof of progress after the outage: four more good runs, then nothing else was sent.
    let after = ok_runs(pool.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while ok_runs(pool.clone()).await < after + 4 {
        assert!(Instant::now() < deadline, "the probe runs again after the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let subjects: Vec<String> = smtp
        .messages()
        .iter()
        .filter(|m| m.to == ["ops@example.org"])
        .map(|m| {
            let parsed = mail_parser::MessageParser::default().parse(m.data.as_bytes()).unwrap();
            parsed.subject().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        subjects,
        ["MNW down — critical service failure", "MNW recovered — all services operational"],
        "one down and one recovered mail from three replicas: {subjects:?}\n{}",
        replicas.iter().map(|(_, d)| d.log()).collect::<Vec<_>>().join("\n=====\n")
    );
    assert!(down.iter().any(|m| m.to == ["ops@example.org"]));
    assert!(both.len() >= 2);
    // Each opted-in subscriber is told once per change at most (a notice overtaken by the
    // next change is superseded), and told the recovery.
    let told_each = |smtp: &SmtpServer| {
        ["ada@example.org", "linus@example.org"].iter().all(|u| smtp.messages().iter().any(|m| m.to == [*u]))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !told_each(&smtp) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for user in ["ada@example.org", "linus@example.org"] {
        let mut told: Vec<String> = smtp
            .messages()
            .iter()
            .filter(|m| m.to == [user])
            .map(|m| {
                let parsed = mail_parser::MessageParser::default().parse(m.data.as_bytes()).unwrap();
                parsed.subject().unwrap_or_default().to_owned()
            })
            .collect();
        assert!(!told.is_empty(), "{user} was told");
        let n = told.len();
        told.sort();
        told.dedup();
        assert_eq!(told.len(), n, "{user} told twice: {told:?}");
    }
    // One critical ticket (written as a file where no ticket URL is set), whichever
    // replica opened it.
    let events: Vec<serde_json::Value> = replicas
        .iter()
        .flat_map(|(dir, _)| std::fs::read_dir(dir.path().join("tickets")).into_iter().flatten().flatten())
        .map(|f| serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap())
        .collect();
    let opened: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "opened").collect();
    assert_eq!(opened.len(), 1, "one ticket from three replicas: {events:#?}");
    // And the recovery resolved it, once, by its key.
    let resolved: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "resolved").collect();
    assert_eq!(resolved.len(), 1, "{events:#?}");
    assert_eq!(resolved[0]["dedup_key"], opened[0]["dedup_key"]);
    // The spools moved in, and the store holds the outage's decisions once.
    for (dir, _) in &replicas {
        let spool = std::fs::read_to_string(dir.path().join(".warden/spool.jsonl")).unwrap_or_default();
        assert!(spool.is_empty(), "{spool}");
    }
    let mails: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM warden.outbox WHERE kind = 'email'").fetch_one(&pool).await.unwrap();
    assert_eq!(mails, 2, "the outbox holds the two mails once each");
    // The ticket's key is the occurrence's (policy, job, status, scheduled time): one row.
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT dedup_key FROM warden.outbox WHERE kind = 'ticket' AND dedup_key NOT LIKE 'resolve:%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(keys.len(), 1, "one ticket row (besides its resolve): {keys:?}");
    let occurrence: i64 = keys[0].rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        runs(&pool).await.iter().any(|(at, _, _)| at.timestamp_millis() == occurrence),
        "keyed by an occurrence's scheduled time, not the wall clock: {keys:?}"
    );
    for (_, d) in replicas {
        assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    }
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_paused_across_a_change_and_resumed_in_an_outage_sends_nothing_stale() {
    let db = TestDb::create().await;
    let proxy = crate::support::Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE public.session (id TEXT)").execute(&pool).await.unwrap();
    let smtp = SmtpServer::start();
    let checks = [
        r#"{ name = "db", kind = "db", critical = true, timeout = "1s" }"#,
        r#"{ name = "sessions", kind = "sql", query = "SELECT COUNT(*) FROM public.session", timeout = "1s" }"#,
    ];
    let body = schedule()
        .product("MNW")
        .target(&url, "")
        .state(&url)
        .alerts(&smtp.url(), FAST_RETRY)
        .job(outage_probe(&checks))
        .table(status_alert_policy())
        .to_string();
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (dir, config) = schedule_dir(&body);
            let daemon = Daemon::start(dir.path(), &config);
            (dir, daemon)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids: Vec<String> = loop {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM warden.replicas ORDER BY id").fetch_all(&pool).await.unwrap();
        let ok: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.job_runs WHERE outcome = 'ok'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if ids.len() == 3 && ok >= 4 {
            break ids;
        }
        assert!(Instant::now() < deadline, "three replicas running the probe");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The replica that would lead an outage (the lowest id; ids end in -pid-xxxx) is paused.
    let paused = replicas.iter().find(|(_, d)| ids[0].contains(&format!("-{}-", d.child.id()))).unwrap();
    paused.1.signal("STOP");
    // A change while it sleeps: the sessions table goes, the others tell "partly unavailable".
    sqlx::query("DROP TABLE public.session").execute(&pool).await.unwrap();
    let subjects = |smtp: &SmtpServer| -> Vec<String> {
        smtp.messages()
            .iter()
            .map(|m| {
                let parsed = mail_parser::MessageParser::default().parse(m.data.as_bytes()).unwrap();
                parsed.subject().unwrap_or_default().to_owned()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.count() < 1 {
        assert!(Instant::now() < deadline, "no degraded mail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then the store (and the target with it) goes away, and the sleeper wakes in the outage
    // with the state it had before the change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    paused.1.signal("CONT");
    tokio::time::sleep(Duration::from_secs(16)).await;
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(40);
    while smtp.count() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Four more runs after the outage, then what was sent is final.
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.job_runs").fetch_one(&pool).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warden.job_runs").fetch_one(&pool).await.unwrap();
        if n >= after + 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the probe runs again after the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = subjects(&smtp);
    let logs = replicas.iter().map(|(_, d)| d.log()).collect::<Vec<_>>().join("\n=====\n");
    // Operational → degraded (the change) → error (the outage) → degraded (the store back,
    // the table still gone): each change told once, nothing from the sleeper's old state.
    assert_eq!(
        sent,
        [
            "MNW degraded — partial service failure",
            "MNW down — critical service failure",
            "MNW degraded — partial service failure",
        ],
        "{sent:?}\n{logs}"
    );
    for (_, d) in replicas {
        assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    }
    pool.close().await;
    db.drop_db().await;
}
