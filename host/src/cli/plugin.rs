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

/// How `warden plugin test` evaluates.
pub struct TestOptions<'a> {
    /// The policy's state before, a JSON object of strings.
    pub state: Option<&'a Path>,
    pub job: Option<&'a str>,
    pub now: Option<DateTime<Utc>>,
    /// Grants added for this evaluation, by name.
    pub grants: Vec<String>,
    /// Config values over the policy's, `KEY=VALUE`.
    pub set: Vec<String>,
}

/// `warden plugin test`: prints the actions, state writes and logs as JSON.
pub async fn test(
    config: Option<&Config>,
    plugin: &str,
    event_file: &Path,
    options: TestOptions<'_>,
) -> anyhow::Result<ExitCode> {
    let TestOptions { state: state_file, job, now, grants, set } = options;
    let mut spec = match config.and_then(|c| c.policies.iter().find(|p| p.name == plugin)) {
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
                sql_database: None,
                s3_bucket: None,
                limits: Limits::default(),
                quarantine_after: u32::MAX,
                enabled: true,
            }
        }
    };
    for name in &grants {
        if let Some(database) = name.strip_prefix("sql:read:") {
            spec.grants.sql_read = true;
            spec.sql_database = Some(database.to_owned());
            continue;
        }
        if let Some((grant, bucket)) = name.strip_prefix("s3:").and_then(|r| r.split_once(':')) {
            spec.grants.grant(&format!("s3:{grant}")).map_err(|e| anyhow::anyhow!("--grant: {e}"))?;
            spec.s3_bucket = Some(bucket.to_owned());
            continue;
        }
        spec.grants.grant(name).map_err(|e| anyhow::anyhow!("--grant: {e}"))?;
    }
    for pair in &set {
        let Some((key, value)) = pair.split_once('=') else { bail!("--set `{pair}`: expected KEY=VALUE") };
        spec.config.retain(|(k, _)| k != key);
        spec.config.push((key.to_owned(), value.to_owned()));
    }
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
    let engine = crate::daemon::policy_engine(config)?;
    let policy = engine.load(&spec)?;
    let caps = if spec.grants == Grants::default() {
        Capabilities::default()
    } else {
        // Granted: the schedule's targets, or the defaults `warden run` would use without one.
        let defaults;
        let config = match config {
            Some(c) => c,
            None => {
                let env = |k: &str| std::env::var(k).ok();
                defaults = crate::config::parse("version = 1\n", Path::new("schedules.toml"), &env)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                &defaults
            }
        };
        let targets = crate::targets::Targets::open(&config.targets).await?;
        if let Some((_, why)) = targets.verify_grants(std::slice::from_ref(&spec), &config.state.url).await.pop() {
            bail!("--grant sql:read: refused: {why}");
        }
        Capabilities { sql: targets.granted_sql(&spec), s3: targets.granted_bucket(&spec) }
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

/// `warden plugin event`: an example event of `kind`, as JSON.
pub fn example_event(kind: &str) -> anyhow::Result<ExitCode> {
    use crate::health::{CheckResult, Snapshot, Status};
    let check = |name: &str, kind: &str, critical: bool, ok: bool, error: Option<&str>| CheckResult {
        name: name.into(),
        kind: kind.into(),
        critical,
        ok,
        error: error.map(str::to_owned),
        duration_ms: 3,
        target: None,
    };
    let event = match kind {
        "snapshot" => Event::Snapshot(Snapshot {
            job: "health-probe".into(),
            status: Status::Degraded,
            checked_at: "2026-11-29T12:00:00Z".parse()?,
            duration_ms: 9,
            checks: vec![
                check("db", "db", true, true, None),
                check("sessions", "sql", false, false, Some("no such table: session")),
            ],
        }),
        "gauges" => Event::Gauges {
            gauges: [("db_pool_size", 5.0), ("db_pool_idle", 3.0), ("db_pool_active", 2.0), ("db_pool_max", 5.0)]
                .into_iter()
                .map(|(name, value)| crate::tasks::Gauge { name: name.into(), labels: Vec::new(), value })
                .collect(),
        },
        "run-finished" => {
            Event::RunFinished(crate::tasks::RunResult { outcome: "ok".into(), rows_affected: Some(120), error: None })
        }
        other => bail!("unknown event kind `{other}`: expected snapshot, gauges or run-finished"),
    };
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(ExitCode::SUCCESS)
}
