//! What happened: health history and the outbox (and retrying a failed row).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, P, Page, Q, limit};
use crate::admin::Shared;
use crate::health::Snapshot;
use crate::store::OutboxEntry;

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
pub(super) async fn health(
    State(shared): State<Arc<Shared>>,
    Q(q): Q<HealthQuery>,
) -> Result<Json<Page<HealthEntry>>, ApiError> {
    let limit = limit(q.limit)?;
    let rows = shared.store.health_page(q.from, q.to, limit, q.before).await?;
    let items = rows.into_iter().map(|(id, snapshot)| HealthEntry { id, snapshot }).collect();
    Ok(Page::new(items, limit, |h| h.id))
}

pub use crate::base::{OutboxKind, OutboxState};

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
pub(super) async fn outbox(
    State(shared): State<Arc<Shared>>,
    Q(q): Q<OutboxQuery>,
) -> Result<Json<Page<OutboxEntry>>, ApiError> {
    let limit = limit(q.limit)?;
    let rows = shared.store.outbox_page(q.state, limit, q.before).await?;
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
pub(super) async fn retry(State(shared): State<Arc<Shared>>, P(id): P<i64>) -> Result<Json<Retried>, ApiError> {
    match shared.store.redrive(Some(id)).await? {
        0 => Err(ApiError::new(StatusCode::CONFLICT, "not_failed", format!("outbox row {id} is not a failed row"))),
        _ => Ok(Json(Retried { id, state: "pending".into() })),
    }
}
