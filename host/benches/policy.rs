//! Policy evaluation benchmark (prints a table): `cargo bench -p warden --bench policy`.
//!
//! `status-alert` on a typical snapshot, one thread, in five modes: ours (a fresh sandboxed
//! Store per evaluation from the pre-instantiated component), Spin-style (link and
//! instantiate per call) on our pooling engine and on an on-demand engine (each instance
//! mapped and unmapped by the OS), one reused instance (no isolation: the floor), and the
//! same decision natively; the same kind of policy built in Python and in JavaScript (when
//! WARDEN_TEST_PLUGINS holds them; `POLICY_GUESTS_ONLY=N` runs only those). Then cold and warm
//! start-up with the artifact cache.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a short smoke run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use warden::config::{Grants, Limits, PolicySpec};
use warden::health::{CheckResult, Snapshot, Status};
use warden::runtime::bench::Modes;
use warden::runtime::{Allocation, Capabilities, PolicyEngine};
use warden::tasks::Event;

fn snapshot() -> Snapshot {
    let check = |name: &str| CheckResult {
        name: name.into(),
        kind: name.into(),
        critical: name == "db",
        ok: true,
        error: None,
        duration_ms: 3,
        target: None,
    };
    Snapshot {
        job: "health-probe".into(),
        status: Status::Operational,
        checked_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        duration_ms: 9,
        checks: vec![check("db"), check("s3"), check("sessions")],
    }
}

struct Row {
    name: &'static str,
    samples: Vec<Duration>,
    /// Minor page faults per evaluation (the pages a fresh instance touched and the reset
    /// did not keep resident), where measured.
    faults: Option<f64>,
}

impl Row {
    fn new(name: &'static str, samples: Vec<Duration>) -> Self {
        Row { name, samples, faults: None }
    }
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    fields.split_whitespace().nth(7).and_then(|f| f.parse().ok()).unwrap_or(0)
}

