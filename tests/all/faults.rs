//! The faults production brings, each tried on the real binary with one assertion of
//! "nothing lost, nothing doubled": the wall clock stepping (libfaketime, Debian's
//! `faketime`, steps the clock of the one process), a full disk (a tmpfs of a few pages)
//! under the state store and under the spool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schedule::{DB, probe, schedule};
use crate::support::{Daemon, wait_for};

/// Debian's libfaketime, from `WARDEN_TEST_FAKETIME` (scripts/test-services.sh installs it).
fn libfaketime() -> String {
    let lib = std::env::var("WARDEN_TEST_FAKETIME")
        .unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".to_owned());
    assert!(Path::new(&lib).exists(), "no libfaketime at {lib}: scripts/test-services.sh installs Debian's `faketime`");
    lib
}

/// The process's clock offset, in a file libfaketime reads on every call; written whole.
struct FakeClock(PathBuf);

impl FakeClock {
    fn new(dir: &Path) -> FakeClock {
        let clock = FakeClock(dir.join("faketime"));
        clock.set("+0");
        clock
    }

    /// `-3600`: an hour behind the real clock.
    fn set(&self, offset: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", libfaketime()),
            ("FAKETIME_TIMESTAMP_FILE", self.0.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    }
}

fn start_with(dir: &Path, config: &Path, env: &[(&'static str, String)]) -> Daemon {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start_with_env(dir, config, &env)
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn the_wall_clock_stepping_back_then_forward_neither_stalls_nor_runs_an_occurrence_twice() {
    let (dir, config) = schedule()
        .state("sqlite://warden-state.db")
        .target("sqlite://target.db", "")
        .job(probe("probe", "1s", &[DB]))
        .write();
    let clock = FakeClock::new(dir.path());
    let daemon = start_with(dir.path(), &config, &clock.env());
    daemon.wait_runs("probe", 3);

    // NTP sets the clock back an hour: the occurrences of the last hour ran already.
    clock.set("-3600");
    wait_for(Duration::from_secs(10), "the step back logged", || {
        daemon.log().contains("the wall clock stepped back 1h 0m 0.0s").then_some(())
    });
    daemon.wait_runs("probe", 5);
    // And forward again, to the real time.
    clock.set("+0");
    wait_for(Duration::from_secs(10), "the step forward logged", || {
        daemon.log().contains("the wall clock stepped forward 1h 0m 0.0s").then_some(())
    });
    daemon.wait_runs("probe", 5);

    let metrics = daemon.get("/metrics").1;
    assert_eq!(counter(&metrics, "warden_clock_steps_total{direction=\"back\"}"), 1.0, "{metrics}");
    assert_eq!(counter(&metrics, "warden_clock_steps_total{direction=\"forward\"}"), 1.0, "{metrics}");
    let log = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("already claimed"), "an occurrence was tried twice:\n{log}");
    // Every period one occurrence, each after the one before: none lost, none twice.
    let runs: Vec<_> = sqlite_runs(dir.path(), "probe").into_iter().map(|(at, ..)| at).collect();
    assert!(runs.len() >= 13, "{runs:?}");
    for pair in runs.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_milliseconds(), 1000, "a gap or a repeat: {runs:?}");
    }
}

#[test]
fn a_replica_whose_clock_is_off_from_the_store_s_says_so_in_the_log_health_and_metrics() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let (dir, config) =
        schedule().state(&db.url).target("sqlite://target.db", "").job(probe("probe", "1s", &[DB])).write();
    let clock = FakeClock::new(dir.path());
    clock.set("+7");
    let daemon = start_with(dir.path(), &config, &clock.env());
    let health = wait_for(Duration::from_secs(20), "the skew in /health", || {
        let (_, body) = daemon.get("/health");
        body.contains("clock_warning").then_some(body)
    });
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let skew = health["clock_skew_seconds"].as_f64().unwrap();
    assert!((6.0..8.0).contains(&skew), "{health}");
    assert_eq!(health["clock_warning"], format!("this replica's clock is {skew:.1}s ahead of the state store's"));
    let metrics = daemon.get("/metrics").1;
    assert!((6.0..8.0).contains(&counter(&metrics, "warden_clock_skew_seconds")), "{metrics}");
    assert!(daemon.log().contains("ahead of the state store's"), "{}", daemon.log());

    // Set right, it says so once and /health drops the warning.
    clock.set("+0");
    wait_for(Duration::from_secs(20), "the clocks agreeing", || {
        (!daemon.get("/health").1.contains("clock_warning")).then_some(())
    });
    assert!(daemon.log().contains("agrees with the state store's again"));
    drop(daemon);
    rt.block_on(db.drop_db());
}

