//! A cron expression's times in a time zone, across daylight saving: the rules Debian's
//! cron documents.
//!
//! - A local time the spring change skips (02:30 in Berlin on the last Sunday of March)
//!   fires once, at the first instant after the gap (03:00 local).
//! - A local time the autumn change repeats fires once, at its first pass.
//! - An expression whose hour field is `*` (it fires every hour) follows the new time, as
//!   cron's wildcard jobs do: nothing for the skipped hour, both passes of the repeated one.
//!
//! The expression is walked in local wall-clock time (a `NaiveDateTime`, carried as if it
//! were UTC) and each time found is mapped back to an instant.

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// How many local times one call looks at before giving up: an expression firing every
/// second in a skipped or repeated hour has 3,600 of them.
const MAX_STEPS: usize = 10_000;

/// The first time of `expr` in `tz` strictly after `after`.
pub(super) fn next_after(
    expr: &cron::Schedule,
    tz: Tz,
    every_hour: bool,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut from = local(after, tz);
    // In a repeated hour's first pass, the second pass of a local time already past comes
    // later still: walk from one fold's length back.
    if let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&from) {
        let fold = first.offset().fix().local_minus_utc() - second.offset().fix().local_minus_utc();
        from -= chrono::Duration::seconds(i64::from(fold.abs()));
    }
    for _ in 0..MAX_STEPS {
        let candidate = expr.after(&as_utc(from)).next()?.naive_utc();
        let chosen = match tz.from_local_datetime(&candidate) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => {
                let (first, second) = (first.with_timezone(&Utc), second.with_timezone(&Utc));
                if first > after {
                    Some(first)
                } else if every_hour {
                    Some(second)
                } else {
                    None
                }
            }
            LocalResult::None if every_hour => None,
            LocalResult::None => Some(gap_end(tz, candidate)),
        };
        match chosen {
            Some(t) if t > after => return Some(t),
            _ => from = candidate,
        }
    }
    None
}

/// The latest time of `expr` in `tz` at or before `at`.
pub(super) fn latest_at_or_before(
    expr: &cron::Schedule,
    tz: Tz,
    every_hour: bool,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // `after(t).next_back()` walks backwards from t (exclusive); include t itself.
    let mut until = local(at, tz) + chrono::Duration::milliseconds(1);
    for _ in 0..MAX_STEPS {
        let candidate = expr.after(&as_utc(until)).next_back()?.naive_utc();
        let chosen = match tz.from_local_datetime(&candidate) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => {
                let second = second.with_timezone(&Utc);
                Some(if every_hour && second <= at { second } else { first.with_timezone(&Utc) })
            }
            LocalResult::None if every_hour => None,
            LocalResult::None => Some(gap_end(tz, candidate)),
        };
        if let Some(chosen) = chosen.filter(|c| *c <= at) {
            return Some(chosen);
        }
        until = candidate;
    }
    None
}

fn local(t: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

fn as_utc(naive: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&naive)
}

/// The first instant whose local time is past `skipped`, a local time inside a gap: the
/// moment the clocks went forward.
fn gap_end(tz: Tz, skipped: NaiveDateTime) -> DateTime<Utc> {
    let day = chrono::Duration::days(1);
    let before = tz.offset_from_utc_datetime(&(skipped - day)).fix();
    let after = tz.offset_from_utc_datetime(&(skipped + day)).fix();
    // Read with the offset from before the gap, `skipped` is an instant after the change;
    // with the offset from after it, one before.
    let mut hi = (as_utc(skipped) - chrono::Duration::seconds(i64::from(before.local_minus_utc()))).timestamp_millis();
    let mut lo = (as_utc(skipped) - chrono::Duration::seconds(i64::from(after.local_minus_utc()))).timestamp_millis();
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    // Invariant: local(lo) <= skipped < local(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local(at(mid), tz) > skipped {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    at(hi)
}
