//! Heartbeat (push) monitors: each heartbeat job with its expectation and newest pings.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use crate::admin::Shared;
use crate::config::{Expect, Task};
use crate::store::Pings;

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatEntry {
    job: String,
    /// `every 1h`, or the cron expression pings are due by.
    expect: String,
    grace: String,
    /// `None` before the first ping.
    pings: Option<Pings>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatList {
    items: Vec<HeartbeatEntry>,
}

/// Heartbeat jobs and their newest pings.
#[utoipa::path(get, path = "/admin/heartbeats", tag = "jobs",
    responses((status = 200, description = "Every heartbeat job, by name", body = HeartbeatList)))]
pub(super) async fn heartbeats(State(shared): State<Arc<Shared>>) -> Result<Json<HeartbeatList>, ApiError> {
    let mut seen = shared.store.all_pings().await?;
    let config = shared.config();
    let items = config
        .iter()
        .flat_map(|c| c.jobs.iter())
        .filter_map(|job| match &job.task {
            Task::Heartbeat(h) => {
                let expect = match &h.expect {
                    Expect::Period(p) => format!("every {p}"),
                    Expect::Cron(spec) => spec.to_string(),
                };
                let at = seen.iter().position(|p| p.job == job.name);
                let pings = at.map(|i| seen.swap_remove(i));
                Some(HeartbeatEntry { job: job.name.clone(), expect, grace: h.grace.to_string(), pings })
            }
            _ => None,
        })
        .collect();
    Ok(Json(HeartbeatList { items }))
}
