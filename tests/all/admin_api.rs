//! The admin API over HTTP against the real binary: the token on every route, and what
//! each route answers.

use std::time::Duration;

use serde_json::json;

use crate::policies::{plugins_dir, status_alert_policy};
use crate::schedule::{DB, SESSIONS, Schedule, job, policy, probe, schedule};
use crate::support::{Daemon, http, schedule_dir, silent_server, wait_for, warden_with_env};

const TOKEN: &str = "test-admin-token-0123456789";

/// A probe every second, a nightly job in Berlin time, and a clock for the tests: while
/// the probe is paused, the tick's runs show time passing.
pub fn admin_schedule() -> Schedule {
    let nightly = "[[job]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\ntz = \"Europe/Berlin\"\ntask = \"pool-stats\"";
    schedule().job(probe("probe", "1s", &[DB])).table(nightly).job(job("tick", "1000ms", "pool-stats"))
}

/// `admin_schedule` with the status-alert policy on the probe.
pub fn schedule_with_status_alert() -> Schedule {
    admin_schedule().table(policy("status-alert", &plugins_dir().join("status-alert.wasm"), &["probe"], ""))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// (method, path) of every admin route, with a path that exists.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/openapi.json"),
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs/probe/runs"),
    ("POST", "/admin/jobs/nightly/run"),
    ("POST", "/admin/jobs/nightly/pause"),
    ("POST", "/admin/jobs/nightly/resume"),
    ("GET", "/admin/heartbeats"),
    ("GET", "/admin/policies"),
    ("POST", "/admin/policies/status-alert/enable"),
    ("POST", "/admin/reload"),
    ("GET", "/admin/health"),
    ("GET", "/admin/outbox"),
    ("POST", "/admin/outbox/1/retry"),
    ("GET", "/admin/silences"),
    ("POST", "/admin/silences"),
    ("POST", "/admin/silences/1/expire"),
];

#[test]
fn every_admin_route_needs_the_token_and_answers_with_it() {
    let (dir, config) = admin_schedule().write();
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    wait_for(Duration::from_secs(20), "two probes", || {
        let (code, body) =
            http(daemon.addr, "GET", "/admin/health", &[("Authorization", &format!("Bearer {TOKEN}"))], "").ok()?;
        (code == 200 && json(&body)["items"].as_array()?.len() >= 2).then_some(())
    });
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    for (method, path) in ROUTES {
        let (code, body) = http(daemon.addr, method, path, &[], "").unwrap();
        assert_eq!(code, 401, "{method} {path} without a token: {body}");
        assert_eq!(json(&body)["error"]["code"], "unauthorized");
        let (code, _) = http(daemon.addr, method, path, &[("Authorization", &wrong)], "").unwrap();
        assert_eq!(code, 401, "{method} {path} with a wrong token");
        let (code, _) = http(daemon.addr, method, path, &[("Authorization", TOKEN)], "").unwrap();
        assert_eq!(code, 401, "{method} {path} without the Bearer scheme");
    }
    let get = |path: &str| {
        let (code, body) = http(daemon.addr, "GET", path, &[("Authorization", &bearer)], "").unwrap();
        (code, json(&body))
    };

    let (code, jobs) = get("/admin/jobs");
    assert_eq!(code, 200);
    let items = jobs["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["name"], "probe");
    assert_eq!(items[0]["schedule"], "every 1s");
    assert_eq!(items[0]["last_run"]["outcome"], "ok");
    assert_eq!(items[1]["next"].as_array().unwrap().len(), 3);
    assert_eq!(items[1]["last_run"]["trigger"], "catch-up", "the missed 03:00 ran once at start");

    // Runs, newest first, paged.
    let (code, first) = get("/admin/jobs/probe/runs?limit=1");
    assert_eq!(code, 200);
    let newest = first["items"][0]["id"].as_i64().unwrap();
    let next = first["next"].as_i64().expect("a next page");
    let (_, second) = get(&format!("/admin/jobs/probe/runs?limit=1&before={next}"));
    assert!(second["items"][0]["id"].as_i64().unwrap() < newest);
    assert_eq!(get("/admin/jobs/nope/runs").0, 404);
    let (code, bad) = get("/admin/jobs/probe/runs?limit=0");
    assert_eq!((code, bad["error"]["code"].as_str()), (400, Some("bad_request")));

    let (code, health) = get("/admin/health?limit=2");
    assert_eq!(code, 200);
    assert_eq!(health["items"][0]["status"], "operational");
    assert!(health["items"][0]["id"].is_i64());
    let (_, future) = get("/admin/health?from=2999-01-01T00:00:00Z");
    assert_eq!(future["items"].as_array().unwrap().len(), 0);

    let (code, outbox) = get("/admin/outbox?state=failed");
    assert_eq!(code, 200);
    assert_eq!(outbox["items"].as_array().unwrap().len(), 0);
    assert_eq!(get("/admin/outbox?state=lost").0, 400);
    let (code, body) = http(daemon.addr, "POST", "/admin/outbox/1/retry", &[("Authorization", &bearer)], "").unwrap();
    assert_eq!(code, 409, "no failed row 1: {body}");
    assert_eq!(json(&body)["error"]["code"], "not_failed");
}

#[test]
fn without_a_token_the_admin_api_is_off() {
    let (dir, config) = admin_schedule().write();
    let daemon = Daemon::start(dir.path(), &config);
    for (method, path) in ROUTES {
        let (code, body) =
            http(daemon.addr, method, path, &[("Authorization", "Bearer anything-at-all-here")], "").unwrap();
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert_eq!(json(&body)["error"]["code"], "admin_disabled");
    }
    assert_eq!(daemon.get("/metrics").0, 200, "the public routes stay");
}

struct Api<'a> {
    daemon: &'a Daemon,
}

