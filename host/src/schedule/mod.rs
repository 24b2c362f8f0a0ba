//! Scheduling: when each job fires, and the timer heap that fires them.
//!
//! Architecture invariant: nothing here does IO or reads the system clock; every
//! function takes `now`, so tests drive time by hand and the bench drives it fast.

mod core;
mod local;
mod spec;

pub use core::{CORRECTION, Fire, Planned, Scheduler};
pub use spec::{Millis, ScheduleSpec, offset_for, turn};

#[cfg(test)]
mod tests;