fn report(rows: &mut [Row]) {
    println!("{:<44} {:>10} {:>10} {:>12} {:>12}", "mode", "median µs", "p99 µs", "evals/s", "faults/eval");
    for row in rows.iter_mut() {
        row.samples.sort_unstable();
        let pct = |p: f64| row.samples[((row.samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
        let total: f64 = row.samples.iter().map(Duration::as_secs_f64).sum();
        let faults = row.faults.map_or_else(|| "-".to_owned(), |f| format!("{f:.1}"));
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>12.0} {:>12}",
            row.name,
            pct(0.5),
            pct(0.99),
            row.samples.len() as f64 / total,
            faults
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 200 };
    let plugins = std::env::var_os("WARDEN_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins"));
    let spec = PolicySpec {
        name: "status-alert".into(),
        component: plugins.join("status-alert.wasm"),
        on: vec!["health-probe".into()],
        config: vec![("product".into(), "MNW".into()), ("cooldown".into(), "5m".into())],
        grants: Grants::default(),
        sql_database: None,
        s3_bucket: None,
        limits: Limits::default(),
        quarantine_after: u32::MAX,
        enabled: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = tempfile_dir();
    let engine = PolicyEngine::new(Some(&cache)).unwrap();
    let policy = engine.load(&spec).unwrap();
    let snap = snapshot();
    let event = Event::Snapshot(snap.clone());
    let now = snap.checked_at;
    let state: BTreeMap<String, String> = [("last_status", "operational"), ("last_told", "operational")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let modes = Modes::new(&engine, &policy, &event, now).unwrap();
    // The same per-call instantiation on an engine without the pool (each instance mapped
    // and unmapped by the OS), to show what the pool and its page reuse contribute.
    let on_demand = PolicyEngine::with(Allocation::OnDemand, Some(&cache)).unwrap();
    let on_demand_policy = on_demand.load(&spec).unwrap();
    let on_demand_modes = Modes::new(&on_demand, &on_demand_policy, &event, now).unwrap();

    println!(
        "policy benchmark ({} run, {n} evaluations per mode, component {} bytes)",
        if full { "full" } else { "smoke" },
        std::fs::metadata(&spec.component).unwrap().len()
    );
    let mut rows = Vec::new();
    // `POLICY_GUESTS_ONLY=N`: only the Python and JavaScript rows, N evaluations each (to
    // profile them alone; the smoke run's shared artifact cache unless `--bench`).
    if let Some(count) = std::env::var("POLICY_GUESTS_ONLY").ok().and_then(|c| c.parse().ok()) {
        let mut guests = rt.block_on(guest_rows(&plugins, count, &event, now, full));
        report(&mut guests.rows);
        return;
    }
    rt.block_on(async {
        let time = |samples: &mut Vec<Duration>, t: Instant| samples.push(t.elapsed());
        // Warm up every path once.
        engine.evaluate(&policy, "health-probe", &event, state.clone(), now, Capabilities::default()).await.unwrap();

        let mut s = Vec::with_capacity(n);
        let faults0 = minor_faults();
        for _ in 0..n {
            let t = Instant::now();
            let e = engine
                .evaluate(&policy, "health-probe", &event, state.clone(), now, Capabilities::default())
                .await
                .unwrap();
            time(&mut s, t);
            assert!(e.actions.is_empty());
        }
        let faults = (minor_faults() - faults0) as f64 / n as f64;
        rows.push(Row { name: "ours: fresh sandbox (pooling + InstancePre)", samples: s, faults: Some(faults) });

        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            modes.instantiate_per_call().await.unwrap();
            time(&mut s, t);
        }
        rows.push(Row::new("Spin-style instantiate per call, pooling", s));

        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            on_demand_modes.instantiate_per_call().await.unwrap();
            time(&mut s, t);
        }
        rows.push(Row::new("Spin-style instantiate per call, on-demand", s));

        let mut reused = modes.reused().await.unwrap();
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            modes.call_reused(&mut reused).await.unwrap();
            time(&mut s, t);
        }
        rows.push(Row::new("reused instance (no isolation; floor)", s));
    });

    let rules = status_alert::Rules {
        product: "MNW".into(),
        cooldown_ms: 300_000,
        failure_threshold: 1,
        success_threshold: 1,
        name_job: false,
        remind_every_ms: 0,
        escalate_after_ms: 0,
    };
    let wit_snap = warden_policy::Snapshot {
        job: snap.job.clone(),
        status: warden_policy::Status::Operational,
        checked_at_ms: now.timestamp_millis(),
        duration_ms: snap.duration_ms,
        checks: snap
            .checks
            .iter()
            .map(|c| warden_policy::CheckResult {
                name: c.name.clone(),
                kind: c.kind.clone(),
                critical: c.critical,
                ok: c.ok,
                error: None,
                duration_ms: c.duration_ms,
            })
            .collect(),
    };
    let mut s = Vec::with_capacity(n);
    for _ in 0..n {
        let mut st = state.clone();
        let t = Instant::now();
        let a = status_alert::decide(&rules, std::hint::black_box(&wit_snap), now.timestamp_millis(), &mut st);
        s.push(t.elapsed());
        std::hint::black_box(a);
    }
    rows.push(Row::new("native (the same decide, no sandbox)", s));
    rows.push(Row::new("in the daemon: interleaved with real runs, cold", in_the_daemon(&plugins, n / 10)));
    rows.extend(rt.block_on(sql_rows(&engine, &plugins, n / 10, &event, now)));
    let guests = rt.block_on(guest_rows(&plugins, n / 10, &event, now, full));
    rows.extend(guests.rows);
    report(&mut rows);
    for (name, cold_ms, warm_ms, bytes) in guests.start_up {
        println!("{:<44} {:>10.0} ms cold, {:.1} ms warm ({:.1} MB)", name, cold_ms, warm_ms, bytes as f64 / 1e6);
    }

    // Start-up: compile vs load from the on-disk artifact cache.
    let cold_dir = tempfile_dir();
    let t = Instant::now();
    let cold = PolicyEngine::new(Some(&cold_dir)).unwrap();
    cold.load(&spec).unwrap();
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(cold);
    let t = Instant::now();
    let warm = PolicyEngine::new(Some(&cold_dir)).unwrap();
    warm.load(&spec).unwrap();
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("{:<44} {:>10.1} ms", "start-up, cold (compile + cache write)", cold_ms);
    println!("{:<44} {:>10.1} ms", "start-up, warm (artifact cache)", warm_ms);
    println!("{:<44} {:>10}", "pagemap_scan (reset dirty pages only)", engine.pagemap_scan_available());
    println!(
        "{:<44} {:>10} ({:.1} GiB virtual)",
        "allocation",
        format!("{:?}", engine.allocation()),
        engine.pool_reservation_bytes() as f64 / (1u64 << 30) as f64
    );
    let _ = std::fs::remove_dir_all(cache);
    let _ = std::fs::remove_dir_all(cold_dir);
}

