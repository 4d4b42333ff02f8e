//! Talking to systemd: `STATUS=` kept current and `WATCHDOG=1` at half the watchdog
//! interval, sent only while the scheduler loop makes progress, so a wedged loop gets the
//! service restarted. Without `NOTIFY_SOCKET` every send is a no-op.

use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::Config;
use crate::health::SharedHealth;
use crate::limits::Scope;
use crate::store::{State, Store};

pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// How long the scheduler loop may go without a beat before it counts as stuck: half the
/// watchdog interval (systemd then restarts a wedged loop within about 1.5 intervals of
/// its last beat), but never less than two queue ticks (an idle loop wakes at least once
/// per `poll.queue_interval`, so a quieter loop is not a stuck one).
pub fn stall_limit(watchdog: Duration, queue_interval: Duration) -> Duration {
    (watchdog / 2).max(queue_interval.saturating_mul(2))
}

/// Runs until `shutdown`, then sends `STOPPING=1` (from here, so nothing this task sends can
/// follow it). `current` is the config in force: its `poll.queue_interval` is the
/// scheduler's idle wake-up period, which SIGHUP may change.
pub async fn notifier(
    store: Store,
    health: SharedHealth,
    shutdown: CancellationToken,
    current: watch::Receiver<Config>,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut last_status = status_line(&store, &health).await;
    notify(&[NotifyState::Status(&last_status)]);
    let mut stalled = false;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        // The ping first and on its own: a slow status query must not delay it.
        if let Some(w) = watchdog {
            let since = health.since_progress();
            let queue_interval = current.borrow().poll.queue_interval;
            if since < stall_limit(w, queue_interval) {
                notify(&[NotifyState::Watchdog]);
                if stalled {
                    tracing::info!(
                        "scheduler loop is making progress again; watchdog pings resumed"
                    );
                    stalled = false;
                }
            } else if !stalled {
                tracing::error!(stalled = ?since, "scheduler loop is not making progress; withholding the watchdog ping so systemd restarts the service if it stays stuck");
                stalled = true;
            }
        }
        let Ok(status) = tokio::time::timeout(period, status_line(&store, &health)).await else {
            continue;
        };
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing calls in flight"),
    ]);
}

/// E.g. "2 running, 340 pending, 1200 completed, 3 failed; imports paused: 402 until 14:05:00".
pub async fn status_line(store: &Store, health: &SharedHealth) -> String {
    let mut line = match store.status_counts().await {
        Ok(c) => {
            let n = |s: State| c.counts.get(&s).copied().unwrap_or(0);
            format!(
                "{} running, {} pending, {} completed, {} failed",
                n(State::Running) + n(State::Submitting),
                n(State::Pending),
                n(State::Completed),
                n(State::Failed)
            )
        }
        Err(e) => format!("database unreadable: {e}"),
    };
    if let Ok(pauses) = store.pauses().await {
        for p in pauses {
            let what = if p.scope == Scope::All {
                "everything"
            } else {
                p.scope.as_str()
            };
            let until = short_time(p.next_probe);
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
