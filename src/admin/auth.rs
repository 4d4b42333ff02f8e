//! Who may do what on the admin listener. `/healthz` and `/metrics` are open (load
//! balancers and Prometheus carry no token). Everything else:
//! - with a token configured, needs it: HTTP Basic (any user, the token as password) or
//!   `Authorization: Bearer`; missing or wrong is 401 with `WWW-Authenticate: Basic`;
//! - without one, reads are open (the listener is loopback-only then) and every change is
//!   403: nobody can be told apart;
//! - a change (any method but GET/HEAD) from another site is 403, token or not: a browser
//!   that holds the operator's Basic credentials would send them with a forged form.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::AdminState;

/// The paths open to anyone.
const OPEN: [&str; 2] = ["/healthz", "/metrics"];

pub async fn guard(State(s): State<AdminState>, req: Request<Body>, next: Next) -> Response {
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes && let Err(why) = same_origin(req.headers(), &s) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    if s.token.is_set() {
        if !authorized(req.headers(), &s) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"importlyd\"")],
                axum::Json(serde_json::json!({"error": "the admin token is needed"})),
            )
                .into_response();
        }
    } else if !loopback_host(req.headers()) {
        // Without a token only local pages may read: a page on another site whose name
        // was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host.
        return refuse(
            StatusCode::FORBIDDEN,
            "without a token, use a loopback address",
        );
    } else if changes {
        return refuse(
            StatusCode::FORBIDDEN,
            "read-only: no admin token is configured (admin.token_file)",
        );
    }
    next.run(req).await
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": why}))).into_response()
}

/// Whether `Host` names this machine by a loopback address or `localhost` (or is absent).
fn loopback_host(h: &HeaderMap) -> bool {
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Basic with the token as password, or Bearer with the token.
fn authorized(h: &HeaderMap, s: &AdminState) -> bool {
    let Some(value) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return s.token.matches(rest.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        // user:password; the user is anything.
        return match decoded.iter().position(|&b| b == b':') {
            Some(i) => s.token.matches(&decoded[i + 1..]),
            None => false,
        };
    }
    false
}

/// A change must come from this listener's own pages: `Sec-Fetch-Site` (sent by every
/// current browser) must not say `cross-site` or `same-site`, and an `Origin` must be this
/// listener's address or the host the request was sent to (a reverse proxy in front that
/// passes `Host` on). Tools like curl send neither header and pass.
fn same_origin(h: &HeaderMap, s: &AdminState) -> Result<(), &'static str> {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site.trim(), "cross-site" | "same-site")
    {
        return Err("cross-site request refused");
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let own = format!("http://{}", s.listen);
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let by_host = host.is_some_and(|host| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(host)
    });
    if origin == own || by_host {
        Ok(())
    } else {
        Err("request from another origin refused")
    }
}
