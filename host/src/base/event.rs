//! What a task saw, for the store, the metrics and the policies.

use serde::Serialize;

use super::health::Snapshot;

/// A labelled measurement, exported as `warden_<name>` on `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Gauge {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// What a task saw, for the store, the metrics and the policies.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    Snapshot(Snapshot),
    Gauges {
        gauges: Vec<Gauge>,
    },
    /// A finished run of a job whose task reports nothing else (prune, sql).
    RunFinished(RunResult),
}

/// How a run ended, as policies see it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RunResult {
    pub outcome: String,
    pub rows_affected: Option<u64>,
    pub error: Option<String>,
}
