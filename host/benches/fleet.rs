//! The fleet benchmark: the real `warden run` on a generated schedule of many probe jobs,
//! one `status-alert` over all of them, against a healthy target. Prints one table row per
//! (backend, jobs, period): runs per second, false (non-operational) snapshots, skipped runs,
//! start lateness p50/p99, probe duration p99, warden's CPU per run, RSS, alert mails, and
//! with replicas each one's share of the runs (CPU summed over them, RSS the largest).
//!
//! `cargo bench -p warden --bench fleet` (release). PostgreSQL from `WARDEN_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each scenario gets a database of its own.
//! `FLEET_SCENARIOS` picks rows (`backend:jobs:period[:replicas]`, e.g.
//! `sqlite:10000:30,postgres:10000:30:3`), `FLEET_WINDOW`
//! sets the measured seconds per row (default: 70 s for a 30 s period, 150 s otherwise).
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a small smoke run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Scenario {
    backend: Backend,
    jobs: usize,
    period_secs: u64,
    /// `warden run` processes on the one store (PostgreSQL only).
    replicas: usize,
}

struct Row {
    runs: i64,
    /// Occurrences due in the window (from each job's offset) with no `job_runs` row at all.
    missed: i64,
    runs_per_sec: f64,
    false_snapshots: i64,
    skipped: i64,
    failed: i64,
    lateness_p50: f64,
    lateness_p99: f64,
    probe_p99: f64,
    cpu_us_per_run: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
    mails: usize,
    shares: Vec<f64>,
}

fn main() {
    let scenarios = scenarios();
    println!(
        "{:<11} {:>7} {:>6} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}  share per replica",
        "backend",
        "jobs",
        "period",
        "runs",
        "missed",
        "runs/s",
        "false",
        "skip",
        "fail",
        "late p50",
        "late p99",
        "probe p99",
        "cpu/run",
        "rss",
        "peak rss",
        "mails"
    );
    for s in scenarios {
        let row = run(&s);
        println!(
            "{:<11} {:>7} {:>5}s {:>7} {:>6} {:>7.1} {:>7} {:>6} {:>6} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>6.0}µs {:>6.0}MB {:>6.0}MB {:>5}  {}",
            match (s.backend, s.replicas) {
                (Backend::Sqlite, _) => "sqlite".to_owned(),
                (Backend::Postgres, 1) => "postgres".to_owned(),
                (Backend::Postgres, n) => format!("postgres×{n}"),
            },
            s.jobs,
            s.period_secs,
            row.runs,
            row.missed,
            row.runs_per_sec,
            row.false_snapshots,
            row.skipped,
            row.failed,
            row.lateness_p50,
            row.lateness_p99,
            row.probe_p99,
            row.cpu_us_per_run,
            row.rss_mb,
            row.peak_rss_mb,
            row.mails,
            row.shares.iter().map(|p| format!("{p:.0}%")).collect::<Vec<_>>().join(" / ")
        );
    }
}

fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn scenarios() -> Vec<Scenario> {
    let default = if full() {
        "sqlite:10000:30,postgres:10000:30,postgres:10000:30:3,sqlite:100000:300,postgres:100000:300"
    } else {
        "sqlite:200:5"
    };
    let text = std::env::var("FLEET_SCENARIOS").unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            let backend = match parts[0] {
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                other => panic!("FLEET_SCENARIOS: unknown backend {other}"),
            };
            let replicas = parts.get(3).map_or(1, |r| r.parse().unwrap());
            assert!(replicas == 1 || backend == Backend::Postgres, "FLEET_SCENARIOS: replicas need postgres");
            Scenario { backend, jobs: parts[1].parse().unwrap(), period_secs: parts[2].parse().unwrap(), replicas }
        })
        .collect()
}

