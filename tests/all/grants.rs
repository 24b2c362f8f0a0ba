//! The `sql:read` grant against a policy that means harm (`tests/guests/hostile-sql`), on
//! SQLite and on PostgreSQL: every escape it knows is refused, and afterwards nothing in the
//! target or the state store changed, no file was made, no secret came back and nothing it
//! tried stayed on the connection. The walls under the statement check are tried on their
//! own too, with statements sent past it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warden::config::DbUrl;
use warden::health::Status;
use warden::runtime::{ActionRecord, Capabilities};
use warden::targets::{PolicyDb, Targets};

use crate::policies::{at, engine, snapshot, spec};
use crate::schedule::{DB, probe, schedule};
use crate::support::{TestDb, pg_admin_url, unique, warden};

const SECRET: &str = "SECRET-7f3a9c-signing-key";

/// Runs the hostile guest once with `config`; its log lines.
async fn hostile(config: &[(&str, &str)], db: Option<PolicyDb>) -> Vec<String> {
    let mut s = spec("hostile-sql", "hostile-sql.wasm", config);
    s.grants.sql_read = true;
    s.limits.deadline = warden::config::Duration::try_from("30s").unwrap();
    let policy = engine().load(&s).unwrap();
    let caps = Capabilities { sql: db, s3: None };
    let e = engine()
        .evaluate(&policy, "job", &snapshot(Status::Operational, 0), BTreeMap::new(), at(0), caps)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    e.actions
        .iter()
        .filter_map(|a| match a {
            ActionRecord::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Every `escape` line says denied; returns how many there were.
fn all_refused(lines: &[String]) -> usize {
    let escapes: Vec<&String> = lines.iter().filter(|l| l.starts_with("escape ")).collect();
    let allowed: Vec<&&String> = escapes.iter().filter(|l| !l.contains(": denied: ")).collect();
    assert!(allowed.is_empty(), "escapes that were not refused: {allowed:#?}");
    assert!(lines.iter().all(|l| !l.contains(SECRET)), "a secret came back: {lines:#?}");
    escapes.len()
}

fn probe_line<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = format!("probe {name}: ");
    lines.iter().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no probe {name}: {lines:#?}"))
}

async fn sqlite_counts(app: &sqlx::SqlitePool, state: &sqlx::SqlitePool) -> (i64, i64, i64, i64) {
    let n = |pool: &sqlx::SqlitePool, sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    (
        n(app, "SELECT count(*) FROM session").await,
        n(app, "SELECT count(*) FROM sync_log").await,
        n(state, "SELECT count(*) FROM job_runs").await,
        n(state, "SELECT count(*) FROM settings").await,
    )
}

#[tokio::test]
async fn a_hostile_policy_cannot_leave_a_read_only_sqlite_target() {
    let (dir, path) = schedule().job(probe("health-probe", "1h", &[DB])).write();
    let config = warden::config::load(&path).unwrap();
    let targets = Targets::open(&config.targets).await.unwrap();
    let store = warden::store::StateStore::open(&config.state).await.unwrap();
    let (warden::db::Pool::Sqlite(app), warden::db::Pool::Sqlite(state)) = (&targets.db, store.pool()) else {
        panic!("the default schedule is on SQLite")
    };
    sqlx::raw_sql(
        "INSERT INTO session VALUES ('a', x'00', '2030-01-01 00:00:00'), ('b', x'00', '2030-01-01 00:00:00'); \
         INSERT INTO sync_log (user_id, seq, created_at) SELECT id, 1, '2026-01-01 00:00:00' FROM users LIMIT 1",
    )
    .execute(app)
    .await
    .unwrap();
    sqlx::query("INSERT INTO settings (key, value) VALUES ('unsubscribe-secret', $1)")
        .bind(SECRET)
        .execute(state)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO job_runs (job, scheduled_at, trigger, replica, started_at, outcome) \
         VALUES ('x', '2026-01-01', 'manual', 'r', '2026-01-01', 'ok')",
    )
    .execute(state)
    .await
    .unwrap();
    let before = sqlite_counts(app, state).await;
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let DbUrl::Sqlite(state_file) = &config.state.url else { unreachable!() };
    let mut s = spec("hostile-sql", "hostile-sql.wasm", &[]);
    s.grants.sql_read = true;
    assert!(targets.verify_grants(std::slice::from_ref(&s), &config.state.url).await.is_empty());

    let cfg = [("backend", "sqlite"), ("state", state_file.to_str().unwrap()), ("out", out.to_str().unwrap())];
    let lines = hostile(&cfg, targets.granted_sql(&s)).await;
    assert!(all_refused(&lines) >= 15, "{lines:#?}");
    assert_eq!(probe_line(&lines, "sessions"), before.0.to_string(), "reads still work after every escape");
    // Refused by the statement check, each naming what it refused.
    for (name, said) in [
        ("multi-delete", "3 statements"),
        ("attach-read", "statements"),
        ("vacuum-into", "not a statement warden reads"),
    ] {
        let line = lines.iter().find(|l| l.starts_with(&format!("escape {name}:"))).unwrap();
        assert!(line.contains(said), "{line}");
    }

    // A runaway query is stopped at the statement timeout, and two at once (both of the
    // policies' connections) leave the pool serving the next call.
    let started = Instant::now();
    let runaway = [("backend", "sqlite"), ("only", "runaway")];
    let (a, b) = tokio::join!(hostile(&runaway, targets.granted_sql(&s)), hostile(&runaway, targets.granted_sql(&s)));
    for lines in [a, b] {
        assert!(lines.iter().any(|l| l.starts_with("escape runaway: denied: statement timed out")), "{lines:#?}");
        assert_eq!(probe_line(&lines, "sessions"), before.0.to_string());
    }
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // The walls under the check, on their own: statements sent past it.
    let db = targets.granted_sql(&s).unwrap();
    let attach = format!("ATTACH DATABASE '{}' AS st", state_file.display());
    let vacuum = format!("VACUUM INTO '{}'", out.join("v.db").display());
    let attach_new = format!("ATTACH DATABASE '{}' AS x", out.join("a.db").display());
    for statement in [
        "SELECT 1; PRAGMA query_only = 0; DELETE FROM session",
        "DELETE FROM session",
        "DROP TABLE sync_log",
        "PRAGMA query_only = 0",
        "CREATE TEMP TABLE t AS SELECT 1",
        "BEGIN IMMEDIATE",
        attach.as_str(),
        attach_new.as_str(),
        vacuum.as_str(),
        "SELECT load_extension('/nonexistent')",
    ] {
        let got = warden::capabilities::sql::read_only(&db, statement, 10).await;
        assert!(got.is_err(), "{statement}: {got:?}");
    }
    assert!(warden::capabilities::sql::read_only(&db, "SELECT count(*) FROM session", 10).await.is_ok());

    assert_eq!(sqlite_counts(app, state).await, before, "nothing in the target or the state store changed");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "no file was made");

    // A target that is warden's own state file is refused at load.
    let same = schedule().target(&format!("sqlite://{}", state_file.display()), "demo_schema = false").to_string();
    std::fs::write(&path, same).unwrap();
    let config = warden::config::load(&path).unwrap();
    let targets = Targets::open(&config.targets).await.unwrap();
    let refused = targets.verify_grants(std::slice::from_ref(&s), &config.state.url).await;
    assert!(refused.len() == 1 && refused[0].1.contains("warden's own state file"), "{refused:?}");
}

/// A PostgreSQL role made for one test: LOGIN, CONNECT on `db`, SELECT on its public tables,
/// and whatever `more` grants it.
struct Role {
    name: String,
    url: String,
}

impl Role {
    async fn create(db: &TestDb, more: &str) -> Role {
        let name = unique("warden_p");
        let admin = db.pool().await;
        let sql = format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'pw'; GRANT CONNECT ON DATABASE {db} TO {name}; \
             GRANT USAGE ON SCHEMA public TO {name}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}; {more}",
            db = db.name,
            more = more.replace("ROLE", &name)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
        admin.close().await;
        let base = pg_admin_url();
        let host = &base[base.rfind('@').unwrap() + 1..base.rfind('/').unwrap()];
        Role { url: format!("postgres://{name}:pw@{host}/{}", db.name), name }
    }

    async fn drop_role(self) {
        let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {}", self.name))).execute(&admin).await.unwrap();
        admin.close().await;
    }
}

