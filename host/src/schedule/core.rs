//! One timer heap for all jobs: overlap skip, catch-up at start, jitter, and re-planning
//! when the wall clock steps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::ScheduleSpec;

/// What the scheduler decided for one due occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fire {
    /// Run the job; `scheduled` is the occurrence's unjittered time (the claim key),
    /// `fire_at` when it was due to start (with its jitter; now, for a catch-up): a start
    /// after that is lateness.
    Run { job: String, scheduled: DateTime<Utc>, fire_at: DateTime<Utc> },
    /// The previous run is still going: this occurrence is skipped (and recorded).
    SkipOverlap { job: String, scheduled: DateTime<Utc> },
}

impl Fire {
    pub fn job(&self) -> &str {
        match self {
            Fire::Run { job, .. } | Fire::SkipOverlap { job, .. } => job,
        }
    }
}

/// The next occurrence of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub scheduled: DateTime<Utc>,
    /// `scheduled` plus this occurrence's jitter.
    pub fire_at: DateTime<Utc>,
}

struct Entry {
    name: String,
    spec: ScheduleSpec,
    enabled: bool,
    running: bool,
    next: Option<Planned>,
    /// The newest occurrence fired (or recorded in the store at load).
    last: Option<DateTime<Utc>>,
    /// Milliseconds this `every` job's occurrences run ahead of the wall clock: after the
    /// clock stepped back, the job keeps its period on the occurrences after the last one
    /// it ran (an occurrence never runs twice) until a step forward takes the lead back.
    lead: i64,
}

/// The scheduler core. Holds no IO handles; see the module invariant.
pub struct Scheduler {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    seq: u64,
    rng: SmallRng,
    /// The most short-period (`every` under an hour) catch-ups one `load` fires at once.
    burst: usize,
}