impl Api<'_> {
    fn call(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {TOKEN}");
        let (code, body) = http(self.daemon.addr, method, path, &[("Authorization", &bearer)], "").unwrap();
        (code, if body.is_empty() { serde_json::Value::Null } else { json(&body) })
    }

    fn newest_run(&self, job: &str) -> Option<i64> {
        self.call("GET", &format!("/admin/jobs/{job}/runs?limit=1")).1["items"][0]["id"].as_i64()
    }
}

#[test]
fn run_now_runs_once_pause_stops_firing_and_survives_a_restart() {
    let (dir, config) = admin_schedule().write();
    let env = [("WARDEN_ADMIN_TOKEN", TOKEN)];
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    let api = Api { daemon: &daemon };
    wait_for(Duration::from_secs(20), "the catch-up run", || api.newest_run("nightly"));

    // Run now: answered with the run id at once; that run, and only it, is manual.
    let (code, body) = api.call("POST", "/admin/jobs/nightly/run");
    assert_eq!(code, 202, "{body}");
    let id = body["run_id"].as_i64().unwrap();
    let runs = wait_for(Duration::from_secs(10), "the manual run to finish", || {
        let (_, runs) = api.call("GET", "/admin/jobs/nightly/runs");
        let done = runs["items"].as_array()?.iter().any(|r| r["id"] == id && r["outcome"] == "ok");
        done.then_some(runs)
    });
    let manual: Vec<i64> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "manual")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(manual, [id]);
    assert_eq!(api.call("POST", "/admin/jobs/nope/run").0, 404);

    // Pause the 1-second probe: it stops firing.
    let (code, body) = api.call("POST", "/admin/jobs/probe/pause");
    assert_eq!((code, &body["paused"]), (200, &serde_json::Value::Bool(true)));
    // The run in flight (if any) ends; then, over three runs of the one-second clock, the
    // paused probe starts nothing new.
    wait_for(Duration::from_secs(10), "the run in flight to end", || {
        let (_, runs) = api.call("GET", "/admin/jobs/probe/runs?limit=1");
        (runs["items"][0]["outcome"] != "running").then_some(())
    });
    let last = api.newest_run("probe").unwrap();
    daemon.wait_runs("tick", 3);
    assert_eq!(api.newest_run("probe"), Some(last), "a paused job does not fire");
    let (_, jobs) = api.call("GET", "/admin/jobs");
    assert_eq!(jobs["items"][0]["paused"], true);

    // And stays paused across a restart.
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    let api = Api { daemon: &daemon };
    daemon.wait_runs("tick", 3);
    assert_eq!(api.newest_run("probe"), Some(last), "still paused after the restart");
    assert_eq!(api.call("GET", "/admin/jobs").1["items"][0]["paused"], true);

    assert_eq!(api.call("POST", "/admin/jobs/probe/resume").0, 200);
    wait_for(Duration::from_secs(10), "the probe to fire again", || (api.newest_run("probe")? > last).then_some(()));
    assert_eq!(api.call("POST", "/admin/jobs/nope/pause").0, 404);
}

