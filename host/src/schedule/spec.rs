//! When a job fires: `every` (aligned to the epoch so replicas agree) or `cron` in a time zone.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::Duration;

/// A job's schedule, checked at load.
#[derive(Debug, Clone)]
pub enum ScheduleSpec {
    /// Fires at every multiple of `period` since the Unix epoch, delayed by up to `jitter`.
    Every { period: Duration, jitter: Duration },
    /// Fires at the cron expression's times in `tz`, delayed by up to `jitter`.
    Cron { expr: Box<cron::Schedule>, text: String, tz: Tz, jitter: Duration },
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
        Ok(Self::Cron { expr: Box::new(expr), text: text.to_owned(), tz, jitter })
    }

    pub fn every(period: Duration, jitter: Duration) -> Result<Self, String> {
        if period.is_zero() {
            return Err("the period of `every` must be longer than zero".into());
        }
        Ok(Self::Every { period, jitter })
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
            Self::Every { period, .. } => {
                let p = period_millis(*period);
                let t = after.timestamp_millis();
                let next = (t.div_euclid(p) + 1) * p;
                Utc.timestamp_millis_opt(next).single()
            }
            Self::Cron { expr, tz, .. } => expr.after(&after.with_timezone(tz)).next().map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The latest scheduled time at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { period, .. } => {
                let p = period_millis(*period);
                let t = at.timestamp_millis();
                Utc.timestamp_millis_opt(t.div_euclid(p) * p).single()
            }
            Self::Cron { expr, tz, .. } => {
                // `after(t).next_back()` walks backwards from t (exclusive); include t itself.
                let just_after = at + chrono::Duration::milliseconds(1);
                expr.after(&just_after.with_timezone(tz)).next_back().map(|t| t.with_timezone(&Utc))
            }
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

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Every { period, jitter } if jitter.is_zero() => write!(f, "every {period}"),
            Self::Every { period, jitter } => write!(f, "every {period} (jitter {jitter})"),
            Self::Cron { text, tz, jitter, .. } if jitter.is_zero() => write!(f, "cron `{text}` {tz}"),
            Self::Cron { text, tz, jitter, .. } => write!(f, "cron `{text}` {tz} (jitter {jitter})"),
        }
    }
}
