//! The HTTP endpoint: `GET /health`, `GET /metrics`, the unsubscribe page of the
//! subscriber notices (`unsubscribe.rs`), and the token-protected JSON API under `/admin/`
//! (`api/`).
//!
//! Architecture invariant: `/health` and `/metrics` read in-memory state only (the latest
//! snapshot and the metrics registry), so they keep answering while the state store is
//! down. The unsubscribe handler writes only the opt-out; `/admin/` reads the store and
//! writes only what an operator asks for.

mod api;
mod auth;
mod badge;
pub mod peer;
mod ping;

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
    latest: RwLock<Option<Snapshot>>,
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
        latest: Option<Snapshot>,
        store: StateStore,
        channels: Arc<Channels>,
        config: Arc<Config>,
        admin_token: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            latest: RwLock::new(latest),
            metrics,
            channels: RwLock::new(Some(channels)),
            store,
            config: RwLock::new(Some(config)),
            admin_token,
            policies: RwLock::new(None),
            commands: RwLock::new(None),
            peer: RwLock::new(None),
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
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
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

    /// Keeps the newest snapshot: one this process just took, or a newer one another
    /// replica took (read from the store), so every replica answers `/health` alike.
    /// Returns whether it was newer.
    pub fn set_latest(&self, snapshot: Snapshot) -> bool {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        if latest.as_ref().is_some_and(|l| l.checked_at > snapshot.checked_at) {
            return false;
        }
        *latest = Some(snapshot);
        true
    }

    pub fn latest(&self) -> Option<Snapshot> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    let routes = shared.config().map(|c| c.http).unwrap_or_default();
    let mut router = Router::new();
    if routes.status_page {
        router = router.route("/", get(status_page::page));
    }
    if routes.health {
        router = router.route("/health", get(health));
    }
    if routes.metrics {
        router = router.route("/metrics", get(metrics));
    }
    if routes.unsubscribe {
        router = router.route("/unsubscribe", get(unsubscribe::page).post(unsubscribe::confirm));
    }
    if routes.pings {
        router = router
            .route("/ping/{job}", get(ping::success).post(ping::success))
            .route("/ping/{job}/{what}", get(ping::other).post(ping::other));
    }
    if routes.badges {
        router = router.route("/badge/{file}", get(badge::badge));
    }
    router = router.route("/peer/status", get(peer::status)).route("/peer/states", get(peer::states));
    router.merge(api::routes(shared.clone())).fallback(not_found).with_state(shared)
}

/// Any other path: 404 in the admin API's error shape.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("no route {method} {}", uri.path());
    (StatusCode::NOT_FOUND, axum::Json(json!({ "error": { "code": "not_found", "message": message } }))).into_response()
}

/// 200 when operational or degraded; 503 on error or before the first check.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.latest() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unknown", "message": "no check has run yet" })),
        )
            .into_response(),
        Some(snapshot) => {
            let code = if snapshot.status == Status::Error { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            // How old the newest snapshot is: with replicas it may be another replica's.
            let age = (chrono::Utc::now() - snapshot.checked_at).num_milliseconds().max(0) as f64 / 1000.0;
            let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
            if let Some(map) = body.as_object_mut() {
                map.insert("age_seconds".into(), json!(age));
            }
            (code, axum::Json(body)).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = crate::metrics::render(&shared.metrics);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
