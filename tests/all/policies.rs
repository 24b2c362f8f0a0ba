//! Policies through the real components built from `plugins/` and `tests/guests/`
//! (scripts/build-plugins.sh --tests --out target/plugins): the behaviour tables of the
//! three shipped policies, and the sandbox against guests that misbehave on purpose.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use warden::config::{Grants, Limits, PolicySpec};
use warden::health::{CheckResult, Snapshot, Status};
use warden::runtime::{ActionRecord, Capabilities, EvalError, Evaluation, Policy, PolicyEngine, Priority};
use warden::tasks::{Event, Gauge};

use crate::schedule::{policy, probe, schedule};

/// The `[[policy]]` table of the shipped status-alert on `health-probe`, without cooldown, as
/// the end-to-end tests configure it.
pub fn status_alert_policy() -> String {
    policy(
        "status-alert",
        &plugins_dir().join("status-alert.wasm"),
        &["health-probe"],
        "config = { cooldown = \"0s\" }",
    )
}

pub fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("WARDEN_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("status-alert.wasm").exists() && dir.join("bad-guest.wasm").exists(),
        "no built components in {}: run scripts/build-plugins.sh --tests --out target/plugins (scripts/test.sh does)",
        dir.display()
    );
    dir
}

pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    // Compiled components are cached on disk, as in production, so reruns load in milliseconds.
    ENGINE.get_or_init(|| PolicyEngine::new(Some(&crate::support::shared_cache())).unwrap())
}

pub fn spec(name: &str, file: &str, config: &[(&str, &str)]) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        component: plugins_dir().join(file),
        on: vec!["job".into()],
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        grants: Grants::default(),
        sql_database: None,
        s3_bucket: None,
        limits: Limits::default(),
        quarantine_after: 5,
        enabled: true,
    }
}

/// One policy and its state, threaded from evaluation to evaluation as the host commits it.
struct Harness {
    policy: Policy,
    state: BTreeMap<String, String>,
}

impl Harness {
    fn new(spec: PolicySpec) -> Harness {
        Harness { policy: engine().load(&spec).unwrap_or_else(|e| panic!("{e}")), state: BTreeMap::new() }
    }

    async fn eval(&mut self, event: &Event, now: DateTime<Utc>) -> Result<Evaluation, EvalError> {
        let result =
            engine().evaluate(&self.policy, "job", event, self.state.clone(), now, Capabilities::default()).await;
        if let Ok(e) = &result {
            for (k, v) in &e.state_writes {
                match v {
                    Some(v) => self.state.insert(k.clone(), v.clone()),
                    None => self.state.remove(k),
                };
            }
        }
        result
    }

    /// Compact: "email:<subject>", "notify:<status>", "ticket:<priority>".
    async fn decide(&mut self, event: &Event, now: DateTime<Utc>) -> Vec<String> {
        let evaluation = self.eval(event, now).await.unwrap_or_else(|e| panic!("{e}"));
        evaluation
            .actions
            .into_iter()
            .filter_map(|a| match a {
                ActionRecord::EmailAdmin { subject, .. } => Some(format!("email:{subject}")),
                ActionRecord::NotifySubscribers { status, .. } => Some(format!("notify:{}", status.as_str())),
                ActionRecord::OpenTicket { priority, .. } => Some(format!("ticket:{priority:?}")),
                ActionRecord::Log { .. } => None,
            })
            .collect()
    }
}

pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap() + chrono::Duration::minutes(minutes)
}

pub fn snapshot(status: Status, minutes: i64) -> Event {
    let check = |name: &str, ok: bool| CheckResult {
        name: name.into(),
        kind: name.into(),
        critical: name == "db",
        ok,
        error: (!ok).then(|| "connection refused".to_owned()),
        duration_ms: 2,
        target: None,
    };
    Event::Snapshot(Snapshot {
        job: "health-probe".into(),
        status,
        checked_at: at(minutes),
        duration_ms: 7,
        checks: vec![
            check("db", status != Status::Error),
            check("s3", status == Status::Operational),
            check("sessions", true),
        ],
    })
}

fn gauges(pairs: &[(&str, f64)]) -> Event {
    Event::Gauges {
        gauges: pairs.iter().map(|(n, v)| Gauge { name: n.to_string(), labels: vec![], value: *v }).collect(),
    }
}

