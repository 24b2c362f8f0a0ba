//! The HTTP endpoint: `GET /health`, `GET /metrics`, the unsubscribe page of the
//! subscriber notices (`unsubscribe.rs`), and the token-protected JSON API under `/admin/`
//! (`api/`).
//!
//! Architecture invariant: `/health` and `/metrics` read in-memory state only (each job's
//! newest status and the metrics registry), so they keep answering while the state store is
//! down. The unsubscribe handler writes only the opt-out, pings only their row; `/admin/`
//! reads the store and writes only what an operator asks for.

mod api;
mod auth;
mod badge;
mod cache;
pub mod peer;
mod ping;
pub mod server;

pub use api::openapi;
mod status_page;
mod unsubscribe;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::delivery::Channels;
use crate::health::{Snapshot, Status};
use crate::runtime::PolicySet;
use crate::store::StateStore;

/// What the daemon shares with the HTTP handlers.
pub struct Shared {
    /// The newest snapshot of each job that takes them (probes, heartbeats).
    latest: RwLock<Latest>,
    metrics: PrometheusHandle,
    /// The delivery channels (signing key, opt-out statement), replaced on reload.
    channels: RwLock<Option<Arc<Channels>>>,
    store: StateStore,
    /// The configuration now running (jobs and their schedules), replaced on reload.
    config: RwLock<Option<Arc<Config>>>,
    /// The bearer token of `/admin/`; without one the admin routes are off.
    admin_token: Option<String>,
    /// The loaded policies, replaced on reload.
    policies: RwLock<Option<Arc<PolicySet>>>,
    /// Requests only the daemon loop can carry out (it owns the scheduler).
    commands: RwLock<Option<mpsc::UnboundedSender<Command>>>,
    /// What replicas on one store show each other (`/peer/*`); none on SQLite.
    peer: RwLock<Option<Arc<peer::PeerView>>>,
    /// Heartbeat pings per job this second, to coalesce bursts.
    pings: ping::Pings,
    /// The status page and badges as last rendered (`cache.rs`).
    rendered: cache::Rendered,
    /// The jobs that count for `/health`, renewed with the configuration.
    health_jobs: RwLock<Arc<Vec<String>>>,
    /// This replica's clock minus the store's, and whether that is over the limit (PostgreSQL).
    clock_skew: RwLock<Option<(f64, bool)>>,
}

/// What the admin API asks the daemon loop to do; each carries where the answer goes.
#[derive(Debug)]
pub enum Command {
    /// Claim an occurrence of the job now and run it; answers with the run id.
    RunNow { job: String, reply: oneshot::Sender<Result<i64, CommandError>> },
    /// Pause (true) or resume (false) a job, persisted.
    SetPaused { job: String, paused: bool, reply: oneshot::Sender<Result<(), CommandError>> },
    /// Read the schedule file again; answers with every problem when it is refused.
    Reload { reply: oneshot::Sender<Result<(), Vec<String>>> },
}

/// Why the daemon could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotFound(String),
    Conflict(String),
    Unavailable(String),
}

impl Shared {
    /// With the store, the delivery channels and the configuration: everything the
    /// unsubscribe page and the admin API read.
    pub fn with_delivery(
        metrics: PrometheusHandle,
        latest: Vec<Snapshot>,
        store: StateStore,
        channels: Arc<Channels>,
        config: Arc<Config>,
        admin_token: Option<String>,
    ) -> Arc<Self> {
        let counted = Arc::new(counted_jobs(&config));
        let mut known = Latest::default();
        for snapshot in latest {
            known.keep(snapshot);
        }
        Arc::new(Self {
            latest: RwLock::new(known),
            metrics,
            channels: RwLock::new(Some(channels)),
            store,
            config: RwLock::new(Some(config)),
            admin_token,
            policies: RwLock::new(None),
            commands: RwLock::new(None),
            peer: RwLock::new(None),
            pings: ping::Pings::default(),
            rendered: cache::Rendered::default(),
            health_jobs: RwLock::new(counted),
            clock_skew: RwLock::new(None),
        })
    }

    pub fn set_policies(&self, policies: Arc<PolicySet>) {
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Some(policies);
    }

