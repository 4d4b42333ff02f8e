//! `/api/v1`: the operator verbs of `crate::service` as JSON, in the shapes of the CLI's
//! `--json`. The router is built from [`table`], which the OpenAPI test reads too.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::cli::TicketFormat;
use crate::service::{self, ServiceError, Source};

/// Every API route: method, path (axum's and OpenAPI's `{param}` syntax), handler.
fn table() -> Vec<(&'static str, &'static str, MethodRouter<AdminState>)> {
    vec![
        ("get", "/api/v1/status", get(status)),
        ("get", "/api/v1/rows", get(rows)),
        ("get", "/api/v1/rows/{id}", get(row)),
        ("get", "/api/v1/rows/{id}/ticket", get(ticket)),
        ("get", "/api/v1/audit", get(audit)),
        ("post", "/api/v1/rows/{id}/retry", post(retry_one)),
        ("post", "/api/v1/rows/{id}/cancel", post(cancel_one)),
        ("post", "/api/v1/retry", post(bulk_retry)),
        ("post", "/api/v1/resume", post(resume)),
        ("get", "/api/v1/openapi.json", get(openapi)),
    ]
}

/// `(method, path)` of every route the router serves.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub fn router() -> Router<AdminState> {
    table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
}

/// A service error as HTTP: the caller's mistakes 400/404, faults 500 (logged).
struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "admin API: database error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

async fn status(State(s): State<AdminState>) -> ApiResult {
    let cfg = s.cfg.borrow().clone();
    let v = service::status(&s.store, &cfg).await?;
    Ok(Json(v.to_json()).into_response())
}

#[derive(Deserialize)]
struct RowsQuery {
    state: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
}

async fn rows(State(s): State<AdminState>, Query(q): Query<RowsQuery>) -> ApiResult {
    let state = q.state.filter(|s| !s.is_empty());
    let page = service::rows(&s.store, state, q.q, q.limit, q.after).await?;
    Ok(Json(page).into_response())
}

async fn row(State(s): State<AdminState>, Path(id): Path<i64>) -> ApiResult {
    Ok(Json(service::show(&s.store, id).await?.to_json()).into_response())
}

#[derive(Deserialize)]
struct TicketQuery {
    format: Option<String>,
}

async fn ticket(
    State(s): State<AdminState>,
    Path(id): Path<i64>,
    Query(q): Query<TicketQuery>,
) -> ApiResult {
    let (format, content_type) = match q.format.as_deref().unwrap_or("text") {
        "text" => (TicketFormat::Text, "text/plain; charset=utf-8"),
        "markdown" => (TicketFormat::Markdown, "text/markdown; charset=utf-8"),
        "json" => (TicketFormat::Json, "application/json"),
        other => {
            return Err(ServiceError::BadRequest(format!(
                "unknown format {other:?}: text, markdown or json"
            ))
            .into());
        }
    };
    let cfg = s.cfg.borrow().clone();
    let t = service::ticket(&s.store, &cfg, id).await?;
    let body = crate::cli::ticket::render(&t, format);
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(State(s): State<AdminState>, Query(q): Query<AuditQuery>) -> ApiResult {
    Ok(Json(service::audit(&s.store, q.limit).await?).into_response())
}

/// 200 when the row was acted on, 404 when it does not exist, 409 when its state does not
/// allow the action (the report says why).
fn action_answer(r: service::ActionReport) -> Response {
    let status = match r.skipped.first() {
        None => StatusCode::OK,
        Some(s) if s.state.is_none() => StatusCode::NOT_FOUND,
        Some(_) => StatusCode::CONFLICT,
    };
    (status, Json(r)).into_response()
}

async fn retry_one(State(s): State<AdminState>, Path(id): Path<i64>) -> ApiResult {
    let r = service::retry(&s.store, &[id], false, None, Source::Api).await?;
    Ok(action_answer(r))
}

async fn cancel_one(State(s): State<AdminState>, Path(id): Path<i64>) -> ApiResult {
    let r = service::cancel(&s.store, &[id], Source::Api).await?;
    Ok(action_answer(r))
}

#[derive(Deserialize)]
struct BulkQuery {
    state: Option<String>,
    q: Option<String>,
}

async fn bulk_retry(State(s): State<AdminState>, Query(q): Query<BulkQuery>) -> ApiResult {
    let r = service::bulk_retry(&s.store, q.state.as_deref(), q.q.as_deref(), Source::Api).await?;
    Ok(Json(r).into_response())
}

async fn resume(State(s): State<AdminState>) -> ApiResult {
    Ok(Json(service::resume(&s.store, Source::Api).await?).into_response())
}

async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The OpenAPI document describes exactly the routes the router serves.
    #[test]
    fn openapi_lists_every_route_and_no_other() {
        let doc = super::super::openapi::document();
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                described.insert((method.clone(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = super::routes()
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(described, served);
    }
}
