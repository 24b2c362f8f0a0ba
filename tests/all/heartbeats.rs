//! Heartbeat (push) monitors through the binary: OK while pinged, a wrong token refused and
//! not counted, an alert mail naming the job after the deadline, the recovery after the next
//! ping, across a restart; the admin API lists the pings.

use std::time::Duration;

use crate::schedule::{policy, schedule};
use crate::smtp_server::SmtpServer;
use crate::support::{Daemon, http, wait_for};

const TOKEN: &str = "backup-token-0123456789";
const ADMIN: &str = "heartbeat-admin-token-0123456789";

fn subjects(smtp: &SmtpServer) -> Vec<String> {
    crate::delivery::subjects(&smtp.messages())
}

fn text(m: &crate::smtp_server::Received) -> String {
    crate::delivery::read(m).text
}

fn ping(daemon: &Daemon, path: &str, token: &str, body: &str) -> u16 {
    http(daemon.addr, "POST", path, &[("Authorization", &format!("Bearer {token}"))], body).unwrap().0
}

#[test]
fn a_heartbeat_is_ok_while_pinged_alerts_after_its_deadline_and_recovers_with_the_next_ping() {
    let smtp = SmtpServer::start();
    let component = crate::policies::plugins_dir().join("status-alert.wasm");
    let (dir, path) = schedule()
        .product("MNW")
        .alerts(&smtp.url(), "backoff = \"100ms\"")
        .table(format!(
            "[[job]]\nname = \"backup\"\ntask = \"heartbeat\"\nperiod = \"2s\"\ngrace = \"1s\"\ntoken = \"{TOKEN}\"\n"
        ))
        .table(policy("status-alert", &component, &["backup"], r#"config = { cooldown = "0s" }"#))
        .write();
    let env = [("WARDEN_ADMIN_TOKEN", ADMIN)];
    let daemon = Daemon::start_with_env(dir.path(), &path, &env);
    // Before the first ping nothing is told: a new monitor is not down.
    daemon.wait_runs("backup", 2);
    assert!(subjects(&smtp).is_empty(), "{:?}", subjects(&smtp));

    assert_eq!(ping(&daemon, "/ping/backup", "wrong-token-0123456789", "x"), 401, "a wrong token");
    assert_eq!(http(daemon.addr, "POST", "/ping/backup", &[], "").unwrap().0, 401, "no token");
    let (_, listed) =
        http(daemon.addr, "GET", "/admin/heartbeats", &[("Authorization", &format!("Bearer {ADMIN}"))], "").unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"][0]["job"], "backup");
    assert!(listed["items"][0]["pings"].is_null(), "refused pings do not count: {listed}");
    assert_eq!(ping(&daemon, "/ping/unknown", TOKEN, ""), 404);

    // Pinged every second: operational, nothing told.
    for _ in 0..4 {
        assert_eq!(ping(&daemon, "/ping/backup", TOKEN, "backup done: 3 GB"), 200);
        std::thread::sleep(Duration::from_millis(700));
    }
    let (_, health) = daemon.get("/badge/backup.json");
    assert!(health.contains("operational"), "{health}");
    assert!(subjects(&smtp).is_empty(), "{:?}", subjects(&smtp));
    let (_, listed) =
        http(daemon.addr, "GET", "/admin/heartbeats", &[("Authorization", &format!("Bearer {ADMIN}"))], "").unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"][0]["pings"]["pings"], 4, "{listed}");
    assert_eq!(listed["items"][0]["pings"]["last_body"], "backup done: 3 GB");

    // No ping for longer than period + grace: the down mail names the job.
    let down = wait_for(Duration::from_secs(30), "the down mail", || {
        subjects(&smtp).into_iter().find(|s| s.starts_with("MNW down"))
    });
    assert_eq!(down, "MNW down — critical service failure");
    let body = text(&smtp.messages()[0]);
    assert!(body.contains("Job: backup") && body.contains("no ping since"), "{body}");

    // Restarted while down: the state is kept; the next ping tells the recovery at once.
    // (Stopped with SIGTERM: a kill between sending the mail and recording it would send it
    // again, as at-least-once delivery must.)
    daemon.terminate(Duration::from_secs(30));
    let daemon = Daemon::start_with_env(dir.path(), &path, &env);
    daemon.wait_runs("backup", 2);
    assert_eq!(subjects(&smtp).len(), 1, "not told again after the restart: {:?}", subjects(&smtp));
    assert_eq!(ping(&daemon, "/ping/backup", TOKEN, ""), 200);
    let up = wait_for(Duration::from_secs(10), "the recovery mail", || {
        subjects(&smtp).into_iter().find(|s| s.starts_with("MNW recovered"))
    });
    assert_eq!(up, "MNW recovered — all services operational");

    // A failure reported by the job itself is an error too, with what it said.
    assert_eq!(ping(&daemon, "/ping/backup/fail", TOKEN, "disk full"), 200);
    wait_for(Duration::from_secs(10), "the second down mail", || {
        (subjects(&smtp).iter().filter(|s| s.starts_with("MNW down")).count() == 2).then_some(())
    });
    let last = text(smtp.messages().last().unwrap());
    assert!(last.contains("reported failure") && last.contains("disk full"), "{last}");
}

/// Two replicas on one PostgreSQL store: pings to one of them keep the heartbeat OK whichever
/// replica checks its deadline; once they stop, one down mail; a ping to the other replica
/// tells one recovery.
#[test]
fn a_ping_to_any_replica_counts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let smtp = SmtpServer::start();
    let component = crate::policies::plugins_dir().join("status-alert.wasm");
    let text = schedule()
        .product("MNW")
        .state(&db.url)
        .alerts(&smtp.url(), "backoff = \"100ms\"")
        .table(format!(
            "[[job]]\nname = \"backup\"\ntask = \"heartbeat\"\nperiod = \"2s\"\ngrace = \"1s\"\ntoken = \"{TOKEN}\"\n"
        ))
        .table(policy("status-alert", &component, &["backup"], r#"config = { cooldown = "0s" }"#))
        .to_string();
    let (dir_a, path_a) = crate::support::schedule_dir(&text);
    let (dir_b, path_b) = crate::support::schedule_dir(&text);
    let a = Daemon::start(dir_a.path(), &path_a);
    let b = Daemon::start(dir_b.path(), &path_b);
    let (a_before, b_before) = (a.runs("backup"), b.runs("backup"));
    for _ in 0..8 {
        assert_eq!(ping(&b, "/ping/backup", TOKEN, ""), 200);
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(subjects(&smtp).is_empty(), "pinged through b, checked by either: {:?}", subjects(&smtp));
    assert!(a.runs("backup") > a_before, "a checked the deadline too, from b's pings");
    assert!(b.runs("backup") > b_before);
    wait_for(Duration::from_secs(30), "the down mail", || {
        subjects(&smtp).iter().any(|s| s.starts_with("MNW down")).then_some(())
    });
    assert_eq!(ping(&a, "/ping/backup", TOKEN, ""), 200);
    wait_for(Duration::from_secs(15), "the recovery mail", || {
        subjects(&smtp).iter().any(|s| s.starts_with("MNW recovered")).then_some(())
    });
    // (Within the next deadline: unpinged, it would be down again in 3 s.)
    let told = subjects(&smtp);
    assert_eq!(told.iter().filter(|s| s.starts_with("MNW down")).count(), 1, "{told:?}");
    assert_eq!(told.iter().filter(|s| s.starts_with("MNW recovered")).count(), 1, "{told:?}");
    drop((a, b));
    rt.block_on(db.drop_db());
}
