//! The admin API over HTTP against the real binary: the token on every route, and what
//! each route answers.

use std::time::Duration;

use crate::support::{Daemon, http, schedule_dir, wait_for};

const TOKEN: &str = "test-admin-token-0123456789";

const SCHEDULE: &str = r#"version = 1
[[job]]
name = "probe"
every = "1s"
task = "probe"
checks = [{ name = "db", kind = "db", critical = true }]

[[job]]
name = "nightly"
cron = "0 0 3 * * *"
tz = "Europe/Berlin"
task = "pool-stats"
"#;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// (method, path) of every admin route, with a path that exists.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs/probe/runs"),
    ("GET", "/admin/health"),
    ("GET", "/admin/outbox"),
    ("POST", "/admin/outbox/1/retry"),
];

#[test]
fn every_admin_route_needs_the_token_and_answers_with_it() {
    let (dir, config) = schedule_dir(SCHEDULE);
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
    assert_eq!(items.len(), 2);
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
    let (dir, config) = schedule_dir(SCHEDULE);
    let daemon = Daemon::start(dir.path(), &config);
    for (method, path) in ROUTES {
        let (code, body) =
            http(daemon.addr, method, path, &[("Authorization", "Bearer anything-at-all-here")], "").unwrap();
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert_eq!(json(&body)["error"]["code"], "admin_disabled");
    }
    assert_eq!(daemon.get("/metrics").0, 200, "the public routes stay");
}
