//! End to end: the `warden` binary cargo built for these tests, driven over HTTP,
//! signals and the command line.

use std::time::{Duration, Instant};

use crate::schedule::{Schedule, job, policy, probe, schedule};
use crate::support::{Daemon, schedule_dir, wait_for, warden};

/// A probe and the pool gauge, every second.
fn probe_every_second() -> Schedule {
    let db = r#"{ name = "db", kind = "db", critical = true, timeout = "2s" }"#;
    let sessions = r#"{ name = "sessions", kind = "sql", query = "SELECT EXISTS(SELECT 1 FROM session)" }"#;
    schedule().job(probe("probe", "1s", &[db, sessions])).job(job("pool", "1s", "pool-stats"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn run_serves_health_and_metrics_and_exits_cleanly_on_sigterm() {
    let (dir, config) = probe_every_second().write();
    let daemon = Daemon::start(dir.path(), &config);

    let health = wait_for(Duration::from_secs(20), "a probe", || {
        let (code, body) = daemon.get("/health");
        (code == 200).then(|| json(&body))
    });
    assert_eq!(health["status"], "operational");
    assert_eq!(health["job"], "probe");
    assert!(health["checked_at"].as_str().unwrap().ends_with('Z'));
    assert!(health["duration_ms"].is_u64());
    let checks = health["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["name"], "db");
    assert_eq!(checks[0]["ok"], true);
    assert!(checks[1]["duration_ms"].is_u64());

    let metrics = wait_for(Duration::from_secs(10), "two probe runs in /metrics", || {
        let (_, body) = daemon.get("/metrics");
        body.lines()
            .any(|l| l.starts_with("warden_job_runs_total{job=\"probe\",outcome=\"ok\"}") && !l.ends_with(" 1"))
            .then_some(body)
    });
    for needle in [
        "warden_status{job=\"probe\"} 0",
        "warden_check_up{job=\"probe\",check=\"db\"} 1",
        "warden_check_up{job=\"probe\",check=\"sessions\"} 1",
        "warden_job_duration_seconds_bucket{job=\"probe\",le=\"0.005\"}",
        "warden_db_pool_max 10",
        "warden_db_pool_idle",
        "warden_db_pool_active",
        "# TYPE warden_job_duration_seconds histogram",
    ] {
        assert!(metrics.contains(needle), "missing `{needle}` in:\n{metrics}");
    }
    // The embedded default created both SQLite files beside the schedule.
    assert!(dir.path().join("demo-app.db").exists() && dir.path().join("warden-state.db").exists());

    let log_before = daemon.log();
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "{log_before}");
}

#[test]
fn health_is_503_before_any_check_and_when_the_status_is_error() {
    let (dir, config) = schedule().job(job("pool", "1h", "pool-stats")).write();
    let daemon = Daemon::start(dir.path(), &config);
    let (code, body) = daemon.get("/health");
    assert_eq!(code, 503);
    assert_eq!(json(&body)["status"], "unknown");
    drop(daemon);

    let port = crate::support::free_port();
    let gone = format!("postgres://postgres@127.0.0.1:{port}/gone");
    let body =
        schedule().target(&gone, "").job(probe("probe", "1s", &[r#"{ name = "db", kind = "db", timeout = "1s" }"#]));
    std::fs::write(&config, body.to_string()).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    let health = wait_for(Duration::from_secs(20), "an error status", || {
        let (code, body) = daemon.get("/health");
        (code == 503 && body.contains("\"error\"")).then(|| json(&body))
    });
    assert_eq!(health["checks"][0]["ok"], false);
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        metrics.contains("warden_status{job=\"probe\"} 2")
            && metrics.contains("warden_check_up{job=\"probe\",check=\"db\"} 0"),
        "{metrics}"
    );
}

#[test]
fn check_lists_every_problem_with_file_line_and_column() {
    let (dir, config) = schedule_dir(
        "version = 1\n[[job]]\nname = \"a\"\nevery = \"30 s\"\ntask = \"probe\"\n\n[[job]]\nname = \"b\"\ncron = \"0 0 25 * * *\"\ntask = \"nope\"\n",
    );
    let (code, stdout, stderr) = warden(dir.path(), &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let shown = config.display().to_string();
    for needle in [
        format!("{shown}:4:9: job \"a\".every: invalid duration `30 s`"),
        format!("{shown}:2:1: job \"a\".checks: missing required field `checks`"),
        format!("{shown}:9:8: job \"b\".cron: invalid cron expression `0 0 25 * * *`"),
        format!("{shown}:10:8: job \"b\".task: unknown task kind `nope`"),
        format!("{shown}: 4 problem(s) found"),
    ] {
        assert!(stderr.contains(&needle), "missing `{needle}` in:\n{stderr}");
    }

    let (code, stdout, _) = warden(dir.path(), &["check", "--config", "../../no/such/file.toml"]);
    assert_eq!(code, 1, "{stdout}");
}

#[test]
fn jobs_lists_schedules_next_fires_and_last_runs() {
    let nightly = "[[job]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\ntz = \"Europe/Berlin\"\ntask = \"pool-stats\"";
    let (dir, config) =
        schedule().table(nightly).job(job("often", "30s", "pool-stats").with("enabled = false")).write();
    let cfg = config.to_str().unwrap();
    let (code, stdout, stderr) = warden(dir.path(), &["jobs", "--config", cfg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("nightly\n  task      pool-stats\n  schedule  cron `0 0 3 * * *` Europe/Berlin"),
        "{stdout}"
    );
    let next = stdout.lines().find(|l| l.starts_with("  next")).unwrap();
    assert_eq!(next.matches("03:00:00 CE").count(), 3, "three fire times in Berlin time: {next}");
    assert!(stdout.contains("often (disabled)"));
    assert!(stdout.contains("  last run  never"));

    let (code, stdout, _) = warden(dir.path(), &["trigger", "nightly", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("outcome  ok"), "{stdout}");
    let (_, stdout, _) = warden(dir.path(), &["jobs", "--config", cfg]);
    assert!(stdout.contains(" ok (manual)"), "{stdout}");
}

#[test]
fn trigger_exits_non_zero_when_the_job_fails() {
    let (dir, config) =
        schedule().job(job("broken", "1h", "sql").with(r#"statement = "DELETE FROM no_such_table""#)).write();
    let cfg = config.to_str().unwrap();
    let (code, stdout, _) = warden(dir.path(), &["trigger", "broken", "--config", cfg]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("outcome  failed") && stdout.contains("no such table"), "{stdout}");
    let (code, _, stderr) = warden(dir.path(), &["trigger", "missing", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no job `missing`") && stderr.contains("jobs: broken"), "{stderr}");
}

#[test]
fn a_changed_schedule_is_reloaded_and_a_broken_one_refused() {
    let (dir, config) = probe_every_second().write();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "the first probe", || (daemon.get("/health").0 == 200).then_some(()));

    // A valid edit: a new job appears and runs without a restart.
    let added = probe_every_second().job(job("added", "1s", "pool-stats")).to_string();
    std::fs::write(&config, &added).unwrap();
    wait_for(Duration::from_secs(20), "the added job to run", || {
        daemon.get("/metrics").1.contains("warden_job_runs_total{job=\"added\",outcome=\"ok\"}").then_some(())
    });

    // A broken edit is refused with the `warden check` messages; the running jobs go on.
    std::fs::write(
        &config,
        added.replace("every = \"1s\"\ntask = \"pool-stats\"", "every = \"1 s\"\ntask = \"pool-stats\""),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the refusal in the log", || {
        daemon.log().contains("configuration refused").then_some(())
    });
    let log = daemon.log();
    assert!(log.contains("schedules.toml:9:9: job \"pool\".every: invalid duration `1 s`"), "{log}");
    assert!(log.contains("schedules.toml:13:9: job \"added\".every: invalid duration `1 s`"), "{log}");
    let runs = |body: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with("warden_job_runs_total{job=\"added\",outcome=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = runs(&daemon.get("/metrics").1);
    wait_for(Duration::from_secs(10), "the old configuration to keep running", || {
        (runs(&daemon.get("/metrics").1) > before).then_some(())
    });
    assert!(daemon.get("/metrics").1.contains("warden_config_reloads_total{result=\"refused\"}"));

    // SIGHUP reloads too: a fixed file is taken.
    std::fs::write(&config, probe_every_second().to_string()).unwrap();
    daemon.signal("HUP");
    wait_for(Duration::from_secs(20), "a reload", || {
        daemon.log().matches("configuration reloaded").count().ge(&2).then_some(())
    });

    // SIGHUP with nothing changed (file and components as loaded, which is found out off
    // the loop): answered as unchanged, nothing rebuilt.
    std::thread::sleep(Duration::from_millis(500));
    let (reloaded, unchanged) = {
        let log = daemon.log();
        (log.matches("configuration reloaded").count(), log.matches("configuration unchanged").count())
    };
    daemon.signal("HUP");
    wait_for(Duration::from_secs(20), "the unchanged answer", || {
        (daemon.log().matches("configuration unchanged").count() > unchanged).then_some(())
    });
    assert_eq!(daemon.log().matches("configuration reloaded").count(), reloaded, "{}", daemon.log());
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}

#[test]
fn a_daily_job_missed_while_down_runs_once_at_start_up() {
    let daily = "[[job]]\nname = \"daily\"\ncron = \"0 15 3 * * *\"\ntask = \"prune\"\ndb = \"state\"\n\
                 table = \"health_history\"\ncolumn = \"checked_at\"\nolder_than = \"30d\"";
    let (dir, config) = schedule().table(daily).write();
    let cfg = config.to_str().unwrap();
    let runs = |dir: &std::path::Path| {
        let (_, stdout, _) = warden(dir, &["jobs", "--config", cfg]);
        stdout
    };
    for attempt in 0..2 {
        let daemon = Daemon::start(dir.path(), &config);
        wait_for(Duration::from_secs(20), "the catch-up run", || {
            runs(dir.path()).contains("ok (catch-up)").then_some(())
        });
        assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "start {attempt}");
    }
    let db = dir.path().join("warden-state.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let count: i64 = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM job_runs").fetch_one(&pool).await.unwrap()
    });
    assert_eq!(count, 1, "the second start must not run it again");
}

#[test]
fn health_keeps_answering_and_probing_while_the_state_store_is_unreachable() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(crate::support::TestDb::create());
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = crate::support::Proxy::start(upstream);
    let state_url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let (dir, config) =
        schedule().state(&state_url).job(probe("probe", "1s", &[r#"{ name = "db", kind = "db" }"#])).write();
    let daemon = Daemon::start(dir.path(), &config);
    let checked_at = |d: &Daemon| {
        let (code, body) = d.get("/health");
        (code == 200).then(|| json(&body)["checked_at"].as_str().unwrap().to_owned())
    };
    wait_for(Duration::from_secs(20), "a first probe", || checked_at(&daemon));

    proxy.cut();
    let at_cut = checked_at(&daemon).unwrap();
    // /health answers at once, and fresh probes keep arriving with the store gone.
    wait_for(Duration::from_secs(20), "a probe after the cut", || {
        let started = std::time::Instant::now();
        let now = checked_at(&daemon)?;
        assert!(started.elapsed() < Duration::from_secs(1), "/health blocked on the state store");
        (now > at_cut).then_some(())
    });
    wait_for(Duration::from_secs(20), "the outage in the log", || {
        daemon.log().contains("state store unreachable; running the job unclaimed").then_some(())
    });

    proxy.restore();
    let runs = || -> i64 {
        rt.block_on(async {
            let pool = db.pool().await;
            let n = sqlx::query_scalar("SELECT count(*) FROM warden.job_runs WHERE outcome = 'ok'")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        })
    };
    let before = runs();
    wait_for(Duration::from_secs(30), "runs recorded again after the store returns", || {
        (runs() > before + 1).then_some(())
    });
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));
    rt.block_on(db.drop_db());
}

fn counter(metrics: &str, prefix: &str) -> u64 {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn a_plugin_is_hot_swapped_while_probes_run_and_no_evaluation_is_lost() {
    let plugins = crate::policies::plugins_dir();
    let echo = "[[policy]]\nname = \"echo\"\ncomponent = \"policy.wasm\"\non = [\"probe\"]\nconfig = { mode = \"ok\" }";
    let (dir, config) = probe_every_second().table(echo).write();
    let component = dir.path().join("policy.wasm");
    std::fs::copy(plugins.join("bad-guest.wasm"), &component).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    let evals = "warden_policy_evaluations_total{policy=\"echo\",outcome=\"ok\"}";
    let runs = "warden_job_runs_total{job=\"probe\",outcome=\"ok\"}";
    wait_for(Duration::from_secs(20), "evaluations", || (counter(&daemon.get("/metrics").1, evals) >= 2).then_some(()));

    // Swap in another component: it is compiled, pre-instantiated and swapped without a restart.
    // With the old file's time, as when both are written within one second (file times
    // have whole seconds on some filesystems): the rename is still seen.
    let next = dir.path().join("next.wasm");
    std::fs::copy(plugins.join("status-alert.wasm"), &next).unwrap();
    let written = std::fs::metadata(&component).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(&next).unwrap().set_modified(written).unwrap();
    std::fs::rename(&next, &component).unwrap();
    let swapped = Instant::now();
    while daemon.log().matches("policy loaded policy=echo").count() < 2 {
        assert!(swapped.elapsed() < Duration::from_secs(60), "the new version did not load:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_swap = counter(&daemon.get("/metrics").1, evals);
    wait_for(Duration::from_secs(20), "evaluations on the new version", || {
        (counter(&daemon.get("/metrics").1, evals) >= after_swap + 2).then_some(())
    });

    // A broken file is refused; the running version keeps evaluating.
    std::fs::write(dir.path().join("next.wasm"), b"not a component").unwrap();
    std::fs::rename(dir.path().join("next.wasm"), &component).unwrap();
    wait_for(Duration::from_secs(20), "the refusal", || {
        daemon.log().contains("does not start with the wasm magic bytes").then_some(())
    });
    let after_refusal = counter(&daemon.get("/metrics").1, evals);
    wait_for(Duration::from_secs(20), "evaluations to go on", || {
        (counter(&daemon.get("/metrics").1, evals) >= after_refusal + 2).then_some(())
    });

    // Every probe run was evaluated: none lost across the swaps. The probe is taken out of
    // the schedule first, so no run sits between its evaluation and its commit when the
    // two counters are read (a lost evaluation could hide behind one in flight).
    std::fs::write(&config, schedule().job(job("pool", "1s", "pool-stats")).to_string()).unwrap();
    wait_for(Duration::from_secs(20), "the probe out of the schedule", || {
        daemon.log().contains("configuration reloaded jobs=1 policies=0").then_some(())
    });
    daemon.wait_runs("pool", 2);
    let m = daemon.get("/metrics").1;
    let (e, r) = (counter(&m, evals), counter(&m, runs));
    assert!(r > 4, "{r} probe runs");
    assert_eq!(e, r, "an evaluation for every probe run");
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}

#[test]
fn a_component_added_by_a_reload_is_watched_and_swapped_when_it_changes() {
    let plugins = crate::policies::plugins_dir();
    let (dir, config) = probe_every_second().write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_runs("probe", 1);
    let component = dir.path().join("late.wasm");
    std::fs::copy(plugins.join("bad-guest.wasm"), &component).unwrap();
    let late = policy("late", &component, &["probe"], "config = { mode = \"ok\" }");
    std::fs::write(&config, probe_every_second().table(late).to_string()).unwrap();
    let loaded = |n: usize| {
        wait_for(Duration::from_secs(30), "the component to load", || {
            (daemon.log().matches("policy loaded policy=late").count() >= n).then_some(())
        })
    };
    loaded(1);
    // Saving the component alone (the schedule unchanged) swaps the new version in.
    std::fs::copy(plugins.join("status-alert.wasm"), dir.path().join("next.wasm")).unwrap();
    std::fs::rename(dir.path().join("next.wasm"), &component).unwrap();
    loaded(2);
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}

/// The scheduled runs of `probe` in the SQLite store in `dir`: (scheduled_at, lateness_ms).
fn probe_runs(dir: &std::path::Path) -> Vec<(chrono::DateTime<chrono::Utc>, Option<i64>)> {
    let db = dir.join("warden-state.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_as(
            "SELECT scheduled_at, lateness_ms FROM job_runs WHERE job = 'probe' AND trigger = 'schedule' \
             ORDER BY scheduled_at",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    })
}

/// A run every second, none missing, none a second late.
fn assert_every_second_on_time(runs: &[(chrono::DateTime<chrono::Utc>, Option<i64>)]) {
    for pair in runs.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_milliseconds(), 1000, "an occurrence is missing: {runs:?}");
    }
    let late = runs.iter().filter_map(|(_, l)| *l).max().unwrap();
    assert!(late < 1000, "a probe {late} ms late: {runs:?}");
}

/// `component` with a custom section naming `tag`: the same code under bytes no compile
/// cache has seen.
fn unseen(component: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(&rand_bytes());
    let mut out = component.to_vec();
    out.push(0); // a custom section
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

fn rand_bytes() -> [u8; 16] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    nanos.to_le_bytes()
}

#[test]
fn a_reload_compiling_a_python_policy_leaves_every_probe_on_time() {
    let plugins = crate::policies::plugins_dir();
    let (dir, config) = probe_every_second().write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_runs("probe", 2);

    // The Python policy (18 MB) under bytes never compiled here: the reload compiles it
    // (tens of seconds) while the probe keeps its schedule.
    let python = std::fs::read(plugins.join("status-mail-py.wasm")).unwrap();
    let file = dir.path().join("python.wasm");
    std::fs::write(&file, unseen(&python, "python")).unwrap();
    let next = probe_every_second().table(policy("python", &file, &["probe"], "limits = { deadline = \"5s\" }"));
    let asked = chrono::Utc::now();
    std::fs::write(&config, next.to_string()).unwrap();
    wait_for(Duration::from_secs(300), "the reload", || {
        daemon.log().contains("configuration reloaded jobs=2 policies=1").then_some(())
    });
    daemon.wait_runs("probe", 2);
    let evals = counter(&daemon.get("/metrics").1, "warden_policy_evaluations_total{policy=\"python\",outcome=\"ok\"}");
    assert!(evals >= 1, "the Python policy evaluates the probe:\n{}", daemon.log());
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));

    let runs = probe_runs(dir.path());
    let around: Vec<_> = runs.into_iter().filter(|(at, _)| *at >= asked - chrono::Duration::seconds(2)).collect();
    assert!(around.len() >= 4, "{around:?}");
    assert_every_second_on_time(&around);
}

#[test]
fn a_start_with_cold_components_runs_the_probe_on_time_and_every_event_reaches_the_policies() {
    let plugins = crate::policies::plugins_dir();
    let guest = std::fs::read(plugins.join("wasi-guest.wasm")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut body = probe_every_second();
    for name in ["cold-0", "cold-1"] {
        let file = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&file, unseen(&guest, name)).unwrap();
        body = body.table(policy(name, &file, &["probe"], ""));
    }
    let config = dir.path().join("schedules.toml");
    std::fs::write(&config, body.to_string()).unwrap();
    let started = chrono::Utc::now();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(120), "the policies", || daemon.log().contains("policies ready").then_some(()));
    let log = daemon.log();
    let ready = log.lines().find(|l| l.contains("policies ready")).unwrap();
    assert!(!ready.contains("waiting=0"), "no run waited for the policies, so this shows nothing: {ready}");
    daemon.wait_runs("probe", 2);

    // Every probe run was evaluated by both, the ones before the policies were ready too.
    std::fs::write(&config, schedule().job(job("pool", "1s", "pool-stats")).to_string()).unwrap();
    wait_for(Duration::from_secs(20), "the probe out of the schedule", || {
        daemon.log().contains("configuration reloaded jobs=1 policies=0").then_some(())
    });
    daemon.wait_runs("pool", 2);
    let m = daemon.get("/metrics").1;
    let runs = counter(&m, "warden_job_runs_total{job=\"probe\",outcome=\"ok\"}");
    for name in ["cold-0", "cold-1"] {
        let evals = counter(&m, &format!("warden_policy_evaluations_total{{policy=\"{name}\",outcome=\"ok\"}}"));
        assert_eq!(evals, runs, "{name}: an evaluation for every probe run");
    }
    assert!(!daemon.log().contains("this one is dropped"), "decided out of order:\n{}", daemon.log());
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));

    // The probe kept its schedule from the start: the first within a second or two, none missing.
    let runs = probe_runs(dir.path());
    assert!((runs[0].0 - started).num_milliseconds() < 3000, "first probe at {} for a start at {started}", runs[0].0);
    assert_every_second_on_time(&runs);
}

#[test]
fn check_loads_every_plugin_reads_the_smtp_ca_and_names_the_bad_ones() {
    let plugins = crate::policies::plugins_dir();
    let policy = |name: &str, component: &std::path::Path| policy(name, component, &["probe"], "");
    let (dir, config) = schedule()
        .job(probe("probe", "30s", &[r#"{ name = "db", kind = "db" }"#]))
        .table(policy("good", &plugins.join("status-alert.wasm")))
        .table(policy("sneaky", &plugins.join("sql-guest.wasm")))
        .table(policy("missing", std::path::Path::new("nowhere.wasm")))
        .table("[alerts]\nsmtp = \"smtp://mail.example.org:587?tls=required\"\nsmtp_ca = \"no-such-ca.pem\"")
        .write();
    let (code, stdout, stderr) = warden(dir.path(), &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    // A policy importing `sql` without the grant loads: its calls fail inside the guest.
    assert!(!stderr.contains("policy \"sneaky\""), "{stderr}");
    assert!(stderr.contains("policy \"missing\": cannot read") && stderr.contains("nowhere.wasm"), "{stderr}");
    assert!(!stderr.contains("policy \"good\""), "{stderr}");
    assert!(stderr.contains("alerts.smtp_ca: cannot read") && stderr.contains("no-such-ca.pem"), "{stderr}");
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}