/// The Python and JavaScript builds of `status-mail` (scripts/build-plugins.sh --tests puts
/// them in WARDEN_TEST_PLUGINS): a fresh sandbox per evaluation, like ours for Rust, on a
/// snapshot that changes nothing; and their start-up, cold and from the artifact cache.
struct Guests {
    rows: Vec<Row>,
    start_up: Vec<(&'static str, f64, f64, u64)>,
}

async fn guest_rows(
    plugins: &std::path::Path,
    n: usize,
    event: &Event,
    now: chrono::DateTime<Utc>,
    full: bool,
) -> Guests {
    let mut out = Guests { rows: Vec::new(), start_up: Vec::new() };
    let builds = [
        (
            "status-mail-py.wasm",
            "Python (componentize-py): fresh sandbox",
            "Python: reused instance (floor)",
            "Python start-up",
        ),
        (
            "status-mail-js.wasm",
            "JavaScript (componentize-js): fresh sandbox",
            "JavaScript: reused instance (floor)",
            "JavaScript start-up",
        ),
    ];
    for (file, row, floor, start) in builds {
        let component = plugins.join(file);
        if !component.exists() {
            println!("{file}: not built (scripts/build-plugins.sh --tests --out DIR; WARDEN_TEST_PLUGINS=DIR)");
            continue;
        }
        let spec = PolicySpec {
            name: "status-mail".into(),
            component: component.clone(),
            on: vec!["health-probe".into()],
            config: vec![("product".into(), "MNW".into())],
            grants: Grants::default(),
            sql_database: None,
            s3_bucket: None,
            limits: Limits { deadline: warden::config::Duration::try_from("5s").unwrap(), ..Limits::default() },
            quarantine_after: u32::MAX,
            enabled: true,
        };
        // Cold: a cache of its own, so this compiles; warm: the same cache again. The smoke
        // run (in the test command) reads the tests' shared cache instead of compiling.
        let dir = if full {
            tempfile_dir()
        } else {
            std::env::var_os("WARDEN_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm-cache"))
        };
        let t = Instant::now();
        let engine = PolicyEngine::new(Some(&dir)).unwrap();
        engine.load(&spec).unwrap();
        let cold_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(engine);
        let t = Instant::now();
        let engine = PolicyEngine::new(Some(&dir)).unwrap();
        let policy = engine.load(&spec).unwrap();
        let warm_ms = t.elapsed().as_secs_f64() * 1e3;
        out.start_up.push((start, cold_ms, warm_ms, std::fs::metadata(&component).unwrap().len()));
        let state: BTreeMap<String, String> = [("last_status".to_owned(), "operational".to_owned())].into();
        engine.evaluate(&policy, "health-probe", event, state.clone(), now, Capabilities::default()).await.unwrap();
        let mut samples = Vec::with_capacity(n);
        let faults0 = minor_faults();
        for _ in 0..n {
            let t = Instant::now();
            let e = engine
                .evaluate(&policy, "health-probe", event, state.clone(), now, Capabilities::default())
                .await
                .unwrap();
            samples.push(t.elapsed());
            assert!(e.actions.is_empty());
        }
        let faults = (minor_faults() - faults0) as f64 / n as f64;
        out.rows.push(Row { name: row, samples, faults: Some(faults) });
        // The same calls into one instance: what the guest's own code costs.
        let modes = Modes::new(&engine, &policy, event, now).unwrap();
        let mut reused = modes.reused().await.unwrap();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            modes.call_reused(&mut reused).await.unwrap();
            samples.push(t.elapsed());
        }
        out.rows.push(Row::new(floor, samples));
        if full {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    out
}

/// Evaluations as the daemon makes them: each one inside a real run of a probe job (the
/// SQLite target queried, the store claimed, read and committed) on the daemon's runtime (one
/// worker), so caches are as cold as between two runs in `warden run`. Times the evaluation alone.
fn in_the_daemon(plugins: &std::path::Path, runs: usize) -> Vec<Duration> {
    let dir = tempfile_dir();
    let path = dir.join("schedules.toml");
    let body = format!(
        "version = 1\n[[job]]\nname = \"probe\"\nevery = \"30s\"\ntask = \"probe\"\n\
         checks = [{{ name = \"db\", kind = \"db\", critical = true }}]\n\
         [[policy]]\nname = \"status-alert\"\ncomponent = \"{}\"\non = [\"probe\"]\n",
        plugins.join("status-alert.wasm").display()
    );
    std::fs::write(&path, body).unwrap();
    // The runtime `warden run` builds: one worker (cli::main, WARDEN_WORKERS).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let samples = rt.block_on(async {
        let config = warden::config::load(&path).unwrap();
        let ctx = warden::daemon::open(&config).await.unwrap();
        let engine = std::sync::Arc::new(warden::daemon::policy_engine(Some(&config)).unwrap());
        let set = warden::daemon::PolicySet::load(engine, &config, None).unwrap();
        let job = config.job("probe").unwrap().clone();
        let start = Utc::now();
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs + 1 {
            let scheduled = start + chrono::Duration::seconds(i as i64);
            let report = warden::daemon::execute_observed(
                &job,
                scheduled,
                warden::daemon::Trigger::Schedule,
                &ctx,
                Some(&set),
                &|_| {},
            )
            .await;
            let (_, evaluation) = &report.evaluations[0];
            // The first evaluation is the bootstrap; every later one sees a stored state.
            if i > 0 {
                samples.push(Duration::from_micros(evaluation.as_ref().unwrap().micros));
            }
        }
        samples
    });
    let _ = std::fs::remove_dir_all(dir);
    samples
}

