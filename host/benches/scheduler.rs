//! Scheduler benchmark (prints a table): `cargo bench -p warden --bench scheduler`.
//!
//! - load: 100,000 jobs into the timer heap, and the resident memory that costs per job;
//! - throughput: fires per second the scheduler core sustains (due + re-plan + finished);
//! - lateness: p50/p99/max delay from planned fire time to hand-out, in a real Tokio loop
//!   like the daemon's, at 1,000 fires per second.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a small smoke run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use warden::config::Duration as Dur;
use warden::schedule::{Fire, ScheduleSpec, Scheduler};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn every(secs: u64, jitter_ms: u64) -> ScheduleSpec {
    ScheduleSpec::every(Dur::from_secs(secs), Dur(Duration::from_millis(jitter_ms))).unwrap()
}

fn jobs(n: usize, cron_every: usize) -> Vec<(String, ScheduleSpec, bool)> {
    (0..n)
        .map(|i| {
            let spec = if cron_every > 0 && i % cron_every == 0 {
                ScheduleSpec::cron(&format!("{} {} * * * *", i % 60, (i / 60) % 60), chrono_tz::UTC, Dur::default())
                    .unwrap()
            } else {
                every(1 + (i as u64 % 60), 0)
            };
            (format!("job-{i}"), spec, true)
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 100_000 } else { 2_000 };
    println!("scheduler benchmark ({} run)", if full { "full" } else { "smoke" });
    println!("{:<46} {:>16}", "measure", "value");

    // Load.
    let start = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let last: HashMap<String, chrono::DateTime<Utc>> = HashMap::new();
    for (label, cron_every) in [("every", 0usize), ("every + 1% cron", 100)] {
        let specs = jobs(n, cron_every);
        let last_ran: HashMap<String, chrono::DateTime<Utc>> =
            specs.iter().map(|(name, _, _)| (name.clone(), start)).collect();
        let before = rss_bytes();
        let t = Instant::now();
        let mut s = Scheduler::new(1);
        let fires = s.load(specs, start, &last_ran);
        let took = t.elapsed();
        let after = rss_bytes();
        assert!(fires.is_empty());
        assert_eq!(s.len(), n);
        println!("{:<46} {:>13.1} ms", format!("load {n} jobs ({label})"), took.as_secs_f64() * 1e3);
        println!(
            "{:<46} {:>14} B",
            format!("resident memory per job ({label})"),
            after.saturating_sub(before) / n as u64
        );
        drop(s);
    }

    // Throughput: advance time second by second; every due job finishes at once.
    let mut s = Scheduler::new(2);
    for fire in s.load(jobs(n, 0), start, &last) {
        s.finished(fire.job());
    }
    let seconds = if full { 600 } else { 30 };
    let t = Instant::now();
    let mut fired = 0u64;
    for sec in 1..=seconds {
        let now = start + chrono::Duration::seconds(sec);
        for fire in s.due(now) {
            if let Fire::Run { job, .. } = fire {
                s.finished(&job);
                fired += 1;
            }
        }
    }
    let took = t.elapsed().as_secs_f64();
    assert!(fired > 0);
    println!("{:<46} {:>16}", format!("fires in {seconds} simulated s ({n} jobs)"), fired);
    println!("{:<46} {:>14.0}/s", "fires per second sustained (core)", fired as f64 / took);

    // Lateness in a real loop at 1,000 fires/s: 1,000 jobs every 1 s, jitter spreading them.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run_for = Duration::from_secs(if full { 10 } else { 2 });
    let mut late_us = rt.block_on(async move {
        let mut s = Scheduler::new(3);
        let specs = (0..1000).map(|i| (format!("j{i}"), every(1, 1000), true));
        let now = Utc::now();
        let last: HashMap<String, chrono::DateTime<Utc>> = (0..1000).map(|i| (format!("j{i}"), now)).collect();
        s.load(specs, now, &last);
        let mut late = Vec::new();
        let end = Instant::now() + run_for;
        while Instant::now() < end {
            for fire in s.due(Utc::now()) {
                s.finished(fire.job());
            }
            if let Some(next) = s.next_wake() {
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
                let woke = Utc::now();
                late.push((woke - next).num_microseconds().unwrap_or(0).max(0));
            }
        }
        late
    });
    late_us.sort_unstable();
    let pct = |p: f64| late_us[((late_us.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    // Lateness per wake-up: from the earliest planned fire time to when the loop ran.
    println!("{:<46} {:>16}", "wake-ups measured (1,000 fires/s target)", late_us.len());
    println!("{:<46} {:>13.2} ms", "lateness p50", pct(0.50));
    println!("{:<46} {:>13.2} ms", "lateness p99", pct(0.99));
    println!("{:<46} {:>13.2} ms", "lateness max", pct(1.0));
}