    pub fn policies(&self) -> Option<Arc<PolicySet>> {
        self.policies.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_commands(&self, commands: mpsc::UnboundedSender<Command>) {
        *self.commands.write().unwrap_or_else(|e| e.into_inner()) = Some(commands);
    }

    /// Sends a command to the daemon loop and waits for its answer.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let sender = self.commands.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        sender.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub fn set_peer(&self, view: Arc<peer::PeerView>) {
        *self.peer.write().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    pub fn peer(&self) -> Option<Arc<peer::PeerView>> {
        self.peer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, config: Arc<Config>) {
        *self.health_jobs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(counted_jobs(&config));
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
        self.rendered.clear();
    }

    pub fn config(&self) -> Option<Arc<Config>> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_channels(&self, channels: Arc<Channels>) {
        *self.channels.write().unwrap_or_else(|e| e.into_inner()) = Some(channels);
    }

    pub fn channels(&self) -> Option<Arc<Channels>> {
        self.channels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps each job's newest status: one this process just took, or a newer one another
    /// replica took (read from the store or a peer), so every replica answers `/health`
    /// alike. Returns whether it was newer.
    pub fn set_latest(&self, snapshot: Snapshot) -> bool {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        let known = latest.by_job.get(&snapshot.job);
        if known.is_some_and(|k| k.checked_at > snapshot.checked_at) {
            return false;
        }
        // A changed status is shown at once; the rest of a page waits for its next render.
        if known.map(|k| k.status) != Some(snapshot.status) {
            self.rendered.forget(&snapshot.job);
        }
        latest.keep(snapshot);
        true
    }

    /// Drops the rendered badges and status page that show `job`.
    pub fn forget_rendered(&self, job: &str) {
        self.rendered.forget(job);
    }

    /// `job`'s newest status, as this process knows it.
    pub fn status_of(&self, job: &str) -> Option<Status> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).by_job.get(job).map(|k| k.status)
    }

    /// The newest snapshot of any job (what a replica tells its peers).
    pub fn latest(&self) -> Option<Snapshot> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).newest.clone()
    }

    /// The jobs whose snapshots make the service's health: those with `health` on (every
    /// probe by default); when none is, every job that takes snapshots.
    pub fn health_jobs(&self) -> Arc<Vec<String>> {
        self.health_jobs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The service's health from the counted jobs' newest statuses: the worst one's
    /// snapshot, how many are in each status, and the worst `MAX_LISTED` jobs.
    /// This replica's clock minus the store's, in seconds, and whether it is over the limit.
    pub fn set_clock_skew(&self, seconds: Option<f64>, over: bool) {
        *self.clock_skew.write().unwrap_or_else(|e| e.into_inner()) = seconds.map(|s| (s, over));
    }

    pub fn clock_skew(&self) -> Option<(f64, bool)> {
        *self.clock_skew.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn health(&self) -> HealthView {
        let jobs = self.health_jobs();
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        let mut view = HealthView { counted: jobs.len(), ..HealthView::default() };
        let mut seen: Vec<(&String, &Known)> = Vec::new();
        let mut worst: Option<(&String, &Known)> = None;
        for (job, known) in jobs.iter().filter_map(|j| latest.by_job.get(j).map(|k| (j, k))) {
            view.reported += 1;
            view.by_status[known.status as usize] += 1;
            if worst.is_none_or(|(_, w)| known.worse_than(w)) {
                worst = Some((job, known));
            }
            if known.status != Status::Operational || seen.len() < MAX_LISTED {
                seen.push((job, known));
            }
        }
        seen.sort_by(
            |(_, a), (_, b)| if a.worse_than(b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater },
        );
        view.jobs = seen.iter().take(MAX_LISTED).map(|(j, k)| ((*j).clone(), k.status, k.checked_at)).collect();
        // A failing job's own snapshot; when every counted job is operational, the newest
        // operational snapshot (all its checks passed, as every counted job's did).
        view.worst = worst.and_then(|(_, k)| k.full.clone().or_else(|| latest.operational.clone()));
        view
    }
}

/// What this process knows of each job's newest snapshot. Kept small at 100,000 jobs: a
/// status and a time per job, in full only the snapshots a failing `/health` shows, the
/// newest operational one and the newest of all.
#[derive(Debug, Default)]
struct Latest {
    by_job: std::collections::HashMap<String, Known>,
    operational: Option<Snapshot>,
    newest: Option<Snapshot>,
}

#[derive(Debug)]
struct Known {
    status: Status,
    checked_at: chrono::DateTime<chrono::Utc>,
    /// The snapshot, when not operational.
    full: Option<Snapshot>,
}

impl Known {
    /// Worse news than `other`: a worse status, or the same status checked longer ago.
    fn worse_than(&self, other: &Known) -> bool {
        (self.status, std::cmp::Reverse(self.checked_at)) > (other.status, std::cmp::Reverse(other.checked_at))
    }
}

impl Latest {
    fn keep(&mut self, snapshot: Snapshot) {
        if self.newest.as_ref().is_none_or(|n| n.checked_at <= snapshot.checked_at) {
            self.newest = Some(snapshot.clone());
        }
        let full = if snapshot.status == Status::Operational {
            if self.operational.as_ref().is_none_or(|o| o.checked_at <= snapshot.checked_at) {
                self.operational = Some(snapshot.clone());
            }
            None
        } else {
            Some(snapshot.clone())
        };
        let known = Known { status: snapshot.status, checked_at: snapshot.checked_at, full };
        self.by_job.insert(snapshot.job, known);
    }
}

/// Jobs a health answer lists by name (worst first); the rest are counted.
pub const MAX_LISTED: usize = 50;

/// The service's health as `/health` and the status page show it.
#[derive(Debug, Default)]
pub struct HealthView {
    /// The worst newest snapshot of a counted job; `None` before any reported.
    pub worst: Option<Snapshot>,
    /// Counted jobs, worst first, at most `MAX_LISTED`: (job, status, checked at).
    pub jobs: Vec<(String, Status, chrono::DateTime<chrono::Utc>)>,
    /// Jobs that count, and how many of them have reported.
    pub counted: usize,
    pub reported: usize,
    /// Reported jobs per status: operational, degraded, error.
    pub by_status: [usize; 3],
}

/// The counted jobs of a configuration (`Shared::health_jobs`).
fn counted_jobs(config: &Config) -> Vec<String> {
    let counted: Vec<String> = config.jobs.iter().filter(|j| j.health).map(|j| j.name.clone()).collect();
    if !counted.is_empty() {
        return counted;
    }
    config
        .jobs
        .iter()
        .filter(|j| matches!(j.task, crate::config::Task::Probe { .. } | crate::config::Task::Heartbeat(_)))
        .map(|j| j.name.clone())
        .collect()
}

pub fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, server::Limits::default())
}

