//! The operator dashboard: `GET /` and its assets, compiled into the binary (no CDN, no
//! Node: plain HTML, CSS and one vanilla JS file that reads `/api/v1/*` with `fetch`).
//! Every page carries a strict Content-Security-Policy: scripts and styles only from this
//! origin, no inline script, no framing, requests only to this origin.
//!
//! One read-only endpoint of its own, for what `/api/v1` does not carry in one answer:
//! `GET /ui/overview.json` (completions per minute over the last hour for the chart, from the
//! API's `finished_per_minute`; the configured concurrency; the latest failures newest first,
//! `store/dashboard.rs`). It sits behind the same auth as the rest of the listener. Failure
//! groups come from `GET /api/v1/failures`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AdminState;
use crate::clock;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const FAVICON_SVG: &str = include_str!("ui/favicon.svg");

/// `connect-src 'self'` keeps `fetch` on this origin; `form-action 'none'` because no form
/// is ever submitted (the JS handles them); `frame-ancestors 'none'` against clickjacking.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// How far back the throughput chart looks.
const CHART_SPAN: Duration = Duration::from_secs(3600);
/// Failed rows on the overview.
const LATEST_FAILURES: u32 = 10;

/// The dashboard's routes, merged into the admin router behind its authentication.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/favicon.svg", get(favicon))
        .route("/ui/overview.json", get(overview))
}

/// A static asset with its type and the headers every dashboard answer carries. `no-cache`
/// (revalidate) so an upgraded daemon's assets are picked up at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(h);
    r
}

fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// A JSON answer with the dashboard's headers; never cached (it is live data).
fn json_answer(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, axum::Json(v)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure_headers(r.headers_mut());
    r
}

fn db_error(e: impl std::fmt::Display) -> Response {
    json_answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": format!("database: {e}")}),
    )
}

/// Completions per minute for the last hour (oldest first, one entry per minute, zeros
/// included), the configured concurrency per lane and the latest failed rows.
async fn overview(State(s): State<AdminState>) -> Response {
    let now = SystemTime::now();
    let since = now
        .checked_sub(CHART_SPAN)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let per_minute: Vec<(String, i64)> = match s.store.finished_per_minute(since).await {
        Ok(v) => v
            .into_iter()
            .map(|m| (crate::store::state::minute_text(m.minute), m.completed))
            .collect(),
        Err(e) => return db_error(e),
    };
    let latest = match s.store.latest_failed(LATEST_FAILURES).await {
        Ok(v) => v,
        Err(e) => return db_error(e),
    };
    let minutes = minute_series(&per_minute, now);
    let limits = s.cfg.borrow().limits.clone();
    json_answer(
        StatusCode::OK,
        json!({
            "throughput": {
                "since": clock::iso(since),
                "minute_starts": minutes.iter().map(|(m, _)| m).collect::<Vec<_>>(),
                "completed": minutes.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            },
            "slots": {
                "import": limits.import.concurrent,
                "metadata": limits.metadata.concurrent,
            },
            "latest_failures": latest,
        }),
    )
}

/// The 60 minutes ending with the current one, each with its completions (0 when absent
/// from `counts`), as `("2026-12-07T01:32", n)`.
fn minute_series(counts: &[(String, i64)], now: SystemTime) -> Vec<(String, i64)> {
    let by_minute: BTreeMap<&str, i64> = counts.iter().map(|(m, n)| (m.as_str(), *n)).collect();
    let minutes = CHART_SPAN.as_secs() / 60;
    (0..minutes)
        .rev()
        .map(|back| {
            let t = now
                .checked_sub(Duration::from_secs(back * 60))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let m: String = clock::iso(t).chars().take(16).collect();
            let n = by_minute.get(m.as_str()).copied().unwrap_or(0);
            (m, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_series_fills_gaps_and_ends_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let this: String = clock::iso(now).chars().take(16).collect();
        let two_ago: String = clock::iso(now - Duration::from_secs(120))
            .chars()
            .take(16)
            .collect();
        let s = minute_series(&[(two_ago.clone(), 3), (this.clone(), 5)], now);
        assert_eq!(s.len(), 60);
        assert_eq!(s[59], (this, 5));
        assert_eq!(s[57], (two_ago, 3));
        assert_eq!(s[58].1, 0);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<i64>(), 8);
    }

    /// ` onclick=`, ` onload=`...: an attribute starting with "on" and letters, then `=`.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn assets_have_no_inline_script_or_remote_urls() {
        // The CSP forbids inline script; a stray one would silently not run.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!has_inline_handler(INDEX_HTML), "no inline event handlers");
        for a in [INDEX_HTML, APP_JS, APP_CSS] {
            // The SVG namespace is a name, not a request.
            let a = a.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !a.contains("http://") && !a.contains("https://"),
                "no remote URLs"
            );
        }
    }
}
