//! The scheduler as a specification: time is passed in, never read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::core::catch_up;
use super::{Fire, ScheduleSpec, Scheduler};
use crate::base::Duration;

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn d(text: &str) -> Duration {
    Duration::try_from(text).unwrap()
}

fn every(period: &str) -> ScheduleSpec {
    ScheduleSpec::every(d(period), Duration::default()).unwrap()
}

fn cron(expr: &str, tz: Tz) -> ScheduleSpec {
    ScheduleSpec::cron(expr, tz, Duration::default()).unwrap()
}

#[test]
fn every_is_aligned_to_the_epoch_so_replicas_agree() {
    let s = every("30s");
    assert_eq!(s.next_after(t("2026-01-01T00:00:07Z")), Some(t("2026-01-01T00:00:30Z")));
    assert_eq!(s.next_after(t("2026-01-01T00:00:30Z")), Some(t("2026-01-01T00:01:00Z")));
    assert_eq!(
        every("5m").upcoming(t("2026-01-01T00:03:00Z"), 3),
        vec![t("2026-01-01T00:05:00Z"), t("2026-01-01T00:10:00Z"), t("2026-01-01T00:15:00Z")]
    );
}

#[test]
fn every_fires_at_the_jobs_own_offset_within_its_period() {
    let s = ScheduleSpec::every_spread("orders-db", d("30s"), Duration::default()).unwrap();
    let offset = chrono::Duration::from_std(s.offset().std()).unwrap();
    assert!(offset < chrono::Duration::seconds(30), "{offset}");
    let base = t("2026-01-01T00:00:00Z");
    let next = s.next_after(base).unwrap();
    assert_eq!(next, if offset.is_zero() { base + chrono::Duration::seconds(30) } else { base + offset });
    assert_eq!(s.next_after(next), Some(next + chrono::Duration::seconds(30)));
    assert_eq!(s.latest_at_or_before(next), Some(next));
    assert_eq!(
        s.latest_at_or_before(next - chrono::Duration::milliseconds(1)),
        Some(next - chrono::Duration::seconds(30))
    );
}

#[test]
fn offsets_are_stable_and_spread_over_the_period() {
    // The same name gives the same offset every time (every replica, every restart).
    let a = ScheduleSpec::every_spread("ledger-db", d("30s"), Duration::default()).unwrap();
    let b = ScheduleSpec::every_spread("ledger-db", d("30s"), Duration::default()).unwrap();
    assert_eq!(a.offset(), b.offset());
    assert_eq!(a.offset(), super::offset_for("ledger-db", d("30s")));
    // A golden value: the offset must not change between builds or versions.
    assert_eq!(super::offset_for("health-probe", d("30s")).std().as_millis(), GOLDEN_HEALTH_PROBE_OFFSET_MS);
    // 10,000 jobs every 30 s: each second of the period gets close to its share of 333.
    let mut per_second = [0u32; 30];
    for i in 0..10_000 {
        let offset = super::offset_for(&format!("probe-{i}"), d("30s"));
        per_second[(offset.std().as_millis() / 1000) as usize] += 1;
    }
    let (min, max) = (per_second.iter().min().unwrap(), per_second.iter().max().unwrap());
    assert!(*min > 250 && *max < 420, "runs per second of the period: {per_second:?}");
}

/// `offset_for("health-probe", 30s)`, as first computed.
const GOLDEN_HEALTH_PROBE_OFFSET_MS: u128 = 21_305;

#[test]
fn an_aligned_job_fires_on_the_epoch_grid() {
    let s = every("30s");
    assert!(s.offset().is_zero());
    assert_eq!(s.next_after(t("2026-01-01T00:00:07Z")), Some(t("2026-01-01T00:00:30Z")));
    assert_eq!(s.to_string(), "every 30s");
    let spread = ScheduleSpec::every_spread("probe", d("30s"), Duration::default()).unwrap();
    assert!(!s.same_as(&spread), "aligning a job reschedules it");
}

#[test]
fn cron_fires_in_utc_by_default() {
    let s = cron("0 15 3 * * *", Tz::UTC);
    assert_eq!(
        s.upcoming(t("2026-05-01T12:00:00Z"), 3),
        vec![t("2026-05-02T03:15:00Z"), t("2026-05-03T03:15:00Z"), t("2026-05-04T03:15:00Z")]
    );
}