/// A tmpfs of a given size mounted for one test (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None`, with a message saying why, where this machine cannot mount one.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} (root only): {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Space returns: the same filesystem, bigger.
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn gauge(metrics: &str, series: &str) -> f64 {
    counter(metrics, series)
}

/// Finished runs per job as the log tells them (`job finished` / `job failed`).
fn logged_runs(log: &str, job: &str) -> usize {
    let needle = format!(" job={job} outcome=");
    log.lines().filter(|l| (l.contains("job finished") || l.contains("job failed")) && l.contains(&needle)).count()
}

/// Five probes and `orders` every second on a state store whose disk fills (and, with
/// `spool_full`, on a spool whose disk is full too); `orders` goes down while it is full.
/// The down mail goes out once, from the spool; when space returns every run is moved in once.
fn a_full_disk(spool_full: bool) {
    let (dir, config) = schedule().write();
    let Some(state) = Tmpfs::mount(&dir.path().join("state"), "1m") else { return };
    let spool = if spool_full {
        match Tmpfs::mount(&dir.path().join(".warden"), "16k") {
            Some(t) => Some(t),
            None => return,
        }
    } else {
        None
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let orders = format!(
        r#"{{ name = "api", kind = "tcp", address = "{}", critical = true, timeout = "500ms" }}"#,
        listener.local_addr().unwrap()
    );
    let mut text = schedule()
        .product("MNW")
        .state(&format!("sqlite://{}/warden-state.db", state.0.display()))
        .target("sqlite://target.db", "")
        .alerts("", "backoff = \"200ms\"")
        .job(probe("orders", "1s", &[&orders]))
        .table(crate::schedule::policy(
            "status-alert",
            &crate::policies::plugins_dir().join("status-alert.wasm"),
            &["orders"],
            "config = { cooldown = \"0s\" }",
        ));
    for i in 0..5 {
        text = text.job(probe(&format!("p{i}"), "1s", &[DB]));
    }
    std::fs::write(&config, text.to_string()).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(60), "the state store's disk to fill", || {
        daemon.log().contains("the state store's disk is full").then_some(())
    });
    if spool_full {
        wait_for(Duration::from_secs(60), "the spool's disk to fill", || {
            daemon.log().contains("could not write the spool (disk full)").then_some(())
        });
    }
    // Down while nothing can be written: the mail still goes out, from the spool.
    drop(listener);
    let mail = dir.path().join("mail");
    let mails = || std::fs::read_dir(&mail).map(|d| d.count()).unwrap_or(0);
    wait_for(Duration::from_secs(30), "the down mail", || (mails() == 1).then_some(()));
    let metrics = daemon.get("/metrics").1;
    assert_eq!(gauge(&metrics, "warden_disk_full{file=\"state\"}"), 1.0, "{metrics}");
    if spool_full {
        assert_eq!(gauge(&metrics, "warden_disk_full{file=\"spool\"}"), 1.0, "{metrics}");
        assert!(counter(&metrics, "warden_runs_unstored_total") > 0.0, "{metrics}");
    }

    // Space returns: what the spool held moves in, once.
    if let Some(spool) = &spool {
        spool.resize("8m");
    }
    state.resize("16m");
    wait_for(Duration::from_secs(30), "the spool to drain", || {
        let metrics = daemon.get("/metrics").1;
        (daemon.log().contains("spool drained into the state store")
            && gauge(&metrics, "warden_spool_runs") == 0.0
            && gauge(&metrics, "warden_disk_full{file=\"state\"}") == 0.0)
            .then_some(())
    });
    daemon.wait_runs("orders", 2);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();

    assert_eq!(mails(), 1, "one down mail, sent once:\n{log}");
    let aside: Vec<_> = std::fs::read_dir(dir.path().join(".warden"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("rejected"))
        .collect();
    assert!(aside.is_empty(), "runs set aside: {aside:?}\n{log}");
    // Nothing lost, nothing doubled: every run the log tells of is in job_runs, once.
    for job in ["orders", "p0", "p1", "p2", "p3", "p4"] {
        assert_every_run_stored_once(job, &[&log], &sqlite_runs(&state.0, job));
    }
    let emails: i64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = state.0.join("warden-state.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = 'email' AND state = 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    assert_eq!(emails, 1, "the mail sent from the spool is recorded delivered, not sent again");
}

#[test]
fn a_full_disk_under_the_state_store_is_an_outage_by_its_name_and_loses_nothing() {
    a_full_disk(false);
}

#[test]
fn a_full_disk_under_the_spool_too_keeps_the_runs_in_memory_says_so_and_loses_nothing() {
    a_full_disk(true);
}

/// `n` probes every second on the SQLite state beside the schedule.
fn probes_on_sqlite(n: usize) -> crate::schedule::Schedule {
    let mut s = schedule().state("sqlite://warden-state.db").target("sqlite://target.db", "");
    for i in 0..n {
        s = s.job(probe(&format!("p{i}"), "1s", &[DB]));
    }
    s
}

/// (scheduled_at, outcome, error) of `job` in the PostgreSQL store at `url`.
fn pg_runs(url: &str, job: &str) -> Vec<(chrono::DateTime<chrono::Utc>, String, Option<String>)> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows =
            sqlx::query_as("SELECT scheduled_at, outcome, error FROM warden.job_runs WHERE job = $1 ORDER BY id")
                .bind(job)
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows
    })
}

