//! The status page at `/`, in a real browser: Debian's headless Chromium loads it, the
//! rendered DOM shows the status, the checks, the chart and the transitions, and a
//! screenshot is kept as a CI artifact (`target/artifacts/status-page.png`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::schedule::{DB, SESSIONS, probe, schedule};
use crate::support::{Daemon, http_get, wait_for};

fn chromium() -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&bin).exists(),
        "no Chromium at {bin}: scripts/test.sh installs Debian's `chromium` (or set CHROMIUM)"
    );
    bin
}

/// Headless Chromium with the flags this machine needs (root, no network beyond localhost).
fn headless(profile: &std::path::Path) -> Command {
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
        &format!("--user-data-dir={}", profile.display()),
    ]);
    command
}

#[test]
fn the_status_page_renders_in_headless_chromium_with_status_chart_and_changes() {
    // A window that is always on: every minute, for a minute.
    let window = "[[maintenance]]\nname = \"database upgrade\"\ncron = \"0 * * * * *\"\nduration = \"1m\"\n\
                  job = \"health-probe\"\ncomment = \"expect short interruptions\"";
    let (dir, config) =
        schedule().product("MNW").job(probe("health-probe", "1s", &[DB, SESSIONS])).table(window).write();
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_operational(Duration::from_secs(20));
    daemon.wait_runs("health-probe", 2);
    // A transition to show: the sessions check fails, the status degrades.
    let app = dir.path().join("demo-app.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", app.display())).await.unwrap();
        sqlx::query("DROP TABLE session").execute(&pool).await.unwrap();
    });
    wait_for(Duration::from_secs(20), "degraded", || {
        let (_, body) = daemon.get("/health");
        body.contains("\"degraded\"").then_some(())
    });
    daemon.wait_runs("health-probe", 2);

    // Without JavaScript: the server renders everything.
    let (code, html) = http_get(daemon.addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(html.contains("<svg id=\"chart\"") && html.contains("Degraded"), "{html}");

    let url = format!("http://{}/", daemon.addr);
    let profile = tempfile::tempdir().unwrap();
    let out = headless(profile.path()).arg("--dump-dom").arg(&url).output().unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains("<title>MNW status</title>"), "{dom}");
    let overall = dom.split("id=\"overall\"").nth(1).unwrap_or_default();
    assert!(overall[..overall.find("</p>").unwrap()].contains("Degraded"), "{dom}");
    let checks = dom.split("id=\"checks\"").nth(1).unwrap_or_default();
    assert!(checks.contains("<td>db</td>") && checks.contains("<td>sessions</td>"), "{dom}");
    assert!(checks.contains("FAIL"), "the failing check is shown: {dom}");
    assert_eq!(dom.matches("<rect").count(), 96, "one bar per 15 minutes: {dom}");
    assert!(dom.contains("fill=\"#d4a72c\""), "a yellow (degraded) bar: {dom}");
    assert!(dom.contains("Operational → <strong>Degraded</strong>"), "{dom}");
    assert!(dom.contains("24 h: <strong>100.00 %</strong>"), "degraded counts as up: {dom}");
    let maintenance = dom.split("id=\"maintenance\"").nth(1).unwrap_or_default();
    assert!(
        maintenance.contains("<strong>database upgrade</strong>: in progress until")
            && maintenance.contains("expect short interruptions"),
        "{dom}"
    );

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(profile.path())
        .arg("--window-size=1100,900")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "a real screenshot ({} bytes)", png.len());
}

#[test]
fn each_public_route_can_be_turned_off() {
    let (dir, config) = schedule()
        .table("[http]\nstatus_page = false\nmetrics = false\nbadges = false")
        .job(probe("health-probe", "1s", &[DB]))
        .write();
    let daemon = Daemon::start(dir.path(), &config);
    wait_for(Duration::from_secs(20), "a probe", || (daemon.get("/health").0 == 200).then_some(()));
    assert_eq!(daemon.get("/").0, 404);
    assert_eq!(daemon.get("/metrics").0, 404);
    assert_eq!(daemon.get("/unsubscribe").0, 404, "on, but no subscribers configured");
    assert_eq!(daemon.get("/badge/health-probe.svg").0, 404);
}

/// `/badge/{job}.svg` and `.json` say the job's status and uptime: operational while the
/// probe passes, down once its critical check fails; another job's says its last run.
#[test]
fn badges_say_each_job_s_status_and_uptime() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.db");
    let orders = r#"{ name = "orders", kind = "sql", query = "SELECT COUNT(*) FROM no_such_table", critical = true }"#;
    let text = schedule()
        .target(&format!("sqlite://{}", app.display()), "")
        .job(probe("health-probe", "1s", &[DB]))
        .job(probe("orders", "1s", &[orders]))
        .job(crate::schedule::job("nightly", "1h", "pool-stats"))
        .to_string();
    let config = dir.path().join("schedules.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(dir.path(), &config);
    let json = |job: &str| -> (u16, serde_json::Value) {
        let (code, body) = daemon.get(&format!("/badge/{job}.json"));
        (code, serde_json::from_str(&body).unwrap_or_default())
    };
    // The status shows as soon as the probe has it; the uptime once its run is committed
    // (a badge rendered in between is rendered again then).
    let ok = wait_for(Duration::from_secs(30), "an operational badge with its uptime", || {
        let (code, v) = json("health-probe");
        (code == 200 && v["message"].as_str()?.starts_with("operational ·")).then_some(v)
    });
    assert_eq!(ok["schemaVersion"], 1);
    assert_eq!(ok["label"], "health-probe");
    assert_eq!(ok["color"], "brightgreen");
    assert_eq!(ok["message"], "operational · 100%");
    let down = wait_for(Duration::from_secs(30), "a down badge", || {
        let (_, v) = json("orders");
        (v["message"].as_str()?.starts_with("down")).then_some(v)
    });
    assert_eq!((down["message"].as_str(), down["color"].as_str()), (Some("down · 0.00%"), Some("red")));
    let (code, svg) = daemon.get("/badge/health-probe.svg");
    assert_eq!(code, 200);
    assert!(svg.starts_with("<svg") && svg.contains("health-probe: operational"), "{svg}");
    assert_eq!(json("nowhere").0, 404);
    assert_eq!(daemon.get("/badge/health-probe.png").0, 404);
    let (_, other) = json("nightly");
    assert!(["ok", "never ran"].contains(&other["message"].as_str().unwrap_or_default()), "{other}");
}
