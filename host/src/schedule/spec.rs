//! When a job fires: `every` (at a stable offset within its period, derived from the job's
//! name, so replicas agree and many jobs spread out; or aligned to the epoch when asked) or
//! `cron` in a time zone.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::base::Duration;

/// A job's schedule, checked at load.
#[derive(Debug, Clone)]
pub enum ScheduleSpec {
    /// Fires at `offset` past every multiple of `period` since the Unix epoch, delayed by up
    /// to `jitter`. `offset` is below `period`; zero is the epoch grid.
    Every { period: Duration, jitter: Duration, offset: Duration },
    /// Fires at the cron expression's times in `tz`, delayed by up to `jitter`, across
    /// daylight saving by cron's rules (`local.rs`); `every_hour`: its hour field is `*`.
    Cron { expr: Box<cron::Schedule>, text: String, tz: Tz, jitter: Duration, every_hour: bool },
}

impl ScheduleSpec {
    /// Parses a cron expression: 6 fields (with seconds) or 7 (with year); a 5-field
    /// crontab line is accepted and fires at second 0.
    pub fn cron(text: &str, tz: Tz, jitter: Duration) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {text}"),
            6 | 7 => text.to_owned(),
            n => {
                return Err(format!(
                    "invalid cron expression `{text}`: {n} fields; expected 6 (`sec min hour day month weekday`), \
                     7 (with year) or a 5-field crontab line (fires at second 0)"
                ));
            }
        };
        let expr = cron::Schedule::from_str(&full).map_err(|e| {
            // The cron crate repeats the expression with a caret; its last line is the reason.
            let text_of_error = e.to_string();
            let reason = text_of_error.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default().to_owned();
            format!("invalid cron expression `{text}`: {reason}")
        })?;
        if expr.upcoming(tz).next().is_none() {
            return Err(format!("cron expression `{text}` never fires"));
        }
        let every_hour = full.split_whitespace().nth(2) == Some("*");
        Ok(Self::Cron { expr: Box::new(expr), text: text.to_owned(), tz, jitter, every_hour })
    }

    /// Every `period` on the epoch grid (`align = true`).
    pub fn every(period: Duration, jitter: Duration) -> Result<Self, String> {
        if period.is_zero() {
            return Err("the period of `every` must be longer than zero".into());
        }
        Ok(Self::Every { period, jitter, offset: Duration::default() })
    }

    /// Every `period` at the job's own offset within it: the same for a name on every
    /// replica and across restarts (so claims meet), and spread evenly over many names (so
    /// 10,000 jobs every 30 s are 333 runs a second, not 10,000 at once).
    pub fn every_spread(name: &str, period: Duration, jitter: Duration) -> Result<Self, String> {
        let mut spec = Self::every(period, jitter)?;
        if let Self::Every { offset, .. } = &mut spec {
            *offset = offset_for(name, period);
        }
        Ok(spec)
    }

    /// Whether two specs fire at the same times (with the same jitter).
    pub fn same_as(&self, other: &ScheduleSpec) -> bool {
        self.to_string() == other.to_string() && self.offset() == other.offset()
    }

    /// Where within its period an `every` job fires (zero for cron and aligned jobs).
    pub fn offset(&self) -> Duration {
        match self {
            Self::Every { offset, .. } => *offset,
            Self::Cron { .. } => Duration::default(),
        }
    }

    pub fn jitter(&self) -> Duration {
        match self {
            Self::Every { jitter, .. } | Self::Cron { jitter, .. } => *jitter,
        }
    }

    pub fn tz(&self) -> Tz {
        match self {
            Self::Every { .. } => Tz::UTC,
            Self::Cron { tz, .. } => *tz,
        }
    }

    /// The first scheduled (unjittered) time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { period, offset, .. } => {
                let p = period_millis(*period);
                let o = offset_millis(*offset);
                let t = after.timestamp_millis() - o;
                let next = (t.div_euclid(p) + 1) * p + o;
                Utc.timestamp_millis_opt(next).single()
            }
            Self::Cron { expr, tz, every_hour, .. } => super::local::next_after(expr, *tz, *every_hour, after),
        }
    }

    /// The latest scheduled time at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { period, offset, .. } => {
                let p = period_millis(*period);
                let o = offset_millis(*offset);
                let t = at.timestamp_millis() - o;
                Utc.timestamp_millis_opt(t.div_euclid(p) * p + o).single()
            }
            Self::Cron { expr, tz, every_hour, .. } => super::local::latest_at_or_before(expr, *tz, *every_hour, at),
        }
    }

    /// How often it fires: an `every` job's period; for a cron job, the gap between its next
    /// two times after `now` (`None` when it fires fewer than twice more).
    pub fn period(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        match self {
            Self::Every { period, .. } => Some(period.std()),
            Self::Cron { .. } => match self.upcoming(now, 2)[..] {
                [a, b] => (b - a).to_std().ok(),
                _ => None,
            },
        }
    }

    /// The next `n` scheduled times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

fn period_millis(period: Duration) -> i64 {
    i64::try_from(period.std().as_millis()).unwrap_or(i64::MAX).max(1)
}

fn offset_millis(offset: Duration) -> i64 {
    i64::try_from(offset.std().as_millis()).unwrap_or(0)
}

/// A job's offset within `period`: the first 8 bytes of SHA-256 of its name, modulo the
/// period in milliseconds. A fixed hash (not std's randomly seeded one), so every replica
/// and every build computes the same offset.
pub fn offset_for(name: &str, period: Duration) -> Duration {
    let p = u64::try_from(period_millis(period)).unwrap_or(1);
    Duration(std::time::Duration::from_millis(name_hash(name.as_bytes()) % p))
}

/// Whose turn an occurrence is among `replicas` live replicas (an index into their ids,
/// sorted): an `every` job's occurrences go round the replicas in turn, starting at a place
/// derived from the job's name, so each replica runs an equal share of every job; a cron
/// occurrence goes to the replica its name and time hash to. Every replica computes the
/// same answer from the same list.
pub fn turn(job: &str, spec: &ScheduleSpec, scheduled: DateTime<Utc>, replicas: usize) -> usize {
    if replicas <= 1 {
        return 0;
    }
    let n = replicas as u64;
    match spec {
        ScheduleSpec::Every { period, offset, .. } => {
            let k = (scheduled.timestamp_millis() - offset_millis(*offset)).div_euclid(period_millis(*period));
            let start = name_hash(job.as_bytes()) % n;
            ((start + k.rem_euclid(n as i64) as u64) % n) as usize
        }
        ScheduleSpec::Cron { .. } => {
            let key = format!("{job}@{}", scheduled.timestamp_millis());
            (name_hash(key.as_bytes()) % n) as usize
        }
    }
}

/// The first 8 bytes of SHA-256: a fixed hash (not std's randomly seeded one), the same in
/// every replica and build.
fn name_hash(bytes: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The offset is shown apart (`warden jobs`, the admin API's `offset_ms`).
            Self::Every { period, jitter, .. } if jitter.is_zero() => write!(f, "every {period}"),
            Self::Every { period, jitter, .. } => write!(f, "every {period} (jitter {jitter})"),
            Self::Cron { text, tz, jitter, .. } if jitter.is_zero() => write!(f, "cron `{text}` {tz}"),
            Self::Cron { text, tz, jitter, .. } => write!(f, "cron `{text}` {tz} (jitter {jitter})"),
        }
    }
}

/// A duration in seconds with milliseconds, `12.345s`: how offsets are shown.
pub struct Millis(pub Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.std().as_millis();
        write!(f, "{}.{:03}s", ms / 1000, ms % 1000)
    }
}
