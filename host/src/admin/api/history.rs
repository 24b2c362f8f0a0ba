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

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    Pending,
    Delivered,
    Failed,
    Silenced,
    /// A subscriber notice overtaken by a newer status change before it was told.
    Superseded,
}

impl OutboxState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
            OutboxState::Silenced => "silenced",
            OutboxState::Superseded => "superseded",
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
    pub(super) fn as_str(self) -> &'static str {
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
pub(super) async fn outbox(
    State(shared): State<Arc<Shared>>,
    Q(q): Q<OutboxQuery>,
) -> Result<Json<Page<OutboxEntry>>, ApiError> {
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
pub(super) async fn retry(State(shared): State<Arc<Shared>>, P(id): P<i64>) -> Result<Json<Retried>, ApiError> {
    match shared.store.redrive(Some(id)).await? {
        0 => Err(ApiError::new(StatusCode::CONFLICT, "not_failed", format!("outbox row {id} is not a failed row"))),
        _ => Ok(Json(Retried { id, state: "pending".into() })),
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
        let states: Vec<&str> = [Pending, Delivered, Failed, Silenced, Superseded].map(OutboxState::as_str).to_vec();
        assert_eq!(states, OUTBOX_STATES);
    }
}