fn pg_admin_url() -> String {
    std::env::var("WARDEN_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The generated schedule: `jobs` probes of the target with one `db` check each, every
/// `period`, and one status-alert listening to all of them.
fn schedule(dir: &Path, s: &Scenario, target: &str, state: &str) -> PathBuf {
    let mut body = format!(
        "version = 1\nproduct = \"FLEET\"\n[targets]\ndatabase = \"{target}\"\n[state]\nurl = \"{state}\"\n\
         [alerts]\nadmin = [\"ops@example.org\"]\n\n"
    );
    let names: Vec<String> = (0..s.jobs).map(|i| format!("probe-{i:06}")).collect();
    for name in &names {
        body.push_str(&format!(
            "[[job]]\nname = \"{name}\"\nevery = \"{}s\"\ntimeout = \"10s\"\ntask = \"probe\"\n\
             checks = [{{ name = \"db\", kind = \"db\", critical = true, timeout = \"5s\" }}]\n\n",
            s.period_secs
        ));
    }
    let on: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    body.push_str(&format!(
        "[[policy]]\nname = \"status-alert\"\ncomponent = \"{}\"\non = [{}]\nconfig = {{ cooldown = \"5m\" }}\n",
        repo().join("plugins/status-alert.wasm").display(),
        on.join(", ")
    ));
    let path = dir.join("schedules.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn run(s: &Scenario) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db_name = format!("warden_fleet_{}_{}", s.jobs, std::process::id());
    let (target, state) = match s.backend {
        Backend::Sqlite => ("sqlite://demo-app.db".to_owned(), "sqlite://warden-state.db".to_owned()),
        Backend::Postgres => {
            rt.block_on(async {
                let admin = sqlx::PgPool::connect(&pg_admin_url()).await.expect("PostgreSQL must be running");
                let drop = format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}"))).execute(&admin).await.unwrap();
            });
            let base = pg_admin_url();
            let url = format!("{}/{db_name}", &base[..base.rfind('/').unwrap()]);
            (url.clone(), url)
        }
    };
    // Each replica in a folder of its own (its own spool), on the one store.
    let folders: Vec<PathBuf> = (0..s.replicas)
        .map(|i| {
            let folder = if i == 0 { dir.path().to_path_buf() } else { dir.path().join(format!("replica-{i}")) };
            std::fs::create_dir_all(&folder).unwrap();
            folder
        })
        .collect();
    let started = Instant::now();
    let mut children: Vec<(Child, u16)> = folders
        .iter()
        .map(|folder| {
            let config = schedule(folder, s, &target, &state);
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = std::fs::File::create(folder.join("warden.log")).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_warden"))
                .args(["run", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
                .current_dir(folder)
                .env("WARDEN_LOG", "warn")
                .env_remove("WARDEN_ADMIN_TOKEN")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            (child, port)
        })
        .collect();
    // Start-up (the configuration read, the component compiled, the store migrated) until
    // the first runs are counted on /metrics; then a warm-up before the window opens.
    let deadline = Instant::now() + Duration::from_secs(300);
    for (_, port) in &children {
        while !metrics(*port).contains("warden_job_runs_total") {
            assert!(Instant::now() < deadline, "warden did not start: {}", dir.path().join("warden.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let startup = started.elapsed();
    // A full run warms up for one whole period, so every job has run once and its policy
    // state exists: the window measures the steady state (the first round writes each
    // job's state; from then on a run that changes nothing writes only its own rows).
    std::thread::sleep(Duration::from_secs(if full() { s.period_secs.max(3) + 2 } else { 2 }));
    let window = Duration::from_secs(
        std::env::var("FLEET_WINDOW").ok().and_then(|w| w.parse().ok()).unwrap_or(if s.period_secs <= 30 {
            70
        } else {
            150
        }),
    );
    let cpu = |children: &[(Child, u16)]| children.iter().map(|(c, _)| cpu_ticks(c.id())).sum::<u64>();
    let t0 = now_millis();
    let cpu0 = cpu(&children);
    std::thread::sleep(window);
    let cpu1 = cpu(&children);
    let t1 = now_millis();
    let rss_each: Vec<(f64, f64)> = children.iter().map(|(c, _)| rss(c.id())).collect();
    let rss_mb = rss_each.iter().map(|r| r.0).fold(0.0, f64::max);
    let peak_rss_mb = rss_each.iter().map(|r| r.1).fold(0.0, f64::max);
    // The occurrences due just before t1 start after it: let them claim before stopping.
    std::thread::sleep(Duration::from_secs(2));
    for (child, _) in &mut children {
        terminate(child);
    }
    eprintln!("  start-up to the first run: {:.1} s", startup.as_secs_f64());

    let stats = rt.block_on(measure(s.backend, dir.path(), &state, t0, t1));
    let mails: usize = folders
        .iter()
        .map(|f| {
            std::fs::read_dir(f.join("mail"))
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("email-")).count())
                .unwrap_or(0)
        })
        .sum();
    if s.backend == Backend::Postgres {
        rt.block_on(async {
            let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
            let drop = format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await.unwrap();
        });
    }
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_us = (cpu1 - cpu0) as f64 / ticks_per_sec * 1e6;
    let secs = (t1 - t0).num_milliseconds() as f64 / 1000.0;
    let log = std::fs::read_to_string(dir.path().join("warden.log")).unwrap_or_default();
    let problems: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).take(5).collect();
    if !problems.is_empty() {
        eprintln!(
            "  warden logged (first 5 of {} warnings/errors):",
            log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count()
        );
        for p in problems {
            eprintln!("    {p}");
        }
    }
    let expected = expected_occurrences(s, t0, t1);
    Row {
        missed: expected - stats.runs - stats.skipped,
        runs: stats.runs,
        runs_per_sec: stats.runs as f64 / secs,
        false_snapshots: stats.false_snapshots,
        skipped: stats.skipped,
        failed: stats.failed,
        lateness_p50: stats.lateness_p50,
        lateness_p99: stats.lateness_p99,
        probe_p99: stats.probe_p99,
        cpu_us_per_run: if stats.runs > 0 { cpu_us / stats.runs as f64 } else { f64::NAN },
        rss_mb,
        peak_rss_mb,
        mails,
        shares: stats.shares,
    }
}

struct Stats {
    runs: i64,
    false_snapshots: i64,
    skipped: i64,
    failed: i64,
    lateness_p50: f64,
    lateness_p99: f64,
    probe_p99: f64,
    /// Each replica's share of the runs, in percent, largest first.
    shares: Vec<f64>,
}

/// The queries of `measure`, on either backend (`$schema` prefixes the tables).
macro_rules! window_queries {
    ($pool:expr, $schema:literal, $a:expr, $b:expr) => {{
        let in_window = "scheduled_at >= $1 AND scheduled_at < $2";
        let outcomes: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT outcome, COUNT(*) FROM {}job_runs WHERE {in_window} GROUP BY outcome",
            $schema
        )))
        .bind($a)
        .bind($b)
        .fetch_all($pool)
        .await
        .unwrap();
        let lateness: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT lateness_ms FROM {}job_runs WHERE {in_window} AND lateness_ms IS NOT NULL",
            $schema
        )))
        .bind($a)
        .bind($b)
        .fetch_all($pool)
        .await
        .unwrap();
        let checked = "checked_at >= $1 AND checked_at < $2";
        let durations: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT duration_ms FROM {}health_history WHERE {checked}",
            $schema
        )))
        .bind($a)
        .bind($b)
        .fetch_all($pool)
        .await
        .unwrap();
        let false_snapshots: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}health_history WHERE status <> 'operational' AND {checked}",
            $schema
        )))
        .bind($a)
        .bind($b)
        .fetch_one($pool)
        .await
        .unwrap();
        let replicas: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT replica, COUNT(*) FROM {}job_runs WHERE {in_window} AND outcome <> 'skipped' GROUP BY replica",
            $schema
        )))
        .bind($a)
        .bind($b)
        .fetch_all($pool)
        .await
        .unwrap();
        Window { outcomes, lateness, durations, false_snapshots, replicas }
    }};
}