#[test]
fn five_field_crontab_lines_fire_at_second_zero() {
    let s = cron("*/5 * * * *", Tz::UTC);
    assert_eq!(s.next_after(t("2026-05-01T12:01:30Z")), Some(t("2026-05-01T12:05:00Z")));
}

#[test]
fn cron_follows_the_time_zone_across_a_dst_change() {
    // Europe/Berlin springs forward on 2026-03-29: 03:00 local is 02:00 UTC before, 01:00 UTC after.
    let s = cron("0 0 3 * * *", "Europe/Berlin".parse().unwrap());
    assert_eq!(
        s.upcoming(t("2026-03-27T12:00:00Z"), 3),
        vec![t("2026-03-28T02:00:00Z"), t("2026-03-29T01:00:00Z"), t("2026-03-30T01:00:00Z")]
    );
    // And back on 2026-10-25.
    assert_eq!(s.upcoming(t("2026-10-24T12:00:00Z"), 2), vec![t("2026-10-25T02:00:00Z"), t("2026-10-26T02:00:00Z")]);
}

fn berlin(expr: &str) -> ScheduleSpec {
    cron(expr, "Europe/Berlin".parse().unwrap())
}

#[test]
fn a_local_time_skipped_by_dst_fires_once_right_after_the_gap() {
    // Berlin springs forward on 2027-03-28 at 02:00 CET (01:00 UTC): 02:30 does not exist,
    // so the daily job runs at 03:00 CEST, the first instant after the gap, then as usual.
    let daily = berlin("0 30 2 * * *");
    assert_eq!(
        daily.upcoming(t("2027-03-27T12:00:00Z"), 3),
        vec![t("2027-03-28T01:00:00Z"), t("2027-03-29T00:30:00Z"), t("2027-03-30T00:30:00Z")]
    );
    assert_eq!(daily.latest_at_or_before(t("2027-03-28T01:10:00Z")), Some(t("2027-03-28T01:00:00Z")));
    assert_eq!(daily.latest_at_or_before(t("2027-03-28T00:59:59Z")), Some(t("2027-03-27T01:30:00Z")));
    // Two fixed times in the gap fold into the one run at 03:00.
    assert_eq!(
        berlin("0 0,30 2 * * *").upcoming(t("2027-03-28T00:15:00Z"), 2),
        vec![t("2027-03-28T01:00:00Z"), t("2027-03-29T00:00:00Z")]
    );
    // A job whose hour is `*` follows the new time: nothing for the hour that is not.
    assert_eq!(
        berlin("0 */30 * * * *").upcoming(t("2027-03-28T00:15:00Z"), 3),
        vec![t("2027-03-28T00:30:00Z"), t("2027-03-28T01:00:00Z"), t("2027-03-28T01:30:00Z")]
    );
    // New York: 02:30 on 2027-03-14 runs at 03:00 EDT.
    let ny = cron("0 30 2 * * *", "America/New_York".parse().unwrap());
    assert_eq!(ny.next_after(t("2027-03-13T12:00:00Z")), Some(t("2027-03-14T07:00:00Z")));
}

#[test]
fn a_local_time_repeated_by_dst_fires_once_and_an_hourly_job_in_both_passes() {
    // Berlin falls back on 2027-10-31 at 03:00 CEST (01:00 UTC): 02:00–03:00 happens twice.
    let daily = berlin("0 30 2 * * *");
    assert_eq!(
        daily.upcoming(t("2027-10-30T12:00:00Z"), 2),
        vec![t("2027-10-31T00:30:00Z"), t("2027-11-01T01:30:00Z")]
    );
    // Planned from its first pass, or from inside the second: not again that day.
    assert_eq!(daily.next_after(t("2027-10-31T01:10:00Z")), Some(t("2027-11-01T01:30:00Z")));
    assert_eq!(daily.latest_at_or_before(t("2027-10-31T01:45:00Z")), Some(t("2027-10-31T00:30:00Z")));
    assert_eq!(catch_up(&daily, Some(t("2027-10-31T00:30:00Z")), t("2027-10-31T01:45:00Z")), None);
    // A job whose hour is `*` runs in every hour there is, the repeated one too.
    let hourly = berlin("0 30 * * * *");
    assert_eq!(
        hourly.upcoming(t("2027-10-30T23:45:00Z"), 3),
        vec![t("2027-10-31T00:30:00Z"), t("2027-10-31T01:30:00Z"), t("2027-10-31T02:30:00Z")]
    );
    assert_eq!(hourly.latest_at_or_before(t("2027-10-31T01:45:00Z")), Some(t("2027-10-31T01:30:00Z")));
}

