//! Snapshot tests: each `tests/ui/*.toml` is refused with exactly the messages in its
//! `.err` file. Set `WARDEN_BLESS=1` to rewrite the `.err` files after a deliberate change.

use std::path::{Path, PathBuf};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui")
}

#[test]
fn every_bad_file_is_refused_with_its_snapshot() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(ui_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 9, "the ui cases went missing: {cases:?}");
    let bless = std::env::var_os("WARDEN_BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let src = std::fs::read_to_string(case).unwrap();
        let shown = Path::new("tests/ui").join(case.file_name().unwrap());
        // No environment: `${VAR}` without a default must be reported.
        let errors = match warden::config::parse(&src, &shown, &|_| None) {
            Ok(_) => panic!("{} was accepted", shown.display()),
            Err(errors) => errors,
        };
        let got = format!("{errors}\n");
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("--- {}\nexpected:\n{expected}\ngot:\n{got}", shown.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_shipped_schedule_is_valid_without_any_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    let config = warden::config::parse(&src, &path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "health-probe",
            "db-pool",
            "pg-activity",
            "storage-fill",
            "prune-health-history",
            "prune-sync-log",
            "compact-sync-log",
            "purge-oauth-codes"
        ]
    );
    assert!(config.targets.database.is_sqlite() && config.targets.demo_schema);
    assert!(config.targets.s3.is_none(), "an unset S3_BUCKET means the S3 check passes");
}

#[test]
fn the_original_monitors_environment_overrides_apply() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    let env = |name: &str| match name {
        "HEALTH_CHECK_INTERVAL_SECS" => Some("10".to_owned()),
        "ALERT_EMAIL" => Some("ops@example.org".to_owned()),
        "ALERT_COOLDOWN_SECS" => Some("60".to_owned()),
        "DATABASE_URL" => Some("postgres://app@db.internal/app".to_owned()),
        _ => None,
    };
    let config = warden::config::parse(&src, &path, &env).unwrap();
    assert_eq!(config.job("health-probe").unwrap().schedule.to_string(), "every 10s");
    assert_eq!(config.alerts.admin, ["ops@example.org"]);
    assert_eq!(config.alerts.cooldown.to_string(), "1m");
    assert_eq!(config.targets.database, warden::config::DbUrl::Postgres("postgres://app@db.internal/app".into()));
    assert!(!config.targets.demo_schema, "never create the application's tables on Postgres unasked");
}

#[test]
fn a_maintenance_window_is_active_from_each_occurrence_for_its_duration() {
    let src = r#"version = 1
[[maintenance]]
name = "sunday-backup"
cron = "0 0 2 * * Sun"
tz = "Europe/Berlin"
duration = "2h"
policy = "status-alert"
kind = "email"
comment = "the weekly backup saturates the database"
"#;
    let config = warden::config::parse(src, std::path::Path::new("/tmp/m/schedules.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let window = &config.maintenance[0];
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
    // 2026-03-01 is a Sunday; Berlin is UTC+1 then, so the window is 01:00–03:00 UTC.
    assert!(!window.active(at("2026-03-01T00:59:59Z")));
    assert!(window.active(at("2026-03-01T01:00:00Z")));
    assert!(window.active(at("2026-03-01T02:59:59Z")));
    assert!(!window.active(at("2026-03-01T03:00:00Z")));
    assert!(!window.active(at("2026-03-02T01:30:00Z")), "a Monday");
    assert!(window.matchers.matches(Some("health-probe"), Some("status-alert"), warden::base::OutboxKind::Email));
    assert!(!window.matchers.matches(Some("health-probe"), Some("status-alert"), warden::base::OutboxKind::Ticket));
    assert!(!window.matchers.matches(Some("health-probe"), Some("pool-pressure"), warden::base::OutboxKind::Email));
}
