//! `importlyd run`: the daemon in the foreground. Signals: SIGTERM/SIGINT stop it cleanly,
//! SIGHUP re-reads the config and the key (an invalid config is logged and ignored).

use std::path::PathBuf;

use sd_notify::NotifyState;
use secrecy::SecretString;

use super::systemd::{notifier, notify};
use crate::health::Health;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{CmdResult, Failure, logging};
use crate::apikey;
use crate::config::Config;
use crate::importly::Client;
use crate::scheduler::{Control, Scheduler};
use crate::store::{DaemonLock, Store};
use crate::webhook::Hooks;

pub async fn run(cfg: Config, cfg_path: Option<PathBuf>) -> CmdResult {
    // Before anything that can take time (the key, the lock, opening and migrating the
    // database): until a handler is registered, SIGTERM's default action kills the process,
    // and a stop right after a start must still be a clean exit 0. A signal that comes
    // before the watcher below runs is kept by its stream and seen at its first poll.
    let signals = Signals::install().map_err(|e| Failure {
        code: 1,
        message: format!("cannot install signal handlers: {e}"),
    })?;
    logging::init(&cfg.log);
    // A write past the file size limit (RLIMIT_FSIZE) raises SIGXFSZ, whose default action
    // kills the process. With a handler installed the write fails with EFBIG instead, which
    // SQLite reports as a full disk: the daemon then waits and retries as for one. (tokio
    // keeps a handler installed once registered, so the stream itself can go.)
    if let Err(e) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
        tracing::warn!(error = %e, "cannot catch SIGXFSZ");
    }
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(4);
    // The config in force, for the admin listener; SIGHUP publishes a new one.
    let (cfg_tx, cfg_rx) = watch::channel(cfg.clone());
    let signals = tokio::spawn(watch_signals(
        signals,
        shutdown.clone(),
        tx,
        cfg_path,
        cfg_tx,
    ));
    let (key, key_source) =
        apikey::load_with_source(&cfg).map_err(|e| Failure::usage(e.to_string()))?;
    tracing::info!(source = %key_source, "API key loaded");
    warn_ignored_key_file(&cfg, &key_source);
    // One daemon per database: a second would reset the first one's rows. Held until exit.
    let lock = DaemonLock::for_daemon(&cfg.database).map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })?;
    let store = Store::open(&cfg.database).await?;
    if let Err(e) = store
        .register_daemon(lock.info.clone(), cfg.cluster.lease)
        .await
    {
        tracing::warn!(error = %e, "cannot record this daemon yet; its heartbeat will");
    }
    let client = Client::new(&cfg.api.base_url, key, cfg.api.request_timeout)
        .map_err(|e| Failure::usage(format!("config key `api.base_url`: {e}")))?;
    // The notifier reads `poll.queue_interval` from it (SIGHUP may change it).
    let cfg_rx_notifier = cfg_rx.clone();
    let health = Health::new();
    let admin = start_admin(&cfg, cfg_rx, &store, &health, &shutdown).await?;
    let webhooks = start_webhooks(&cfg, &shutdown).await?;
    tracing::info!(
        database = %store.describe(),
        base_url = %crate::importly::redact_url(&cfg.api.base_url),
        version = env!("CARGO_PKG_VERSION"),
        "importlyd started"
    );
    // READY only once the scheduler says start-up recovery ran: migrations ran, the
    // database opened and took writes, and the key was found. STATUS and WATCHDOG follow.
    let (ready_tx, ready_rx) = oneshot::channel();
    let status = tokio::spawn({
        let (store, health, shutdown) = (store.clone(), health.clone(), shutdown.clone());
        let current = cfg_rx_notifier;
        async move {
            if ready_rx.await.is_ok() {
                notify(&[NotifyState::Ready]);
            }
            notifier(store, health, shutdown, current).await;
        }
    });
    let mut scheduler = Scheduler::new(cfg, store.clone(), client, shutdown.clone())
        .with_health(health)
        .with_ready(ready_tx);
    if let Some((hooks, deliveries)) = webhooks {
        scheduler = scheduler.with_webhooks(hooks, deliveries);
    }
    // Kept alive for the whole run: a new row wakes the scheduler at once.
    let _watch = store.watch(scheduler.db_changed());
    let result = scheduler.run(rx).await;
    // The notifier sends STOPPING=1 once the token is cancelled (a signal did that already,
    // unless the scheduler itself failed).
    shutdown.cancel();
    signals.abort();
    let _ = status.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Err(e) = store.daemon_stopped().await {
        tracing::warn!(error = %e, "cannot record this daemon's stop");
    }
    store.close().await;
    drop(lock);
    result.map_err(|e| Failure {
        code: 1,
        message: format!("{e:#}"),
    })?;
    tracing::info!("importlyd stopped");
    Ok(())
}

