//! Jobs: what is scheduled, their runs, run now, pause and resume.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, Items, P, Page, Paging, Q, limit, starting, stopping};
use crate::admin::{Command, Shared};

/// A job as configured, with its next fires and its last run.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    name: String,
    /// `probe`, `prune`, `storage-gauge`, ...
    task: String,
    /// `every 30s`, or the cron expression and its time zone.
    schedule: String,
    /// Where within its period an `every` job fires, from its name (0: cron, or `align = true`).
    offset_ms: u64,
    enabled: bool,
    /// Paused through this API (kept across restarts).
    paused: bool,
    /// The next three fires.
    next: Vec<DateTime<Utc>>,
    last_run: Option<LastRun>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastRun {
    id: i64,
    scheduled_at: DateTime<Utc>,
    /// `schedule`, `catch-up` or `manual`.
    trigger: String,
    /// `running`, `ok`, `error`, ...
    outcome: String,
    error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

/// Every configured job.
#[utoipa::path(get, path = "/admin/jobs", tag = "jobs",
    responses((status = 200, description = "Every job, in the order of `schedules.toml`", body = Items<Job>)))]
pub(super) async fn jobs(State(shared): State<Arc<Shared>>) -> Result<Json<Items<Job>>, ApiError> {
    let config = shared.config().ok_or_else(starting)?;
    let last = shared.store.last_runs().await.unwrap_or_default();
    let paused = shared.store.paused_jobs().await.unwrap_or_default();
    let now = Utc::now();
    let items = config
        .jobs
        .iter()
        .map(|job| Job {
            name: job.name.clone(),
            task: job.task.kind().to_owned(),
            schedule: job.schedule.to_string(),
            offset_ms: u64::try_from(job.schedule.offset().std().as_millis()).unwrap_or(u64::MAX),
            enabled: job.enabled,
            paused: paused.contains(&job.name),
            next: job.schedule.upcoming(now, 3),
            last_run: last.get(&job.name).map(|r| LastRun {
                id: r.id,
                scheduled_at: r.scheduled_at.0,
                trigger: r.trigger.clone(),
                outcome: r.outcome.clone(),
                error: r.error.clone(),
                finished_at: r.finished_at.map(|t| t.0),
            }),
        })
        .collect();
    Ok(Json(Items { items }))
}

/// One run of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Run {
    id: i64,
    scheduled_at: DateTime<Utc>,
    /// `schedule`, `catch-up` or `manual`.
    trigger: String,
    /// The replica that claimed it.
    replica: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    error: Option<String>,
    rows_affected: Option<i64>,
    /// What the task reported, as JSON text.
    detail: Option<String>,
}

/// A job's runs, newest first.
#[utoipa::path(get, path = "/admin/jobs/{job}/runs", tag = "jobs",
    params(("job" = String, Path, description = "The job's name"), Paging),
    responses(
        (status = 200, description = "The job's runs, newest first", body = Page<Run>),
        (status = 400, description = "A bad `limit` or `before`", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub(super) async fn runs(
    State(shared): State<Arc<Shared>>,
    P(job): P<String>,
    Q(q): Q<Paging>,
) -> Result<Json<Page<Run>>, ApiError> {
    let limit = limit(q.limit)?;
    let known = shared.config().is_some_and(|c| c.job(&job).is_some());
    if !known {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no job `{job}`")));
    }
    let rows = shared.store.runs_page(&job, limit, q.before).await?;
    let items = rows
        .into_iter()
        .map(|r| Run {
            id: r.id,
            scheduled_at: r.scheduled_at.0,
            trigger: r.trigger,
            replica: r.replica,
            started_at: r.started_at.0,
            finished_at: r.finished_at.map(|t| t.0),
            outcome: r.outcome,
            error: r.error,
            rows_affected: r.rows_affected,
            detail: r.detail,
        })
        .collect();
    Ok(Page::new(items, limit, |r| r.id))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    job: String,
    /// The claimed run: follow it in `GET /admin/jobs/{job}/runs`.
    run_id: i64,
}

/// Runs a job now, claimed like a scheduled run.
#[utoipa::path(post, path = "/admin/jobs/{job}/run", tag = "jobs",
    params(("job" = String, Path, description = "The job's name")),
    responses(
        (status = 202, description = "The run is claimed and started", body = RunStarted),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is running", body = ErrorBody),
    ))]
pub(super) async fn run_now(
    State(shared): State<Arc<Shared>>,
    P(job): P<String>,
) -> Result<(StatusCode, Json<RunStarted>), ApiError> {
    let run_id = shared.ask(|reply| Command::RunNow { job: job.clone(), reply }).await.ok_or_else(stopping)??;
    Ok((StatusCode::ACCEPTED, Json(RunStarted { job, run_id })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Paused {
    job: String,
    paused: bool,
}

async fn set_paused(shared: &Shared, job: String, paused: bool) -> Result<Json<Paused>, ApiError> {
    shared.ask(|reply| Command::SetPaused { job: job.clone(), paused, reply }).await.ok_or_else(stopping)??;
    Ok(Json(Paused { job, paused }))
}

/// Stops a job firing until it is resumed (kept across restarts).
#[utoipa::path(post, path = "/admin/jobs/{job}/pause", tag = "jobs",
    params(("job" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "The job is paused", body = Paused),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub(super) async fn pause(State(shared): State<Arc<Shared>>, P(job): P<String>) -> Result<Json<Paused>, ApiError> {
    set_paused(&shared, job, true).await
}

/// Lets a paused job fire again.
#[utoipa::path(post, path = "/admin/jobs/{job}/resume", tag = "jobs",
    params(("job" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "The job fires again", body = Paused),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub(super) async fn resume(State(shared): State<Arc<Shared>>, P(job): P<String>) -> Result<Json<Paused>, ApiError> {
    set_paused(&shared, job, false).await
}
