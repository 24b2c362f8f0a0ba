//! The wall clock watched against the monotonic one: a step (NTP correcting a VM's clock,
//! an operator's `date -s`, a host resumed from suspend) is told apart from time passing,
//! logged with its size, counted, and handed to the scheduler to re-plan.

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};

/// The smallest difference that counts as a step; NTP's slewing moves the clock by at
/// most 0.5 ms a second, and the loop looks at least once a second.
const STEP: TimeDelta = TimeDelta::seconds(1);

/// The two clocks as last read together.
pub(super) struct ClockWatch {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl ClockWatch {
    pub(super) fn new() -> Self {
        Self { wall: Utc::now(), mono: Instant::now() }
    }

    /// Reads both clocks; returns the wall clock now, and how far it stepped since the last
    /// look beyond what the monotonic clock says passed (positive: forward), if it did.
    pub(super) fn look(&mut self) -> (DateTime<Utc>, Option<TimeDelta>) {
        let (wall, mono) = (Utc::now(), Instant::now());
        let passed = TimeDelta::from_std(mono - self.mono).unwrap_or(TimeDelta::MAX);
        let step = wall - self.wall - passed;
        (self.wall, self.mono) = (wall, mono);
        (wall, (step.abs() >= STEP).then_some(step))
    }
}

/// A step as a person reads it: `back 1h 0m 3.2s`.
pub(super) fn describe(step: TimeDelta) -> String {
    let direction = if step < TimeDelta::zero() { "back" } else { "forward" };
    let tenths = (step.num_milliseconds().unsigned_abs() + 50) / 100;
    let (h, m, s) = (tenths / 36_000, tenths / 600 % 60, (tenths % 600) as f64 / 10.0);
    match (h, m) {
        (0, 0) => format!("{direction} {s:.1}s"),
        (0, _) => format!("{direction} {m}m {s:.1}s"),
        _ => format!("{direction} {h}h {m}m {s:.1}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_as_a_person_says_them() {
        assert_eq!(describe(TimeDelta::milliseconds(-3_603_200)), "back 1h 0m 3.2s");
        assert_eq!(describe(TimeDelta::seconds(90)), "forward 1m 30.0s");
        assert_eq!(describe(TimeDelta::milliseconds(1500)), "forward 1.5s");
        assert_eq!(describe(TimeDelta::milliseconds(3_599_999)), "forward 1h 0m 0.0s");
    }

    #[test]
    fn time_passing_is_not_a_step() {
        let mut watch = ClockWatch::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(watch.look().1, None);
        // The same as a clock set back an hour since the last look.
        watch.wall += TimeDelta::hours(1);
        let step = watch.look().1.expect("a step");
        assert!((step + TimeDelta::hours(1)).abs() < TimeDelta::milliseconds(100), "{step}");
    }
}