/// (scheduled_at, outcome, error) of `job` in the SQLite store in `dir`.
fn sqlite_runs(dir: &Path, job: &str) -> Vec<(chrono::DateTime<chrono::Utc>, String, Option<String>)> {
    let db = dir.join("warden-state.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_as("SELECT scheduled_at, outcome, error FROM job_runs WHERE job = $1 ORDER BY id")
            .bind(job)
            .fetch_all(&pool)
            .await
            .unwrap()
    })
}

/// Nothing lost, nothing doubled: every run the logs tell of is stored, no occurrence is
/// stored twice, none is left `running`.
fn assert_every_run_stored_once(
    job: &str,
    logs: &[&str],
    stored: &[(chrono::DateTime<chrono::Utc>, String, Option<String>)],
) {
    let keys: std::collections::HashSet<_> = stored.iter().map(|(at, ..)| at).collect();
    assert_eq!(keys.len(), stored.len(), "{job}: an occurrence stored twice: {stored:?}");
    assert!(!stored.iter().any(|(_, outcome, _)| outcome == "running"), "{job}: left running: {stored:?}");
    let finished = stored.iter().filter(|(_, outcome, error)| {
        outcome != "skipped" && !error.as_deref().is_some_and(|e| e.contains("abandoned"))
    });
    let logged: usize = logs.iter().map(|log| logged_runs(log, job)).sum();
    assert!(finished.count() >= logged, "{job}: {logged} runs logged, fewer stored: {stored:?}");
}

#[test]
fn sigstop_for_30_seconds_then_resume_runs_the_missed_stretch_once_and_goes_on() {
    let (dir, config) = probes_on_sqlite(20).write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_runs("p0", 3);
    daemon.signal("STOP");
    // The fault is the fixed window: 30 s without the process running.
    std::thread::sleep(Duration::from_secs(30));
    daemon.signal("CONT");
    wait_for(Duration::from_secs(5), "/health after the resume", || (daemon.get("/health").0 == 200).then_some(()));
    daemon.wait_runs("p0", 3);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.contains("the wall clock stepped"), "a stop is not a clock step:\n{log}");
    for i in 0..20 {
        let job = format!("p{i}");
        let stored = sqlite_runs(dir.path(), &job);
        assert_every_run_stored_once(&job, &[&log], &stored);
        // The stretch missed while stopped fires once, then the schedule goes on: no storm
        // (the next occurrence may find that one still running, and be skipped).
        let mut ran: Vec<_> =
            stored.iter().filter(|(_, outcome, _)| outcome != "skipped").map(|(at, ..)| *at).collect();
        ran.sort();
        let long_gaps = ran.windows(2).filter(|w| (w[1] - w[0]).num_seconds() > 10).count();
        assert_eq!(long_gaps, 1, "{job}: {stored:?}");
    }
}

#[test]
fn kill_9_in_the_middle_of_group_commits_loses_and_doubles_nothing() {
    let (dir, config) = probes_on_sqlite(60).write();
    let mut first = Daemon::start(dir.path(), &config);
    first.wait_runs("p0", 4);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let first_log = first.log();
    drop(first);
    let second = Daemon::start(dir.path(), &config);
    second.wait_runs("p0", 3);
    let log_path = second.log.clone();
    assert_eq!(second.terminate(Duration::from_secs(15)), Some(0));
    let second_log = std::fs::read_to_string(log_path).unwrap();
    for i in 0..60 {
        let job = format!("p{i}");
        assert_every_run_stored_once(&job, &[&first_log, &second_log], &sqlite_runs(dir.path(), &job));
    }
}

