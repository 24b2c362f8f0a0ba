//! Heartbeat pings: `GET` or `POST /ping/{job}` (success), `/ping/{job}/fail` and
//! `/ping/{job}/start`, as healthchecks.io has them, each with `Authorization: Bearer
//! <token>` (the job's `token`, compared in constant time). A wrong or missing token answers
//! 401 and does not count. A ping is recorded in the store (so a ping to any replica counts)
//! and the job is run at once, so a recovery is told without waiting for its next check.
//! The request body (capped) becomes the run's detail.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Command, Shared};
use crate::config::Task;
use crate::store::{MAX_PING_BODY, PingKind};

fn answer(code: StatusCode, error: &str, message: String) -> Response {
    (code, axum::Json(json!({ "error": { "code": error, "message": message } }))).into_response()
}

pub async fn success(state: State<Arc<Shared>>, Path(job): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    ping(state, job, PingKind::Success, headers, body).await
}

pub async fn other(
    state: State<Arc<Shared>>,
    Path((job, what)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = match what.as_str() {
        "fail" => PingKind::Fail,
        "start" => PingKind::Start,
        _ => return answer(StatusCode::NOT_FOUND, "not_found", format!("no route /ping/{job}/{what}: fail or start")),
    };
    ping(state, job, kind, headers, body).await
}

async fn ping(
    State(shared): State<Arc<Shared>>,
    job: String,
    kind: PingKind,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = shared.config();
    let heartbeat = config.as_ref().and_then(|c| c.jobs.iter().find(|j| j.name == job)).and_then(|j| match &j.task {
        Task::Heartbeat(h) => Some(h.clone()),
        _ => None,
    });
    let Some(heartbeat) = heartbeat else {
        return answer(StatusCode::NOT_FOUND, "not_found", format!("no heartbeat job `{job}`"));
    };
    let given = super::auth::bearer(&headers);
    if !given.is_some_and(|t| super::auth::same_secret(t, &heartbeat.token)) {
        tracing::warn!(job = %job, "a ping without the job's token was refused");
        return answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the job's token as `Authorization: Bearer <token>`".into(),
        );
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_PING_BODY)]).into_owned();
    if let Err(e) = shared.store.record_ping(&job, kind, &text, chrono::Utc::now()).await {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the ping could not be recorded: {e}"));
    }
    tracing::info!(job = %job, kind = kind.as_str(), "ping");
    if kind != PingKind::Start {
        // Told at once; a run already going (a check) is fine: the next one reads this ping.
        let _ = shared.ask(|reply| Command::RunNow { job: job.clone(), reply }).await;
    }
    (StatusCode::OK, axum::Json(json!({ "job": job, "recorded": kind.as_str() }))).into_response()
}
