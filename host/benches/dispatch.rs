//! Dispatcher throughput and memory: 100,000 pending subscriber notices delivered to a
//! local SMTP server (real TCP, the test suite's server in counting mode) with the pace
//! limit off, on the embedded SQLite store.
//!
//! `cargo bench -p warden --bench dispatch` prints the table; without `--bench` (as
//! `cargo test --all-targets` runs it) it does a 2,000-row smoke run.

#[path = "../../tests/all/smtp_server.rs"]
#[allow(dead_code)] // the tests use the rest of it
mod smtp_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use warden::base::OutboxKind;
use warden::delivery::{Channels, Dispatcher};
use warden::store::{Decision, NewOutboxRow, RunCommit};

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows: usize = if full { 100_000 } else { 2_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(rows));
}

async fn run(rows: usize) {
    let smtp = smtp_server::SmtpServer::sink();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedules.toml");
    std::fs::write(
        &path,
        format!(
            r#"version = 1
product = "MNW"
[alerts]
from = "MNW status <warden@example.org>"
smtp = "{}"
[alerts.subscribers]
query = "SELECT id, email FROM users WHERE status_alerts = 1"
opt_out = "UPDATE users SET status_alerts = 0 WHERE id = $1"
signing_secret = "bench-secret-of-enough-length"
pace = 0
"#,
            smtp.url()
        ),
    )
    .unwrap();
    let config = warden::config::load(&path).unwrap();
    let ctx = warden::daemon::open(&config).await.unwrap();
    let rss_start = rss_kib("VmRSS:");

    // The fan-out as the dispatcher writes it: one parent, `rows` children, one transaction.
    let parent_payload =
        serde_json::json!({ "kind": "notify-subscribers", "status": "error", "previous": "operational" });
    let run = RunCommit::ok(
        "health-probe",
        vec![Decision {
            policy: "status-alert".into(),
            state_writes: Default::default(),
            outbox: vec![NewOutboxRow {
                kind: OutboxKind::Subscribers,
                dedup_key: "bench".into(),
                payload: parent_payload.to_string(),
                recipient: None,
            }],
            read_mark: None,
        }],
    );
    ctx.store.commit(&run).await.unwrap();
    let parent = ctx.store.claim_due(&[OutboxKind::Subscribers], 1, Duration::from_secs(60)).await.unwrap().remove(0);
    let children: Vec<NewOutboxRow> = (0..rows)
        .map(|i| {
            let notice = serde_json::json!({
                "user": i.to_string(), "email": format!("user{i}@example.org"), "status": "error", "previous": "operational",
            });
            NewOutboxRow {
                kind: OutboxKind::Notice,
                dedup_key: format!("bench:{i}"),
                payload: notice.to_string(),
                recipient: Some(i.to_string()),
            }
        })
        .collect();
    let queued = Instant::now();
    ctx.store.expand(&parent, &children, "bench").await.unwrap();
    let queue_seconds = queued.elapsed().as_secs_f64();
    drop(children);
    let rss_pending = rss_kib("VmRSS:");

    let channels = Arc::new(Channels::new(&config, ctx.targets.clone()).unwrap());
    let (_channels, rx) = watch::channel(channels);
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let mut lanes = Dispatcher::new(ctx.store.clone(), ctx.spool.clone(), rx, Arc::new(Notify::new())).spawn(stopped);
    let mut peak_rss = rss_pending;
    while smtp.count() < rows {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_rss = peak_rss.max(rss_kib("VmRSS:"));
        assert!(started.elapsed() < Duration::from_secs(1800), "stuck at {} of {rows}", smtp.count());
    }
    let sent_seconds = started.elapsed().as_secs_f64();
    // Every row marked delivered (the last marks trail the last send slightly).
    loop {
        let counts = ctx.store.outbox_counts().await.unwrap();
        let delivered: i64 = counts.iter().filter(|(k, s, _)| k == "notice" && s == "delivered").map(|c| c.2).sum();
        if delivered as usize == rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done_seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    while lanes.join_next().await.is_some() {}

    println!("dispatcher: {rows} pending notices → local SMTP server (TCP), pace limit off, SQLite store");
    println!("  {:<40} {:>12}", "measure", "value");
    println!("  {:<40} {:>12.2}", "fan-out: queue rows (s, one transaction)", queue_seconds);
    println!("  {:<40} {:>12.0}", "fan-out: rows queued per second", rows as f64 / queue_seconds);
    println!("  {:<40} {:>12.2}", "delivery: all sent (s)", sent_seconds);
    println!("  {:<40} {:>12.2}", "delivery: all marked delivered (s)", done_seconds);
    println!("  {:<40} {:>12.0}", "delivery: mails per second", rows as f64 / done_seconds);
    println!("  {:<40} {:>12}", "SMTP sessions opened", smtp.sessions());
    println!("  {:<40} {:>12.1}", "RSS at start (MiB)", rss_start as f64 / 1024.0);
    println!("  {:<40} {:>12.1}", "RSS with rows pending (MiB)", rss_pending as f64 / 1024.0);
    println!("  {:<40} {:>12.1}", "RSS peak while dispatching (MiB)", peak_rss as f64 / 1024.0);
    println!("  {:<40} {:>12.1}", "VmHWM, whole run (MiB)", rss_kib("VmHWM:") as f64 / 1024.0);
}