/// What the store recorded for the occurrences in the window.
struct Window {
    outcomes: Vec<(String, i64)>,
    lateness: Vec<i64>,
    durations: Vec<i64>,
    false_snapshots: i64,
    /// Runs per replica.
    replicas: Vec<(String, i64)>,
}

async fn measure(backend: Backend, dir: &Path, state: &str, t0: DateTime<Utc>, t1: DateTime<Utc>) -> Stats {
    let w = match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("warden-state.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            window_queries!(&pool, "", sqlite_ts(t0), sqlite_ts(t1))
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(state).await.unwrap();
            let w = window_queries!(&pool, "warden.", t0, t1);
            pool.close().await;
            w
        }
    };
    let count = |o: &str| w.outcomes.iter().filter(|(k, _)| k == o).map(|(_, n)| n).sum::<i64>();
    let total: i64 = w.replicas.iter().map(|(_, n)| n).sum();
    let mut shares: Vec<f64> = w.replicas.iter().map(|(_, n)| *n as f64 * 100.0 / total.max(1) as f64).collect();
    shares.sort_by(|a, b| b.total_cmp(a));
    Stats {
        runs: w.outcomes.iter().filter(|(k, _)| k != "skipped").map(|(_, n)| n).sum(),
        false_snapshots: w.false_snapshots,
        skipped: count("skipped"),
        failed: count("failed") + count("timeout"),
        lateness_p50: percentile(w.lateness.clone(), 0.50),
        lateness_p99: percentile(w.lateness, 0.99),
        probe_p99: percentile(w.durations, 0.99),
        shares,
    }
}

/// How many occurrences of the generated jobs fall in `[t0, t1)`, from their offsets.
fn expected_occurrences(s: &Scenario, t0: DateTime<Utc>, t1: DateTime<Utc>) -> i64 {
    let period = warden::config::Duration::from_secs(s.period_secs);
    let spec = |i: usize| {
        let name = format!("probe-{i:06}");
        warden::schedule::ScheduleSpec::every_spread(&name, period, warden::config::Duration::default()).unwrap()
    };
    (0..s.jobs)
        .map(|i| {
            let spec = spec(i);
            let mut n = 0;
            let mut t = spec.next_after(t0 - chrono::Duration::milliseconds(1));
            while let Some(at) = t.filter(|at| *at < t1) {
                n += 1;
                t = spec.next_after(at);
            }
            n
        })
        .sum()
}

/// Now to the millisecond, as occurrences are scheduled and SQLite stores times: with the
/// microseconds an occurrence in the millisecond of `t0` was expected and not counted.
fn now_millis() -> DateTime<Utc> {
    chrono::TimeZone::timestamp_millis_opt(&Utc, Utc::now().timestamp_millis()).unwrap()
}

fn sqlite_ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn percentile(mut values: Vec<i64>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i] as f64
}

/// The text of `/metrics` (empty while warden does not answer).
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12) // utime, stime (fields 14 and 15 of the whole line)
}

/// (VmRSS, VmHWM) in MB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
