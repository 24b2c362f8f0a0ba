//! End to end: the binary, real PostgreSQL cut off by a proxy, the spool and silences.

use std::time::Duration;

use crate::policies::status_alert_policy;
use crate::schedule::{probe, schedule};
use crate::smtp_server::SmtpServer;
use crate::support::{Daemon, TestDb, http, schedule_dir, wait_for};

use super::{pg_proxy, read, subjects};

fn probe_schedule(target: &str, state: &str, smtp: &str, extra_alerts: &str) -> String {
    let alerts = format!(
        "from = \"MNW status <warden@example.org>\"\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\n{extra_alerts}"
    );
    let db = r#"{ name = "db", kind = "db", critical = true, timeout = "1s" }"#;
    schedule()
        .product("MNW")
        .target(target, "")
        .state(state)
        .alerts(smtp, &alerts)
        .job(probe("health-probe", "1s", &[db]).with("timeout = \"5s\""))
        .table(status_alert_policy())
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_down_and_back_sends_the_down_mail_then_the_recovery_and_nothing_else() {
    let db = TestDb::create().await;
    let (proxy, target) = pg_proxy(&db);
    let smtp = SmtpServer::start();
    let (dir, config) = schedule_dir(&probe_schedule(&target, "sqlite://state.db", &smtp.url(), ""));
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
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
    daemon.wait_operational(Duration::from_secs(20));
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
    daemon.wait_operational(Duration::from_secs(20));

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
