//! The admin API's OpenAPI document against the running binary: it lists exactly the
//! routes served, and schemathesis fuzzes every operation from it (all of its checks but
//! one, see `fuzz`) without a 5xx or a crash, with the state store on SQLite and on
//! PostgreSQL.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::admin_api::{ROUTES, schedule_with_status_alert};
use crate::schedule::Schedule;
use crate::support::{Daemon, TestDb, http, wait_for};

const TOKEN: &str = "fuzz-admin-token-0123456789";

/// The admin API test schedule (a probe, a nightly job, the status-alert policy) with a
/// maintenance window, so every list has something in it.
fn fuzz_schedule() -> Schedule {
    let window = "[[maintenance]]\nname = \"sunday backups\"\ncron = \"0 0 2 * * Sun\"\nduration = \"1h\"\n\
                  job = \"probe\"\ncomment = \"backups slow the database down\"";
    schedule_with_status_alert().table(window)
}

fn schemathesis() -> String {
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_owned());
    let works = Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        works,
        "no schemathesis at `{bin}`: scripts/test.sh installs it into target/test-venv (or set SCHEMATHESIS)"
    );
    bin
}

fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    http(daemon.addr, "GET", path, &[("Authorization", &format!("Bearer {TOKEN}"))], "").unwrap()
}

/// The probe job's newest run id.
fn newest_probe_run(daemon: &Daemon) -> i64 {
    let (_, body) = get(daemon, "/admin/jobs/probe/runs?limit=1");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["items"][0]["id"].as_i64().unwrap_or_default()
}

#[test]
fn the_document_lists_exactly_the_served_routes_and_survives_schemathesis_on_sqlite() {
    let (dir, config) = fuzz_schedule().write();
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    wait_for(Duration::from_secs(20), "a probe run", || (newest_probe_run(&daemon) > 0).then_some(()));

    let (code, body) = get(&daemon, "/admin/openapi.json");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    // Every served route is documented...
    let template = |path: &str| {
        let parts: Vec<String> = path
            .split('/')
            .enumerate()
            .map(|(i, part)| match (i, part) {
                (3, _) if path.starts_with("/admin/jobs/") => "{job}".to_owned(),
                (3, _) if path.starts_with("/admin/policies/") => "{policy}".to_owned(),
                (3, _) if path.starts_with("/admin/outbox/") || path.starts_with("/admin/silences/") => {
                    "{id}".to_owned()
                }
                _ => part.to_owned(),
            })
            .collect();
        parts.join("/")
    };
    for (method, path) in ROUTES {
        let operation = &paths[&template(path)][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {path} is served but not in the document");
        assert!(operation["responses"]["401"].is_object(), "{method} {path}: 401 undocumented");
    }
    // ...and every documented operation is served (the fallback's 404 names no route), with
    // the token answering one of its documented statuses.
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let concrete = path.replace("{job}", "probe").replace("{policy}", "status-alert").replace("{id}", "1");
            let (code, body) = http(
                daemon.addr,
                &method.to_uppercase(),
                &concrete,
                &[("Authorization", &format!("Bearer {TOKEN}")), ("Content-Type", "application/json")],
                "{}",
            )
            .unwrap();
            assert!(!body.contains("no route"), "{method} {path} is documented but not served: {body}");
            assert!(
                operation["responses"][code.to_string()].is_object(),
                "{method} {path} answered {code}, which it does not document: {body}"
            );
        }
    }
    assert_eq!(operations, ROUTES.len(), "the document and the served routes differ in number");

    fuzz(daemon, "sqlite");
}

/// Fuzzes every operation of the served document, as an operator's client would call it,
/// then checks that the same process still answers and still runs its jobs.
fn fuzz(daemon: Daemon, store: &str) {
    let (code, body) = get(&daemon, "/admin/openapi.json");
    assert_eq!(code, 200, "{body}");
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, &body).unwrap();
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let report = artifacts.join(format!("schemathesis-junit-{store}.xml"));
    let seed = std::env::var("WARDEN_FUZZ_SEED").unwrap_or_else(|_| "7".to_owned());
    let output = Command::new(schemathesis())
        .current_dir(work.path())
        .args(["run", spec.to_str().unwrap(), "--url", &format!("http://{}", daemon.addr)])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        // Every check, `ignored_auth` and `unsupported_method` included, but
        // `positive_data_acceptance`: a silence must end after it starts and between the
        // years 1970 and 9999, which JSON Schema cannot say, so some schema-valid bodies are
        // rightly refused with 400.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "200", "--seed", &seed, "--no-color", "--generation-database", "none"])
        .args(["--report", "junit", "--report-junit-path", report.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems ({store} store, seed {seed}):\n{stdout}\n{}\nwarden's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    assert!(stdout.contains("16 selected / 16 total"), "schemathesis did not test every operation:\n{stdout}");

    // No crash: the same process still answers and still runs its jobs.
    let mut daemon = daemon;
    assert!(daemon.child.try_wait().unwrap().is_none(), "warden exited during the fuzz:\n{}", daemon.log());
    // The fuzz may have left the probe paused, as an operator could.
    let (code, body) =
        http(daemon.addr, "POST", "/admin/jobs/probe/resume", &[("Authorization", &format!("Bearer {TOKEN}"))], "")
            .unwrap();
    assert_eq!(code, 200, "{body}");
    let before = newest_probe_run(&daemon);
    wait_for(Duration::from_secs(20), "a probe run after the fuzz", || {
        (newest_probe_run(&daemon) > before).then_some(())
    });
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

/// The same fuzz with the state store on PostgreSQL, which refuses what SQLite takes (a NUL
/// in a text, timestamps out of its range).
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_with_the_state_store_on_postgres() {
    let db = TestDb::create().await;
    let (dir, config) = fuzz_schedule().state(&db.url).write();
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    wait_for(Duration::from_secs(20), "a probe run", || (newest_probe_run(&daemon) > 0).then_some(()));
    tokio::task::block_in_place(|| fuzz(daemon, "postgres"));
    db.drop_db().await;
}
