//! What `deploy/` ships beside the binary, checked with the tools its users run: warden's
//! `/metrics` through `promtool check metrics`, the alerting rules through `promtool check
//! rules` and their own `promtool test rules` cases, the systemd unit through
//! `systemd-analyze verify`, and the Grafana dashboard against the metrics warden defines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Daemon, wait_for};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `promtool` from `PROMTOOL` (scripts/test-services.sh installs Debian's prometheus).
fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Runs a tool: (exit code, stdout + stderr).
fn tool(program: &str, args: &[&str], dir: &Path, stdin: Option<&str>) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test-services.sh installs it)"));
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The shipped schedule and the plugins just built, in a folder of their own.
pub(crate) fn shipped_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(root.join("schedules.toml"), dir.path().join("schedules.toml")).unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let built = crate::policies::plugins_dir();
    for name in ["status-alert", "pool-pressure", "pg-saturation"] {
        let file = format!("{name}.wasm");
        std::fs::copy(built.join(&file), dir.path().join("plugins").join(&file)).unwrap();
    }
    dir
}

#[test]
fn promtool_finds_nothing_to_say_about_a_running_warden_s_metrics() {
    let dir = shipped_dir();
    let daemon = Daemon::start(dir.path(), &dir.path().join("schedules.toml"));
    // Every family the shipped schedule produces soon: the probe's, the gauge job's, the pool's.
    let metrics = wait_for(Duration::from_secs(60), "the probe and the storage gauge in /metrics", || {
        let (_, body) = daemon.get("/metrics");
        (body.contains("warden_status{job=\"health-probe\"}")
            && body.contains("warden_storage_fill_ratio")
            && body.contains("warden_job_last_run_timestamp_seconds"))
        .then_some(body)
    });
    assert!(metrics.contains("warden_job_period_seconds{job=\"health-probe\"} 30"), "{metrics}");
    let (code, said) = tool(&promtool(), &["check", "metrics"], dir.path(), Some(&metrics));
    assert_eq!((code, said.trim()), (0, ""), "promtool check metrics on:\n{metrics}");

    // And it would speak up: a family without HELP is reported.
    let (code, said) =
        tool(&promtool(), &["check", "metrics"], dir.path(), Some("# TYPE x_total counter\nx_total 1\n"));
    assert!(code != 0 && said.contains("no help text"), "{code}: {said}");
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0));
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_own_cases() {
    let dir = deploy().join("prometheus");
    let (code, said) = tool(&promtool(), &["check", "rules", "warden-rules.yml"], &dir, None);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("SUCCESS: 7 rules found"), "{said}");
    let (code, said) = tool(&promtool(), &["check", "config", "prometheus.yml"], &dir, None);
    assert_eq!(code, 0, "{said}");
    let (code, said) = tool(&promtool(), &["test", "rules", "warden-rules.test.yml"], &dir, None);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("SUCCESS"), "{said}");

    // The cases can fail: with the outage rule firing at once, its quiet case is wrong.
    let scratch = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(dir.join("warden-rules.yml")).unwrap();
    let eager = rules.replacen("for: 5m", "for: 0m", 1);
    assert_ne!(eager, rules);
    std::fs::write(scratch.path().join("warden-rules.yml"), eager).unwrap();
    std::fs::copy(dir.join("warden-rules.test.yml"), scratch.path().join("warden-rules.test.yml")).unwrap();
    let (code, said) = tool(&promtool(), &["test", "rules", "warden-rules.test.yml"], scratch.path(), None);
    assert!(code != 0 && said.contains("WardenSpoolNotEmpty"), "{code}: {said}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_read_is_one_warden_defines() {
    let defined: Vec<&str> = warden::metrics::METRICS.iter().map(|m| m.name).collect();
    let rules = std::fs::read_to_string(deploy().join("prometheus/warden-rules.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/warden.json")).unwrap()).unwrap();
    let mut exprs = vec![rules];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut read = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("warden_") {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|f| defined.contains(f)))
                .unwrap_or(word);
            assert!(defined.contains(&family), "`{word}` in `{expr}` is not a metric warden defines");
            read += 1;
        }
    }
    assert!(read > 20, "only {read} metric references found");
}

#[test]
fn the_systemd_unit_verifies_clean() {
    // `verify` checks the binary exists: the unit as installed, pointing at the one cargo built.
    let unit = std::fs::read_to_string(deploy().join("systemd/warden.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/warden run"), "{unit}");
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "CapabilityBoundingSet="] {
        assert!(unit.lines().any(|l| l == hardening), "missing {hardening}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/warden", crate::support::warden_bin())).unwrap();
    let (code, said) = tool("systemd-analyze", &["verify", path.to_str().unwrap()], dir.path(), None);
    assert_eq!((code, said.trim()), (0, ""), "systemd-analyze verify");

    // A misspelt setting is reported (and would fail this test).
    std::fs::write(&path, format!("{}\nProtectSytem=strict\n", unit.replace("/usr/local/bin/warden", "/bin/true")))
        .unwrap();
    let (_, said) = tool("systemd-analyze", &["verify", path.to_str().unwrap()], dir.path(), None);
    assert!(said.contains("Unknown key"), "{said}");
}

/// `warden check --connect` on the shipped schedule: the embedded default passes (every
/// statement prepares on the demo database and the state store); a misspelt table in one
/// query is refused with exit 1, naming its line, column and field, and the database's words.
#[test]
fn check_connect_prepares_every_statement_and_names_the_line_of_a_misspelt_table() {
    let dir = shipped_dir();
    let (code, out, err) = crate::support::warden(dir.path(), &["check", "--connect"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("every statement prepared"), "{out}");
    let path = dir.path().join("schedules.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().position(|l| l.contains("FROM session)")).unwrap() + 1;
    std::fs::write(&path, text.replace("FROM session)", "FROM sesion)")).unwrap();
    let (code, _, err) = crate::support::warden(dir.path(), &["check", "--connect"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("schedules.toml:{line}:"))
            && err.contains("job \"health-probe\".checks[2].query: no such table: sesion"),
        "{err}"
    );
    // Plain `check` stays offline: the same file passes it.
    let (code, _, err) = crate::support::warden(dir.path(), &["check"]);
    assert_eq!(code, 0, "{err}");
}