/// A granted one-row `SELECT 1` on each backend: the whole evaluation of `sql-guest` (guard,
/// read-only connection, reset), the statement guard alone, and the host's query before and
/// after this grant was walled (the old sequence on a writable pool: SQLite `PRAGMA
/// query_only` on and off around it; PostgreSQL `BEGIN`, `SET TRANSACTION READ ONLY`, `SET
/// LOCAL statement_timeout`, the query, `ROLLBACK`).
async fn sql_rows(
    engine: &PolicyEngine,
    plugins: &std::path::Path,
    n: usize,
    event: &Event,
    now: chrono::DateTime<Utc>,
) -> Vec<Row> {
    use warden::capabilities::sql::{guard, read_only};
    let mut rows = Vec::new();
    let mut spec = PolicySpec {
        name: "sql-guest".into(),
        component: plugins.join("sql-guest.wasm"),
        on: vec!["health-probe".into()],
        config: vec![("query".into(), "SELECT 1".into())],
        grants: Grants::default(),
        sql_database: None,
        s3_bucket: None,
        limits: Limits::default(),
        quarantine_after: u32::MAX,
        enabled: true,
    };
    spec.grants.sql_read = true;
    if !spec.component.exists() {
        println!("sql-guest.wasm: not built (scripts/build-plugins.sh --tests); no sql:read rows");
        return rows;
    }
    let policy = engine.load(&spec).unwrap();
    let dir = tempfile_dir();
    let file = dir.join("app.db");
    // The jobs' pools as `db::Pool::open` builds them: no ping before a hand-out.
    let writable = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&file).create_if_missing(true))
        .await
        .unwrap();
    let sqlite = warden::targets::PolicyDb::open(&warden::config::DbUrl::Sqlite(file.clone()), None).unwrap();
    let pg = bench_pg_role().await;
    let mut backends: Vec<(&'static str, warden::targets::PolicyDb, guard::Backend)> =
        vec![("SQLite", sqlite, guard::Backend::Sqlite)];
    if let Some((_, url, _)) = &pg {
        let target = warden::config::DbUrl::Postgres(url.clone());
        backends.push((
            "PostgreSQL",
            warden::targets::PolicyDb::open(&target, None).unwrap(),
            guard::Backend::Postgres,
        ));
    }
    for (label, db, backend) in backends {
        let name =
            |what: &str| -> &'static str { Box::leak(format!("sql:read SELECT 1, {label}: {what}").into_boxed_str()) };
        let caps = || Capabilities { sql: Some(db.clone()), s3: None };
        let e = engine.evaluate(&policy, "health-probe", event, BTreeMap::new(), now, caps()).await.unwrap();
        assert!(format!("{:?}", e.actions).contains("rows=1 cells=1"), "{:?}", e.actions);
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            engine.evaluate(&policy, "health-probe", event, BTreeMap::new(), now, caps()).await.unwrap();
            samples.push(t.elapsed());
        }
        rows.push(Row::new(name("whole evaluation"), samples));
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n * 10 {
            let t = Instant::now();
            guard::check(backend, std::hint::black_box("SELECT 1")).unwrap();
            samples.push(t.elapsed());
        }
        rows.push(Row::new(name("the guard (parse + check)"), samples));
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            guard::check(backend, "SELECT 1").unwrap();
            read_only(&db, "SELECT 1", 1000).await.unwrap();
            samples.push(t.elapsed());
        }
        rows.push(Row::new(name("host query, after (guard + walls)"), samples));
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            match &pg {
                Some((_, _, admin)) if backend == guard::Backend::Postgres => {
                    let mut tx = admin.begin().await.unwrap();
                    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await.unwrap();
                    sqlx::query("SET LOCAL statement_timeout = 5000").execute(&mut *tx).await.unwrap();
                    let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await.unwrap();
                    tx.rollback().await.unwrap();
                }
                _ => {
                    let mut conn = writable.acquire().await.unwrap();
                    sqlx::query("PRAGMA query_only = 1").execute(&mut *conn).await.unwrap();
                    let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await.unwrap();
                    sqlx::query("PRAGMA query_only = 0").execute(&mut *conn).await.unwrap();
                }
            }
            samples.push(t.elapsed());
        }
        rows.push(Row::new(name("host query, before (writable pool)"), samples));
    }
    if let Some((role, _, admin)) = pg {
        admin.close().await;
        bench_drop_role(&role).await;
    }
    let _ = std::fs::remove_dir_all(dir);
    rows
}

