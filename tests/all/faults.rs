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
