//! `/admin/`: the operators' JSON API, behind `Authorization: Bearer <token>` (compared in
//! constant time). Without a configured token every admin route answers 403: warden never
//! serves them unauthenticated. Errors have one shape:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! Each handler carries its `#[utoipa::path]`, and the router is built from those
//! annotations (`utoipa_axum::routes!`), so `GET /admin/openapi.json` describes exactly the
//! routes served. Lists are newest first and paged with `limit` (default 50, at most 500) and
//! `before` (the previous page's `next`).

use std::sync::{Arc, LazyLock};

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Datelike, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Command, CommandError, Shared};
use crate::health::Snapshot;
use crate::runtime::EvaluationSummary;
use crate::store::{Matchers, OutboxEntry, Silence};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warden admin API",
        description = "Operate a running warden: jobs, runs, policies, health history, the outbox, \
                       silences and reloads. Every route needs `Authorization: Bearer <token>`."
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The admin routes and their OpenAPI document, from the same annotations.
fn annotated() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs))
        .routes(routes!(runs))
        .routes(routes!(run_now))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(policies))
        .routes(routes!(enable))
        .routes(routes!(reload))
        .routes(routes!(silences, create_silence))
        .routes(routes!(expire_silence))
        .routes(routes!(health))
        .routes(routes!(outbox))
        .routes(routes!(retry))
        .routes(routes!(openapi_json))
}

/// The OpenAPI 3.1 document of the admin API: what `GET /admin/openapi.json` serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = annotated().into_openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    // What the derive cannot say of a new silence: at least one matcher, and exactly one of
    // `ends_at` and `duration`.
    if let Some(RefOr::T(fields)) = components.schemas.remove("NewSilence") {
        let required = |field: &str| ObjectBuilder::new().required(field).build();
        let rules = AllOfBuilder::new()
            .item(fields)
            .item(AnyOfBuilder::new().item(required("job")).item(required("policy")).item(required("kind")))
            .item(OneOfBuilder::new().item(required("ends_at")).item(required("duration")))
            .build();
        components.schemas.insert("NewSilence".into(), RefOr::T(Schema::AllOf(rules)));
    }
    // The answers every route can give, described once.
    let common = [
        ("401", "No token, a wrong token, or not the Bearer scheme"),
        ("403", "The admin API is off: warden was started without a token"),
        ("503", "The state store cannot be reached, or warden is starting or stopping"),
    ];
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            for (status, description) in common {
                operation.responses.responses.entry(status.to_owned()).or_insert_with(|| error_response(description));
            }
        }
    }
    doc
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let router: Router<Arc<Shared>> = annotated().into();
    router.route_layer(middleware::from_fn_with_state(shared, auth))
}

static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));

/// This document.
#[utoipa::path(get, path = "/admin/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// An error in the API's one shape.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Option<Vec<String>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), problems: None }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `unauthorized`, `admin_disabled`, `bad_request`,
    /// `not_found`, `conflict`, `not_failed`, `config_refused`, `store_unavailable`,
    /// `starting`, `stopping`.
    pub code: String,
    /// For people.
    pub message: String,
    /// With `config_refused`: every problem, as `warden check` prints them
    /// (`file:line:column: message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, problems: self.problems },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

/// `Query`, refused in the API's error shape.
pub struct Q<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Q(value)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `Path`, refused in the API's error shape.
pub struct P<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(P(value)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
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

/// `limit` and `before` of a paged list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// How many rows, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only rows older than this id: the previous page's `next`.
    before: Option<i64>,
}

fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit {n}: from 1 to {MAX_LIMIT}"))),
    }
}

/// A whole list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Items<T> {
    items: Vec<T>,
}

/// One page of a list, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    items: Vec<T>,
    /// `before` for the next page; null on the last page.
    next: Option<i64>,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Json<Self> {
        let next = (items.len() as i64 == limit).then(|| items.last().map(&id)).flatten();
        Json(Page { items, next })
    }
}

fn starting() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "no configuration yet")
}

fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "warden is shutting down")
}

/// A job as configured, with its next fires and its last run.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    name: String,
    /// `probe`, `prune`, `storage-gauge`, ...
    task: String,
    /// `every 30s`, or the cron expression and its time zone.
    schedule: String,
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
async fn jobs(State(shared): State<Arc<Shared>>) -> Result<Json<Items<Job>>, ApiError> {
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
async fn runs(
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Snapshots checked at or after this time.
    from: Option<DateTime<Utc>>,
    /// Snapshots checked before this time.
    to: Option<DateTime<Utc>>,
    /// How many rows, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only rows older than this id: the previous page's `next`.
    before: Option<i64>,
}

/// A stored health snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthEntry {
    id: i64,
    #[serde(flatten)]
    snapshot: Snapshot,
}

