//! `warden plugin …`: scaffold a policy crate, and run one evaluation of a component in
//! the sandbox exactly as the daemon would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::config::{Config, Grants, Limits, PolicySpec};
use crate::runtime::Capabilities;
use crate::tasks::Event;

/// `warden plugin test`: prints the actions, state writes and logs as JSON.
pub async fn test(
    config: Option<&Config>,
    plugin: &str,
    event_file: &Path,
    state_file: Option<&Path>,
    job: Option<&str>,
    now: Option<DateTime<Utc>>,
) -> anyhow::Result<ExitCode> {
    let spec = match config.and_then(|c| c.policies.iter().find(|p| p.name == plugin)) {
        Some(spec) => spec.clone(),
        None => {
            let path = PathBuf::from(plugin);
            if !path.exists() {
                let names: Vec<&str> =
                    config.map(|c| c.policies.iter().map(|p| p.name.as_str()).collect()).unwrap_or_default();
                bail!("`{plugin}` is neither a configured policy ({}) nor a component file", names.join(", "));
            }
            PolicySpec {
                name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into()),
                component: path,
                on: vec![],
                config: vec![],
                grants: Grants::default(),
                limits: Limits::default(),
                quarantine_after: u32::MAX,
                enabled: true,
            }
        }
    };
    let text = std::fs::read_to_string(event_file).with_context(|| format!("cannot read {}", event_file.display()))?;
    let event: Event = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not an event; expected e.g. {{\"kind\": \"snapshot\", …}}, {{\"kind\": \"gauges\", \"gauges\": […]}} \
             or {{\"kind\": \"run-finished\", \"outcome\": \"ok\", …}}",
            event_file.display()
        )
    })?;
    let state: BTreeMap<String, String> = match state_file {
        Some(f) => {
            serde_json::from_str(&std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?)
                .with_context(|| format!("{}: expected a JSON object of strings", f.display()))?
        }
        None => BTreeMap::new(),
    };
    let engine = match config {
        Some(c) => crate::daemon::policy_engine(c)?,
        None => crate::runtime::PolicyEngine::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?,
    };
    let policy = engine.load(&spec)?;
    let caps = match config {
        Some(c) if spec.grants != Grants::default() => {
            let targets = crate::targets::Targets::open(&c.targets).await?;
            Capabilities { sql: spec.grants.sql_read.then(|| targets.db.clone()), s3: targets.s3.clone() }
        }
        _ => Capabilities::default(),
    };
    let job = job.map(str::to_owned).or_else(|| spec.on.first().cloned()).unwrap_or_else(|| "test".into());
    let result = engine.evaluate(&policy, &job, &event, state, now.unwrap_or_else(Utc::now), caps).await;
    match result {
        Ok(evaluation) => {
            let out = serde_json::json!({
                "policy": spec.name,
                "hash": policy.hash,
                "actions": evaluation.actions,
                "state_writes": evaluation.state_writes,
                "logs": evaluation.logs.iter().map(|(level, message)| serde_json::json!({"level": level, "message": message})).collect::<Vec<_>>(),
                "micros": evaluation.micros,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: policy \"{}\": evaluation failed: {e}", spec.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `warden plugin new`: a policy crate that builds and passes its own test.
pub fn new(name: &str, dir: &Path, sdk: &Path, standalone: bool) -> anyhow::Result<ExitCode> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("invalid plugin name `{name}`: use lowercase letters, digits and `-`, starting with a letter");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(root.join("src"))?;
    let workspace = if standalone { "\n[workspace]\n" } else { "" };
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
warden-policy = {{ path = "{sdk}" }}
{workspace}"#,
            sdk = sdk.display()
        ),
    )?;
    std::fs::write(root.join("src/lib.rs"), SCAFFOLD.replace("{name}", name))?;
    println!("created {}", root.display());
    println!("next:");
    println!("  cargo test --manifest-path {}/Cargo.toml        # the decision logic, natively", root.display());
    println!("  scripts/build-plugins.sh                         # the component, into plugins/{name}.wasm");
    println!("  warden plugin test plugins/{name}.wasm --event event.json");
    println!("then add a [[policy]] with component = \"plugins/{name}.wasm\" to schedules.toml");
    Ok(ExitCode::SUCCESS)
}

const SCAFFOLD: &str = r#"//! `{name}`: a warden policy. It decides; the host acts.
//!
//! Keep the decision in `decide` (plain Rust, tested natively); `evaluate` only wires it to
//! the host's clock, config and state.

use warden_policy::{Action, Event, Guest, HostState, Level, LogEntry, Snapshot, State, Status, clock, host_config};

/// Logs every status change it sees; config `greeting` prefixes the line.
pub fn decide(greeting: &str, snap: &Snapshot, _now_ms: i64, state: &mut impl State) -> Vec<Action> {
    let previous = state.get("last").and_then(|s| Status::parse(&s));
    state.set("last", snap.status.name().to_owned());
    match previous {
        Some(p) if p != snap.status => vec![Action::Log(LogEntry {
            level: Level::Info,
            message: format!("{greeting}: {} -> {}", p.name(), snap.status.name()),
        })],
        _ => Vec::new(),
    }
}

struct Policy;

impl Guest for Policy {
    fn evaluate(event: Event) -> Result<Vec<Action>, String> {
        let Event::Snapshot(snap) = event else { return Ok(Vec::new()) };
        let greeting = host_config().text("greeting", "{name}");
        Ok(decide(&greeting, &snap, clock::now_ms(), &mut HostState))
    }
}

warden_policy::export!(Policy);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn snap(status: Status) -> Snapshot {
        Snapshot { job: "probe".into(), status, checked_at_ms: 0, duration_ms: 1, checks: vec![] }
    }

    #[test]
    fn logs_a_change_once() {
        let mut state = BTreeMap::new();
        assert!(decide("hi", &snap(Status::Operational), 0, &mut state).is_empty());
        let actions = decide("hi", &snap(Status::Error), 1, &mut state);
        assert!(matches!(&actions[..], [Action::Log(l)] if l.message == "hi: operational -> error"));
        assert!(decide("hi", &snap(Status::Error), 2, &mut state).is_empty());
    }
}
"#;