/// Starts the admin listener when `admin.listen` is set.
async fn start_admin(
    cfg: &Config,
    current: watch::Receiver<Config>,
    store: &Store,
    health: &crate::health::SharedHealth,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, Failure> {
    if cfg.admin.listen.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = cfg
        .admin
        .listen
        .parse()
        .map_err(|e| Failure::usage(format!("config key `admin.listen`: {e}")))?;
    let prometheus = crate::admin::install_recorder();
    let handle = crate::admin::serve(
        addr,
        store.clone(),
        current,
        health.clone(),
        prometheus,
        shutdown.clone(),
    )
    .await
    .map_err(|e| Failure::usage(e.to_string()))?;
    tracing::info!(%addr, "admin listener: /healthz, /metrics, /api/v1");
    Ok(Some(handle))
}

/// Starts the webhook receiver on `webhook.listen` when `webhook.public_url` is set; it
/// stops with `shutdown`. The hooks and the deliveries' channel go to the scheduler.
async fn start_webhooks(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<(Hooks, mpsc::Receiver<i64>)>, Failure> {
    if !cfg.webhook.enabled() {
        return Ok(None);
    }
    let (hooks, deliveries) = Hooks::new(&cfg.webhook.public_url);
    let addr = crate::webhook::serve(&cfg.webhook.listen, hooks.clone(), shutdown.clone())
        .await
        .map_err(|e| Failure::usage(format!("config key `webhook.listen`: {e}")))?;
    tracing::info!(
        %addr,
        public_url = %crate::importly::redact_url(&cfg.webhook.public_url),
        "webhook receiver listening; status polls stay on as the safety net"
    );
    Ok(Some((hooks, deliveries)))
}

/// The stop and reload signals, registered at the very start of `run`.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// How long systemd is kept in "reloading" waiting for the scheduler to apply a SIGHUP.
const RELOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn watch_signals(
    signals: Signals,
    shutdown: CancellationToken,
    control: mpsc::Sender<Control>,
    cfg_path: Option<PathBuf>,
    current: watch::Sender<Config>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // systemd (Type=notify-reload, and notify with ExecReload) wants the
                // monotonic time of the reload start with RELOADING=1.
                match NotifyState::monotonic_usec_now() {
                    Ok(t) => notify(&[NotifyState::Reloading, t]),
                    Err(_) => notify(&[NotifyState::Reloading]),
                }
                let old = current.borrow().clone();
                let (config, key, outcome) = reload(cfg_path.as_deref(), &old);
                warn_restart_only(&old, &config);
                current.send_replace(config.clone());
                let (applied, in_force) = oneshot::channel();
                let reload = Control::Reload {
                    config: Box::new(config),
                    key,
                    applied,
                };
                // The queue of reloads is short: while the scheduler cannot take one (it
                // waits for the disk), a stop signal still stops.
                tokio::select! {
                    _ = control.send(reload) => {}
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
                // READY=1 once the scheduler runs with the new config, without holding up
                // the signals meanwhile (a SIGTERM must still stop a daemon that waits for
                // its disk).
                tokio::spawn(async move {
                    let applied = tokio::time::timeout(RELOAD_GRACE, in_force).await.is_ok();
                    outcome.log(applied);
                    notify(&[NotifyState::Ready]);
                });
            }
        }
    }
    tracing::info!("stopping: finishing calls in flight");
    shutdown.cancel();
}