/// `every` jobs with a period under this are "frequent": missing one occurrence while
/// warden was down costs nothing, since the next is near.
const FREQUENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A wall-clock step larger than this is a correction that takes effect at once (Debian
/// cron's rule): after it, jobs plan from the new time without a lead.
pub const CORRECTION: chrono::TimeDelta = chrono::TimeDelta::hours(3);

impl Scheduler {
    pub fn new(seed: u64) -> Self {
        Self {
            entries: Vec::new(),
            by_name: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            burst: usize::MAX,
        }
    }

    /// At most `n` frequent jobs (`every` under an hour) catch up at once at a load; when
    /// more would, none of them do and each starts at its own next occurrence instead, so a
    /// fleet of 10,000 probes starts spread over its period rather than all at once. Cron
    /// and long-period jobs always catch up.
    pub fn with_burst_limit(mut self, n: usize) -> Self {
        self.burst = n;
        self
    }

    /// Replaces the job set. Jobs keep their running flag and, when their schedule is
    /// unchanged, their planned occurrence. New or rescheduled jobs whose latest
    /// occurrence at or before `now` is newer than their last recorded run (or that
    /// never ran) fire at once: that is the catch-up after downtime, and the first
    /// probe at start-up.
    pub fn load(
        &mut self,
        jobs: impl IntoIterator<Item = (String, ScheduleSpec, bool)>,
        now: DateTime<Utc>,
        last_runs: &HashMap<String, DateTime<Utc>>,
    ) -> Vec<Fire> {
        let mut old: HashMap<String, Entry> = self.entries.drain(..).map(|e| (e.name.clone(), e)).collect();
        self.by_name.clear();
        self.heap.clear();
        let jobs: Vec<(String, ScheduleSpec, bool)> = jobs.into_iter().collect();
        let frequent_catch_ups = jobs
            .iter()
            .filter(|(name, spec, enabled)| {
                *enabled
                    && is_frequent(spec)
                    && !old.get(name).is_some_and(|p| p.enabled && p.spec.same_as(spec))
                    && catch_up(spec, last_runs.get(name).copied(), now).is_some()
            })
            .count();
        let frequent_ok = frequent_catch_ups <= self.burst;
        let mut fires = Vec::new();
        self.entries.reserve_exact(jobs.len());
        self.by_name.reserve(jobs.len());
        for (name, spec, enabled) in jobs {
            let previous = old.remove(&name);
            let running = previous.as_ref().is_some_and(|p| p.running);
            let unchanged = previous.as_ref().is_some_and(|p| p.enabled == enabled && p.spec.same_as(&spec));
            let last = last_runs.get(&name).copied();
            let mut entry = Entry { name: name.clone(), spec, enabled, running, next: None, last, lead: 0 };
            if enabled {
                if unchanged && let Some(p) = previous {
                    (entry.next, entry.last, entry.lead) = (p.next, p.last.max(last), p.lead);
                }
                if entry.next.is_none() {
                    if let Some(scheduled) = catch_up(&entry.spec, last, now)
                        && (frequent_ok || !is_frequent(&entry.spec))
                    {
                        fires.push(decide(&mut entry, scheduled, now));
                    }
                    // A last run ahead of the clock (it stepped back, then warden restarted):
                    // plan after it, so no occurrence runs twice.
                    let ahead = last.map(|l| l - now).filter(|a| *a > chrono::TimeDelta::zero() && *a <= CORRECTION);
                    let after = match (&entry.spec, ahead) {
                        (ScheduleSpec::Every { .. }, Some(ahead)) => {
                            entry.lead = ahead.num_milliseconds();
                            now + ahead
                        }
                        (_, Some(ahead)) => now + ahead,
                        (_, None) => now,
                    };
                    entry.next = plan(&mut self.rng, &entry.spec, after, entry.lead);
                }
            }
            let slot = self.entries.len();
            if let Some(next) = entry.next {
                self.push(next.fire_at, slot);
            }
            self.by_name.insert(name, slot);
            self.entries.push(entry);
        }
        fires
    }

    /// When the earliest planned occurrence is due, if any job is planned.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((_, _, slot))| self.entries[*slot].next.map(|p| p.fire_at)).and_then(|t| t)
    }

    /// Every occurrence due at `now`, each job re-planned after it.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Fire> {
        let mut fires = Vec::new();
        let now_ms = now.timestamp_millis();
        while let Some(Reverse((at, _, slot))) = self.heap.peek().copied() {
            if at > now_ms {
                break;
            }
            self.heap.pop();
            let entry = &mut self.entries[slot];
            let Some(planned) = entry.next.take() else { continue };
            fires.push(decide(entry, planned.scheduled, planned.fire_at));
            entry.last = Some(planned.scheduled);
            // Plan after the occurrence itself, or after `now` when the wake-up was late:
            // a missed stretch fires once, then the schedule continues without a burst.
            let clock = now + chrono::Duration::milliseconds(entry.lead - 1);
            entry.next = plan(&mut self.rng, &entry.spec, planned.scheduled.max(clock), entry.lead);
            if let Some(next) = entry.next {
                self.seq += 1;
                self.heap.push(Reverse((next.fire_at.timestamp_millis(), self.seq, slot)));
            }
        }
        fires
    }

    /// The wall clock stepped by `step` (positive: forward) at `now`, the time after the
    /// step; every job is re-planned:
    /// - back, up to `CORRECTION`: an `every` job keeps its period on the occurrences after
    ///   the last one it ran (they run ahead of the clock by the step, its lead); a cron job
    ///   fires at its next time after both `now` and its last run (a repeated time runs once);
    /// - back further: a correction; every job plans from `now` (an occurrence already in
    ///   `job_runs` is still refused by its claim);
    /// - forward: an `every` job's lead is taken back first; what the step skipped is handled
    ///   by the catch-up rules: a frequent job (under an hour) skips to its next time, any
    ///   other fires its missed occurrence once (at the next `due`).
    pub fn clock_stepped(&mut self, step: chrono::TimeDelta, now: DateTime<Utc>) {
        let correction = step.abs() > CORRECTION;
        let zero = chrono::TimeDelta::zero();
        for entry in &mut self.entries {
            let Some(mut next) = entry.next else { continue };
            let every = matches!(entry.spec, ScheduleSpec::Every { .. });
            if step < zero {
                if every && !correction {
                    entry.lead += (-step).num_milliseconds();
                    next.fire_at += step;
                    entry.next = Some(next);
                } else {
                    entry.lead = 0;
                    let after = match entry.last {
                        Some(last) if !every && !correction => last.max(now),
                        _ => now,
                    };
                    entry.next = plan(&mut self.rng, &entry.spec, after, 0);
                }
            } else {
                // Due before the step (the step was noticed late): it fires, as any late one.
                let due_before = next.fire_at <= now - step;
                let taken = chrono::TimeDelta::milliseconds(entry.lead).min(step);
                entry.lead -= taken.num_milliseconds();
                next.fire_at += taken;
                entry.next = Some(next);
                let frequent = entry.spec.period(now).is_some_and(|p| p < FREQUENT);
                if next.fire_at < now && frequent && !due_before {
                    let clock = now + chrono::TimeDelta::milliseconds(entry.lead);
                    entry.next = plan(&mut self.rng, &entry.spec, clock, entry.lead);
                }
            }
        }
        self.heap.clear();
        for slot in 0..self.entries.len() {
            if let Some(next) = self.entries[slot].next {
                self.push(next.fire_at, slot);
            }
        }
    }

    /// The job's run has ended; its next occurrence may run.
    pub fn finished(&mut self, job: &str) {
        if let Some(&slot) = self.by_name.get(job) {
            self.entries[slot].running = false;
        }
    }

    /// Marks a job running outside the timer (a manual trigger); false if it already is.
    pub fn start_manual(&mut self, job: &str) -> bool {
        match self.by_name.get(job) {
            Some(&slot) if !self.entries[slot].running => {
                self.entries[slot].running = true;
                true
            }
            _ => false,
        }
    }

    pub fn planned(&self, job: &str) -> Option<Planned> {
        self.by_name.get(job).and_then(|&slot| self.entries[slot].next)
    }

    pub fn is_running(&self, job: &str) -> bool {
        self.by_name.get(job).is_some_and(|&slot| self.entries[slot].running)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, at: DateTime<Utc>, slot: usize) {
        self.seq += 1;
        self.heap.push(Reverse((at.timestamp_millis(), self.seq, slot)));
    }
}

