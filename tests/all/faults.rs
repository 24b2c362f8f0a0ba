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

/// The scheduled occurrences of `job` in the SQLite store in `dir`, in the order they ran.
fn occurrences(dir: &Path, job: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let db = dir.join("warden-state.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_scalar("SELECT scheduled_at FROM job_runs WHERE job = $1 AND trigger <> 'manual' ORDER BY id")
            .bind(job)
            .fetch_all(&pool)
            .await
            .unwrap()
    })
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
    let runs = occurrences(dir.path(), "probe");
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
        let stored = occurrences(&state.0, job);
        let keys: std::collections::HashSet<_> = stored.iter().collect();
        assert_eq!(keys.len(), stored.len(), "{job}: an occurrence twice");
        assert_eq!(stored.len(), logged_runs(&log, job), "{job}: runs lost\n{log}");
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
