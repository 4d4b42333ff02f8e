//! HTTP layer: routes, extraction of what the API reads, and rendering of a `Reply`.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxumState};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::AUTHORIZATION};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::io::ReaderStream;

use super::bucket::format_window;
use super::reply::{GARBAGE_BODY, Payload, Reply};
use super::state::{Endpoint, Input, Request, State, now_ms};
use super::webhook;

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
    let (reply, deliveries, sender) = {
        let mut st = lock(shared);
        let reply = st.handle(&req, now_ms());
        (reply, st.take_deliveries(), st.hooks().clone())
    };
    for d in deliveries {
        webhook::spawn(d, &sender);
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    render(reply)
}

/// How much of an oversized answer goes out per write.
const PAD_CHUNK: usize = 64 * 1024;

/// A body written by a task of its own through a small pipe, so a huge or slow answer never
/// sits in memory whole. The task ends when the client hangs up (its writes then fail).
fn piped<F, Fut>(write: F) -> Body
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (reader, writer) = tokio::io::duplex(PAD_CHUNK);
    let write = write(writer);
    tokio::spawn(async move {
        // A client that hung up ends the write with an error: nothing to report.
        let _ = write.await;
    });
    Body::from_stream(ReaderStream::new(reader))
}

/// `head`, `pad` bytes of `x`, `tail`, written a chunk at a time.
async fn oversized(
    mut w: DuplexStream,
    head: String,
    pad: u64,
    tail: String,
) -> std::io::Result<()> {
    w.write_all(head.as_bytes()).await?;
    let chunk = [b'x'; PAD_CHUNK];
    let mut left = pad;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(PAD_CHUNK).min(PAD_CHUNK);
        w.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    w.write_all(tail.as_bytes()).await?;
    w.shutdown().await
}

/// `body` a byte at a time, the bytes spread evenly over `over`.
async fn trickled(mut w: DuplexStream, body: Vec<u8>, over: Duration) -> std::io::Result<()> {
    let step = over / u32::try_from(body.len().max(1)).unwrap_or(u32::MAX);
    for b in body {
        tokio::time::sleep(step).await;
        w.write_all(&[b]).await?;
        w.flush().await?;
    }
    w.shutdown().await
}

fn render(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (content_type, text) = match &reply.payload {
        Payload::Json(v) => ("application/json", v.to_string()),
        Payload::Garbage => ("text/html", GARBAGE_BODY.to_owned()),
        Payload::Oversized { .. } => ("application/json", String::new()),
    };
    let body = match (reply.payload, reply.trickle) {
        (Payload::Oversized { head, pad, tail }, _) => {
            piped(move |w| oversized(w, head, pad, tail))
        }
        (_, Some(over)) => piped(move |w| trickled(w, text.into_bytes(), over)),
        _ => Body::from(text),
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