#[test]
fn a_refused_reload_answers_400_with_every_problem_and_the_old_config_keeps_running() {
    let body = schedule_with_status_alert().to_string();
    let (dir, config) = schedule_dir(&body);
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    let api = Api { daemon: &daemon };

    let policies = wait_for(Duration::from_secs(20), "an evaluation", || {
        let (code, policies) = api.call("GET", "/admin/policies");
        (code == 200 && !policies["items"][0]["last_evaluations"].as_array()?.is_empty()).then_some(policies)
    });
    let policy = &policies["items"][0];
    let last = &policy["last_evaluations"][0];
    assert_eq!((&last["job"], &last["ok"], &last["error"]), (&json!("probe"), &json!(true), &json!(null)), "{last}");
    assert!(last["micros"].as_u64().unwrap() > 0 && last["at"].is_string(), "{last}");
    assert_eq!(policy["name"], "status-alert");
    assert_eq!(policy["hash"].as_str().unwrap().len(), 64);
    assert_eq!(policy["quarantined"], false);
    let (code, enabled) = api.call("POST", "/admin/policies/status-alert/enable");
    assert_eq!((code, &enabled["was_quarantined"]), (200, &serde_json::Value::Bool(false)));
    assert_eq!(api.call("POST", "/admin/policies/nope/enable").0, 404);

    std::fs::write(
        &config,
        body.replace("every = \"1s\"", "every = \"soon\"").replace("tz = \"Europe/Berlin\"", "tz = \"Mars/Olympus\""),
    )
    .unwrap();
    let (code, refused) = api.call("POST", "/admin/reload");
    assert_eq!(code, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "config_refused");
    let problems: Vec<&str> =
        refused["error"]["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("schedules.toml:4:9: job \"probe\".every"), "{problems:?}");
    assert!(problems[1].contains("schedules.toml:10:6: job \"nightly\".tz"), "{problems:?}");
    let (_, jobs) = api.call("GET", "/admin/jobs");
    assert_eq!(jobs["items"][0]["schedule"], "every 1s", "the running configuration stays");
    let before = api.newest_run("probe").unwrap_or(0);
    wait_for(Duration::from_secs(10), "the probe to keep firing", || (api.newest_run("probe")? > before).then_some(()));

    std::fs::write(&config, body.replace("every = \"1s\"", "every = \"2s\"")).unwrap();
    let (code, ok) = api.call("POST", "/admin/reload");
    assert_eq!((code, &ok["reloaded"]), (200, &serde_json::Value::Bool(true)));
    assert_eq!(api.call("GET", "/admin/jobs").1["items"][0]["schedule"], "every 2s");
}