#[test]
fn bad_schedules_are_refused() {
    assert!(ScheduleSpec::cron("0 15 3 * *  * * *", Tz::UTC, d("0s")).unwrap_err().contains("fields"));
    assert!(ScheduleSpec::cron("0 61 3 * * *", Tz::UTC, d("0s")).unwrap_err().contains("invalid cron"));
    assert!(ScheduleSpec::every(d("0s"), d("0s")).is_err());
}

#[test]
fn latest_occurrence_at_or_before() {
    let s = cron("0 15 3 * * *", Tz::UTC);
    assert_eq!(s.latest_at_or_before(t("2026-05-02T03:15:00Z")), Some(t("2026-05-02T03:15:00Z")));
    assert_eq!(s.latest_at_or_before(t("2026-05-02T03:14:59Z")), Some(t("2026-05-01T03:15:00Z")));
    assert_eq!(every("30s").latest_at_or_before(t("2026-05-02T03:14:59Z")), Some(t("2026-05-02T03:14:30Z")));
}

#[test]
fn catch_up_decision_table() {
    let daily = cron("0 15 3 * * *", Tz::UTC);
    let now = t("2026-05-02T12:00:00Z");
    let table = [
        // (last run, expected catch-up occurrence)
        (None, Some(t("2026-05-02T03:15:00Z"))),
        (Some(t("2026-05-01T03:15:00Z")), Some(t("2026-05-02T03:15:00Z"))), // missed today's run
        (Some(t("2026-04-20T03:15:00Z")), Some(t("2026-05-02T03:15:00Z"))), // missed many: runs once
        (Some(t("2026-05-02T03:15:00Z")), None),                            // today's already ran
    ];
    for (last, want) in table {
        assert_eq!(catch_up(&daily, last, now), want, "last run {last:?}");
    }
}

#[test]
fn a_process_restarting_hourly_still_prunes_daily() {
    // The original monitor counted ticks, so a restart every hour meant no daily work ever.
    let daily = cron("0 15 3 * * *", Tz::UTC);
    let mut last: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut runs = 0;
    for hour in 0..72 {
        let now = t("2026-05-01T00:30:00Z") + chrono::Duration::hours(hour);
        let mut s = Scheduler::new(1);
        for fire in s.load([("prune".to_owned(), daily.clone(), true)], now, &last) {
            if let Fire::Run { scheduled, .. } = fire {
                runs += 1;
                last.insert("prune".into(), scheduled);
            }
        }
    }
    // The first start catches up the 30 April run, then one run per day: 1 May, 2 May, 3 May.
    assert_eq!(runs, 4);
}

#[test]
fn due_fires_each_occurrence_once_and_replans() {
    let mut s = Scheduler::new(7);
    let start = t("2026-05-01T00:00:10Z");
    let last = HashMap::from([("probe".to_owned(), t("2026-05-01T00:00:00Z"))]);
    assert!(s.load([("probe".to_owned(), every("30s"), true)], start, &last).is_empty());
    assert_eq!(s.next_wake(), Some(t("2026-05-01T00:00:30Z")));
    assert!(s.due(t("2026-05-01T00:00:29Z")).is_empty());
    let fires = s.due(t("2026-05-01T00:00:30Z"));
    let at = t("2026-05-01T00:00:30Z");
    assert_eq!(fires, vec![Fire::Run { job: "probe".into(), scheduled: at, fire_at: at }]);
    s.finished("probe");
    assert_eq!(s.next_wake(), Some(t("2026-05-01T00:01:00Z")));
}

