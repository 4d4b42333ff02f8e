//! The optional admin listener (`admin.listen`): `/healthz` for load balancers and
//! supervisors, `/metrics` in Prometheus text format. Row counts, pauses and budgets are read
//! from the database at scrape time (the truth, and free while nobody scrapes); counters and
//! histograms come from the `metrics` recorder the scheduler writes to.

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

pub mod ui;

/// Poll latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Clone)]
struct AdminState {
    store: Store,
    /// The config in force: SIGHUP replaces it, and the budgets shown follow.
    cfg: watch::Receiver<Config>,
    health: SharedHealth,
    prometheus: Option<PrometheusHandle>,
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

/// Binds `addr` and serves until `shutdown`. Binding errors are returned so `run` can
/// exit 2 naming `admin.listen`. `cfg` follows reloads.
pub async fn serve(
    addr: SocketAddr,
    store: Store,
    cfg: watch::Receiver<Config>,
    health: SharedHealth,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let state = AdminState {
        store,
        cfg,
        health,
        prometheus,
    };
    let dashboard = ui::router(state.store.clone(), state.cfg.clone());
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(dashboard);
    Ok(tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin listener failed");
        }
    }))
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.db_failing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database writes are failing\n".to_owned(),
        );
    }
    match s.store.pauses().await {
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
