//! The peer endpoint replicas ask each other while the state store is unreachable:
//! `GET /peer/status` (this replica's id, whether it reaches the store, how many runs wait
//! in its spool, its newest snapshot) and `GET /peer/states` (every policy state it knows,
//! with the occurrence each is as of). Guarded by the peer token the replicas share in the
//! store; absent (404) without one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::auth::{bearer, same_secret};
use crate::health::Snapshot;
use crate::store::Spool;

/// What this replica shows its peers.
#[derive(Debug)]
pub struct PeerView {
    pub id: String,
    pub token: String,
    pub spool: Spool,
    /// Whether this replica's last contact with the store succeeded.
    pub store_up: AtomicBool,
}

/// `GET /peer/status`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: String,
    pub store_up: bool,
    pub spool_runs: usize,
    pub latest: Option<Snapshot>,
}

/// `GET /peer/states`' answer: `policy/job` → state (with `warden:decided`).
pub type PeerStates = HashMap<String, std::collections::BTreeMap<String, String>>;

fn authorized(shared: &Shared, request: &Request) -> Result<Arc<PeerView>, StatusCode> {
    let Some(view) = shared.peer() else { return Err(StatusCode::NOT_FOUND) };
    match bearer(request.headers()) {
        Some(given) if same_secret(given, &view.token) => Ok(view),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

pub async fn status(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match authorized(&shared, &request) {
        Ok(view) => axum::Json(PeerStatus {
            id: view.id.clone(),
            store_up: view.store_up.load(Ordering::SeqCst),
            spool_runs: view.spool.len(),
            latest: shared.latest(),
        })
        .into_response(),
        Err(code) => code.into_response(),
    }
}

pub async fn states(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match authorized(&shared, &request) {
        Ok(view) => axum::Json::<PeerStates>(view.spool.known_states()).into_response(),
        Err(code) => code.into_response(),
    }
}