use Status::{Degraded as D, Error as E, Operational as O};

fn status_alert(config: &[(&str, &str)]) -> Harness {
    let mut cfg = vec![("product", "MNW"), ("cooldown", "5m")];
    cfg.extend_from_slice(config);
    Harness::new(spec("status-alert", "status-alert.wasm", &cfg))
}

async fn series(h: &mut Harness, steps: &[(Status, i64)]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for &(status, minute) in steps {
        out.push(h.decide(&snapshot(status, minute), at(minute)).await);
    }
    out
}

#[tokio::test]
async fn status_alert_skips_the_bootstrap_and_tells_transitions_with_ticket_priorities() {
    let mut h = status_alert(&[]);
    let got = series(&mut h, &[(O, 0), (O, 1), (D, 10), (E, 20), (O, 30)]).await;
    assert!(got[0].is_empty() && got[1].is_empty(), "bootstrap None -> Operational is silent: {got:?}");
    assert_eq!(got[2], ["ticket:High", "email:MNW degraded — partial service failure", "notify:degraded"]);
    assert_eq!(got[3], ["ticket:Critical", "email:MNW down — critical service failure", "notify:error"]);
    assert_eq!(got[4], ["email:MNW recovered — all services operational", "notify:operational"]);

    let mut boot_down = status_alert(&[]);
    assert_eq!(
        series(&mut boot_down, &[(E, 0)]).await[0],
        ["ticket:Critical", "email:MNW down — critical service failure", "notify:error"]
    );
}

#[tokio::test]
async fn status_alert_shares_one_cooldown_and_tells_the_trailing_recovery() {
    let mut h = status_alert(&[]);
    let got = series(&mut h, &[(O, 0), (D, 1), (O, 2), (O, 5), (O, 6), (O, 7)]).await;
    assert_eq!(got[1], ["ticket:High", "email:MNW degraded — partial service failure", "notify:degraded"]);
    assert!(got[2].is_empty(), "the recovery inside the cooldown waits: {:?}", got[2]);
    assert!(got[3].is_empty(), "4 minutes: still inside");
    assert_eq!(got[4], ["email:MNW recovered — all services operational", "notify:operational"]);
    assert!(got[5].is_empty(), "told once");
}

#[tokio::test]
async fn status_alert_thresholds_need_consecutive_results() {
    let mut h = status_alert(&[("failure_threshold", "3"), ("success_threshold", "2")]);
    let got = series(&mut h, &[(O, 0), (D, 1), (D, 2), (O, 3), (D, 4), (D, 5), (D, 6), (O, 20), (O, 21)]).await;
    assert!(got[1..6].iter().all(Vec::is_empty), "{got:?}");
    assert_eq!(got[6][0], "ticket:High");
    assert!(got[7].is_empty(), "one success is not enough");
    assert_eq!(got[8], ["email:MNW recovered — all services operational", "notify:operational"]);
}

