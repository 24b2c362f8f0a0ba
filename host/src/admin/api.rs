//! `/admin/`: the operators' JSON API, behind `Authorization: Bearer <token>` (compared in
//! constant time). Without a configured token every admin route answers 403: warden never
//! serves them unauthenticated. Errors have one shape:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! Routes: `GET /admin/jobs`, `GET /admin/jobs/{job}/runs`, `POST /admin/jobs/{job}/run`,
//! `POST /admin/jobs/{job}/pause`, `POST /admin/jobs/{job}/resume`, `GET /admin/policies`,
//! `POST /admin/policies/{policy}/enable`, `GET /admin/health`, `GET /admin/outbox`,
//! `POST /admin/outbox/{id}/retry`, `POST /admin/reload`, `GET /admin/silences`,
//! `POST /admin/silences`, `POST /admin/silences/{id}/expire`. Lists are newest first and paged
//! with `limit` (default 50, at most 500) and `before` (an id from the previous page's
//! `next`).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Command, CommandError, Shared};
use crate::store::{OUTBOX_KINDS, OUTBOX_STATES};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/jobs", get(jobs))
        .route("/admin/jobs/{job}/runs", get(runs))
        .route("/admin/jobs/{job}/run", post(run_now))
        .route("/admin/jobs/{job}/pause", post(pause))
        .route("/admin/jobs/{job}/resume", post(resume))
        .route("/admin/policies", get(policies))
        .route("/admin/policies/{policy}/enable", post(enable))
        .route("/admin/reload", post(reload))
        .route("/admin/silences", get(silences).post(create_silence))
        .route("/admin/silences/{id}/expire", post(expire_silence))
        .route("/admin/health", get(health))
        .route("/admin/outbox", get(outbox))
        .route("/admin/outbox/{id}/retry", post(retry))
        .route_layer(middleware::from_fn_with_state(shared, auth))
}

/// An error in the API's one shape.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.admin_token else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start warden with WARDEN_ADMIN_TOKEN or WARDEN_ADMIN_TOKEN_FILE",
        )
        .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same_secret(given, token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <token>")
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    before: Option<i64>,
}

impl Page {
    fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("limit {n}: from 1 to {MAX_LIMIT}")))
            }
        }
    }
}

/// `{"items": [...], "next": <before for the next page, or null>}`.
fn page<T: serde::Serialize>(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Json<Value> {
    let next = (items.len() as i64 == limit).then(|| items.last().map(&id)).flatten();
    Json(json!({ "items": items, "next": next }))
}

async fn jobs(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let config = shared
        .config()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "no configuration yet"))?;
    let last = shared.store.last_runs().await.unwrap_or_default();
    let paused = shared.store.paused_jobs().await.unwrap_or_default();
    let now = Utc::now();
    let jobs: Vec<Value> = config
        .jobs
        .iter()
        .map(|job| {
            let last = last.get(&job.name).map(|r| {
                json!({
                    "id": r.id,
                    "scheduled_at": r.scheduled_at.0,
                    "trigger": r.trigger,
                    "outcome": r.outcome,
                    "error": r.error,
                    "finished_at": r.finished_at.map(|t| t.0),
                })
            });
            json!({
                "name": job.name,
                "task": job.task.kind(),
                "schedule": job.schedule.to_string(),
                "enabled": job.enabled,
                "paused": paused.contains(&job.name),
                "next": job.schedule.upcoming(now, 3),
                "last_run": last,
            })
        })
        .collect();
    Ok(Json(json!({ "items": jobs })))
}

async fn runs(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    Query(q): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit()?;
    let known = shared.config().is_some_and(|c| c.job(&job).is_some());
    if !known {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no job `{job}`")));
    }
    let rows = shared.store.runs_page(&job, limit, q.before).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "scheduled_at": r.scheduled_at.0,
                "trigger": r.trigger,
                "replica": r.replica,
                "started_at": r.started_at.0,
                "finished_at": r.finished_at.map(|t| t.0),
                "outcome": r.outcome,
                "error": r.error,
                "rows_affected": r.rows_affected,
                "detail": r.detail,
            })
        })
        .collect();
    Ok(page(items, limit, |v| v["id"].as_i64().unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
pub struct HealthQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
    before: Option<i64>,
}

async fn health(State(shared): State<Arc<Shared>>, Query(q): Query<HealthQuery>) -> Result<Json<Value>, ApiError> {
    let limit = Page { limit: q.limit, before: q.before }.limit()?;
    let rows = shared.store.health_page(q.from, q.to, limit, q.before).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|(id, _)| *id)).flatten();
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(id, snapshot)| {
            let mut v = serde_json::to_value(snapshot).unwrap_or_default();
            v["id"] = json!(id);
            v
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    state: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

async fn outbox(State(shared): State<Arc<Shared>>, Query(q): Query<OutboxQuery>) -> Result<Json<Value>, ApiError> {
    let limit = Page { limit: q.limit, before: q.before }.limit()?;
    if let Some(s) = &q.state
        && !OUTBOX_STATES.contains(&s.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("state `{s}`: pending, delivered, failed or silenced"),
        ));
    }
    let rows = shared.store.outbox_page(q.state.as_deref(), limit, q.before).await?;
    Ok(page(rows, limit, |r| r.id))
}

