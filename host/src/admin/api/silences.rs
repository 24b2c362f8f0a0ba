//! Silences (create, list, expire) and the configured maintenance windows.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, P, Q};
use crate::admin::Shared;
use chrono::Datelike;

use super::history::OutboxKind;
use crate::base::Matchers;
use crate::store::Silence;

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
pub(super) async fn silences(
    State(shared): State<Arc<Shared>>,
    Q(q): Q<SilencesQuery>,
) -> Result<Json<SilenceList>, ApiError> {
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
pub(super) async fn create_silence(
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
    // PostgreSQL text cannot hold NUL; refuse it here rather than fail in the store.
    let texts = [("job", &new.job), ("policy", &new.policy), ("created_by", &new.created_by)];
    let nul = texts.iter().find(|(_, t)| t.as_deref().is_some_and(|t| t.contains('\0'))).map(|(f, _)| *f);
    if let Some(field) = nul.or(new.comment.contains('\0').then_some("comment")) {
        return Err(bad(format!("`{field}` holds a NUL character")));
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
    let matchers = Matchers { job: new.job, policy: new.policy, kind: new.kind };
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
pub(super) async fn expire_silence(
    State(shared): State<Arc<Shared>>,
    P(id): P<i64>,
) -> Result<Json<Expired>, ApiError> {
    if shared.store.expire_silence(id).await? {
        tracing::info!(id, "silence expired");
        Ok(Json(Expired { id, expired: true }))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no running silence {id}")))
    }
}
