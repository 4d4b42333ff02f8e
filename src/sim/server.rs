//! HTTP layer: routes, extraction of what the API reads, and rendering of a `Reply`.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxumState};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::AUTHORIZATION};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::bucket::format_window;
use super::reply::{GARBAGE_BODY, Payload, Reply};
use super::state::{Endpoint, Input, Request, State, now_ms};

pub(crate) type Shared = Arc<Mutex<State>>;

/// Locks the state, recovering from a poisoned mutex: the state stays usable for a test
/// even if a handler panicked, which would otherwise turn every later request into a panic.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/import", post(import_start))
        .route("/import/status", get(import_status))
        .route("/metadata", post(metadata_post).get(metadata_get))
        .route("/metadata/status", get(metadata_status))
        .route("/_sim/stats", get(sim_stats))
        .with_state(shared)
}

#[derive(Deserialize)]
struct IdParam {
    id: Option<String>,
}

#[derive(Deserialize)]
struct UrlParam {
    url: Option<String>,
}

async fn import_start(st: AxumState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    respond(&st, Endpoint::ImportStart, &headers, Input::Body(body)).await
}

async fn metadata_post(st: AxumState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    respond(&st, Endpoint::MetadataStart, &headers, Input::Body(body)).await
}

async fn metadata_get(
    st: AxumState<Shared>,
    headers: HeaderMap,
    q: Result<Query<UrlParam>, QueryRejection>,
) -> Response {
    let url = q.ok().and_then(|Query(p)| p.url);
    respond(&st, Endpoint::MetadataStart, &headers, Input::Param(url)).await
}

async fn import_status(
    st: AxumState<Shared>,
    headers: HeaderMap,
    q: Result<Query<IdParam>, QueryRejection>,
) -> Response {
    let id = q.ok().and_then(|Query(p)| p.id);
    respond(&st, Endpoint::ImportStatus, &headers, Input::Param(id)).await
}

async fn metadata_status(
    st: AxumState<Shared>,
    headers: HeaderMap,
    q: Result<Query<IdParam>, QueryRejection>,
) -> Response {
    let id = q.ok().and_then(|Query(p)| p.id);
    respond(&st, Endpoint::MetadataStatus, &headers, Input::Param(id)).await
}

/// Out-of-band counters for tools outside the process; touches no bucket and needs no key.
async fn sim_stats(AxumState(shared): AxumState<Shared>) -> Response {
    let stats = lock(&shared).stats(now_ms());
    axum::Json(stats).into_response()
}

async fn respond(
    shared: &Shared,
    endpoint: Endpoint,
    headers: &HeaderMap,
    input: Input,
) -> Response {
    let auth = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let req = Request {
        endpoint,
        auth,
        input,
    };
    // Decide (and change state) before any delay, so a client that gives up on a slow answer
    // has still created its job, as with a real server.
    let reply = lock(shared).handle(&req, now_ms());
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    render(reply)
}

fn render(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (content_type, body) = match &reply.payload {
        Payload::Json(v) => ("application/json", Body::from(v.to_string())),
        Payload::Garbage => ("text/html", Body::from(GARBAGE_BODY)),
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let rate = reply.rate;
    let numbers = [
        ("x-ratelimit-limit", rate.limit),
        ("x-ratelimit-remaining", rate.remaining),
        ("x-ratelimit-reset", rate.reset_secs()),
    ];
    for (name, value) in numbers {
        h.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    let texts = [
        ("x-ratelimit-window", format_window(rate.window_ms)),
        ("x-ratelimit-plan", reply.plan),
    ];
    for (name, value) in texts {
        // A plan text that is not a valid header value is left out rather than failing.
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(secs) = reply.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