#[test]
fn a_schedule_reloaded_during_a_store_outage_runs_and_everything_moves_in_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let proxy = crate::support::Proxy::start("127.0.0.1:5432".parse().unwrap());
    let state_url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let base = schedule().state(&state_url).target("sqlite://target.db", "").job(probe("a", "1s", &[DB]));
    let (dir, config) = base.write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_runs("a", 2);
    proxy.cut();
    wait_for(Duration::from_secs(20), "the outage", || daemon.log().contains("run spooled").then_some(()));
    std::fs::write(&config, base.job(probe("b", "1s", &[DB])).to_string()).unwrap();
    wait_for(Duration::from_secs(20), "the reload", || daemon.log().contains("configuration reloaded").then_some(()));
    daemon.wait_runs("b", 3);
    proxy.restore();
    wait_for(Duration::from_secs(30), "the spool to drain", || {
        (daemon.log().contains("spool drained into the state store")
            && gauge(&daemon.get("/metrics").1, "warden_spool_runs") == 0.0)
            .then_some(())
    });
    daemon.wait_runs("b", 2);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    for job in ["a", "b"] {
        let stored = pg_runs(&db.url, job);
        assert!(!stored.is_empty(), "{job}");
        assert_every_run_stored_once(job, &[&log], &stored);
    }
    rt.block_on(db.drop_db());
}

/// Ends every connection to `database` but this one: what a server restart looks like
/// from the client's side.
fn terminate_backends(database: &str) -> u64 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let admin = sqlx::PgPool::connect(&crate::support::pg_admin_url()).await.unwrap();
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(database)
        .fetch_all(&admin)
        .await
        .unwrap();
        let n = ended.into_iter().filter(|e| *e).count() as u64;
        admin.close().await;
        n
    })
}

#[test]
fn the_target_database_restarted_under_the_probes_is_reconnected() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = rt.block_on(crate::support::TestDb::create());
    let sessions = r#"{ name = "q", kind = "sql", query = "SELECT 1" }"#;
    let (dir, config) = schedule()
        .state("sqlite://warden-state.db")
        .target(&target.url, "demo_schema = false")
        .job(probe("probe", "1s", &[DB, sessions]))
        .job(crate::schedule::job("pool", "1s", "pool-stats"))
        .write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
    for _ in 0..2 {
        // Every connection warden holds to the target is cut as soon as it holds one.
        wait_for(Duration::from_secs(15), "warden connected to the target", || {
            (terminate_backends(&target.name) > 0).then_some(())
        });
        daemon.wait_runs("probe", 2);
    }
    // Every connection it held was cut; the probe is operational again on new ones.
    wait_for(Duration::from_secs(15), "an operational probe after the restarts", || {
        let (code, body) = daemon.get("/health");
        (code == 200 && body.contains("\"status\":\"operational\"")).then_some(())
    });
    let before = daemon.runs("probe");
    daemon.wait_runs("probe", 3);
    let stored = sqlite_runs(dir.path(), "probe");
    let last: Vec<_> = stored.iter().rev().take(3).map(|(_, outcome, _)| outcome.as_str()).collect();
    assert_eq!(last, ["ok", "ok", "ok"], "{stored:?}");
    assert!(daemon.runs("probe") >= before + 3);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_every_run_stored_once("probe", &[&log], &sqlite_runs(dir.path(), "probe"));
    rt.block_on(target.drop_db());
}

#[test]
fn the_state_store_restarted_during_group_commits_loses_and_doubles_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let mut s = schedule().state(&db.url).target("sqlite://target.db", "");
    for i in 0..40 {
        s = s.job(probe(&format!("p{i}"), "1s", &[DB]));
    }
    let (dir, config) = s.write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_runs("p0", 3);
    for _ in 0..3 {
        terminate_backends(&db.name);
        daemon.wait_runs("p0", 2);
    }
    wait_for(Duration::from_secs(30), "an empty spool", || {
        (gauge(&daemon.get("/metrics").1, "warden_spool_runs") == 0.0).then_some(())
    });
    daemon.wait_runs("p0", 2);
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    for i in 0..40 {
        let job = format!("p{i}");
        assert_every_run_stored_once(&job, &[&log], &pg_runs(&db.url, &job));
    }
    rt.block_on(db.drop_db());
}

/// A `tcp` check that passes until the returned listener is dropped.
fn flipping_check() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let check = format!(
        r#"{{ name = "api", kind = "tcp", address = "{}", critical = true, timeout = "500ms" }}"#,
        listener.local_addr().unwrap()
    );
    (listener, check)
}

