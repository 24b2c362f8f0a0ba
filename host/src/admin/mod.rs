//! The HTTP endpoint: `GET /health`, `GET /metrics`, the unsubscribe page of the
//! subscriber notices (`unsubscribe.rs`), and the token-protected JSON API under `/admin/`
//! (`api.rs`).
//!
//! Architecture invariant: `/health` and `/metrics` read in-memory state only (the latest
//! snapshot and the metrics registry), so they keep answering while the state store is
//! down. The unsubscribe handler writes only the opt-out; `/admin/` reads the store and
//! writes only what an operator asks for.

mod api;
mod unsubscribe;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::config::Config;
use crate::delivery::Channels;
use crate::health::{Snapshot, Status};
use crate::store::StateStore;

/// What the daemon shares with the HTTP handlers.
pub struct Shared {
    latest: RwLock<Option<Snapshot>>,
    metrics: PrometheusHandle,
    /// The delivery channels (signing key, opt-out statement), replaced on reload.
    channels: RwLock<Option<Arc<Channels>>>,
    store: Option<StateStore>,
    /// The configuration now running (jobs and their schedules), replaced on reload.
    config: RwLock<Option<Arc<Config>>>,
    /// The bearer token of `/admin/`; without one the admin routes are off.
    admin_token: Option<String>,
}

impl Shared {
    pub fn new(metrics: PrometheusHandle, latest: Option<Snapshot>) -> Arc<Self> {
        Arc::new(Self {
            latest: RwLock::new(latest),
            metrics,
            channels: RwLock::new(None),
            store: None,
            config: RwLock::new(None),
            admin_token: None,
        })
    }

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
            store: Some(store),
            config: RwLock::new(Some(config)),
            admin_token,
        })
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

    pub fn set_latest(&self, snapshot: Snapshot) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }

    pub fn latest(&self) -> Option<Snapshot> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/unsubscribe", get(unsubscribe::page).post(unsubscribe::confirm))
        .merge(api::routes(shared.clone()))
        .with_state(shared)
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
            (code, axum::Json(snapshot)).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
