//! The per-job series (labelled `job`, and `check` for a probe's checks): one compact
//! record per job, rendered after the general registry's text. In the general registry
//! each of a probe job's eleven series is an entry of its own (its key with owned label
//! strings, a handle, a histogram's sample blocks and its rendered buckets), which at
//! 100,000 jobs made most of warden's memory; a record here is a few hundred bytes.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, RwLock};

use super::{
    CHECK_DURATION, CHECK_UP, DURATION_BUCKETS, JOB_DURATION, JOB_LAST_RUN, JOB_PERIOD, JOB_RUNS, Metric, STATUS,
};

/// What a run may end as, in the order the counters render.
const OUTCOMES: [&str; 6] = ["ok", "failed", "timeout", "skipped", "unclaimed", "running"];

/// An `f64` behind an atomic; NaN stands for "never set" (the series is not shown).
struct Value(AtomicU64);

impl Default for Value {
    fn default() -> Self {
        Value(AtomicU64::new(f64::NAN.to_bits()))
    }
}

impl Value {
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }

    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Relaxed))).filter(|v| !v.is_nan())
    }
}

#[derive(Default)]
struct JobSeries {
    runs: [AtomicU64; OUTCOMES.len()],
    /// Runs per duration bucket (each bucket alone, not cumulative), the last for `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The durations' sum, as `f64` bits.
    sum: AtomicU64,
    last_run: Value,
    period: Value,
    status: Value,
    checks: Mutex<Vec<CheckSeries>>,
}

struct CheckSeries {
    name: Box<str>,
    up: f64,
    seconds: f64,
}

static JOBS: LazyLock<RwLock<HashMap<Box<str>, JobSeries>>> = LazyLock::new(Default::default);

/// Runs `f` on `job`'s record, adding it on first use.
fn with_job(job: &str, f: impl FnOnce(&JobSeries)) {
    {
        let jobs = JOBS.read().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = jobs.get(job) {
            return f(series);
        }
    }
    let mut jobs = JOBS.write().unwrap_or_else(|e| e.into_inner());
    f(jobs.entry(job.into()).or_default());
}

pub(super) fn run(job: &str, outcome: &str, seconds: f64, now: f64) {
    let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(1);
    with_job(job, |s| {
        s.runs[i].fetch_add(1, Relaxed);
        if outcome != "skipped" {
            let bucket = DURATION_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(DURATION_BUCKETS.len());
            s.buckets[bucket].fetch_add(1, Relaxed);
            let _ = s.sum.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + seconds).to_bits()));
            s.last_run.set(now);
        }
    });
}

pub(super) fn period(job: &str, seconds: f64) {
    with_job(job, |s| s.period.set(seconds));
}

pub(super) fn snapshot<'a>(job: &str, status: f64, checks: impl Iterator<Item = (&'a str, bool, f64)>) {
    with_job(job, |s| {
        s.status.set(status);
        let mut known = s.checks.lock().unwrap_or_else(|e| e.into_inner());
        for (name, ok, seconds) in checks {
            let up = if ok { 1.0 } else { 0.0 };
            match known.iter_mut().find(|c| &*c.name == name) {
                Some(c) => (c.up, c.seconds) = (up, seconds),
                None => known.push(CheckSeries { name: name.into(), up, seconds }),
            }
        }
    });
}

