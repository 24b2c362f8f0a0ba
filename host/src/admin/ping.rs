//! Heartbeat pings: `GET` or `POST /ping/{job}` (success), `/ping/{job}/fail` and
//! `/ping/{job}/start`, as healthchecks.io has them, each with `Authorization: Bearer
//! <token>` (the job's `token`, compared in constant time). A wrong or missing token answers
//! 401 and does not count. A ping is recorded in the store (so a ping to any replica counts)
//! and the job is run at once, so a recovery is told without waiting for its next check.
//! The request body becomes the run's detail.
//!
//! The job and the token are checked from the path and headers before any of the body is
//! read; the body is then read under a timeout and refused past `MAX_PING_BODY` (413).
//! Bursts are coalesced: at most one run per job a second (a ping inside the second is
//! recorded and read by one run at its end), and past `BURST` pings a second per job the
//! rest are refused (429) without touching the store.

use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;

use super::{Command, Shared};
use crate::config::Task;
use crate::store::{MAX_PING_BODY, PingKind};

fn answer(code: StatusCode, error: &str, message: String) -> Response {
    (code, axum::Json(json!({ "error": { "code": error, "message": message } }))).into_response()
}

/// Pings a job may send in a second before the rest are refused.
const BURST: u32 = 20;
/// The longest a ping's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Each heartbeat job's pings in the current second, and its runs asked for.
#[derive(Debug, Default)]
pub struct Pings {
    jobs: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    pings: u32,
    last_run: Option<Instant>,
    trailing: bool,
}

/// What to do with an accepted ping's run.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    Now,
    /// After this long: the run that reads every ping of the second.
    After(Duration),
    /// One is already coming.
    Pending,
}

impl Pings {
    /// `None`: refused (too many this second); else when to run the job.
    fn admit(&self, job: &str, now: Instant) -> Option<Run> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let w =
            jobs.entry(job.to_owned()).or_insert(Window { started: now, pings: 0, last_run: None, trailing: false });
        if now.duration_since(w.started) >= Duration::from_secs(1) {
            w.started = now;
            w.pings = 0;
        }
        if w.pings >= BURST {
            return None;
        }
        w.pings += 1;
        Some(match w.last_run {
            _ if w.trailing => Run::Pending,
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                w.trailing = true;
                Run::After(Duration::from_secs(1) - now.duration_since(last))
            }
            _ => {
                w.last_run = Some(now);
                Run::Now
            }
        })
    }

    /// The trailing run went.
    fn ran(&self, job: &str, now: Instant) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = jobs.get_mut(job) {
            w.trailing = false;
            w.last_run = Some(now);
        }
    }
}

pub async fn success(state: State<Arc<Shared>>, Path(job): Path<String>, headers: HeaderMap, body: Body) -> Response {
    ping(state, job, PingKind::Success, headers, body).await
}

pub async fn other(
    state: State<Arc<Shared>>,
    Path((job, what)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
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
    body: Body,
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
    let too_big = || {
        answer(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("a ping's body is at most {MAX_PING_BODY} bytes"))
    };
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PING_BODY as u64) {
        return too_big();
    }
    let Some(run) = shared.pings.admit(&job, Instant::now()) else {
        let mut refused = answer(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("more than {BURST} pings a second for `{job}`"),
        );
        refused.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return refused;
    };
    let read = http_body_util::Limited::new(body, MAX_PING_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => {
            return answer(StatusCode::BAD_REQUEST, "bad_request", format!("the body could not be read: {e}"));
        }
        Err(_) => return answer(StatusCode::REQUEST_TIMEOUT, "timeout", "the body did not arrive in time".into()),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    if let Err(e) = shared.store.record_ping(&job, kind, &text, chrono::Utc::now()).await {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the ping could not be recorded: {e}"));
    }
    tracing::info!(job = %job, kind = kind.as_str(), "ping");
    if kind != PingKind::Start {
        // Told at once; a run already going (a check) is fine: the next one reads this ping.
        match run {
            Run::Now => {
                let _ = shared.ask(|reply| Command::RunNow { job: job.clone(), reply }).await;
            }
            Run::After(wait) => {
                let (shared, job) = (shared.clone(), job.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    shared.pings.ran(&job, Instant::now());
                    let _ = shared.ask(|reply| Command::RunNow { job: job.clone(), reply }).await;
                });
            }
            Run::Pending => {}
        }
    }
    (StatusCode::OK, axum::Json(json!({ "job": job, "recorded": kind.as_str() }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_makes_one_run_now_and_one_after_and_past_the_cap_is_refused() {
        let pings = Pings::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(pings.admit("backup", at(0)), Some(Run::Now));
        assert_eq!(pings.admit("backup", at(100)), Some(Run::After(Duration::from_millis(900))));
        for i in 2..BURST {
            assert_eq!(pings.admit("backup", at(100 + u64::from(i))), Some(Run::Pending));
        }
        assert_eq!(pings.admit("backup", at(500)), None, "past the burst");
        assert_eq!(pings.admit("other", at(500)), Some(Run::Now), "each job apart");
        pings.ran("backup", at(1000));
        // A new second: admitted again; the trailing run just went, so the next waits for it.
        assert_eq!(pings.admit("backup", at(1100)), Some(Run::After(Duration::from_millis(900))));
        assert_eq!(pings.admit("backup", at(2500)), Some(Run::Pending));
        pings.ran("backup", at(2000));
        assert_eq!(pings.admit("backup", at(3100)), Some(Run::Now));
    }
}