#[tokio::test]
async fn status_alert_email_body_is_the_original_monitors() {
    let mut h = status_alert(&[]);
    h.eval(&snapshot(O, 0), at(0)).await.unwrap();
    let e = h.eval(&snapshot(D, 1), at(1)).await.unwrap();
    let body = e
        .actions
        .iter()
        .find_map(|a| match a {
            ActionRecord::EmailAdmin { body, .. } => Some(body.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        body,
        "Status: Degraded\nPrevious status: Operational\nJob: health-probe\nDB: OK\nS3: FAIL (connection refused)\nSessions: OK\nCheck duration: 7 ms\n"
    );
    assert_eq!(h.state.get("last_status").map(String::as_str), Some("degraded"));
}

async fn tickets(h: &mut Harness, series: &[(f64, f64)], names: (&str, &str)) -> Vec<bool> {
    let mut out = Vec::new();
    for (i, &(value, max)) in series.iter().enumerate() {
        let actions = h.decide(&gauges(&[(names.0, value), (names.1, max)]), at(i as i64)).await;
        out.push(actions.iter().any(|a| a.starts_with("ticket:")));
    }
    out
}

#[tokio::test]
async fn pool_pressure_hysteresis_through_the_component() {
    let pool = ("db_pool_active", "db_pool_max");
    let table: [(&[f64], &[bool]); 2] =
        [(&[80.0, 65.0, 85.0], &[true, false, false]), (&[80.0, 55.0, 85.0], &[true, false, true])];
    for (pcts, want) in table {
        let mut h = Harness::new(spec("pool-pressure", "pool-pressure.wasm", &[("cooldown", "0s")]));
        let series: Vec<(f64, f64)> = pcts.iter().map(|p| (*p, 100.0)).collect();
        assert_eq!(tickets(&mut h, &series, pool).await, want, "{pcts:?}");
    }
    // The cooldown backstops a quick re-arm.
    let mut h = Harness::new(spec("pool-pressure", "pool-pressure.wasm", &[("cooldown", "5m")]));
    let series = [(80.0, 100.0), (55.0, 100.0), (85.0, 100.0), (90.0, 100.0), (90.0, 100.0), (90.0, 100.0)];
    assert_eq!(tickets(&mut h, &series, pool).await, [true, false, false, false, false, true]);
}

#[tokio::test]
async fn pg_saturation_tickets_under_its_cooldown_with_the_diagnostic_query() {
    let mut h = Harness::new(spec("pg-saturation", "pg-saturation.wasm", &[("cooldown", "5m")]));
    let names = ("pg_client_backends", "pg_max_connections");
    let series =
        [(80.0, 100.0), (81.0, 100.0), (95.0, 100.0), (95.0, 100.0), (95.0, 100.0), (95.0, 100.0), (95.0, 100.0)];
    assert_eq!(tickets(&mut h, &series, names).await, [false, true, false, false, false, false, true]);
    let mut h = Harness::new(spec("pg-saturation", "pg-saturation.wasm", &[]));
    let e = h.eval(&gauges(&[(names.0, 90.0), (names.1, 100.0)]), at(0)).await.unwrap();
    let ticket = e.actions.iter().find(|a| matches!(a, ActionRecord::OpenTicket { .. })).unwrap();
    let ActionRecord::OpenTicket { body, priority, dedup_key, .. } = ticket else { unreachable!() };
    assert!(body.contains("FROM pg_stat_activity"), "{body}");
    assert_eq!(*priority, Priority::High);
    assert!(dedup_key.starts_with("pg-saturation:"), "the host prefixes the plugin: {dedup_key}");
}

fn bad(mode: &str) -> PolicySpec {
    let mut s = spec(&format!("bad-{mode}"), "bad-guest.wasm", &[("mode", mode)]);
    s.limits =
        Limits { memory_bytes: 8 << 20, deadline: warden::config::Duration::try_from("50ms").unwrap(), sql_rows: 10 };
    s
}

async fn run_bad(mode: &str) -> Result<Evaluation, EvalError> {
    Harness::new(bad(mode)).eval(&snapshot(O, 0), at(0)).await
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_deadline_and_others_still_run() {
    let started = std::time::Instant::now();
    let err = run_bad("spin").await.unwrap_err();
    assert_eq!(err, EvalError::Deadline("50ms".into()));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    // The next evaluation, of another policy, runs normally.
    let mut h = status_alert(&[]);
    assert_eq!(h.decide(&snapshot(E, 0), at(0)).await.len(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_yields_to_other_tasks_until_its_deadline() {
    // One thread, as the daemon's one worker: the guest spins for its whole deadline while a
    // ticker beside it must keep running.
    let mut spec = bad("spin");
    spec.limits.deadline = warden::config::Duration::try_from("400ms").unwrap();
    let mut h = Harness::new(spec);
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let started = std::time::Instant::now();
    let err = h.eval(&snapshot(O, 0), at(0)).await.unwrap_err();
    let spun = started.elapsed();
    ticker.abort();
    assert_eq!(err, EvalError::Deadline("400ms".into()));
    assert!(spun >= std::time::Duration::from_millis(400), "stopped early: {spun:?}");
    let ticks = ticks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ticks >= 10, "the ticker ran {ticks} times in {spun:?}: the guest held the thread");
}

#[tokio::test]
async fn a_memory_bomb_stops_at_the_cap() {
    assert!(matches!(run_bad("hog").await.unwrap_err(), EvalError::Memory(_)));
}

#[tokio::test]
async fn a_panic_is_a_trap_and_an_error_result_is_a_refusal() {
    assert!(matches!(run_bad("panic").await.unwrap_err(), EvalError::Trap(_)));
    assert_eq!(run_bad("refuse").await.unwrap_err(), EvalError::Refused("no thanks".into()));
}

#[tokio::test]
async fn oversized_output_is_capped() {
    let flood = run_bad("flood").await.unwrap_err();
    assert!(matches!(&flood, EvalError::Oversized(m) if m.contains("10000 actions")), "{flood:?}");
    assert!(matches!(run_bad("huge").await.unwrap_err(), EvalError::Oversized(_)));
    assert!(
        matches!(run_bad("state-bomb").await.unwrap_err(), EvalError::Trap(m) if m.contains("state write too large"))
    );
}

#[tokio::test]
async fn memory_is_fresh_for_every_evaluation_of_a_scattering_guest() {
    // The guest dirties 128 disjoint pages and counts those it finds already dirty: the
    // pool's reset must put back every one (vendor/README.md), evaluation after evaluation.
    let mut h = Harness::new(bad("scatter"));
    for i in 0..5 {
        let e = h.eval(&snapshot(O, i), at(i)).await.unwrap();
        assert!(
            matches!(&e.actions[..], [ActionRecord::Log { message, .. }] if message == "residue 0"),
            "evaluation {i}: {:?}",
            e.actions
        );
    }
}

#[tokio::test]
async fn state_persists_between_evaluations() {
    let mut h = Harness::new(bad("ok"));
    h.eval(&snapshot(O, 0), at(0)).await.unwrap();
    let second = h.eval(&snapshot(O, 1), at(1)).await.unwrap();
    assert_eq!(h.state.get("seen").map(String::as_str), Some("2"));
    assert!(matches!(&second.actions[0], ActionRecord::Log { message, .. } if message == "evaluation 2 in mode `ok`"));
}

#[tokio::test]
async fn a_policy_that_keeps_failing_is_quarantined() {
    let mut s = bad("panic");
    s.quarantine_after = 2;
    let mut h = Harness::new(s);
    assert!(matches!(h.eval(&snapshot(O, 0), at(0)).await, Err(EvalError::Trap(_))));
    assert!(!h.policy.is_quarantined());
    assert!(matches!(h.eval(&snapshot(O, 0), at(0)).await, Err(EvalError::Trap(_))));
    assert!(h.policy.is_quarantined());
    assert_eq!(h.eval(&snapshot(O, 0), at(0)).await.unwrap_err(), EvalError::Quarantined(2));
    // The two evaluations are remembered for the admin API; the refusal is not one.
    let recent = h.policy.recent_evaluations();
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert!(
        recent.iter().all(|e| !e.ok && e.actions == 0 && e.error.as_deref().is_some_and(|m| m.contains("trap"))),
        "{recent:?}"
    );
}

#[tokio::test]
async fn ungranted_sql_fails_inside_the_guest_and_granted_sql_reads_only() {
    // Loaded without the grant (Python and JavaScript guests import every interface), the
    // call fails inside the guest, naming the grant, even with a database at hand.
    let s = spec("sql-guest", "sql-guest.wasm", &[]);
    let policy = engine().load(&s).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = warden::config::DbUrl::Sqlite(dir.path().join("t.db"));
    let pool = warden::db::Pool::open(
        &url,
        warden::db::PoolSettings {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(5),
            lazy: false,
            warden_owns: true,
        },
        None,
    )
    .await
    .unwrap();
    pool.execute("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2), (3)").await.unwrap();
    let read_only = warden::targets::PolicyDb::open(&url, None).unwrap();
    let caps = Capabilities { sql: Some(read_only.clone()), s3: None };
    let denied = engine().evaluate(&policy, "job", &snapshot(O, 0), BTreeMap::new(), at(0), caps).await.unwrap();
    assert!(
        matches!(&denied.actions[0], ActionRecord::Log { message, .. }
            if message.starts_with("sql error: sql:read is not granted") && message.contains("grants")),
        "{denied:?}"
    );
    let run = |query: &str| {
        let mut s = spec("sql-guest", "sql-guest.wasm", &[("query", query)]);
        s.grants.sql_read = true;
        s.limits.sql_rows = 2;
        let policy = engine().load(&s).unwrap();
        let caps = Capabilities { sql: Some(read_only.clone()), s3: None };
        async move {
            let e = engine().evaluate(&policy, "job", &snapshot(O, 0), BTreeMap::new(), at(0), caps).await.unwrap();
            match &e.actions[0] {
                ActionRecord::Log { message, .. } => message.clone(),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(run("SELECT n FROM t ORDER BY n LIMIT 2").await, "rows=2 cells=1,2");
    assert!(run("SELECT n FROM t").await.contains("more than 2 rows"));
    assert!(run("DELETE FROM t").await.starts_with("sql error:"), "writes are refused");
    let count: i64 = match &pool {
        warden::db::Pool::Sqlite(p) => sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(p).await.unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(count, 3);
}

#[test]
fn files_that_are_not_components_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    for (file, needle) in [(&garbage, "magic bytes"), (&core, "core wasm module")] {
        let mut s = spec("broken", "status-alert.wasm", &[]);
        s.component = file.clone();
        let err = engine().load(&s).unwrap_err().to_string();
        assert!(err.contains("policy \"broken\"") && err.contains(needle), "{err}");
    }
}

#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alien.wasm");
    let text = r#"(component
        (import "acme:weather/forecast@1.0.0" (instance (export "rain" (func (result bool)))))
    )"#;
    std::fs::write(&path, wat::parse_str(text).unwrap()).unwrap();
    let mut s = spec("alien", "status-alert.wasm", &[]);
    s.component = path;
    let err = engine().load(&s).unwrap_err().to_string();
    assert!(err.contains("acme:weather/forecast@1.0.0") && err.contains("does not provide"), "{err}");
}

#[tokio::test]
async fn state_writes_and_actions_commit_together_or_not_at_all() {
    use std::sync::Arc;
    use warden::daemon::{PolicySet, Trigger, execute_observed};

    let dir = tempfile::tempdir().unwrap();
    let closed = crate::support::free_port();
    let body = schedule()
        .product("MNW")
        .target(&format!("postgres://postgres@127.0.0.1:{closed}/gone"), "")
        .job(probe("probe", "30s", &[r#"{ name = "db", kind = "db", timeout = "2s" }"#]))
        .table(policy("status-alert", &plugins_dir().join("status-alert.wasm"), &["probe"], ""));
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, body.to_string()).unwrap();
    let cfg = warden::config::load(&path).unwrap();
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let cache = crate::support::shared_cache();
    let set = PolicySet::load(Arc::new(PolicyEngine::new(Some(&cache)).unwrap()), &cfg, None).unwrap();
    let job = cfg.job("probe").unwrap();

    // The commit fails after every row was written: nothing may remain in the store, and
    // the whole decision waits in the spool instead of being lost.
    ctx.store.fail_next_commit();
    let first = execute_observed(job, at(0), Trigger::Manual, &ctx, Some(&set), &|_| {}).await;
    assert!(!first.committed);
    assert!(first.spooled, "a commit that fails goes to the spool");
    let decided = first.evaluations[0].1.as_ref().unwrap();
    assert_eq!(decided.actions.iter().filter(|a| a.outbox_kind().is_some()).count(), 3, "ticket, email, notice");
    assert!(ctx.store.policy_state("status-alert", "probe").await.unwrap().is_empty(), "state write rolled back");
    assert!(ctx.store.outbox().await.unwrap().is_empty(), "actions rolled back");
    assert_eq!(ctx.store.count_health().await.unwrap(), 0, "snapshot rolled back");
    assert_eq!(ctx.spool.len(), 1);
    let spooled: Vec<String> = ctx.spool.undelivered().into_iter().map(|r| r.row.kind.to_string()).collect();
    assert_eq!(spooled, ["ticket", "email"], "email and ticket can be sent from the spool; the fan-out waits");

    // The next occurrence first moves the spool into the store (state and actions
    // together), then decides from that state: the database is still down, so nothing new.
    let second = execute_observed(job, at(1), Trigger::Manual, &ctx, Some(&set), &|_| {}).await;
    assert!(second.committed);
    assert!(ctx.spool.is_empty());
    assert_eq!(
        ctx.store.policy_state("status-alert", "probe").await.unwrap().get("last_status").map(String::as_str),
        Some("error")
    );
    let outbox = ctx.store.outbox().await.unwrap();
    let kinds: Vec<&str> = outbox.iter().map(|(kind, ..)| kind.as_str()).collect();
    assert_eq!(kinds, ["ticket", "email", "subscribers"], "the first decision's actions, once");
    assert!(outbox[1].2.contains("MNW down — critical service failure"), "{}", outbox[1].2);
    assert!(outbox.iter().all(|(.., policy, state)| policy.as_deref() == Some("status-alert") && state == "pending"));
    assert_eq!(ctx.store.count_health().await.unwrap(), 2);
}

/// SQLite commits a run that decided nothing new as one command (BEGIN IMMEDIATE to COMMIT)
/// on its writer connection: a statement failing halfway leaves nothing of the run, and the
/// connection is not left inside the transaction for the next claim and commit.
#[tokio::test]
async fn a_sqlite_commit_failing_halfway_leaves_nothing_and_the_next_one_lands() {
    use warden::store::{Decision, RunCommit};

    let dir = tempfile::tempdir().unwrap();
    let body = schedule().job(probe("probe", "30s", &[r#"{ name = "db", kind = "db", timeout = "2s" }"#]));
    let path = dir.path().join("schedules.toml");
    std::fs::write(&path, body.to_string()).unwrap();
    let cfg = warden::config::load(&path).unwrap();
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let outside =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("warden-state.db").display())).await.unwrap();
    let run = |id: i64, minutes: i64| {
        let Event::Snapshot(mut snap) = snapshot(Status::Operational, minutes) else { unreachable!() };
        snap.job = "probe".into();
        let decided = Decision {
            policy: "status-alert".into(),
            state_writes: Default::default(),
            outbox: vec![],
            read_mark: Some(String::new()),
        };
        RunCommit {
            run_id: Some(id),
            scheduled_at: at(minutes),
            snapshot: Some(snap),
            ..RunCommit::ok("probe", vec![decided])
        }
    };
    let outcome = |id: i64| {
        let outside = outside.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT outcome FROM job_runs WHERE id = $1")
                .bind(id)
                .fetch_one(&outside)
                .await
                .unwrap()
        }
    };

    // The snapshot's table is gone when the run commits: its end and its mark go too.
    let first = ctx.store.claim("probe", at(0), "schedule").await.unwrap().unwrap();
    sqlx::query("ALTER TABLE health_history RENAME TO health_away").execute(&outside).await.unwrap();
    let err = ctx.store.commit(&run(first, 0)).await.unwrap_err();
    assert!(err.to_string().contains("health_history"), "{err}");
    assert_eq!(outcome(first).await, "running", "the run's end rolled back");
    let marks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policy_state").fetch_one(&outside).await.unwrap();
    assert_eq!(marks, 0, "the decision mark rolled back");

    // Back in place: the next occurrence claims and commits on the same writer, and another
    // connection sees it (a connection left inside the failed transaction would hold it).
    sqlx::query("ALTER TABLE health_away RENAME TO health_history").execute(&outside).await.unwrap();
    let second = ctx.store.claim("probe", at(1), "schedule").await.unwrap().unwrap();
    ctx.store.commit(&run(second, 1)).await.unwrap();
    assert_eq!(outcome(second).await, "ok");
    assert_eq!(ctx.store.count_health().await.unwrap(), 1);
    let states = ctx.store.claim_with_state("probe", at(2), "schedule").await.unwrap().unwrap().1;
    assert_eq!(states["status-alert"]["warden:decided"], warden::store::decided_mark(at(1)));
}

#[tokio::test]
async fn a_wasi_guest_loads_and_every_reach_outside_is_denied() {
    // Built the ordinary way for WASI (wasm32-wasip1 std + the component adapter).
    let mut h = Harness::new(spec("wasi", "wasi-guest.wasm", &[]));
    let e = h.eval(&snapshot(O, 0), at(0)).await.unwrap_or_else(|e| panic!("{e}"));
    let said = |what: &str| -> String {
        e.actions
            .iter()
            .find_map(|a| match a {
                ActionRecord::Log { message, .. } => message.strip_prefix(&format!("{what}: ")).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no `{what}` report in {:?}", e.actions))
    };
    assert!(said("file").starts_with("denied"), "reading /etc/passwd: {}", said("file"));
    assert!(said("dir").starts_with("denied"), "listing /: {}", said("dir"));
    assert_eq!(said("env"), "empty", "the host's environment stays out");
    assert_eq!(said("args"), "0");
    assert!(said("socket").starts_with("denied"), "{}", said("socket"));
    assert_eq!(said("clock"), "ok", "clocks are allowed");
    assert!(
        e.logs.iter().any(|(stream, text)| stream == "stdout" && text.contains("hello from the guest's stdout")),
        "stdout is captured into the log: {:?}",
        e.logs
    );
    // The host is unaffected: the next policy evaluates normally.
    assert_eq!(status_alert(&[]).decide(&snapshot(E, 0), at(0)).await.len(), 3);
}

/// A WASI preview-2 guest in the component text format: `tcp` creates a TCP socket through
/// `wasi:sockets` and returns 0 on success or the error code + 1.
const SOCKET_GUEST: &str = r#"(component
  (import "wasi:sockets/network@0.2.0" (instance $network
    (type $ec (enum "unknown" "access-denied" "not-supported" "invalid-argument"
      "out-of-memory" "timeout" "concurrency-conflict" "not-in-progress" "would-block" "invalid-state"
      "new-socket-limit" "address-not-bindable" "address-in-use" "remote-unreachable"
      "connection-refused" "connection-reset" "connection-aborted" "datagram-too-large"
      "name-unresolvable" "temporary-resolver-failure" "permanent-resolver-failure"))
    (export "error-code" (type (eq $ec)))
    (type $fam (enum "ipv4" "ipv6"))
    (export "ip-address-family" (type (eq $fam)))
  ))
  (alias export $network "error-code" (type $error-code))
  (alias export $network "ip-address-family" (type $family))
  (import "wasi:sockets/tcp@0.2.0" (instance $tcp
    (export "tcp-socket" (type (sub resource)))
  ))
  (alias export $tcp "tcp-socket" (type $tcp-socket))
  (import "wasi:sockets/tcp-create-socket@0.2.0" (instance $create
    (alias outer 1 $error-code (type $ec))
    (export "error-code" (type $ec-e (eq $ec)))
    (alias outer 1 $family (type $fam))
    (export "ip-address-family" (type $fam-e (eq $fam)))
    (alias outer 1 $tcp-socket (type $sock))
    (export "tcp-socket" (type $sock-e (eq $sock)))
    (export "create-tcp-socket" (func (param "address-family" $fam-e) (result (result (own $sock-e) (error $ec-e)))))
  ))
  (core module $memory (memory (export "memory") 1))
  (core instance $mem (instantiate $memory))
  (alias core export $mem "memory" (core memory $m))
  (core func $create (canon lower (func $create "create-tcp-socket") (memory $m)))
  (core module $main
    (import "host" "create" (func $create (param i32 i32)))
    (import "host" "memory" (memory 1))
    (func (export "tcp") (result i32)
      (call $create (i32.const 0) (i32.const 16))
      (if (result i32) (i32.eqz (i32.load8_u (i32.const 16)))
        (then (i32.const 0))
        (else (i32.add (i32.load8_u (i32.const 20)) (i32.const 1)))))
  )
  (core instance $main (instantiate $main
    (with "host" (instance (export "create" (func $create)) (export "memory" (memory $m))))))
  (func (export "tcp") (result u32) (canon lift (core func $main "tcp")))
)"#;

#[tokio::test]
async fn a_wasi_guest_cannot_open_a_socket() {
    let bytes = wat::parse_str(SOCKET_GUEST).unwrap();
    let code = warden::runtime::bench::call_u32(engine(), &bytes, "tcp").await.unwrap_or_else(|e| panic!("{e:#}"));
    // error-code 1 is `access-denied`; 0 would mean a socket was created.
    assert_eq!(code, 1 + 1, "create-tcp-socket must be refused with access-denied");
}