/// For jobs no longer configured (a reload removed them): drops the gauges, which would
/// describe a job that is not there (a removed job that was down would stay down, and one
/// that no longer runs would look stuck), and keeps the run counters and durations, which
/// are totals (as a counter keeps counting from where it was if the job comes back).
pub(super) fn retain(keep: impl Fn(&str) -> bool) {
    let jobs = JOBS.read().unwrap_or_else(|e| e.into_inner());
    for (_, s) in jobs.iter().filter(|(job, _)| !keep(job)) {
        for gauge in [&s.last_run, &s.period, &s.status] {
            gauge.set(f64::NAN);
        }
        s.checks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Appends every job's series in the text exposition format, by family, jobs in name order.
pub(super) fn render(out: &mut String) {
    let jobs = JOBS.read().unwrap_or_else(|e| e.into_inner());
    let mut sorted: Vec<(&str, &JobSeries)> = jobs.iter().map(|(name, s)| (&**name, s)).collect();
    sorted.sort_unstable_by_key(|(name, _)| *name);
    let mut family = |metric: Metric, each: &dyn Fn(&mut String, &str, &JobSeries)| {
        let start = out.len();
        let _ = write!(out, "# HELP {} {}\n# TYPE {} {}\n", metric.name, metric.help, metric.name, kind(metric));
        let header = out.len();
        for (job, s) in &sorted {
            each(out, &escape(job), s);
        }
        if out.len() == header {
            out.truncate(start);
        } else {
            out.push('\n');
        }
    };
    family(JOB_RUNS, &|out, job, s| {
        for (outcome, n) in OUTCOMES.iter().zip(&s.runs) {
            let n = n.load(Relaxed);
            if n > 0 {
                let _ = writeln!(out, "{}{{job=\"{job}\",outcome=\"{outcome}\"}} {n}", JOB_RUNS.name);
            }
        }
    });
    family(JOB_DURATION, &|out, job, s| {
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return;
        }
        let name = JOB_DURATION.name;
        let mut below = 0;
        for (le, n) in DURATION_BUCKETS.iter().zip(&counts) {
            below += n;
            let _ = writeln!(out, "{name}_bucket{{job=\"{job}\",le=\"{le}\"}} {below}");
        }
        let _ = writeln!(out, "{name}_bucket{{job=\"{job}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{job=\"{job}\"}} {}", number(f64::from_bits(s.sum.load(Relaxed))));
        let _ = writeln!(out, "{name}_count{{job=\"{job}\"}} {count}");
    });
    for (metric, value) in [
        (JOB_LAST_RUN, (|s: &JobSeries| s.last_run.get()) as fn(&JobSeries) -> Option<f64>),
        (JOB_PERIOD, |s| s.period.get()),
        (STATUS, |s| s.status.get()),
    ] {
        family(metric, &|out, job, s| {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "{}{{job=\"{job}\"}} {}", metric.name, number(v));
            }
        });
    }
    for (metric, up) in [(CHECK_UP, true), (CHECK_DURATION, false)] {
        family(metric, &|out, job, s| {
            for c in s.checks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let v = if up { c.up } else { c.seconds };
                let _ = writeln!(out, "{}{{job=\"{job}\",check=\"{}\"}} {}", metric.name, escape(&c.name), number(v));
            }
        });
    }
}

fn kind(metric: Metric) -> &'static str {
    match metric.kind {
        super::Kind::Counter => "counter",
        super::Kind::Gauge => "gauge",
        super::Kind::Histogram => "histogram",
    }
}

/// A sample value as Prometheus writes it: `30`, `0.25`, `+Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_renders_its_counters_cumulative_buckets_gauges_and_checks() {
        run("jobs-test-a", "ok", 0.02, 100.0);
        run("jobs-test-a", "ok", 7.0, 101.0);
        run("jobs-test-a", "skipped", 0.0, 102.0);
        period("jobs-test-a", 30.0);
        snapshot("jobs-test-a", 1.0, [("db", true, 0.004), ("s\"3", false, 5.0)].into_iter());
        snapshot("jobs-test-a", 2.0, [("db", false, 0.5)].into_iter());
        let mut out = String::new();
        render(&mut out);
        for line in [
            "# TYPE warden_job_runs_total counter",
            "warden_job_runs_total{job=\"jobs-test-a\",outcome=\"ok\"} 2",
            "warden_job_runs_total{job=\"jobs-test-a\",outcome=\"skipped\"} 1",
            "# TYPE warden_job_duration_seconds histogram",
            "warden_job_duration_seconds_bucket{job=\"jobs-test-a\",le=\"0.01\"} 0",
            "warden_job_duration_seconds_bucket{job=\"jobs-test-a\",le=\"0.025\"} 1",
            "warden_job_duration_seconds_bucket{job=\"jobs-test-a\",le=\"5\"} 1",
            "warden_job_duration_seconds_bucket{job=\"jobs-test-a\",le=\"10\"} 2",
            "warden_job_duration_seconds_bucket{job=\"jobs-test-a\",le=\"+Inf\"} 2",
            "warden_job_duration_seconds_sum{job=\"jobs-test-a\"} 7.02",
            "warden_job_duration_seconds_count{job=\"jobs-test-a\"} 2",
            "warden_job_last_run_timestamp_seconds{job=\"jobs-test-a\"} 101",
            "warden_job_period_seconds{job=\"jobs-test-a\"} 30",
            "warden_status{job=\"jobs-test-a\"} 2",
            "warden_check_up{job=\"jobs-test-a\",check=\"db\"} 0",
            "warden_check_up{job=\"jobs-test-a\",check=\"s\\\"3\"} 0",
            "warden_check_duration_seconds{job=\"jobs-test-a\",check=\"db\"} 0.5",
        ] {
            assert!(out.lines().any(|l| l == line), "missing `{line}` in:\n{out}");
        }
        assert!(!out.contains("outcome=\"failed\""), "a counter never counted is not shown");

        retain(|job| job != "jobs-test-a");
        let mut out = String::new();
        render(&mut out);
        let left: Vec<&str> = out.lines().filter(|l| l.contains("jobs-test-a")).collect();
        assert!(
            !left.is_empty()
                && left
                    .iter()
                    .all(|l| l.starts_with("warden_job_runs_total") || l.starts_with("warden_job_duration_seconds")),
            "a removed job keeps its totals and loses its gauges: {left:#?}"
        );
    }
}