async fn retry(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    match shared.store.redrive(Some(id)).await? {
        0 => Err(ApiError::new(StatusCode::CONFLICT, "not_failed", format!("outbox row {id} is not a failed row"))),
        _ => Ok(Json(json!({ "id": id, "state": "pending" }))),
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            CommandError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CommandError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m),
        }
    }
}

fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "warden is shutting down")
}

async fn run_now(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = shared.ask(|reply| Command::RunNow { job: job.clone(), reply }).await.ok_or_else(stopping)??;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job, "run_id": id }))))
}

async fn set_paused(shared: &Shared, job: String, paused: bool) -> Result<Json<Value>, ApiError> {
    shared.ask(|reply| Command::SetPaused { job: job.clone(), paused, reply }).await.ok_or_else(stopping)??;
    Ok(Json(json!({ "job": job, "paused": paused })))
}

async fn pause(State(shared): State<Arc<Shared>>, Path(job): Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(&shared, job, true).await
}

async fn resume(State(shared): State<Arc<Shared>>, Path(job): Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(&shared, job, false).await
}

async fn policies(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let set = shared
        .policies()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "no policies yet"))?;
    let items: Vec<Value> = set
        .policies
        .iter()
        .map(|p| {
            json!({
                "name": p.name(),
                "component": p.spec.component.display().to_string(),
                "hash": p.hash,
                "on": p.spec.on,
                "enabled": p.spec.enabled,
                "consecutive_failures": p.consecutive_failures(),
                "quarantine_after": p.spec.quarantine_after,
                "quarantined": p.is_quarantined(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn enable(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let set = shared
        .policies()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "no policies yet"))?;
    let policy = set
        .policies
        .iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no policy `{name}`")))?;
    let was = policy.is_quarantined();
    policy.reenable();
    crate::metrics::record_quarantine(&name, false);
    tracing::info!(policy = %name, was_quarantined = was, "policy re-enabled by the admin API");
    Ok(Json(json!({ "name": name, "quarantined": false, "was_quarantined": was })))
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.ask(|reply| Command::Reload { reply }).await {
        None => stopping().into_response(),
        Some(Ok(())) => Json(json!({ "reloaded": true })).into_response(),
        Some(Err(problems)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": {
                    "code": "config_refused",
                    "message": format!("the configuration was refused ({} problems); the running one stays", problems.len()),
                    "problems": problems,
                }
            })),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct SilencesQuery {
    /// Include silences that ended.
    #[serde(default)]
    all: bool,
}

async fn silences(State(shared): State<Arc<Shared>>, Query(q): Query<SilencesQuery>) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let items = shared.store.silences(now, q.all).await?;
    let items: Vec<Value> = items
        .into_iter()
        .map(|s| {
            let active = s.starts_at <= now && now < s.ends_at;
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["active"] = json!(active);
            v
        })
        .collect();
    let maintenance: Vec<Value> = shared
        .config()
        .map(|c| {
            c.maintenance
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "schedule": m.schedule.to_string(),
                        "duration": m.duration.to_string(),
                        "matchers": m.matchers,
                        "comment": m.comment,
                        "active": m.active(now),
                        "next": m.schedule.upcoming(now, 3),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({ "items": items, "maintenance": maintenance })))
}

/// A new silence: matchers (at least one), when it ends (`ends_at`, or `duration` such as
/// "2h" from `starts_at` or now), and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    job: Option<String>,
    policy: Option<String>,
    kind: Option<String>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    duration: Option<String>,
    comment: String,
    created_by: Option<String>,
}

async fn create_silence(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let Json(new) = body.map_err(|e| bad(e.body_text()))?;
    if new.job.is_none() && new.policy.is_none() && new.kind.is_none() {
        return Err(bad("give at least one matcher: job, policy or kind".into()));
    }
    if let Some(kind) = &new.kind
        && !OUTBOX_KINDS.contains(&kind.as_str())
    {
        return Err(bad(format!("kind `{kind}`: email, subscribers, notice or ticket")));
    }
    if new.comment.trim().is_empty() {
        return Err(bad("say why in `comment`".into()));
    }
    let starts_at = new.starts_at.unwrap_or_else(Utc::now);
    let ends_at = match (new.ends_at, &new.duration) {
        (Some(end), None) => end,
        (None, Some(d)) => {
            let d = crate::config::Duration::try_from(d.as_str()).map_err(bad)?;
            starts_at + chrono::Duration::from_std(d.std()).map_err(|e| bad(e.to_string()))?
        }
        _ => return Err(bad("give `ends_at` or `duration`, one of them".into())),
    };
    if ends_at <= starts_at {
        return Err(bad("the silence ends before it starts".into()));
    }
    let matchers = crate::store::Matchers { job: new.job, policy: new.policy, kind: new.kind };
    let by = new.created_by.unwrap_or_else(|| "admin-api".into());
    let id = shared.store.create_silence(&matchers, starts_at, ends_at, &new.comment, &by).await?;
    tracing::info!(id, ?matchers, %starts_at, %ends_at, comment = %new.comment, "silence created");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": id, "matchers": matchers, "starts_at": starts_at, "ends_at": ends_at, "comment": new.comment }),
        ),
    ))
}

async fn expire_silence(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    if shared.store.expire_silence(id).await? {
        tracing::info!(id, "silence expired");
        Ok(Json(json!({ "id": id, "expired": true })))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no running silence {id}")))
    }
}
