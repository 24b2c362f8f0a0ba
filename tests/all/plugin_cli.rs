//! `warden plugin …` as authors use it: scaffolds in Rust, Python and JavaScript that pass
//! their own tests, build with the stock toolchains and run under `warden plugin test`;
//! `--grant`, `--set` and the example events of `warden plugin event`.

use crate::schedule::schedule;
use crate::support::warden;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn plugin_test_runs_one_evaluation_and_prints_actions_and_state() {
    let plugins = crate::policies::plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"kind": "snapshot", "job": "health-probe", "status": "degraded", "checked_at": "2026-11-29T12:00:00Z",
            "duration_ms": 9, "checks": [{"name": "s3", "kind": "s3", "critical": false, "ok": false, "duration_ms": 5}]}"#,
    )
    .unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, r#"{"last_status": "operational", "last_told": "operational"}"#).unwrap();
    let component = plugins.join("status-alert.wasm");
    let args = ["plugin", "test", component.to_str().unwrap(), "--event", "event.json", "--state", "state.json"];
    let (code, stdout, stderr) = warden(dir.path(), &args);
    assert_eq!(code, 0, "{stderr}");
    let out = json(&stdout);
    let kinds: Vec<&str> = out["actions"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["log", "open-ticket", "email-admin", "notify-subscribers"]);
    assert_eq!(out["actions"][2]["subject"], "warden degraded — partial service failure");
    assert_eq!(out["state_writes"]["last_status"], "degraded");

    std::fs::write(&event, "{\"kind\": \"nonsense\"}").unwrap();
    let (code, _, stderr) = warden(dir.path(), &args);
    assert_eq!(code, 1);
    assert!(stderr.contains("event.json: not an event"), "{stderr}");
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_against_a_copy_of_the_sdk_and_passes_its_test() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the SDK outside this workspace, as an author outside the repository has it.
    let sdk = dir.path().join("sdk");
    let repo_sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    let copied = std::process::Command::new("cp").arg("-rL").arg(&repo_sdk).arg(&sdk).status().unwrap();
    assert!(copied.success());
    let (code, stdout, stderr) = warden(
        dir.path(),
        &["plugin", "new", "my-policy", "--dir", ".", "--sdk", sdk.to_str().unwrap(), "--standalone"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("created ./my-policy"), "{stdout}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["test", "--offline", "--manifest-path", "my-policy/Cargo.toml"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("test tests::logs_a_change_once ... ok"), "{text}");
    let (code, _, stderr) = warden(dir.path(), &["plugin", "new", "Bad Name"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid plugin name"), "{stderr}");
}

/// A command the guest toolchains installed (scripts/guest-toolchains.sh, run by scripts/test.sh).
fn guest_tool(path: &str) -> std::path::PathBuf {
    let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-tools").join(path);
    assert!(tool.exists(), "no {}: run scripts/guest-toolchains.sh (scripts/test.sh does)", tool.display());
    tool
}

fn run(dir: &std::path::Path, program: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {args:?} in {}:\n{text}", program.display(), dir.display());
    text
}

#[test]
fn plugin_new_scaffolds_python_and_javascript_policies_that_pass_their_tests_build_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let py = guest_tool("py/bin/componentize-py");
    let js = guest_tool("js/node_modules/.bin/componentize-js");
    for (name, lang) in [("demo-py", "python"), ("demo-js", "js")] {
        let (code, stdout, stderr) = warden(dir.path(), &["plugin", "new", name, "--lang", lang, "--dir", "."]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(&format!("created ./{name}")), "{stdout}");
        let root = dir.path().join(name);
        let wasm = format!("{name}.wasm");
        if lang == "python" {
            let out = run(&root, std::path::Path::new("python3"), &["-m", "unittest", "-v"]);
            assert!(out.contains("test_logs_a_change_once") && out.contains("OK"), "{out}");
            run(&root, &py, &["-d", "wit", "-w", "policy", "componentize", "app", "-o", &wasm]);
        } else {
            let out = run(&root, std::path::Path::new("node"), &["--test"]);
            assert!(out.contains("logs a change once") && out.contains("pass 1"), "{out}");
            run(&root, &js, &["app.js", "--wit", "wit", "-n", "policy", "-o", &wasm]);
        }
        // The event `warden plugin event` prints, after an operational one: the change is logged.
        let (code, event, _) = warden(&root, &["plugin", "event", "snapshot"]);
        assert_eq!(code, 0);
        std::fs::write(root.join("event.json"), event).unwrap();
        std::fs::write(root.join("state.json"), r#"{"last": "operational"}"#).unwrap();
        let args = ["plugin", "test", &wasm, "--event", "event.json", "--state", "state.json", "--set", "greeting=hi"];
        let (code, stdout, stderr) = warden(&root, &args);
        assert_eq!(code, 0, "{name}: {stderr}");
        let out = json(&stdout);
        assert_eq!(out["logs"][0]["message"], "hi: operational -> degraded", "{name}: {stdout}");
        assert_eq!(out["state_writes"]["last"], "degraded", "{name}: {stdout}");
    }
}

#[test]
fn plugin_test_grants_a_capability_and_plugin_event_prints_each_kind() {
    let plugins = crate::policies::plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    for kind in ["snapshot", "gauges", "run-finished"] {
        let (code, stdout, stderr) = warden(dir.path(), &["plugin", "event", kind]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(json(&stdout)["kind"], kind, "{stdout}");
    }
    let (code, _, stderr) = warden(dir.path(), &["plugin", "event", "nonsense"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown event kind `nonsense`"), "{stderr}");

    // The SQL guest reads a table when granted; without the grant its call fails inside it.
    let db = dir.path().join("app.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (7)").execute(&pool).await.unwrap();
        pool.close().await;
    });
    let (_, event, _) = warden(dir.path(), &["plugin", "event"]);
    std::fs::write(dir.path().join("event.json"), event).unwrap();
    let guest = plugins.join("sql-guest.wasm");
    let base = ["plugin", "test", guest.to_str().unwrap(), "--event", "event.json", "--set", "query=SELECT n FROM t"];
    // The schedule beside it names the database a grant reaches.
    let target = format!("sqlite://{}", db.display());
    // And a named one, which `sql:read:other` reaches instead.
    let other = dir.path().join("other.db");
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&other).create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (42)").execute(&pool).await.unwrap();
        pool.close().await;
    });
    let named = format!("demo_schema = false\n[targets.databases.other]\nurl = \"sqlite://{}\"", other.display());
    std::fs::write(dir.path().join("schedules.toml"), schedule().target(&target, &named).to_string()).unwrap();
    let (code, denied, stderr) = warden(dir.path(), &base);
    assert_eq!(code, 0, "{stderr}");
    assert!(denied.contains("sql:read is not granted"), "{denied}");
    let granted: Vec<&str> = base.iter().copied().chain(["--grant", "sql:read"]).collect();
    let (code, read, stderr) = warden(dir.path(), &granted);
    assert_eq!(code, 0, "{stderr}");
    assert!(read.contains("rows=1 cells=7"), "{read}");
    let named: Vec<&str> = base.iter().copied().chain(["--grant", "sql:read:other"]).collect();
    let (code, read, stderr) = warden(dir.path(), &named);
    assert_eq!(code, 0, "{stderr}");
    assert!(read.contains("rows=1 cells=42"), "the named database: {read}");
    let bad: Vec<&str> = base.iter().copied().chain(["--grant", "sql:write"]).collect();
    let (code, _, stderr) = warden(dir.path(), &bad);
    assert_eq!(code, 1);
    assert!(stderr.contains("--grant: unknown grant `sql:write`"), "{stderr}");
}
