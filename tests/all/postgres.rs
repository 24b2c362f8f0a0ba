//! Against real PostgreSQL: migrations, the probe (up, down, hung), pruning in batches,
//! the shipped compaction and OAuth cleanup, and one run per occurrence across replicas.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use warden::config::Config;
use warden::daemon::RunContext;
use warden::daemon::{Trigger, execute};
use warden::health::Status;
use warden::store::{Outcome, StateStore};
use warden::tasks::Event;

use crate::schedule::{probe, schedule};
use crate::support::{TestDb, silent_server};

fn config(body: &str) -> Config {
    warden::config::parse(body, Path::new("/tmp/warden-test/schedules.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The shipped schedule with DATABASE_URL pointing at `url`.
fn shipped(url: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    let env = |name: &str| (name == "DATABASE_URL" || name == "WARDEN_STATE_URL").then(|| url.to_owned());
    warden::config::parse(&src, &path, &env).unwrap()
}

fn snapshot(report: &warden::daemon::RunReport) -> &warden::health::Snapshot {
    match &report.event {
        Some(Event::Snapshot(s)) => s,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The context for a test, with a spool of its own (the configuration paths are shared).
async fn open(config: &Config) -> RunContext {
    let mut ctx = warden::daemon::open(config).await.unwrap();
    ctx.spool = warden::store::Spool::open(&std::env::temp_dir().join(crate::support::unique("spool"))).unwrap();
    ctx
}

#[tokio::test]
async fn migrations_create_the_state_tables_in_their_own_schema_and_rerun_cleanly() {
    let db = TestDb::create().await;
    let cfg = config(&schedule().state(&db.url).to_string());
    StateStore::open(&cfg.state).await.unwrap();
    StateStore::open(&cfg.state).await.expect("migrations are idempotent");
    let pool = db.pool().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'warden' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "health_history",
            "heartbeats",
            "job_pauses",
            "job_runs",
            "outbox",
            "policy_state",
            "replicas",
            "settings",
            "silences",
            "spool_applied"
        ]
    );
    let public: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(public, 0, "warden creates nothing in the application's schema");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_shipped_jobs_run_green_against_postgres_with_the_demo_schema() {
    let db = TestDb::create().await;
    let mut cfg = shipped(&db.url);
    cfg.targets.demo_schema = true; // "unless asked": here we ask.
    let ctx = open(&cfg).await;
    for job in &cfg.jobs {
        let report = execute(job, Utc::now(), Trigger::Manual, &ctx).await;
        assert_eq!(report.outcome, Outcome::Ok, "{}: {:?}", job.name, report.error);
    }
    let probe = execute(cfg.job("health-probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    let snap = snapshot(&probe);
    assert_eq!(snap.status, Status::Operational, "{snap:?}");
    assert_eq!(snap.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["db", "s3", "sessions"]);
    let gauges = execute(cfg.job("pg-activity").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    match gauges.event {
        Some(Event::Gauges { gauges }) => {
            let get = |n: &str| gauges.iter().find(|g| g.name == n).map(|g| g.value).unwrap();
            assert!(get("pg_client_backends") >= 1.0);
            assert!(get("pg_max_connections") >= get("pg_client_backends"));
        }
        other => panic!("{other:?}"),
    }
    db.drop_db().await;
}

#[tokio::test]
async fn without_being_asked_warden_never_creates_the_application_tables() {
    let db = TestDb::create().await;
    let cfg = shipped(&db.url);
    assert!(!cfg.targets.demo_schema);
    let ctx = open(&cfg).await;
    let probe = execute(cfg.job("health-probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    let snap = snapshot(&probe);
    // The database answers, but the application's sessions table is not there: degraded.
    assert_eq!(snap.status, Status::Degraded, "{snap:?}");
    let sessions = snap.checks.iter().find(|c| c.name == "sessions").unwrap();
    assert!(sessions.error.as_deref().unwrap().contains("tower_sessions.session"), "{sessions:?}");
    let pool = db.pool().await;
    let public: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(public, 0);
    pool.close().await;
    db.drop_db().await;
}

fn probe_config(state: &str, target: &str, check_timeout: &str) -> Config {
    let db = format!(r#"{{ name = "db", kind = "db", timeout = "{check_timeout}" }}"#);
    config(&schedule().target(target, "").state(state).job(probe("probe", "30s", &[&db])).to_string())
}

#[tokio::test]
async fn the_probe_reports_error_when_the_database_is_unreachable() {
    let state = TestDb::create().await;
    let port = crate::support::free_port(); // nothing listens here
    let cfg = probe_config(&state.url, &format!("postgres://postgres@127.0.0.1:{port}/app"), "5s");
    let ctx = open(&cfg).await;
    let report = execute(cfg.job("probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    assert_eq!(report.outcome, Outcome::Ok, "the probe ran; what it found is the status");
    let snap = snapshot(&report);
    assert_eq!(snap.status, Status::Error);
    assert!(!snap.checks[0].ok && snap.checks[0].error.is_some());
    assert_eq!(ctx.store.latest_health().await.unwrap().unwrap().status, Status::Error, "stored in health_history");
    state.drop_db().await;
}

#[tokio::test]
async fn a_hung_database_fails_the_check_at_its_timeout() {
    let state = TestDb::create().await;
    let (addr, _server) = silent_server();
    let cfg = probe_config(&state.url, &format!("postgres://postgres@{addr}/app"), "1s");
    let ctx = open(&cfg).await;
    let started = Instant::now();
    let report = execute(cfg.job("probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    let took = started.elapsed();
    let snap = snapshot(&report);
    assert_eq!(snap.status, Status::Error);
    assert_eq!(snap.checks[0].error.as_deref(), Some("timed out after 1s"));
    assert!(took < Duration::from_secs(4), "the probe hung for {took:?}");
    state.drop_db().await;
}

#[tokio::test]
async fn prune_deletes_exactly_the_old_rows_across_several_batches() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE events (id serial PRIMARY KEY, created_at timestamptz NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (created_at) SELECT now() - make_interval(days => 40 + i) FROM generate_series(1, 25) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (created_at) SELECT now() - make_interval(days => 29 - i) FROM generate_series(1, 5) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let prune = "[[job]]\nname = \"prune-events\"\ncron = \"0 0 3 * * *\"\ntask = \"prune\"\ntable = \"events\"\n\
                 column = \"created_at\"\nolder_than = \"30d\"\nbatch_size = 4";
    let cfg = config(&schedule().target(&db.url, "").state(&db.url).table(prune).to_string());
    let ctx = open(&cfg).await;
    let report = execute(cfg.job("prune-events").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.error);
    assert_eq!(report.rows_affected, Some(25));
    assert_eq!(report.detail.as_deref(), Some("25 rows in 7 batches"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    let old_left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE created_at < now() - interval '30 days'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((left, old_left), (5, 0));
    let run = &ctx.store.runs_page("prune-events", 1, None).await.unwrap()[0];
    assert_eq!((run.outcome.as_str(), run.rows_affected), ("ok", Some(25)));
    pool.close().await;
    db.drop_db().await;
}

async fn demo_target(db: &TestDb) -> (Config, RunContext, sqlx::PgPool) {
    let mut cfg = shipped(&db.url);
    cfg.targets.demo_schema = true;
    let ctx = open(&cfg).await;
    (cfg, ctx, db.pool().await)
}

#[tokio::test]
async fn compaction_deletes_exactly_what_every_device_pulled_beyond_the_margin() {
    let db = TestDb::create().await;
    let (cfg, ctx, pool) = demo_target(&db).await;
    // Recent entries every device pulled: inside the 7-day margin, so they stay.
    sqlx::query("INSERT INTO sync_log (user_id, seq, created_at) VALUES (2, 0, now() - interval '2 days')")
        .execute(&pool)
        .await
        .unwrap();
    // A user with no devices: nobody pulled their entries, so nothing goes.
    sqlx::query("INSERT INTO users (id, email) VALUES (9, 'nodevice@example.org')").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO sync_log (user_id, seq, created_at) VALUES (9, 1, now() - interval '60 days')")
        .execute(&pool)
        .await
        .unwrap();
    let report = execute(cfg.job("compact-sync-log").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.error);
    // User 1's devices pulled up to 40 and 45: seqs 1..=40 go. User 2's device pulled 5: 1..=5 go.
    assert_eq!(report.rows_affected, Some(45));
    let left: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, seq FROM sync_log ORDER BY user_id, seq").fetch_all(&pool).await.unwrap();
    let mut want: Vec<(i64, i64)> = (41..=60).map(|s| (1, s)).collect();
    want.push((2, 0));
    want.extend((6..=10).map(|s| (2, s)));
    want.push((9, 1));
    assert_eq!(left, want);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn prune_of_the_sync_log_keeps_ninety_days() {
    let db = TestDb::create().await;
    let (cfg, ctx, pool) = demo_target(&db).await;
    let report = execute(cfg.job("prune-sync-log").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    // User 1's entry i was written 100 - i days and 12 hours ago: i = 1..=10 are older than 90 days.
    assert_eq!(report.rows_affected, Some(10), "{:?}", report.error);
    let oldest: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM sync_log WHERE user_id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(oldest, 11);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn oauth_cleanup_deletes_expired_and_used_codes_only() {
    let db = TestDb::create().await;
    let (cfg, ctx, pool) = demo_target(&db).await;
    let report = execute(cfg.job("purge-oauth-codes").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    assert_eq!(report.rows_affected, Some(2), "{:?}", report.error);
    let left: Vec<String> = sqlx::query_scalar("SELECT code FROM oauth_code").fetch_all(&pool).await.unwrap();
    assert_eq!(left, ["live"]);
    let again = execute(cfg.job("purge-oauth-codes").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    assert_eq!(again.rows_affected, Some(0));
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn two_schedulers_on_one_database_run_each_occurrence_once() {
    let db = TestDb::create().await;
    let cfg = probe_config(&db.url, &db.url, "5s");
    let a = open(&cfg).await;
    let b = open(&cfg).await;
    assert_ne!(a.store.replica(), b.store.replica(), "two processes' worth of pools");
    let job = cfg.job("probe").unwrap();
    let mut ran = 0;
    for i in 0..20 {
        let scheduled = Utc.timestamp_opt(1_800_000_000 + i * 30, 0).unwrap();
        let (ra, rb) = tokio::join!(
            execute(job, scheduled, Trigger::Schedule, &a),
            execute(job, scheduled, Trigger::Schedule, &b)
        );
        assert!(ra.claimed_elsewhere != rb.claimed_elsewhere, "occurrence {i}: exactly one runs");
        ran += [&ra, &rb].iter().filter(|r| r.outcome == Outcome::Ok).count();
    }
    assert_eq!(ran, 20);
    let pool = db.pool().await;
    let (runs, health): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM warden.job_runs), (SELECT count(*) FROM warden.health_history)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((runs, health), (20, 20));
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn runs_left_running_before_the_cutoff_are_recorded_failed_once() {
    let db = TestDb::create().await;
    let cfg = config(&schedule().state(&db.url).to_string());
    let store = StateStore::open(&cfg.state).await.unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 3, 0, 0).unwrap();
    let old = store.claim("nightly", t0, "schedule").await.unwrap().unwrap();
    assert_eq!(store.reap_abandoned(Utc::now() - chrono::Duration::hours(1)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fresh = store.claim("nightly", t0 + chrono::Duration::days(1), "schedule").await.unwrap().unwrap();

    assert_eq!(store.reap_abandoned(cutoff).await.unwrap(), 1, "only the run started before the cutoff");
    assert_eq!(store.reap_abandoned(cutoff).await.unwrap(), 0, "once");
    let runs = store.runs_page("nightly", 10, None).await.unwrap();
    let by_id = |id: i64| runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(by_id(old).outcome, "failed");
    assert!(by_id(old).error.as_deref().unwrap().starts_with("abandoned"), "{:?}", by_id(old).error);
    assert!(by_id(old).finished_at.is_some());
    assert_eq!(by_id(fresh).outcome, "running");
    db.drop_db().await;
}

/// The backends connected to `db` other than the asking one.
async fn backends(admin: &sqlx::PgPool, db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY pid")
        .bind(&db.name)
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn checks_keep_their_connection_but_never_one_a_timeout_cut_off() {
    let state = TestDb::create().await;
    let target = TestDb::create().await;
    let admin = state.pool().await;
    let quick = probe("quick", "30s", &[r#"{ name = "db", kind = "db", timeout = "5s" }"#]);
    let slow =
        probe("slow", "30s", &[r#"{ name = "sleep", kind = "sql", query = "SELECT pg_sleep(3)", timeout = "300ms" }"#]);
    let refused =
        probe("refused", "30s", &[r#"{ name = "missing", kind = "sql", query = "SELECT 1 FROM no_such_table" }"#]);
    let cfg = config(
        &schedule()
            .target(&target.url, "pool = 1\ndemo_schema = false")
            .state(&state.url)
            .job(quick)
            .job(slow)
            .job(refused)
            .to_string(),
    );
    let ctx = open(&cfg).await;
    let run = |name: &'static str| {
        let (cfg, ctx) = (&cfg, &ctx);
        async move { snapshot(&execute(cfg.job(name).unwrap(), Utc::now(), Trigger::Manual, ctx).await).clone() }
    };

    // One slot: every check on one connection, kept from check to check.
    assert!(run("quick").await.checks[0].ok);
    let first = backends(&admin, &target).await;
    assert_eq!(first.len(), 1, "one connection for the one slot: {first:?}");
    for _ in 0..5 {
        assert!(run("quick").await.checks[0].ok);
    }
    assert_eq!(backends(&admin, &target).await, first, "the same connection, reused");
    // The database's own refusal leaves the connection sound: kept.
    let missing = run("refused").await;
    assert!(missing.checks[0].error.as_deref().is_some_and(|e| e.contains("no_such_table")), "{missing:?}");
    assert!(run("quick").await.checks[0].ok);
    assert_eq!(backends(&admin, &target).await, first, "kept after a refused statement");
    assert_eq!(ctx.targets.db.stats().0, 0, "the checks never open the pool");

    // A check cut off mid-statement: its connection still has the sleep's answer coming,
    // so it is closed; the next check opens a fresh one and answers at once, not after the
    // sleep (as it would on the old connection).
    let cut = run("slow").await;
    assert_eq!(cut.checks[0].error.as_deref(), Some("timed out after 300ms"));
    let next = run("quick").await;
    assert!(next.checks[0].ok, "{next:?}");
    assert!(next.duration_ms < 1000, "the next check waited for the cut-off sleep: {} ms", next.duration_ms);
    let now = backends(&admin, &target).await;
    assert!(now.iter().any(|pid| !first.contains(pid)), "a fresh connection: {first:?} then {now:?}");

    admin.close().await;
    ctx.targets.db.close().await;
    target.drop_db().await;
    state.drop_db().await;
}
