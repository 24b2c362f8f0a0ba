//! The soak benchmark: the real `warden run` (SQLite state, the shipped `status-alert`) on
//! many probe jobs for a long while, with a fault injected every few minutes, in turn:
//! SIGSTOP for 20 s, the wall clock stepped back an hour (libfaketime), stepped forward
//! again, a watched job going down, and coming back. At the end it prints one table: runs,
//! occurrences missed (beyond those a stop skips by design), occurrences and snapshots
//! stored twice, alert mails expected against sent, and RSS and open file descriptors after
//! the warm-up and at the end.
//!
//! `cargo bench -p warden --bench soak` (release): 2,000 jobs every 10 s for an hour, a fault
//! every 4 minutes. `SOAK_JOBS`, `SOAK_PERIOD` (seconds), `SOAK_SECONDS` and `SOAK_FAULT_EVERY`
//! (seconds) change that. Without `--bench` (as `cargo test --all-targets` runs it) it does a
//! 30-second smoke run of 20 jobs every second and fails if anything was lost or doubled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

struct Soak {
    jobs: usize,
    period: u64,
    seconds: u64,
    fault_every: u64,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Stop,
    ClockBack,
    ClockForward,
    Down,
    Up,
}

const FAULTS: [Fault; 5] = [Fault::Stop, Fault::ClockBack, Fault::ClockForward, Fault::Down, Fault::Up];
const STOP: Duration = Duration::from_secs(20);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let soak = if bench {
        Soak {
            jobs: env("SOAK_JOBS", 2000) as usize,
            period: env("SOAK_PERIOD", 10),
            seconds: env("SOAK_SECONDS", 3600),
            fault_every: env("SOAK_FAULT_EVERY", 240),
        }
    } else {
        Soak { jobs: 20, period: 1, seconds: 30, fault_every: 6 }
    };
    let report = run(&soak);
    println!(
        "| jobs | period | seconds | faults | runs | missed | missed by stops | doubled runs | doubled snapshots | alerts expected | alerts sent | RSS start MB | RSS end MB | fds start | fds end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
        soak.jobs,
        soak.period,
        soak.seconds,
        report.faults,
        report.runs,
        report.missed,
        report.missed_by_stops,
        report.doubled_runs,
        report.doubled_snapshots,
        report.alerts_expected,
        report.alerts_sent,
        report.rss.0,
        report.rss.1,
        report.fds.0,
        report.fds.1
    );
    assert_eq!(report.doubled_runs + report.doubled_snapshots, 0, "something stored twice");
    assert_eq!(report.alerts_sent, report.alerts_expected, "alerts lost or doubled");
    if !bench {
        assert!(report.missed <= report.missed_by_stops, "occurrences lost");
    }
}

