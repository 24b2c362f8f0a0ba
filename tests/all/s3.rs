//! The S3 check against a real S3-compatible server (moto), started and stopped here.

use std::path::Path;

use chrono::Utc;
use warden::daemon::{Trigger, execute};
use warden::health::Status;
use warden::tasks::Event;

use crate::schedule::{probe, schedule};
use crate::support::S3Server;

fn config(dir: &Path, endpoint: &str, bucket: &str) -> warden::config::Config {
    let s3 = format!(
        r#"s3 = {{ bucket = "{bucket}", endpoint = "{endpoint}", access_key_id = "test", secret_access_key = "test" }}"#
    );
    let checks = [r#"{ name = "db", kind = "db" }"#, r#"{ name = "s3", kind = "s3", timeout = "3s" }"#];
    let body = schedule().table(format!("[targets]\n{s3}")).job(probe("probe", "30s", &checks)).to_string();
    warden::config::parse(&body, &dir.join("schedules.toml"), &|_| None).unwrap()
}

async fn probe_s3(
    cfg: &warden::config::Config,
    ctx: &warden::daemon::RunContext,
) -> (Status, warden::health::CheckResult) {
    let report = execute(cfg.job("probe").unwrap(), Utc::now(), Trigger::Manual, ctx).await;
    let Some(Event::Snapshot(snap)) = report.event else { panic!("no snapshot") };
    let s3 = snap.checks.into_iter().find(|c| c.name == "s3").unwrap();
    (snap.status, s3)
}

#[tokio::test]
async fn the_s3_check_passes_against_a_live_bucket_and_fails_when_the_server_stops() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.endpoint, "media");
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let bucket = ctx.targets.s3.clone().unwrap();
    bucket.client.create_bucket().bucket("media").send().await.unwrap();

    let (status, s3) = probe_s3(&cfg, &ctx).await;
    assert!(s3.ok, "{s3:?}");
    assert_eq!(status, Status::Operational);

    server.stop();
    let (status, s3) = probe_s3(&cfg, &ctx).await;
    assert!(!s3.ok);
    assert!(s3.error.as_deref().unwrap().contains("media"), "{s3:?}");
    assert_eq!(status, Status::Degraded, "S3 is not critical: the service is degraded, not down");
}

#[tokio::test]
async fn a_missing_bucket_fails_the_check() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.endpoint, "no-such-bucket");
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let (status, s3) = probe_s3(&cfg, &ctx).await;
    assert!(!s3.ok);
    assert_eq!(status, Status::Degraded);
}

#[tokio::test]
async fn no_s3_configured_counts_as_ok() {
    let dir = tempfile::tempdir().unwrap();
    let body = schedule().job(probe("probe", "30s", &[r#"{ name = "s3", kind = "s3" }"#])).to_string();
    let cfg = warden::config::parse(&body, &dir.path().join("schedules.toml"), &|_| None).unwrap();
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let (status, s3) = probe_s3(&cfg, &ctx).await;
    assert!(s3.ok && s3.error.is_none());
    assert_eq!(status, Status::Operational);
}

/// A named bucket beside the default: an `s3` check names it with `bucket =`, and the
/// result says which; a policy granted `s3:head:backups` heads keys there, not in the default.
#[tokio::test]
async fn a_check_and_a_grant_name_their_bucket() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = &server.endpoint;
    let bucket = |name: &str| {
        format!(
            r#"{{ bucket = "{name}", endpoint = "{endpoint}", access_key_id = "test", secret_access_key = "test" }}"#
        )
    };
    let targets = format!("[targets]\ns3 = {}\n[targets.buckets]\nbackups = {}\n", bucket("media"), bucket("nightly"));
    let checks = [r#"{ name = "media", kind = "s3" }"#, r#"{ name = "backups", kind = "s3", bucket = "backups" }"#];
    let body = schedule().table(targets).job(probe("probe", "30s", &checks)).to_string();
    let cfg = warden::config::parse(&body, &dir.path().join("schedules.toml"), &|_| None).unwrap();
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let media = ctx.targets.s3.clone().unwrap();
    media.client.create_bucket().bucket("media").send().await.unwrap();
    let report = execute(cfg.job("probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    let Some(Event::Snapshot(snap)) = report.event else { panic!("no snapshot") };
    let by = |n: &str| snap.checks.iter().find(|c| c.name == n).unwrap().clone();
    assert!(by("media").ok, "{:?}", by("media"));
    let backups = by("backups");
    assert_eq!(backups.target.as_deref(), Some("backups"));
    assert!(!backups.ok && backups.error.as_deref().unwrap().contains("nightly"), "not created yet: {backups:?}");
    media.client.create_bucket().bucket("nightly").send().await.unwrap();
    let report = execute(cfg.job("probe").unwrap(), Utc::now(), Trigger::Manual, &ctx).await;
    let Some(Event::Snapshot(snap)) = report.event else { panic!("no snapshot") };
    assert!(snap.checks.iter().all(|c| c.ok), "{:?}", snap.checks);
    // A grant names the bucket its policy reaches.
    let mut spec = crate::policies::spec("p", "status-alert.wasm", &[]);
    spec.grants.s3_head = true;
    assert_eq!(ctx.targets.granted_bucket(&spec).unwrap().bucket, "media");
    spec.s3_bucket = Some("backups".into());
    assert_eq!(ctx.targets.granted_bucket(&spec).unwrap().bucket, "nightly");
}

/// A policy granted `s3:head` and `s3:list` on one bucket reaches for another through the
/// keys and prefixes it sends (`tests/guests/hostile-sql`): each is refused, and its own
/// bucket still lists.
#[tokio::test]
async fn a_granted_key_or_prefix_cannot_reach_another_bucket() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.endpoint, "media");
    let ctx = warden::daemon::open(&cfg).await.unwrap();
    let media = ctx.targets.s3.clone().unwrap();
    for bucket in ["media", "nightly"] {
        media.client.create_bucket().bucket(bucket).send().await.unwrap();
    }
    let put = |bucket: &'static str, key: &'static str| {
        media.client.put_object().bucket(bucket).key(key).body(b"NIGHTLY-SECRET".to_vec().into()).send()
    };
    put("media", "ok.txt").await.unwrap();
    put("nightly", "secret.txt").await.unwrap();
    let mut spec = crate::policies::spec("hostile-sql", "hostile-sql.wasm", &[("s3", "nightly")]);
    spec.grants.s3_head = true;
    spec.grants.s3_list = true;
    spec.limits.deadline = warden::config::Duration::try_from("20s").unwrap();
    let engine = crate::policies::engine();
    let policy = engine.load(&spec).unwrap();
    let caps = warden::runtime::Capabilities { sql: None, s3: ctx.targets.granted_bucket(&spec) };
    let event = crate::policies::snapshot(Status::Operational, 0);
    let e = engine.evaluate(&policy, "job", &event, Default::default(), Utc::now(), caps).await.unwrap();
    let lines: Vec<String> = e
        .actions
        .iter()
        .filter_map(|a| match a {
            warden::runtime::ActionRecord::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    let tries: Vec<&String> = lines.iter().filter(|l| l.starts_with("s3 ")).collect();
    assert_eq!(tries.len(), 10, "{lines:#?}");
    assert!(tries.iter().all(|l| l.contains(": denied: refused")), "{lines:#?}");
    assert!(lines.contains(&"probe own-bucket: ok.txt".to_owned()), "{lines:#?}");
}
