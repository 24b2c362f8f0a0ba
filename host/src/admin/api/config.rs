//! What runs: the loaded policies (and lifting a quarantine), and reloading the configuration.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, Items, P, starting, stopping};
use crate::admin::{Command, Shared};
use crate::runtime::EvaluationSummary;

/// A loaded policy plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyStatus {
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
    responses((status = 200, description = "Every policy", body = Items<PolicyStatus>)))]
pub(super) async fn policies(State(shared): State<Arc<Shared>>) -> Result<Json<Items<PolicyStatus>>, ApiError> {
    let set = shared.policies().ok_or_else(starting)?;
    let items = set
        .policies
        .iter()
        .map(|p| PolicyStatus {
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
pub(super) async fn enable(State(shared): State<Arc<Shared>>, P(name): P<String>) -> Result<Json<Enabled>, ApiError> {
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
pub(super) async fn reload(State(shared): State<Arc<Shared>>) -> Result<Json<Reloaded>, ApiError> {
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
