//! Many monitors on one process: a policy's state per job, offsets that spread the
//! schedule, a busy store that is waited for (not taken for an outage), and a few hundred
//! jobs at once on both backends with no skipped run and no false snapshot.

use std::path::Path;
use std::time::Duration;

use mail_parser::MessageParser;

use crate::policies::plugins_dir;
use crate::schedule::{DB, job, policy, probe, schedule};
use crate::smtp_server::SmtpServer;
use crate::support::{Daemon, TestDb, wait_for, warden};

/// A count from the SQLite state store beside a schedule.
fn sqlite_count(dir: &Path, sql: &str) -> i64 {
    let url = format!("sqlite://{}", dir.join("warden-state.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    })
}

/// A count from a Postgres state store (schema `warden`).
fn pg_count(url: &str, sql: &str) -> i64 {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        })
    })
    .join()
    .unwrap()
}

fn subject(data: &str) -> String {
    MessageParser::default().parse(data.as_bytes()).unwrap().subject().unwrap_or_default().to_owned()
}

fn body(data: &str) -> String {
    MessageParser::default().parse(data.as_bytes()).unwrap().body_text(0).map(|t| t.into_owned()).unwrap_or_default()
}

#[test]
fn one_policy_on_two_jobs_keeps_each_jobs_state_and_mails_once_naming_the_failing_job() {
    let smtp = SmtpServer::start();
    let ledger = r#"{ name = "ledger", kind = "sql", critical = true, query = "SELECT COUNT(*) FROM no_such_ledger" }"#;
    let component = plugins_dir().join("status-alert.wasm");
    let (dir, config) = schedule()
        .product("MNW")
        .alerts(&smtp.url(), "")
        .job(probe("orders-db", "1s", &[DB]))
        .job(probe("ledger-db", "1s", &[ledger]))
        .table(policy("status-alert", &component, &["orders-db", "ledger-db"], "config = { cooldown = \"1s\" }"))
        .write();
    let runs = |job: &str| {
        sqlite_count(dir.path(), &format!("SELECT COUNT(*) FROM job_runs WHERE job = '{job}' AND outcome = 'ok'"))
    };
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(30), "six runs of each job", || {
        (runs("orders-db") >= 6 && runs("ledger-db") >= 6).then_some(())
    });
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    assert_eq!(
        messages.len(),
        1,
        "one mail for six runs of each: {:?}",
        messages.iter().map(|m| subject(&m.data)).collect::<Vec<_>>()
    );
    assert_eq!(subject(&messages[0].data), "MNW down — critical service failure (ledger-db)");
    assert!(body(&messages[0].data).contains("Job: ledger-db"), "{}", body(&messages[0].data));
    let states = sqlite_count(
        dir.path(),
        "SELECT COUNT(DISTINCT job) FROM policy_state WHERE plugin = 'status-alert' AND key = 'last_status'",
    );
    assert_eq!(states, 2, "each job has its own state");

    // A restart keeps each job's state: no second "down", no bootstrap news for orders-db.
    let (before_orders, before_ledger) = (runs("orders-db"), runs("ledger-db"));
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(30), "four more runs of each job", || {
        (runs("orders-db") >= before_orders + 4 && runs("ledger-db") >= before_ledger + 4).then_some(())
    });
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    assert_eq!(smtp.count(), 1, "the restart told nothing new");
}