#[test]
fn overlap_skips_while_the_last_run_is_still_going() {
    let mut s = Scheduler::new(7);
    let last = HashMap::from([("slow".to_owned(), t("2026-05-01T00:00:00Z"))]);
    s.load([("slow".to_owned(), every("10s"), true)], t("2026-05-01T00:00:01Z"), &last);
    assert!(matches!(s.due(t("2026-05-01T00:00:10Z"))[..], [Fire::Run { .. }]));
    // Still running at the next occurrence: skipped, and the one after too.
    assert_eq!(
        s.due(t("2026-05-01T00:00:20Z")),
        vec![Fire::SkipOverlap { job: "slow".into(), scheduled: t("2026-05-01T00:00:20Z") }]
    );
    assert!(matches!(s.due(t("2026-05-01T00:00:30Z"))[..], [Fire::SkipOverlap { .. }]));
    s.finished("slow");
    assert!(matches!(s.due(t("2026-05-01T00:00:40Z"))[..], [Fire::Run { .. }]));
}

#[test]
fn a_late_wake_up_fires_once_not_a_burst() {
    let mut s = Scheduler::new(7);
    let last = HashMap::from([("probe".to_owned(), t("2026-05-01T00:00:00Z"))]);
    s.load([("probe".to_owned(), every("30s"), true)], t("2026-05-01T00:00:01Z"), &last);
    // The process was paused for five minutes.
    let fires = s.due(t("2026-05-01T00:05:05Z"));
    assert_eq!(fires.len(), 1);
    assert_eq!(s.next_wake(), Some(t("2026-05-01T00:05:30Z")));
}

#[test]
fn jitter_delays_within_its_bounds_and_keeps_the_occurrence_key() {
    let spec = ScheduleSpec::every(d("1m"), d("10s")).unwrap();
    let mut s = Scheduler::new(42);
    let last = HashMap::from([("j".to_owned(), t("2026-05-01T00:00:00Z"))]);
    s.load([("j".to_owned(), spec, true)], t("2026-05-01T00:00:00Z"), &last);
    let mut delays = Vec::new();
    for _ in 0..500 {
        let planned = s.planned("j").unwrap();
        let delay = (planned.fire_at - planned.scheduled).num_milliseconds();
        assert!((0..10_000).contains(&delay), "delay {delay} ms out of bounds");
        assert_eq!(planned.scheduled.timestamp() % 60, 0, "the occurrence key stays aligned");
        delays.push(delay);
        let fires = s.due(planned.fire_at);
        let (scheduled, fire_at) = (planned.scheduled, planned.fire_at);
        assert_eq!(fires, vec![Fire::Run { job: "j".into(), scheduled, fire_at }]);
        s.finished("j");
    }
    // Spread over the window, not stuck at one end.
    assert!(delays.iter().any(|&d| d < 2_000) && delays.iter().any(|&d| d > 8_000));
}

#[test]
fn reload_keeps_unchanged_plans_and_running_flags() {
    let mut s = Scheduler::new(7);
    let now = t("2026-05-01T00:00:01Z");
    let last =
        HashMap::from([("a".to_owned(), t("2026-05-01T00:00:00Z")), ("b".to_owned(), t("2026-05-01T00:00:00Z"))]);
    s.load([("a".to_owned(), every("30s"), true), ("b".to_owned(), every("1m"), true)], now, &last);
    assert!(matches!(s.due(t("2026-05-01T00:00:30Z"))[..], [Fire::Run { .. }]));
    assert!(s.is_running("a"));
    // `b` rescheduled, `c` added, `a` unchanged and still running.
    let fires = s.load(
        [
            ("a".to_owned(), every("30s"), true),
            ("b".to_owned(), every("2m"), true),
            ("c".to_owned(), every("1h"), false),
        ],
        t("2026-05-01T00:00:31Z"),
        &last,
    );
    assert!(fires.is_empty(), "b's latest 2m slot is not newer than its last run: {fires:?}");
    assert!(s.is_running("a"));
    assert_eq!(s.planned("a").unwrap().scheduled, t("2026-05-01T00:01:00Z"));
    assert_eq!(s.planned("b").unwrap().scheduled, t("2026-05-01T00:02:00Z"));
    assert_eq!(s.planned("c"), None, "a disabled job is not planned");
}