/// Health history: the probes' snapshots, newest first.
#[utoipa::path(get, path = "/admin/health", tag = "health",
    params(HealthQuery),
    responses(
        (status = 200, description = "Snapshots, newest first", body = Page<HealthEntry>),
        (status = 400, description = "A bad time, `limit` or `before`", body = ErrorBody),
    ))]
async fn health(State(shared): State<Arc<Shared>>, Q(q): Q<HealthQuery>) -> Result<Json<Page<HealthEntry>>, ApiError> {
    let limit = limit(q.limit)?;
    let rows = shared.store.health_page(q.from, q.to, limit, q.before).await?;
    let items = rows.into_iter().map(|(id, snapshot)| HealthEntry { id, snapshot }).collect();
    Ok(Page::new(items, limit, |h| h.id))
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    Pending,
    Delivered,
    Failed,
    Silenced,
}

impl OutboxState {
    fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
            OutboxState::Silenced => "silenced",
        }
    }
}

/// What an outbox row sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutboxKind {
    Email,
    /// The subscriber fan-out; a silence on it also holds back the per-user notices.
    Subscribers,
    Notice,
    Ticket,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Email => "email",
            OutboxKind::Subscribers => "subscribers",
            OutboxKind::Notice => "notice",
            OutboxKind::Ticket => "ticket",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// Only rows in this state.
    #[param(inline)]
    state: Option<OutboxState>,
    /// How many rows, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only rows older than this id: the previous page's `next`.
    before: Option<i64>,
}

/// What was sent, is waiting, failed or was silenced, newest first.
#[utoipa::path(get, path = "/admin/outbox", tag = "outbox",
    params(OutboxQuery),
    responses(
        (status = 200, description = "Outbox rows, newest first", body = Page<OutboxEntry>),
        (status = 400, description = "A bad `state`, `limit` or `before`", body = ErrorBody),
    ))]
async fn outbox(State(shared): State<Arc<Shared>>, Q(q): Q<OutboxQuery>) -> Result<Json<Page<OutboxEntry>>, ApiError> {
    let limit = limit(q.limit)?;
    let rows = shared.store.outbox_page(q.state.map(OutboxState::as_str), limit, q.before).await?;
    Ok(Page::new(rows, limit, |r| r.id))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    id: i64,
    /// Always `pending`: the dispatcher sends it again.
    state: String,
}

/// Sends a failed outbox row again.
#[utoipa::path(post, path = "/admin/outbox/{id}/retry", tag = "outbox",
    params(("id" = i64, Path, description = "The outbox row")),
    responses(
        (status = 200, description = "The row is pending again", body = Retried),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 409, description = "No failed row with this id", body = ErrorBody),
    ))]