/// The routes, the public ones under `limits`' request timeout, every answer with the
/// security headers.
pub fn router_with(shared: Arc<Shared>, limits: server::Limits) -> Router {
    let routes = shared.config().map(|c| c.http).unwrap_or_default();
    let mut public = Router::new();
    if routes.status_page {
        public = public.route("/", get(status_page::page));
    }
    if routes.health {
        public = public.route("/health", get(health));
    }
    if routes.metrics {
        public = public.route("/metrics", get(metrics));
    }
    if routes.unsubscribe {
        public = public.route("/unsubscribe", get(unsubscribe::page).post(unsubscribe::confirm));
    }
    if routes.pings {
        public = public
            .route("/ping/{job}", get(ping::success).post(ping::success))
            .route("/ping/{job}/{what}", get(ping::other).post(ping::other));
    }
    if routes.badges {
        public = public.route("/badge/{file}", get(badge::badge));
    }
    let router = server::public_layers(public, limits)
        .route("/peer/status", get(peer::status))
        .route("/peer/states", get(peer::states));
    let router = router.merge(api::routes(shared.clone())).fallback(not_found).with_state(shared);
    server::security_headers(router)
}

/// Any other path: 404 in the admin API's error shape.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("no route {method} {}", uri.path());
    (StatusCode::NOT_FOUND, axum::Json(json!({ "error": { "code": "not_found", "message": message } }))).into_response()
}

/// The service's health: the worst newest snapshot over the jobs that count (`health_jobs`),
/// 200 when operational or degraded, 503 when down or before any of them reported. The
/// answer is that snapshot (its checks with OK/FAIL and a reason class, never what a target
/// said) and each counted job's status.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.health();
    let Some(worst) = &view.worst else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unknown", "message": "no check has run yet" })),
        )
            .into_response();
    };
    let code = if worst.status == Status::Error { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    // How old the worst snapshot is: with replicas it may be another replica's.
    let age = (chrono::Utc::now() - worst.checked_at).num_milliseconds().max(0) as f64 / 1000.0;
    let mut body = serde_json::to_value(crate::health::public(worst)).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("age_seconds".into(), json!(age));
        if let Some((skew, over)) = shared.clock_skew() {
            map.insert("clock_skew_seconds".into(), json!(skew));
            if over {
                let side = if skew > 0.0 { "ahead of" } else { "behind" };
                let warning = format!("this replica's clock is {:.1}s {side} the state store's", skew.abs());
                map.insert("clock_warning".into(), json!(warning));
            }
        }
        let jobs: Vec<_> = view
            .jobs
            .iter()
            .map(|(job, status, checked_at)| json!({ "job": job, "status": status, "checked_at": checked_at }))
            .collect();
        map.insert("jobs".into(), json!(jobs));
        let [operational, degraded, error] = view.by_status;
        map.insert(
            "counts".into(),
            json!({ "counted": view.counted, "reported": view.reported,
                    "operational": operational, "degraded": degraded, "error": error }),
        );
    }
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = crate::metrics::render(&shared.metrics);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