#[test]
fn a_fleet_of_frequent_jobs_starts_spread_instead_of_catching_up_at_once() {
    let now = t("2026-05-01T00:00:01Z");
    let last = HashMap::new();
    let fleet = |n: usize| {
        (0..n).map(|i| {
            let name = format!("probe-{i}");
            let spec = ScheduleSpec::every_spread(&name, d("30s"), Duration::default()).unwrap();
            (name, spec, true)
        })
    };
    // A few: each catches up at once (the first probe at start-up).
    let mut s = Scheduler::new(1).with_burst_limit(10);
    assert_eq!(s.load(fleet(10), now, &last).len(), 10);
    // Thousands: none stampedes; each starts at its own offset within the period.
    let mut s = Scheduler::new(1).with_burst_limit(10);
    let mut jobs: Vec<_> = fleet(1000).collect();
    jobs.push(("nightly".to_owned(), cron("0 15 3 * * *", Tz::UTC), true));
    let fires = s.load(jobs, now, &last);
    assert_eq!(fires.len(), 1, "only the daily job catches up: {fires:?}");
    assert_eq!(fires[0].job(), "nightly");
    let first_second = s.due(now + chrono::Duration::seconds(1));
    assert!(first_second.len() < 100, "{} fired in the first second", first_second.len());
}

#[test]
fn replicas_take_turns_at_each_jobs_occurrences() {
    let spec = ScheduleSpec::every_spread("health-probe", d("2s"), Duration::default()).unwrap();
    let first = spec.next_after(t("2026-12-02T00:00:00Z")).unwrap();
    let turns: Vec<usize> =
        (0..30).map(|i| super::turn("health-probe", &spec, first + chrono::Duration::seconds(2 * i), 3)).collect();
    // Round the three replicas in order: each gets exactly a third, never twice running.
    for pair in turns.windows(2) {
        assert_eq!(pair[1], (pair[0] + 1) % 3, "{turns:?}");
    }
    for r in 0..3 {
        assert_eq!(turns.iter().filter(|&&x| x == r).count(), 10, "{turns:?}");
    }
    // Every replica computes the same turn; alone, a replica has every turn.
    assert_eq!(super::turn("health-probe", &spec, first, 3), turns[0]);
    assert_eq!(super::turn("health-probe", &spec, first, 1), 0);
    // Jobs start at different places, so replica 0 does not get every job's first turn.
    let starts: std::collections::HashSet<usize> = (0..30)
        .map(|i| {
            let name = format!("probe-{i}");
            let spec = ScheduleSpec::every_spread(&name, d("30s"), Duration::default()).unwrap();
            super::turn(&name, &spec, spec.next_after(first).unwrap(), 3)
        })
        .collect();
    assert_eq!(starts.len(), 3);
    // Cron occurrences spread by hash.
    let cron = ScheduleSpec::cron("0 * * * * *", Tz::UTC, Duration::default()).unwrap();
    let mut per = [0u32; 3];
    for i in 0..300 {
        per[super::turn("prune", &cron, first + chrono::Duration::minutes(i), 3)] += 1;
    }
    assert!(per.iter().all(|&n| n > 70), "{per:?}");
}