async fn retry(State(shared): State<Arc<Shared>>, P(id): P<i64>) -> Result<Json<Retried>, ApiError> {
    match shared.store.redrive(Some(id)).await? {
        0 => Err(ApiError::new(StatusCode::CONFLICT, "not_failed", format!("outbox row {id} is not a failed row"))),
        _ => Ok(Json(Retried { id, state: "pending".into() })),
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
async fn run_now(
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
async fn pause(State(shared): State<Arc<Shared>>, P(job): P<String>) -> Result<Json<Paused>, ApiError> {
    set_paused(&shared, job, true).await
}

/// Lets a paused job fire again.
#[utoipa::path(post, path = "/admin/jobs/{job}/resume", tag = "jobs",
    params(("job" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "The job fires again", body = Paused),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
async fn resume(State(shared): State<Arc<Shared>>, P(job): P<String>) -> Result<Json<Paused>, ApiError> {
    set_paused(&shared, job, false).await
}

/// A loaded policy plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct Policy {
    name: String,
    /// The component file.
    component: String,
    /// SHA-256 of the loaded component.
    hash: String,
    /// The jobs whose results it receives.
    on: Vec<String>,
    enabled: bool,
    consecutive_failures: u32,
    quarantine_after: u32,
    quarantined: bool,
    /// The last ten evaluations since it was loaded, newest first.
    last_evaluations: Vec<EvaluationSummary>,
}

/// The loaded policies, with their last evaluations.
#[utoipa::path(get, path = "/admin/policies", tag = "policies",
    responses((status = 200, description = "Every policy", body = Items<Policy>)))]
async fn policies(State(shared): State<Arc<Shared>>) -> Result<Json<Items<Policy>>, ApiError> {
    let set = shared.policies().ok_or_else(starting)?;
    let items = set
        .policies
        .iter()
        .map(|p| Policy {
            name: p.name().to_owned(),
            component: p.spec.component.display().to_string(),
            hash: p.hash.clone(),
            on: p.spec.on.clone(),
            enabled: p.spec.enabled,
            consecutive_failures: p.consecutive_failures(),
            quarantine_after: p.spec.quarantine_after,
            quarantined: p.is_quarantined(),
            last_evaluations: p.recent_evaluations(),
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Enabled {
    name: String,
    quarantined: bool,
    was_quarantined: bool,
}

/// Takes a policy out of quarantine.
#[utoipa::path(post, path = "/admin/policies/{policy}/enable", tag = "policies",
    params(("policy" = String, Path, description = "The policy's name")),
    responses(
        (status = 200, description = "The policy runs again", body = Enabled),
        (status = 404, description = "No such policy", body = ErrorBody),
    ))]
async fn enable(State(shared): State<Arc<Shared>>, P(name): P<String>) -> Result<Json<Enabled>, ApiError> {
    let set = shared.policies().ok_or_else(starting)?;
    let policy = set
        .policies
        .iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no policy `{name}`")))?;
    let was = policy.is_quarantined();
    policy.reenable();
    crate::metrics::record_quarantine(&name, false);
    tracing::info!(policy = %name, was_quarantined = was, "policy re-enabled by the admin API");
    Ok(Json(Enabled { name, quarantined: false, was_quarantined: was }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    reloaded: bool,
}

/// Reads `schedules.toml` and the plugins again; a refused configuration leaves the
/// running one in place.
#[utoipa::path(post, path = "/admin/reload", tag = "config",
    responses(
        (status = 200, description = "The new configuration runs", body = Reloaded),
        (status = 400, description = "Refused (`config_refused`), with every problem in `problems`", body = ErrorBody),
    ))]
async fn reload(State(shared): State<Arc<Shared>>) -> Result<Json<Reloaded>, ApiError> {
    match shared.ask(|reply| Command::Reload { reply }).await {
        None => Err(stopping()),
        Some(Ok(())) => Ok(Json(Reloaded { reloaded: true })),
        Some(Err(problems)) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "config_refused",
            message: format!("the configuration was refused ({} problems); the running one stays", problems.len()),
            problems: Some(problems),
        }),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SilencesQuery {
    /// Include silences that ended.
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceEntry {
    #[serde(flatten)]
    silence: Silence,
    /// In force now.
    active: bool,
}

/// A `[[maintenance]]` window of `schedules.toml`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceWindow {
    name: String,
    schedule: String,
    duration: String,
    matchers: Matchers,
    comment: String,
    active: bool,
    /// The next three starts.
    next: Vec<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceList {
    /// Silences created through this API, newest first.
    items: Vec<SilenceEntry>,
    /// The configured maintenance windows, which act the same way.
    maintenance: Vec<MaintenanceWindow>,
}

/// Silences and maintenance windows.
#[utoipa::path(get, path = "/admin/silences", tag = "silences",
    params(SilencesQuery),
    responses(
        (status = 200, description = "Running and coming silences (with `all`, ended ones too)", body = SilenceList),
        (status = 400, description = "A bad `all`", body = ErrorBody),
    ))]
async fn silences(State(shared): State<Arc<Shared>>, Q(q): Q<SilencesQuery>) -> Result<Json<SilenceList>, ApiError> {
    let now = Utc::now();
    let items = shared
        .store
        .silences(now, q.all)
        .await?
        .into_iter()
        .map(|silence| SilenceEntry { active: silence.starts_at <= now && now < silence.ends_at, silence })
        .collect();
    let maintenance = shared
        .config()
        .map(|c| {
            c.maintenance
                .iter()
                .map(|m| MaintenanceWindow {
                    name: m.name.clone(),
                    schedule: m.schedule.to_string(),
                    duration: m.duration.to_string(),
                    matchers: m.matchers.clone(),
                    comment: m.comment.clone(),
                    active: m.active(now),
                    next: m.schedule.upcoming(now, 3),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(SilenceList { items, maintenance }))
}

/// A new silence: matchers (at least one), when it ends (`ends_at`, or `duration` such as
/// "2h" from `starts_at` or now), and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    job: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    policy: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    kind: Option<OutboxKind>,
    /// Default: now.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    starts_at: Option<DateTime<Utc>>,
    /// Give this or `duration`; after `starts_at`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    ends_at: Option<DateTime<Utc>>,
    /// Give this or `ends_at`: counted from `starts_at`; more than zero.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = "^([0-9]+(ms|s|m|h|d|w))+$", example = "2h")]
    duration: Option<String>,
    /// Why; shown with every action it holds back.
    #[schema(pattern = "\\S", example = "database upgrade")]
    comment: String,
    /// Default: `admin-api`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    created_by: Option<String>,
}

/// An optional field that may be left out, but not given as `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSilence {
    id: i64,
    matchers: Matchers,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    comment: String,
}

/// The years a silence may start and end in: what every store keeps as a timestamp.
const SILENCE_YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// Creates a silence: matching actions are recorded `silenced` with its comment, never sent.
#[utoipa::path(post, path = "/admin/silences", tag = "silences",
    request_body = NewSilence,
    responses(
        (status = 201, description = "The silence is in place", body = CreatedSilence),
        (status = 400, description = "No matcher, no end, an end before the start, or no comment", body = ErrorBody),
    ))]
