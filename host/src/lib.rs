//! warden: keeps a web service healthy from the outside. See ARCHITECTURE.md.

pub mod admin;
pub mod base;
pub use base::health;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod delivery;
pub mod metrics;
pub mod runtime;
pub mod schedule;
pub mod store;
pub mod targets;
pub mod tasks;