#[test]
fn a_silence_holds_back_an_alert_which_stays_visible_and_the_next_one_after_it_is_sent() {
    let smtp = crate::smtp_server::SmtpServer::start();
    let _policy = status_alert_policy();
    let body = schedule()
        .product("MNW")
        .alerts(&smtp.url(), "")
        .job(probe("health-probe", "1s", &[DB, SESSIONS]))
        .table(status_alert_policy());
    let (dir, config) = body.write();
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    let api = Api { daemon: &daemon };
    daemon.wait_operational(Duration::from_secs(20));

    let bearer = format!("Bearer {TOKEN}");
    let post = |path: &str, body: &str| {
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        let (code, text) = http(daemon.addr, "POST", path, &headers, body).unwrap();
        (code, json(&text))
    };
    let (code, bad) = post("/admin/silences", r#"{"comment": "no matcher"}"#);
    assert_eq!((code, bad["error"]["code"].as_str()), (400, Some("bad_request")));
    let (code, silence) = post(
        "/admin/silences",
        r#"{"policy": "status-alert", "kind": "email", "duration": "4s", "comment": "db maintenance"}"#,
    );
    assert_eq!(code, 201, "{silence}");
    let (_, listed) = api.call("GET", "/admin/silences");
    assert_eq!(listed["items"][0]["active"], true);
    assert_eq!(listed["items"][0]["comment"], "db maintenance");

    let app = dir.path().join("demo-app.db");
    let sql = |statement: &'static str| {
        let app = app.clone();
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", app.display())).await.unwrap();
            sqlx::query(statement).execute(&pool).await.unwrap();
        });
    };
    sql("DROP TABLE session");
    let silenced = wait_for(Duration::from_secs(20), "the degraded email, silenced", || {
        let (_, rows) = api.call("GET", "/admin/outbox?state=silenced");
        let row = rows["items"].as_array()?.iter().find(|r| r["kind"] == "email")?.clone();
        Some(row)
    });
    assert!(silenced["payload"].as_str().unwrap().contains("MNW degraded"), "{silenced}");
    assert!(silenced["last_error"].as_str().unwrap().contains("db maintenance"), "{silenced}");
    assert_eq!(smtp.count(), 0, "a silenced alert is never sent");

    // After the silence ends, the next alert goes out.
    let ends = chrono::DateTime::parse_from_rfc3339(silence["ends_at"].as_str().unwrap()).unwrap();
    while chrono::Utc::now() < ends {
        std::thread::sleep(Duration::from_millis(100));
    }
    sql("CREATE TABLE session (id TEXT)");
    let mail = smtp.wait_for(1, Duration::from_secs(20));
    assert!(mail[0].data.contains("recovered"), "{}", mail[0].data);
    daemon.wait_runs("health-probe", 2);
    assert_eq!(smtp.count(), 1);

    // Expiring: once, then it is gone.
    let (_, another) = post("/admin/silences", r#"{"kind": "ticket", "duration": "1h", "comment": "noisy"}"#);
    let id = another["id"].as_i64().unwrap();
    assert_eq!(post(&format!("/admin/silences/{id}/expire"), "").0, 200);
    assert_eq!(post(&format!("/admin/silences/{id}/expire"), "").0, 404);
}