async fn create_silence(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedSilence>), ApiError> {
    let bad = |message: String| ApiError::bad_request(message);
    let Json(new) = body.map_err(|e| bad(e.body_text()))?;
    if new.job.is_none() && new.policy.is_none() && new.kind.is_none() {
        return Err(bad("give at least one matcher: job, policy or kind".into()));
    }
    if new.comment.trim().is_empty() {
        return Err(bad("say why in `comment`".into()));
    }
    let starts_at = new.starts_at.unwrap_or_else(Utc::now);
    let ends_at = match (new.ends_at, &new.duration) {
        (Some(end), None) => end,
        (None, Some(d)) => {
            let d = crate::config::Duration::try_from(d.as_str()).map_err(bad)?;
            chrono::Duration::from_std(d.std())
                .ok()
                .and_then(|d| starts_at.checked_add_signed(d))
                .ok_or_else(|| bad(format!("duration `{}` is too long", new.duration.as_deref().unwrap_or(""))))?
        }
        _ => return Err(bad("give `ends_at` or `duration`, one of them".into())),
    };
    for (field, t) in [("starts_at", starts_at), ("ends_at", ends_at)] {
        if !SILENCE_YEARS.contains(&t.year()) {
            return Err(bad(format!("{field} {t}: from the year 1970 to 9999")));
        }
    }
    if ends_at <= starts_at {
        return Err(bad("the silence ends before it starts".into()));
    }
    let matchers = Matchers { job: new.job, policy: new.policy, kind: new.kind.map(|k| k.as_str().to_owned()) };
    let by = new.created_by.unwrap_or_else(|| "admin-api".into());
    let id = shared.store.create_silence(&matchers, starts_at, ends_at, &new.comment, &by).await?;
    tracing::info!(id, ?matchers, %starts_at, %ends_at, comment = %new.comment, "silence created");
    Ok((StatusCode::CREATED, Json(CreatedSilence { id, matchers, starts_at, ends_at, comment: new.comment })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Expired {
    id: i64,
    expired: bool,
}

/// Ends a silence now.
#[utoipa::path(post, path = "/admin/silences/{id}/expire", tag = "silences",
    params(("id" = i64, Path, description = "The silence")),
    responses(
        (status = 200, description = "The silence has ended", body = Expired),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No running or coming silence with this id", body = ErrorBody),
    ))]
async fn expire_silence(State(shared): State<Arc<Shared>>, P(id): P<i64>) -> Result<Json<Expired>, ApiError> {
    if shared.store.expire_silence(id).await? {
        tracing::info!(id, "silence expired");
        Ok(Json(Expired { id, expired: true }))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no running silence {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OUTBOX_KINDS, OUTBOX_STATES};

    #[test]
    fn the_api_names_the_stores_kinds_and_states() {
        use OutboxKind::*;
        use OutboxState::*;
        let kinds: Vec<&str> = [Email, Subscribers, Notice, Ticket].map(OutboxKind::as_str).to_vec();
        assert_eq!(kinds, OUTBOX_KINDS);
        let states: Vec<&str> = [Pending, Delivered, Failed, Silenced].map(OutboxState::as_str).to_vec();
        assert_eq!(states, OUTBOX_STATES);
    }

    #[test]
    fn the_document_has_every_route_with_the_common_errors() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/admin/jobs", "get"),
            ("/admin/jobs/{job}/runs", "get"),
            ("/admin/jobs/{job}/run", "post"),
            ("/admin/silences", "get"),
            ("/admin/silences", "post"),
            ("/admin/reload", "post"),
        ] {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} missing");
            for status in ["401", "403", "503"] {
                assert!(op["responses"][status].is_object(), "{method} {path}: no {status}");
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