/// (kind, state, attempts) of every outbox row in the SQLite store in `dir`.
fn outbox(dir: &Path) -> Vec<(String, String, i64)> {
    let db = dir.join("warden-state.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_as("SELECT kind, state, attempts FROM outbox ORDER BY id").fetch_all(&pool).await.unwrap()
    })
}

#[test]
fn an_smtp_relay_hanging_mid_data_is_timed_out_and_the_mail_arrives_once() {
    let smtp = crate::smtp_server::SmtpServer::start();
    smtp.stall_next_messages(1);
    let (listener, check) = flipping_check();
    let (dir, config) = schedule()
        .product("MNW")
        .state("sqlite://warden-state.db")
        .target("sqlite://target.db", "")
        .alerts(&smtp.url(), "backoff = \"1s\"")
        .job(probe("health-probe", "1s", &[&check]))
        .table(crate::policies::status_alert_policy())
        .write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
    drop(listener);
    // The first session stalls after a line of the message; warden gives up on it after
    // 30 s, closes the pool's connections (the stalled one with them) and sends again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while smtp.count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no mail after the stall:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(Duration::from_secs(10), "the delivery recorded", || {
        outbox(dir.path()).iter().any(|(kind, state, _)| kind == "email" && state == "delivered").then_some(())
    });
    daemon.wait_runs("health-probe", 3);
    assert_eq!(smtp.count(), 1, "the mail arrives once");
    let email: Vec<_> = outbox(dir.path()).into_iter().filter(|(kind, ..)| kind == "email").collect();
    assert_eq!(email.len(), 1, "{email:?}");
    assert_eq!(email[0].2, 2, "the stalled attempt and the one that went through: {email:?}");
    assert!(daemon.log().contains("will retry"), "{}", daemon.log());
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}

/// An HTTP receiver that answers 500 for `down` from its first request, then 200; keeps the
/// bodies it accepted.
struct FlakyReceiver {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyReceiver {
    fn start(down: Duration) -> FlakyReceiver {
        use std::io::{BufRead, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = FlakyReceiver {
            addr: listener.local_addr().unwrap(),
            accepted: Default::default(),
            refused: Default::default(),
        };
        let (accepted, refused) = (receiver.accepted.clone(), receiver.refused.clone());
        std::thread::spawn(move || {
            let first = std::sync::OnceLock::new();
            for stream in listener.incoming().flatten() {
                let mut input = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if input.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = input.read_exact(&mut body);
                let since = *first.get_or_init(std::time::Instant::now);
                let mut out = stream;
                if since.elapsed() < down {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = out.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                } else {
                    accepted.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                    let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                }
            }
        });
        receiver
    }
}

#[test]
fn a_ticket_webhook_answering_500_for_two_minutes_gets_the_ticket_once_and_the_mail_is_not_held() {
    let receiver = FlakyReceiver::start(Duration::from_secs(120));
    let smtp = crate::smtp_server::SmtpServer::start();
    let (listener, check) = flipping_check();
    // The shipped retry defaults (backoff 5 s, doubling, 10 attempts) outlast two minutes.
    let tickets = format!("[alerts.tickets]\nwebhook = \"http://{}/tickets\"", receiver.addr);
    let (dir, config) = schedule()
        .product("MNW")
        .state("sqlite://warden-state.db")
        .target("sqlite://target.db", "")
        .alerts(&smtp.url(), &tickets)
        .job(probe("health-probe", "1s", &[&check]))
        .table(crate::policies::status_alert_policy())
        .write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
    drop(listener);
    // The mail goes at once; the ticket's retries hold nothing else back.
    smtp.wait_for(1, Duration::from_secs(20));
    wait_for(Duration::from_secs(200), "the ticket accepted after the receiver's two bad minutes", || {
        (!receiver.accepted.lock().unwrap().is_empty()).then_some(())
    });
    wait_for(Duration::from_secs(10), "the ticket recorded delivered", || {
        outbox(dir.path()).iter().any(|(kind, state, _)| kind == "ticket" && state == "delivered").then_some(())
    });
    daemon.wait_runs("health-probe", 3);
    assert_eq!(receiver.accepted.lock().unwrap().len(), 1, "the ticket arrives once");
    let refused = receiver.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(refused >= 4, "retried through the two minutes: {refused} attempts refused");
    assert_eq!(smtp.count(), 1);
    let ticket: Vec<_> = outbox(dir.path()).into_iter().filter(|(kind, ..)| kind == "ticket").collect();
    assert_eq!(ticket.len(), 1, "{ticket:?}");
    assert_eq!(ticket[0].2 as usize, refused + 1, "{ticket:?}");
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}