struct Report {
    faults: usize,
    runs: i64,
    missed: i64,
    missed_by_stops: i64,
    doubled_runs: i64,
    doubled_snapshots: i64,
    alerts_expected: usize,
    alerts_sent: usize,
    rss: (f64, f64),
    fds: (usize, usize),
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn libfaketime() -> Option<String> {
    let lib = std::env::var("WARDEN_TEST_FAKETIME")
        .unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".to_owned());
    Path::new(&lib).exists().then_some(lib)
}

fn set_clock(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn run(soak: &Soak) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let component = repo().join("plugins/status-alert.wasm");
    assert!(component.exists(), "no {}: scripts/build-plugins.sh builds the shipped plugins", component.display());
    let mut watched = Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let watched_addr = watched.as_ref().unwrap().local_addr().unwrap();
    let mut text = format!(
        "version = 1\nproduct = \"soak\"\n[state]\nurl = \"sqlite://warden-state.db\"\n[targets]\ndatabase = \"sqlite://target.db\"\n\
         [alerts]\nadmin = [\"ops@example.org\"]\nsmtp = \"\"\n\
         [[policy]]\nname = \"status-alert\"\ncomponent = \"{}\"\non = [\"watched\"]\nconfig = {{ cooldown = \"0s\" }}\n\
         [[job]]\nname = \"watched\"\nevery = \"{}s\"\ntask = \"probe\"\n\
         checks = [{{ name = \"api\", kind = \"tcp\", address = \"{watched_addr}\", critical = true, timeout = \"500ms\" }}]\n",
        component.display(),
        soak.period
    );
    for i in 0..soak.jobs {
        text.push_str(&format!(
            "[[job]]\nname = \"p{i}\"\nevery = \"{}s\"\ntask = \"probe\"\nchecks = [{{ name = \"db\", kind = \"db\", critical = true }}]\n",
            soak.period
        ));
    }
    let config = dir.path().join("schedules.toml");
    std::fs::write(&config, text).unwrap();
    let clock = dir.path().join("faketime");
    set_clock(&clock, "+0");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command
        .args(["run", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("WARDEN_LOG", "warn")
        .env_remove("WARDEN_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("warden.log")).unwrap());
    let faketime = libfaketime();
    if let Some(lib) = &faketime {
        command
            .env("LD_PRELOAD", lib)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    } else {
        eprintln!("no libfaketime: the clock steps are left out (scripts/test-services.sh installs it)");
    }
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !metrics(port).contains("warden_job_runs_total") {
        assert!(Instant::now() < deadline, "warden did not start: {}", dir.path().join("warden.log").display());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm-up: every job has run at least twice.
    std::thread::sleep(Duration::from_secs(2 * soak.period + 1));
    let start = (rss_mb(pid), fds(pid));
    let began = Instant::now();
    let (mut faults, mut stops, mut flips) = (0usize, 0u64, 0usize);
    while began.elapsed() < Duration::from_secs(soak.seconds) {
        let next = began + Duration::from_secs(soak.fault_every * (faults as u64 + 1));
        let end = began + Duration::from_secs(soak.seconds);
        std::thread::sleep(next.min(end).saturating_duration_since(Instant::now()));
        if Instant::now() >= end {
            break;
        }
        let fault = FAULTS[faults % FAULTS.len()];
        faults += 1;
        eprintln!("soak: {:>5} s: {fault:?}", began.elapsed().as_secs());
        match fault {
            Fault::Stop => {
                signal(&child, "STOP");
                std::thread::sleep(STOP);
                signal(&child, "CONT");
                stops += 1;
            }
            Fault::ClockBack if faketime.is_some() => set_clock(&clock, "-3600"),
            Fault::ClockForward if faketime.is_some() => set_clock(&clock, "+0"),
            Fault::ClockBack | Fault::ClockForward => {}
            Fault::Down => {
                watched = None;
                flips += 1;
            }
            Fault::Up => {
                watched = Some(std::net::TcpListener::bind(watched_addr).unwrap());
                flips += 1;
            }
        }
    }
    // Let the last change be decided and sent.
    std::thread::sleep(Duration::from_secs(2 * soak.period + 2));
    let end = (rss_mb(pid), fds(pid));
    signal(&child, "TERM");
    let _ = child.wait();
    drop(watched);

    let rows = tokio::runtime::Runtime::new().unwrap().block_on(stored(&dir.path().join("warden-state.db")));
    let mut missed = 0;
    for keys in rows.keys.values() {
        for pair in keys.windows(2) {
            let gap = (pair[1] - pair[0]).num_milliseconds() / (soak.period as i64 * 1000);
            missed += (gap - 1).max(0);
        }
    }
    let per_stop = (STOP.as_secs() / soak.period).saturating_sub(1) as i64;
    let mails = std::fs::read_dir(dir.path().join("mail")).map(|d| d.count()).unwrap_or(0);
    Report {
        faults,
        runs: rows.runs,
        missed,
        missed_by_stops: per_stop * stops as i64 * (soak.jobs as i64 + 1),
        doubled_runs: rows.doubled_runs,
        doubled_snapshots: rows.doubled_snapshots,
        alerts_expected: flips,
        alerts_sent: mails,
        rss: (start.0, end.0),
        fds: (start.1, end.1),
    }
}

struct Stored {
    runs: i64,
    keys: std::collections::HashMap<String, Vec<DateTime<Utc>>>,
    doubled_runs: i64,
    doubled_snapshots: i64,
}

async fn stored(db: &Path) -> Stored {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let rows: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT job, scheduled_at FROM job_runs WHERE trigger <> 'manual' ORDER BY job, scheduled_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let (doubled_runs, doubled_snapshots): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) - count(DISTINCT job || '@' || scheduled_at) FROM job_runs), \
                (SELECT count(*) - count(DISTINCT job || '@' || checked_at) FROM health_history)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut keys: std::collections::HashMap<String, Vec<DateTime<Utc>>> = Default::default();
    for (job, at) in &rows {
        keys.entry(job.clone()).or_default().push(*at);
    }
    Stored { runs: rows.len() as i64, keys, doubled_runs, doubled_snapshots }
}

fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}
