//! The host side of each WIT interface a plugin imports, one file per interface.
//!
//! Architecture invariant: every function here caps what a guest can ask for (bytes, rows,
//! keys) and holds the credentials itself; sql and s3 are linked only when granted.

mod clock;
mod config;
mod log;
mod s3;
pub mod sql;
mod state;

impl crate::runtime::bindings::types::Host for crate::runtime::PluginCtx {}