#[test]
fn a_job_s_period_is_its_every_or_the_gap_between_its_next_cron_times() {
    let now = t("2026-05-01T12:00:00Z");
    assert_eq!(every("30s").period(now), Some(std::time::Duration::from_secs(30)));
    assert_eq!(cron("0 15 3 * * *", Tz::UTC).period(now), Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(cron("*/5 * * * *", Tz::UTC).period(now), Some(std::time::Duration::from_secs(300)));
    // A cron line that fires once more (one year only) has no period.
    assert_eq!(cron("0 0 0 1 1 * 2027", Tz::UTC).period(now), None);
}

fn keys(fires: &[Fire]) -> Vec<DateTime<Utc>> {
    fires
        .iter()
        .map(|f| match f {
            Fire::Run { scheduled, .. } | Fire::SkipOverlap { scheduled, .. } => *scheduled,
        })
        .collect()
}

/// Runs the scheduler from `from` to `to` in steps of `tick`, finishing each run at once;
/// returns the occurrences fired.
fn run_between(
    s: &mut Scheduler,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tick: chrono::TimeDelta,
) -> Vec<DateTime<Utc>> {
    let mut fired = Vec::new();
    let mut now = from;
    while now <= to {
        let fires = s.due(now);
        for f in &fires {
            s.finished(f.job());
        }
        fired.extend(keys(&fires));
        now += tick;
    }
    fired
}

#[test]
fn after_a_step_back_an_every_job_keeps_its_period_and_no_occurrence_runs_twice() {
    let mut s = Scheduler::new(1);
    let start = t("2026-05-01T10:00:00.500Z");
    let fired = s.load([("p".to_owned(), every("30s"), true)], start, &HashMap::new());
    assert_eq!(keys(&fired), [t("2026-05-01T10:00:00Z")], "the first run at start-up");
    s.finished("p");
    assert_eq!(run_between(&mut s, start, t("2026-05-01T10:01:05Z"), chrono::TimeDelta::seconds(1)).len(), 2);

    // 10:01:05 becomes 09:01:05: the occurrences 09:01:30 … 10:01:00 ran already.
    let back = t("2026-05-01T09:01:05Z");
    s.clock_stepped(-chrono::TimeDelta::hours(1), back);
    let fired = run_between(&mut s, back, t("2026-05-01T09:03:05Z"), chrono::TimeDelta::seconds(1));
    assert_eq!(
        fired,
        [t("2026-05-01T10:01:30Z"), t("2026-05-01T10:02:00Z"), t("2026-05-01T10:02:30Z"), t("2026-05-01T10:03:00Z")],
        "every 30 s of real time, on the occurrences after the last one run"
    );
    assert_eq!(s.planned("p").unwrap().fire_at, t("2026-05-01T09:03:30Z"), "fires by the stepped clock");

    // The clock comes back: the lead is taken back, with no burst and no gap.
    let forward = t("2026-05-01T10:03:10Z");
    s.clock_stepped(chrono::TimeDelta::hours(1), forward);
    let fired = run_between(&mut s, forward, t("2026-05-01T10:04:05Z"), chrono::TimeDelta::seconds(1));
    assert_eq!(fired, [t("2026-05-01T10:03:30Z"), t("2026-05-01T10:04:00Z")]);
}

#[test]
fn after_a_step_forward_a_frequent_job_skips_and_a_daily_one_catches_up_once() {
    let mut s = Scheduler::new(1);
    let start = t("2026-05-01T03:00:00Z");
    let last = HashMap::from([("p".to_owned(), start), ("daily".to_owned(), t("2026-04-30T03:15:00Z"))]);
    let jobs = [("p".to_owned(), every("30s"), true), ("daily".to_owned(), cron("0 15 3 * * *", Tz::UTC), true)];
    assert!(s.load(jobs, start, &last).is_empty());
    let ahead = t("2026-05-02T05:00:10Z");
    s.clock_stepped(chrono::TimeDelta::seconds(26 * 3600 + 10), ahead);
    let fired = s.due(ahead);
    assert_eq!(keys(&fired), [t("2026-05-01T03:15:00Z")], "one catch-up for the daily job, none for the probe");
    assert_eq!(s.planned("p").unwrap().scheduled, t("2026-05-02T05:00:30Z"));
    assert_eq!(s.planned("daily").unwrap().scheduled, t("2026-05-03T03:15:00Z"));
}

#[test]
fn after_a_step_back_a_cron_job_fires_at_its_next_time_never_again_at_one_it_ran() {
    let mut s = Scheduler::new(1);
    let start = t("2026-05-01T00:29:00Z");
    s.load([("daily".to_owned(), cron("0 30 0 * * *", Tz::UTC), true)], start, &HashMap::new());
    s.finished("daily");
    assert_eq!(run_between(&mut s, start, t("2026-05-01T00:40:00Z"), chrono::TimeDelta::seconds(10)).len(), 1);
    let back = t("2026-04-30T23:40:00Z");
    s.clock_stepped(-chrono::TimeDelta::hours(1), back);
    assert_eq!(s.planned("daily").unwrap().scheduled, t("2026-05-02T00:30:00Z"));
    assert!(run_between(&mut s, back, t("2026-05-01T00:45:00Z"), chrono::TimeDelta::seconds(10)).is_empty());
}

#[test]
fn a_step_back_beyond_three_hours_is_a_correction_taking_effect_at_once() {
    let mut s = Scheduler::new(1);
    let start = t("2027-05-01T10:00:00Z");
    s.load([("p".to_owned(), every("30s"), true)], start, &HashMap::new());
    s.finished("p");
    let back = t("2026-05-01T10:00:05Z");
    s.clock_stepped(back - start, back);
    assert_eq!(s.planned("p").unwrap().scheduled, t("2026-05-01T10:00:30Z"));
    assert_eq!(s.planned("p").unwrap().fire_at, t("2026-05-01T10:00:30Z"));
}

#[test]
fn a_restart_after_a_step_back_plans_after_the_last_run_in_the_store() {
    let now = t("2026-05-01T09:00:05Z");
    let last =
        HashMap::from([("p".to_owned(), t("2026-05-01T10:00:00Z")), ("q".to_owned(), t("2026-05-01T20:00:00Z"))]);
    let mut s = Scheduler::new(1);
    let fired = s.load([("p".to_owned(), every("30s"), true), ("q".to_owned(), every("30s"), true)], now, &last);
    assert!(fired.is_empty(), "{fired:?}");
    assert_eq!(s.planned("q").unwrap().scheduled, t("2026-05-01T09:00:30Z"), "a last run a correction away: from now");
    let p = s.planned("p").unwrap();
    assert_eq!(p.scheduled, t("2026-05-01T10:00:30Z"), "the occurrence after the last one run");
    assert_eq!(p.fire_at, t("2026-05-01T09:00:35Z"), "one period from now");
}

#[test]
fn over_a_year_with_both_changes_a_daily_job_runs_once_a_day_and_an_hourly_one_once_an_hour() {
    // Lord Howe moves by half an hour: its repeated half hour holds a second :30.
    for (zone, hourly) in
        [("Europe/Berlin", 8760), ("America/New_York", 8760), ("Australia/Lord_Howe", 8761), ("UTC", 8760)]
    {
        let tz: Tz = zone.parse().unwrap();
        let (from, to) = (t("2027-01-01T00:00:00Z"), t("2028-01-01T00:00:00Z"));
        let count = |spec: &ScheduleSpec| {
            let (mut n, mut at, mut days) = (0, from, std::collections::BTreeSet::new());
            while let Some(next) = spec.next_after(at).filter(|n| *n < to) {
                assert!(next > at);
                assert_eq!(spec.latest_at_or_before(next), Some(next), "{zone}: {next}");
                days.insert(next.with_timezone(&tz).date_naive());
                (n, at) = (n + 1, next);
            }
            (n, days.len())
        };
        let (daily, days) = count(&cron("0 30 2 * * *", tz));
        assert_eq!(daily, days, "{zone}: never twice a day");
        assert!((364..=366).contains(&daily), "{zone}: {daily}");
        assert_eq!(count(&cron("0 30 * * * *", tz)).0, hourly, "{zone}: once every real hour");
    }
}

#[test]
fn an_occurrence_due_as_the_clock_stepped_forward_still_fires() {
    let mut s = Scheduler::new(1);
    let start = t("2026-05-01T10:00:00.500Z");
    s.load([("p".to_owned(), every("1s"), true)], start, &HashMap::new());
    s.finished("p");
    s.clock_stepped(-chrono::TimeDelta::hours(1), t("2026-05-01T09:00:00.600Z"));
    assert_eq!(
        run_between(
            &mut s,
            t("2026-05-01T09:00:00.600Z"),
            t("2026-05-01T09:00:05.600Z"),
            chrono::TimeDelta::seconds(1)
        )
        .len(),
        5
    );
    // Due at 09:00:06 by the stepped clock; the step back to 10:00:06 is noticed 2 ms late
    // and measured 1 ms short.
    let noticed = t("2026-05-01T10:00:06.002Z");
    s.clock_stepped(chrono::TimeDelta::milliseconds(3_599_999), noticed);
    assert_eq!(keys(&s.due(noticed)), [t("2026-05-01T10:00:06Z")]);
}