fn is_frequent(spec: &ScheduleSpec) -> bool {
    matches!(spec, ScheduleSpec::Every { period, .. } if period.std() < FREQUENT)
}

fn decide(entry: &mut Entry, scheduled: DateTime<Utc>, fire_at: DateTime<Utc>) -> Fire {
    let job = entry.name.clone();
    if entry.running {
        Fire::SkipOverlap { job, scheduled }
    } else {
        entry.running = true;
        Fire::Run { job, scheduled, fire_at }
    }
}

/// The first occurrence after `after`, which fires `lead` milliseconds before it is
/// scheduled (see `Entry::lead`) plus its jitter.
fn plan(rng: &mut SmallRng, spec: &ScheduleSpec, after: DateTime<Utc>, lead: i64) -> Option<Planned> {
    let scheduled = spec.next_after(after)?;
    let jitter = i64::try_from(spec.jitter().std().as_millis()).unwrap_or(i64::MAX);
    let delay = if jitter > 0 { rng.random_range(0..jitter) } else { 0 };
    Some(Planned { scheduled, fire_at: scheduled + chrono::Duration::milliseconds(delay - lead) })
}

/// The occurrence a job must run at start-up, if any: its latest occurrence at or
/// before `now`, when that is newer than its last recorded run or it never ran.
pub fn catch_up(spec: &ScheduleSpec, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let latest = spec.latest_at_or_before(now)?;
    match last_run {
        Some(last) if last >= latest => None,
        _ => Some(latest),
    }
}
