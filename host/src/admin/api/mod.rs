//! `/admin/`: the operators' JSON API, behind `Authorization: Bearer <token>` (compared in
//! constant time). Without a configured token every admin route answers 403: warden never
//! serves them unauthenticated. Errors have one shape:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! Each handler carries its `#[utoipa::path]`, and the router is built from those
//! annotations (`utoipa_axum::routes!`), so `GET /admin/openapi.json` describes exactly the
//! routes served. Lists are newest first and paged with `limit` (default 50, at most 500) and
//! `before` (the previous page's `next`). This file: the document, auth, errors, paging; one
//! file per resource beside it (`jobs`, `config`, `history`, `silences`).

mod config;
mod heartbeats;
mod history;
mod jobs;
mod silences;

use std::sync::{Arc, LazyLock};

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{bearer, same_secret};
use super::{CommandError, Shared};
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
        .routes(routes!(jobs::jobs))
        .routes(routes!(jobs::runs))
        .routes(routes!(jobs::run_now))
        .routes(routes!(jobs::pause))
        .routes(routes!(jobs::resume))
        .routes(routes!(heartbeats::heartbeats))
        .routes(routes!(config::policies))
        .routes(routes!(config::enable))
        .routes(routes!(config::reload))
        .routes(routes!(silences::silences, silences::create_silence))
        .routes(routes!(silences::expire_silence))
        .routes(routes!(history::health))
        .routes(routes!(history::outbox))
        .routes(routes!(history::retry))
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
async fn auth(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.admin_token else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start warden with WARDEN_ADMIN_TOKEN or WARDEN_ADMIN_TOKEN_FILE",
        )
        .into_response();
    };
    match bearer(request.headers()) {
        Some(given) if same_secret(given, token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <token>")
            .into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
