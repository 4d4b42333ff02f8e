//! The optional admin listener (`admin.listen`): `/healthz` for load balancers and
//! supervisors, `/metrics` in Prometheus text format, the operator API under `/api/v1`
//! ([`api`]) and the dashboard ([`ui`]), behind [`auth`]. Row counts, pauses and budgets are read
//! from the database at scrape time (the truth, and free while nobody scrapes); counters and
//! histograms come from the `metrics` recorder the scheduler writes to.

pub mod api;
mod auth;
mod openapi;
pub mod token;
pub mod ui;

use std::net::SocketAddr;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::SharedHealth;
use crate::limits::Budget;
use crate::store::Store;

/// Poll latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// What every handler of the admin listener shares (the dashboard's too).
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// The config in force: SIGHUP replaces it, and the budgets shown follow.
    pub cfg: watch::Receiver<Config>,
    health: SharedHealth,
    prometheus: Option<PrometheusHandle>,
    /// The operator token, re-read when the config is reloaded.
    token: token::SharedToken,
    /// The address listened on, the origin a change may come from.
    listen: SocketAddr,
}

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration mistake: `run` exits 2 with this message (it names the key).
    #[error("{0}")]
    Config(String),
}

/// Installs the global metrics recorder. Returns `None` if one is installed already (a
/// second daemon in the same process, as tests do): metrics then go to the first one.
pub fn install_recorder() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()
}

/// Binds `addr` and serves until `shutdown`. Errors name the config key at fault, so `run`
/// can exit 2: an unreadable token, a non-loopback `addr` without a token, a failed bind.
/// `cfg` follows reloads; the token is re-read with each.
pub async fn serve(
    addr: SocketAddr,
    store: Store,
    cfg: watch::Receiver<Config>,
    health: SharedHealth,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let first = token::load(&cfg.borrow()).map_err(StartError::Config)?;
    if first.is_none() && !addr.ip().is_loopback() {
        return Err(StartError::Config(format!(
            "config key `admin.listen`: {addr} is not a loopback address, and no admin token \
             is configured (admin.token_file or the credential {}): listen on 127.0.0.1, or \
             set a token",
            token::CREDENTIAL_NAME
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        StartError::Config(format!(
            "config key `admin.listen`: cannot listen on {addr}: {e}"
        ))
    })?;
    let token = token::SharedToken::new(first);
    tokio::spawn(follow_reloads(
        cfg.clone(),
        token.clone(),
        addr,
        shutdown.clone(),
    ));
    let state = AdminState {
        store,
        cfg,
        health,
        prometheus,
        token,
        listen: addr,
    };
    let app = router(state);
    Ok(tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin listener failed");
        }
    }))
}

/// Every route, behind the guard.
fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api::router())
        .merge(ui::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// Re-reads the token each time the config is reloaded (SIGHUP publishes a new config even
/// when it is unchanged). An unreadable token keeps the old one; so does a token removed
/// while listening on a non-loopback address (the API would be open to the network).
async fn follow_reloads(
    mut cfg: watch::Receiver<Config>,
    token: token::SharedToken,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = cfg.changed() => if changed.is_err() { return },
        }
        let loaded = token::load(&cfg.borrow_and_update());
        match loaded {
            Ok(Some(t)) => {
                token.replace(Some(t));
                tracing::info!("admin token re-read");
            }
            Ok(None) if !addr.ip().is_loopback() => tracing::warn!(
                "no admin token any more; keeping the old one: admin.listen is not loopback"
            ),
            Ok(None) => token.replace(None),
            Err(e) => tracing::warn!("{e}; keeping the admin token in force"),
        }
    }
}

/// How long `/healthz` waits for its read of the database. An unreachable PostgreSQL makes
/// a read wait out the pool's acquire timeout (10 s), and the daemon's own writes notice it
/// only after that too: a health check must answer before a load balancer gives up on it.
const HEALTH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.db_failing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database writes are failing\n".to_owned(),
        );
    }
    let Ok(read) = tokio::time::timeout(HEALTH_READ_TIMEOUT, s.store.pauses()).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreadable: no answer within {HEALTH_READ_TIMEOUT:?}\n"),
        );
    };
    match read {
        Ok(p) if p.is_empty() => (StatusCode::OK, "ok\n".to_owned()),
        Ok(p) => {
            let reasons: Vec<String> = p
                .iter()
                .map(|p| format!("{}: {}", p.scope, p.reason))
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("paused ({})\n", reasons.join("; ")),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreadable: {e}\n"),
        ),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut out = String::new();
    if let Ok(counts) = s.store.status_counts().await {
        out.push_str(
            "# HELP importlyd_rows Rows in the queue per state.\n# TYPE importlyd_rows gauge\n",
        );
        for (state, n) in &counts.counts {
            out.push_str(&format!("importlyd_rows{{state=\"{state}\"}} {n}\n"));
        }
    }
    if let Ok(p) = s.store.pauses().await {
        out.push_str("# HELP importlyd_paused 1 while a 401/402 pause is in force, per scope.\n# TYPE importlyd_paused gauge\n");
        for scope in ["all", "import", "metadata"] {
            let on = p.iter().any(|p| p.scope == scope);
            out.push_str(&format!(
                "importlyd_paused{{scope=\"{scope}\"}} {}\n",
                u8::from(on)
            ));
        }
    }
    if let Ok(stored) = s.store.buckets().await {
        let now = SystemTime::now();
        let limits = s.cfg.borrow().limits.clone();
        out.push_str("# HELP importlyd_budget_remaining Requests left in the current window per bucket.\n# TYPE importlyd_budget_remaining gauge\n");
        for (name, limit) in [
            ("import", &limits.import),
            ("status", &limits.status),
            ("metadata", &limits.metadata),
        ] {
            let mut b = Budget::new(name, limit, now);
            b.restore(&stored, now);
            let v = b.view(now);
            out.push_str(&format!(
                "importlyd_budget_remaining{{bucket=\"{name}\"}} {}\n",
                v.remaining
            ));
        }
    }
    if let Some(h) = &s.prometheus {
        out.push_str(&h.render());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
