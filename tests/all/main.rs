//! One test binary for every integration test (each extra binary links ~500 MB).
//! Areas: configuration snapshots, Postgres-backed tasks and store, S3, end to end.

mod schedule;
mod smtp_server;
mod support;

pub mod admin_api;
pub mod checks;
mod config_ui;
mod delivery;
mod deploy;
mod e2e;
mod faults;
mod fleet;
mod grants;
mod guests;
mod heartbeats;
mod openapi;
mod plugin_cli;
pub mod policies;
mod postgres;
mod public_http;
mod replicas;
mod s3;
mod status_page;