async fn pg_counts(admin: &sqlx::PgPool) -> (i64, i64, i64, i64, i64) {
    let n = |sql: &'static str| {
        let admin = admin.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&admin).await.unwrap() }
    };
    (
        n("SELECT count(*) FROM session").await,
        n("SELECT count(*) FROM sync_log").await,
        n("SELECT count(*) FROM warden.job_runs").await,
        n("SELECT count(*) FROM warden.settings").await,
        n("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").await,
    )
}

#[tokio::test]
async fn a_hostile_policy_cannot_leave_postgres_and_a_superuser_grant_is_refused() {
    let db = TestDb::create().await;
    let admin = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE session (id text PRIMARY KEY); INSERT INTO session VALUES ('a'), ('b'); \
         CREATE TABLE sync_log (id int); INSERT INTO sync_log VALUES (1)",
    )
    .execute(&admin)
    .await
    .unwrap();
    // warden's state in the same database, its own schema, with a secret in it.
    let (dir, path) = schedule()
        .state(&db.url)
        .target(&db.url, "demo_schema = false")
        .job(probe("health-probe", "1h", &[DB]))
        .write();
    let config = warden::config::load(&path).unwrap();
    let _store = warden::store::StateStore::open(&config.state).await.unwrap();
    sqlx::query("INSERT INTO warden.settings (key, value) VALUES ('unsubscribe-secret', $1)")
        .bind(SECRET)
        .execute(&admin)
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut s = spec("hostile-sql", "hostile-sql.wasm", &[]);
    s.grants.sql_read = true;

    // The target as the superuser it was given: refused at load, with the SQL for a role.
    let targets = Targets::open(&config.targets).await.unwrap();
    let refused = targets.verify_grants(std::slice::from_ref(&s), &config.state.url).await;
    assert!(
        refused.len() == 1
            && refused[0].1.contains("a superuser")
            && refused[0].1.contains("CREATE ROLE warden_policy"),
        "{refused:?}"
    );
    // And should a policy reach it anyway, no statement runs on such a connection.
    let db_super = targets.granted_sql(&s).unwrap();
    let got = warden::capabilities::sql::read_only(&db_super, "COPY (SELECT 1) TO PROGRAM 'true'", 10).await;
    assert!(got.as_ref().is_err_and(|e| e.contains("superuser")), "{got:?}");
    // `warden check --connect` and `warden plugin test --grant` refuse it too.
    let with_policy = format!(
        "{}[[policy]]\nname = \"hostile\"\ncomponent = \"{}\"\non = [\"health-probe\"]\ngrants = [\"sql:read\"]\n",
        std::fs::read_to_string(&path).unwrap(),
        crate::policies::plugins_dir().join("hostile-sql.wasm").display()
    );
    std::fs::write(&path, &with_policy).unwrap();
    let (code, _, stderr) = warden(dir.path(), &["check", "--connect"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("policy \"hostile\".grants") && stderr.contains("superuser"), "{stderr}");
    assert!(stderr.contains("schedules.toml:"), "the place of the grant: {stderr}");
    std::fs::write(dir.path().join("event.json"), warden(dir.path(), &["plugin", "event"]).1).unwrap();
    let (code, _, stderr) =
        warden(dir.path(), &["plugin", "test", "hostile", "--event", "event.json", "--set", "backend=postgres"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("refused") && stderr.contains("superuser"), "{stderr}");

    // Roles that hold the server-file roles, or can use warden's schema: refused too.
    for (more, said) in [
        ("GRANT pg_read_server_files TO ROLE", "pg_read_server_files"),
        ("GRANT pg_execute_server_program TO ROLE", "pg_execute_server_program"),
        (
            "GRANT USAGE ON SCHEMA warden TO ROLE; GRANT SELECT ON ALL TABLES IN SCHEMA warden TO ROLE",
            "warden's own schema",
        ),
    ] {
        let role = Role::create(&db, more).await;
        let policy_db = PolicyDb::open(&config.targets.database, Some(&role.url)).unwrap();
        match policy_db.verify(&config.targets.database, &config.state.url).await {
            warden::targets::Verified::Refused(why) => assert!(why.contains(said), "{why}"),
            other => panic!("{more}: {other:?}"),
        }
        if let PolicyDb::Postgres(p) = policy_db {
            p.pool.close().await;
        }
        drop_later(&admin, role).await;
    }

    // A least-privilege role, named by policy_url: every escape refused.
    let role = Role::create(&db, "").await;
    let with_role =
        with_policy.replace("demo_schema = false", &format!("demo_schema = false\npolicy_url = \"{}\"", role.url));
    std::fs::write(&path, &with_role).unwrap();
    let (code, _, stderr) = warden(dir.path(), &["check", "--connect"]);
    assert_eq!(code, 0, "a least-privilege role passes: {stderr}");
    let config = warden::config::load(&path).unwrap();
    let targets = Targets::open(&config.targets).await.unwrap();
    assert!(targets.verify_grants(&config.policies, &config.state.url).await.is_empty());
    let before = pg_counts(&admin).await;
    let cfg = [("backend", "postgres"), ("out", out.path().to_str().unwrap())];
    let lines = hostile(&cfg, targets.granted_sql(&s)).await;
    assert!(all_refused(&lines) >= 20, "{lines:#?}");
    assert_eq!(probe_line(&lines, "sessions"), "2");
    assert_eq!(probe_line(&lines, "advisory-locks"), "0");
    assert_eq!(probe_line(&lines, "statement-timeout"), "5s");
    assert_eq!(probe_line(&lines, "read-only"), "on");

    // The walls under the check, on their own: what the role refuses, and what the reset
    // after every call undoes (a session lock, a setting).
    let db_role = targets.granted_sql(&s).unwrap();
    let program = format!("COPY (SELECT 1) TO PROGRAM 'touch {}/p'", out.path().display());
    for statement in [
        program.as_str(),
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT count(*) FROM pg_ls_dir('/')",
        "SELECT value FROM warden.settings",
        "DELETE FROM session",
        "WITH d AS (DELETE FROM session RETURNING 1) SELECT count(*) FROM d",
        "SELECT * INTO stolen FROM session",
        "SELECT lo_import('/etc/hostname')",
    ] {
        let got = warden::capabilities::sql::read_only(&db_role, statement, 10).await;
        assert!(got.is_err(), "{statement}: {got:?}");
    }
    for statement in ["SELECT pg_advisory_lock(42)", "SELECT set_config('statement_timeout', '0', false)"] {
        warden::capabilities::sql::read_only(&db_role, statement, 10).await.unwrap();
    }
    // The reset runs as each connection goes back to the pool: give it that moment.
    for _ in 0..100 {
        if pg_counts(&admin).await.4 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = hostile(&cfg, targets.granted_sql(&s)).await;
    assert_eq!(probe_line(&lines, "advisory-locks"), "0", "no lock outlived its call");
    assert_eq!(probe_line(&lines, "statement-timeout"), "5s", "no setting outlived its call");

    assert_eq!(pg_counts(&admin).await, before, "nothing in the target or the state store changed");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "no file was made on the server");
    if let PolicyDb::Postgres(p) = db_role {
        p.pool.close().await;
    }
    targets.db.close().await;
    drop_later(&admin, role).await;
    admin.close().await;
    db.drop_db().await;
}

/// Revokes what a test role was given in the test database, so the role can be dropped.
async fn drop_later(admin: &sqlx::PgPool, role: Role) {
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{0}'; DROP OWNED BY {0}",
        role.name
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(admin).await.unwrap();
    role.drop_role().await;
}