#[test]
fn the_cli_drives_a_running_instance_through_the_api() {
    let (dir, config) = admin_schedule().write();
    let daemon = Daemon::start_with_env(dir.path(), &config, &[("WARDEN_ADMIN_TOKEN", TOKEN)]);
    let api = Api { daemon: &daemon };
    let url = format!("http://{}", daemon.addr);
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", &url]);
        warden_with_env(dir.path(), &all, &[("WARDEN_ADMIN_TOKEN", TOKEN)])
    };
    let paused = |api: &Api| api.call("GET", "/admin/jobs").1["items"][1]["paused"].clone();

    let (code, out, err) = cli(&["pause", "nightly"]);
    assert_eq!((code, out.trim()), (0, "nightly: paused"), "{err}");
    assert_eq!(paused(&api), true);
    let (code, out, _) = cli(&["resume", "nightly"]);
    assert_eq!((code, out.trim()), (0, "nightly: resumed"));
    assert_eq!(paused(&api), false);
    let (code, _, err) = cli(&["pause", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: not_found: "), "{err}");

    wait_for(Duration::from_secs(20), "the catch-up run to finish", || {
        (api.call("GET", "/admin/jobs").1["items"][1]["last_run"]["outcome"] == "ok").then_some(())
    });
    let (code, out, err) = cli(&["trigger", "nightly"]);
    assert_eq!(code, 0, "{err}");
    let run_id: i64 =
        out.trim().strip_prefix("nightly: run ").and_then(|r| r.strip_suffix(" started")).unwrap().parse().unwrap();
    wait_for(Duration::from_secs(10), "the manual run", || {
        let runs = api.call("GET", "/admin/jobs/nightly/runs").1;
        let run = runs["items"].as_array()?.iter().find(|r| r["id"] == run_id)?.clone();
        (run["trigger"] == "manual" && run["outcome"] == "ok").then_some(())
    });

    let (code, out, err) = cli(&["silence", "add", "--job", "probe", "--for", "1h", "--comment", "db upgrade"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("silence 1 until "), "{out}");
    let (code, out, _) = cli(&["silence", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.contains("yes") && l.contains("job=probe") && l.ends_with("db upgrade")), "{out}");
    let (code, _, err) =
        cli(&["silence", "add", "--kind", "email", "--for", "1h", "--until", "2030-01-01T00:00:00Z", "--comment", "x"]);
    assert_eq!(code, 2, "clap refuses --for with --until: {err}");
    let (code, _, err) = cli(&["silence", "add", "--for", "1h", "--comment", "no matcher"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad_request: give at least one matcher"), "{err}");
    assert_eq!(cli(&["silence", "expire", "1"]).1.trim(), "silence 1 expired");
    assert_eq!(cli(&["silence", "expire", "1"]).0, 1, "already ended");

    // A refused reload prints every problem with its place, and exits 1.
    std::fs::write(&config, admin_schedule().to_string().replace("every = \"1s\"", "every = \"soon\"")).unwrap();
    let (code, _, err) = cli(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: config_refused: "), "{err}");
    assert!(err.contains("schedules.toml:4:9: job \"probe\".every"), "{err}");
    std::fs::write(&config, admin_schedule().to_string().replace("every = \"1s\"", "every = \"2s\"")).unwrap();
    assert_eq!(cli(&["reload"]).1.trim(), "reloaded");
    assert_eq!(api.call("GET", "/admin/jobs").1["items"][0]["schedule"], "every 2s");

    // The token matters, and the document printed offline is the one served.
    let (code, _, err) = warden_with_env(
        dir.path(),
        &["pause", "nightly", "--url", &url],
        &[("WARDEN_ADMIN_TOKEN", "wrong-token-0123456789")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("error: unauthorized: wrong token"), "{err}");
    let (code, _, err) = warden_with_env(dir.path(), &["reload", "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no admin token"), "{err}");
    let (code, printed, _) = warden_with_env(dir.path(), &["openapi"], &[]);
    assert_eq!(code, 0);
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed, api.call("GET", "/admin/openapi.json").1);
}

#[test]
fn a_run_left_running_by_a_killed_process_is_recorded_failed_at_the_next_start() {
    let (hung, _server) = silent_server();
    let hang = probe("hang", "1h", &[r#"{ name = "db", kind = "db", critical = true, timeout = "1h" }"#]);
    let schedule = schedule().target(&format!("postgres://postgres@{hung}/app"), "").job(hang.with("timeout = \"1h\""));
    let (dir, config) = schedule.write();
    let env = [("WARDEN_ADMIN_TOKEN", TOKEN)];
    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    let api = Api { daemon: &daemon };
    let running = wait_for(Duration::from_secs(20), "a run in progress", || {
        let runs = api.call("GET", "/admin/jobs/hang/runs").1;
        let run = runs["items"].as_array()?.first()?.clone();
        (run["outcome"] == "running").then_some(run)
    });
    daemon.signal("KILL");
    drop(daemon);

    let daemon = Daemon::start_with_env(dir.path(), &config, &env);
    let api = Api { daemon: &daemon };
    let runs = api.call("GET", "/admin/jobs/hang/runs").1;
    let run = runs["items"].as_array().unwrap().iter().find(|r| r["id"] == running["id"]).unwrap().clone();
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().starts_with("abandoned"), "{run}");
    assert!(run["finished_at"].is_string(), "{run}");
    assert!(daemon.log().contains("recorded failed (abandoned)"), "{}", daemon.log());
}