/// What one SIGHUP did, logged as exactly one line once the scheduler has applied it.
struct ReloadOutcome {
    /// Why the new config was rejected (the old one stays in force).
    config_error: Option<String>,
    /// Where the new key came from, or why none could be read (the old one stays).
    key: Result<apikey::KeySource, String>,
}

impl ReloadOutcome {
    fn log(&self, applied: bool) {
        let pending = if applied {
            ""
        } else {
            " (the scheduler is busy, waiting for the database?; it applies this when it \
             gets to it)"
        };
        match (&self.config_error, &self.key) {
            (None, Ok(source)) => tracing::info!(
                key_source = %source,
                "SIGHUP: reloaded configuration and API key{pending}"
            ),
            (None, Err(key_error)) => tracing::error!(
                key_error = %key_error,
                "SIGHUP: reloaded configuration, but could not read the API key; keeping the old key{pending}"
            ),
            (Some(error), Ok(source)) => tracing::error!(
                error = %error,
                key_source = %source,
                "SIGHUP: new config rejected; the old one stays in force; API key re-read{pending}"
            ),
            (Some(error), Err(key_error)) => tracing::error!(
                error = %error,
                key_error = %key_error,
                "SIGHUP: new config rejected and the API key unreadable; the old config and key stay in force{pending}"
            ),
        }
    }
}

/// The new config and, if it could be read, the new key. An invalid config is rejected
/// and the old one stays in force, but the key is still re-read (with the old config's key
/// sources): rotating a key must not depend on a config edit being right. Nothing is
/// logged here but the warning about an ignored key file: the outcome is one line, later.
fn reload(
    path: Option<&std::path::Path>,
    old: &Config,
) -> (Config, Option<SecretString>, ReloadOutcome) {
    let (config, config_error) = match Config::load(path) {
        Ok(c) => (c, None),
        Err(e) => (old.clone(), Some(e.to_string())),
    };
    let (key, key_outcome) = match apikey::load_with_source(&config) {
        Ok((k, source)) => {
            warn_ignored_key_file(&config, &source);
            (Some(k), Ok(source))
        }
        Err(e) => (None, Err(e.to_string())),
    };
    let outcome = ReloadOutcome {
        config_error,
        key: key_outcome,
    };
    (config, key, outcome)
}

/// An `api.key_file` set while `IMPORTLY_API_KEY` is set is never read: say so, or an
/// operator fixing the file and sending SIGHUP stays on the old key without a clue.
fn warn_ignored_key_file(cfg: &Config, source: &apikey::KeySource) {
    if *source == apikey::KeySource::Env && !cfg.api.key_file.is_empty() {
        tracing::warn!(
            key_file = %cfg.api.key_file,
            "api.key_file is set but ignored: the environment variable {} is set and wins",
            apikey::ENV_VAR
        );
    }
}

/// Keys read once at start-up: a change is logged instead of silently ignored.
fn warn_restart_only(old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.database.path != new.database.path {
        changed.push("database.path");
    }
    if old.database.url() != new.database.url() {
        changed.push("database.url");
    }
    if old.cluster.lease != new.cluster.lease {
        changed.push("cluster.lease");
    }
    if old.api.base_url != new.api.base_url {
        changed.push("api.base_url");
    }
    if old.api.request_timeout != new.api.request_timeout {
        changed.push("api.request_timeout");
    }
    if old.log.level != new.log.level || old.log.format != new.log.format {
        changed.push("log");
    }
    if old.admin.listen != new.admin.listen {
        changed.push("admin.listen");
    }
    if old.webhook.listen != new.webhook.listen || old.webhook.public_url != new.webhook.public_url
    {
        changed.push("webhook");
    }
    if !changed.is_empty() {
        tracing::warn!(
            keys = %changed.join(", "),
            "SIGHUP: these keys take effect only on restart"
        );
    }
}