#[test]
fn every_job_fires_at_its_own_stable_offset_unless_aligned_and_warden_jobs_shows_it() {
    let (dir, config) = schedule()
        .job(job("spread", "2s", "pool-stats"))
        .job(job("grid", "2s", "pool-stats").with("align = true"))
        .write();
    let cfg = config.to_str().unwrap();
    let offset = warden::schedule::offset_for("spread", warden::config::Duration::from_secs(2));
    let shown = format!("offset    {} into each 2s (from the job's name)", warden::schedule::Millis(offset));
    for _ in 0..2 {
        // The same on every run of the command: derived from the name, not from the clock.
        let (code, stdout, stderr) = warden(dir.path(), &["jobs", "--config", cfg]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(&shown), "{shown}\n{stdout}");
        assert!(stdout.contains("offset    0.000s into each 2s (aligned to the epoch grid)"), "{stdout}");
    }
    assert!(!offset.is_zero(), "this name's offset is not the grid (a golden value would catch a change)");

    let daemon = Daemon::start(dir.path(), &config);
    let count = |job: &str| sqlite_count(dir.path(), &format!("SELECT COUNT(*) FROM job_runs WHERE job = '{job}'"));
    wait_for(Duration::from_secs(30), "three runs of each", || {
        (count("spread") >= 3 && count("grid") >= 3).then_some(())
    });
    drop(daemon);
    // Every occurrence key sits at the offset within the period (SQLite keeps milliseconds).
    let ms = |job: &str| {
        format!(
            "SELECT COUNT(*) FROM job_runs WHERE job = '{job}' AND trigger = 'schedule' AND \
             (CAST(strftime('%s', scheduled_at) AS INTEGER) * 1000 + CAST(substr(scheduled_at, 21, 3) AS INTEGER)) % 2000 <> {}",
            if job == "grid" { 0 } else { offset.std().as_millis() }
        )
    };
    assert_eq!(sqlite_count(dir.path(), &ms("spread")), 0, "a spread run off its offset");
    assert_eq!(sqlite_count(dir.path(), &ms("grid")), 0, "an aligned run off the epoch grid");
    let scheduled = sqlite_count(dir.path(), "SELECT COUNT(*) FROM job_runs WHERE trigger = 'schedule'");
    assert!(scheduled >= 4, "{scheduled} scheduled runs");
}

#[test]
fn a_busy_store_is_waited_for_and_an_unreachable_one_still_spooled() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let (dir, config) = schedule()
        .top("max_running = 4")
        .table(format!("[state]\nurl = \"{}\"\npool = 2", db.url))
        .job(probe("probe", "1s", &[DB]))
        .job(probe("probe-2", "1s", &[DB]))
        .job(probe("probe-3", "1s", &[DB]))
        .write();
    let daemon = Daemon::start(dir.path(), &config);
    let runs = || pg_count(&db.url, "SELECT COUNT(*) FROM warden.job_runs WHERE outcome = 'ok'");
    wait_for(Duration::from_secs(30), "two runs", || (runs() >= 2).then_some(()));
    // Another client holds a lock on job_runs for 8 s: every claim blocks, both of warden's
    // connections are taken, and the third job's claim times out on a full pool: busy, not down.
    let url = db.url.clone();
    let holder = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE warden.job_runs IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
            tokio::time::sleep(Duration::from_secs(8)).await;
            tx.rollback().await.unwrap();
        })
    });
    holder.join().unwrap();
    let after_lock = runs();
    wait_for(Duration::from_secs(30), "runs again after the lock", || (runs() >= after_lock + 2).then_some(()));
    let log = daemon.log();
    assert!(log.contains("state store busy"), "the wait is reported:\n{log}");
    assert!(!log.contains("unclaimed"), "no run was started unclaimed:\n{log}");
    assert!(!log.contains("run spooled"), "nothing was spooled:\n{log}");
    let spool = std::fs::read_to_string(dir.path().join(".warden/spool.jsonl")).unwrap_or_default();
    assert!(spool.is_empty(), "the spool stayed empty: {spool}");
    drop(daemon);
    let url = db.url.clone();
    rt.block_on(db.drop_db());

    // A store that refuses connections is still an outage: the probe runs, spooled.
    let closed = crate::support::free_port();
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&url, &format!("postgres://postgres@127.0.0.1:{closed}/gone")),
    )
    .unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    // Start-up waits out a few acquire timeouts against the refused store first.
    wait_for(Duration::from_secs(120), "a spooled run", || {
        std::fs::read_to_string(dir.path().join(".warden/spool.jsonl"))
            .ok()
            .filter(|s| s.contains("\"probe\""))
            .map(|_| ())
    });
    assert!(daemon.log().contains("running the job unclaimed"), "{}", daemon.log());
}

