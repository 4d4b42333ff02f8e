//! Talking to systemd: `STATUS=` kept current and `WATCHDOG=1` at half the watchdog
//! interval, sent only while the scheduler loop makes progress, so a wedged loop gets the
//! service restarted. Without `NOTIFY_SOCKET` every send is a no-op.

use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::health::SharedHealth;
use crate::store::Store;

pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Runs until `shutdown`.
pub async fn notifier(store: Store, health: SharedHealth, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut last_status = String::new();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Some(w) = watchdog {
            if health.since_progress() < w {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(stalled = ?health.since_progress(), "scheduler loop is not making progress; withholding the watchdog ping");
            }
        }
        let status = status_line(&store, &health).await;
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

/// E.g. "2 running, 340 pending, 1200 completed, 3 failed; imports paused: 402 until 14:05:00".
pub async fn status_line(store: &Store, health: &SharedHealth) -> String {
    let mut line = match store.status_counts().await {
        Ok(c) => {
            let n = |s: &str| c.counts.get(s).copied().unwrap_or(0);
            format!(
                "{} running, {} pending, {} completed, {} failed",
                n("running") + n("submitting"),
                n("pending"),
                n("completed"),
                n("failed")
            )
        }
        Err(e) => format!("database unreadable: {e}"),
    };
    if let Ok(pauses) = store.pauses().await {
        for p in pauses {
            let what = if p.scope == "all" {
                "everything"
            } else {
                &p.scope
            };
            let until = clock::parse_iso(&p.next_probe)
                .map(short_time)
                .unwrap_or_else(|| p.next_probe.clone());
            line.push_str(&format!(
                "; {what} paused: {} until {until}",
                p.http_status.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
    }
    if health.db_failing() {
        line.push_str("; DATABASE WRITES FAILING");
    }
    line
}

/// HH:MM:SS UTC.
fn short_time(t: SystemTime) -> String {
    let iso = clock::iso(t);
    iso.get(11..19).unwrap_or(&iso).to_owned()
}