/// A least-privilege role on the tests' PostgreSQL (`WARDEN_TEST_PG`, else the local
/// default), with its URL and a superuser pool; `None` (and a line saying so) without one.
async fn bench_pg_role() -> Option<(String, String, sqlx::PgPool)> {
    let admin_url =
        std::env::var("WARDEN_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).test_before_acquire(false);
    let Ok(admin) = admin.connect(&admin_url).await else {
        println!("no PostgreSQL at {admin_url}: no PostgreSQL sql:read rows");
        return None;
    };
    let role = format!("warden_p_bench_{}", std::process::id());
    let database: String = sqlx::query_scalar("SELECT current_database()::text").fetch_one(&admin).await.unwrap();
    let sql = format!("CREATE ROLE {role} LOGIN PASSWORD 'bench'; GRANT CONNECT ON DATABASE \"{database}\" TO {role}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    let host = &admin_url[admin_url.rfind('@').unwrap() + 1..admin_url.rfind('/').unwrap()];
    Some((role.clone(), format!("postgres://{role}:bench@{host}/{database}"), admin))
}

async fn bench_drop_role(role: &str) {
    let admin_url =
        std::env::var("WARDEN_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; \
         DROP OWNED BY {role}; DROP ROLE {role}"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    admin.close().await;
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("warden-bench-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