/// 500 jobs every 5 s for about 15 s: every occurrence runs (none skipped) and no snapshot
/// of the healthy target says otherwise. Counting, not timing: the bench times it.
fn many_jobs(state: &str, target: &str, count: &dyn Fn(&str) -> i64, dir: &Path, config: &Path) {
    let mut body = schedule().top("max_running = 8").target(target, "").state(state);
    let names: Vec<String> = (0..500).map(|i| format!("probe-{i:03}")).collect();
    for name in &names {
        body = body.job(probe(name, "5s", &[DB]));
    }
    let on: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = body.table(policy("status-alert", &plugins_dir().join("status-alert.wasm"), &on, ""));
    std::fs::write(config, body.to_string()).unwrap();
    let daemon = Daemon::start(dir, config);
    wait_for(Duration::from_secs(90), "three rounds of 500", || {
        (count("SELECT COUNT(*) FROM job_runs WHERE outcome = 'ok'") >= 1500).then_some(())
    });
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(count("SELECT COUNT(*) FROM job_runs WHERE outcome = 'skipped'"), 0, "skipped runs");
    assert_eq!(count("SELECT COUNT(*) FROM job_runs WHERE outcome NOT IN ('ok', 'skipped')"), 0, "failed runs");
    assert_eq!(count("SELECT COUNT(*) FROM health_history WHERE status <> 'operational'"), 0, "false snapshots");
    assert_eq!(count("SELECT COUNT(*) FROM outbox"), 0, "alerts about a healthy target");
    // Each job ran its share: no job starved behind the others.
    assert!(count("SELECT COUNT(DISTINCT job) FROM job_runs") == 500);
    assert!(
        count("SELECT COUNT(*) FROM job_runs WHERE lateness_ms IS NULL AND trigger = 'schedule'") == 0,
        "lateness recorded"
    );
}

#[test]
fn five_hundred_jobs_every_five_seconds_on_sqlite_skip_nothing_and_raise_no_false_alarm() {
    let (dir, config) = schedule().write();
    let d = dir.path().to_path_buf();
    many_jobs("sqlite://warden-state.db", "sqlite://demo-app.db", &|sql| sqlite_count(&d, sql), dir.path(), &config);
}

#[test]
fn five_hundred_jobs_every_five_seconds_on_postgres_skip_nothing_and_raise_no_false_alarm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let (dir, config) = schedule().write();
    let url = db.url.clone();
    let count = |sql: &str| {
        let sql = sql
            .replace("FROM job_runs", "FROM warden.job_runs")
            .replace("FROM health_history", "FROM warden.health_history")
            .replace("FROM outbox", "FROM warden.outbox");
        pg_count(&url, &sql)
    };
    many_jobs(&db.url, &db.url, &count, dir.path(), &config);
    rt.block_on(db.drop_db());
}

/// Claims 20 jobs' two occurrences each and commits all 40 plain runs at once: they share
/// group commits (on Postgres a group holding two runs of one job is refused, as one
/// statement cannot upsert one mark twice, and its runs commit alone). Every run lands once:
/// its end, its snapshot, and each job's decision mark at its later occurrence.
async fn plain_runs_ending_together_land_once_each(state_url: &str) {
    use warden::store::{Decision, RunCommit, StateStore};
    let cfg = warden::config::parse(
        &schedule().state(state_url).to_string(),
        Path::new("/tmp/warden-test/schedules.toml"),
        &|_| None,
    )
    .unwrap();
    let store = StateStore::open(&cfg.state).await.unwrap();
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(10);
    let mut commits = Vec::new();
    for j in 0..20 {
        for k in 0..2 {
            let job = format!("job-{j:02}");
            let scheduled = t0 + chrono::Duration::seconds(k);
            let id = store.claim(&job, scheduled, "schedule").await.unwrap().unwrap();
            let decision = Decision {
                policy: "status-alert".into(),
                state_writes: Default::default(),
                outbox: Vec::new(),
                read_mark: None,
            };
            let mut run = RunCommit::ok(&job, vec![decision]);
            run.run_id = Some(id);
            run.scheduled_at = scheduled;
            run.snapshot = Some(warden::health::Snapshot {
                job: job.clone(),
                status: warden::health::Status::Operational,
                checked_at: scheduled,
                duration_ms: 1,
                checks: Vec::new(),
            });
            commits.push(run);
        }
    }
    let results = futures_util::future::join_all(commits.iter().map(|c| store.commit(c))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.count_health().await.unwrap(), 40, "one snapshot per run");
    for j in 0..20 {
        let job = format!("job-{j:02}");
        let runs = store.runs_page(&job, 10, None).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r.outcome == "ok" && r.finished_at.is_some()), "{runs:?}");
        let state = store.policy_state("status-alert", &job).await.unwrap();
        let later = warden::store::decided_mark(t0 + chrono::Duration::seconds(1));
        assert_eq!(state.get(warden::store::DECIDED_KEY), Some(&later), "{job}");
    }
}

#[tokio::test]
async fn plain_runs_ending_together_share_group_commits_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    plain_runs_ending_together_land_once_each(&format!("sqlite://{}", dir.path().join("state.db").display())).await;
}

#[tokio::test]
async fn plain_runs_ending_together_share_group_commits_on_postgres() {
    let db = TestDb::create().await;
    plain_runs_ending_together_land_once_each(&db.url).await;
    db.drop_db().await;
}
