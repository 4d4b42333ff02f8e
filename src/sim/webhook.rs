//! Webhook deliveries, the way Importly makes them: when a job whose start request carried
//! `webhookUrl` ends, its final `data` object is POSTed there; a non-2xx answer or no answer
//! is retried `attempts - 1` more times, `interval` apart (Importly: about 3, a minute apart;
//! tests shorten both).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::config::WebhookConfig;
use super::jobs::Job;
use super::state::now_ms;

/// A delivery to make when its job ends.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub url: String,
    pub job: Job,
}

/// What the simulator's deliveries did, for tests.
#[derive(Debug, Default)]
pub struct WebhookCounts {
    /// POSTs answered with a 2xx.
    pub delivered: AtomicU64,
    /// POSTs that got a non-2xx answer or none.
    pub refused: AtomicU64,
    /// Deliveries given up after every attempt failed.
    pub abandoned: AtomicU64,
}

impl WebhookCounts {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// What the server needs to make deliveries: the retry settings, an HTTP client and the
/// counters shared with [`super::Sim::webhook_counts`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Sender {
    pub cfg: WebhookConfig,
    pub http: reqwest::Client,
    pub counts: Arc<WebhookCounts>,
}

/// Makes `d` in the background: waits for its job to end, then POSTs, retrying.
pub(crate) fn spawn(d: Delivery, sender: &Sender) {
    let (attempts, interval) = (sender.cfg.attempts, sender.cfg.interval);
    let (http, counts) = (sender.http.clone(), sender.counts.clone());
    tokio::spawn(async move {
        // Just after the end, so a confirming status call already sees the final state.
        let wait = d.job.finish_ms.saturating_sub(now_ms()) + 1;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let payload = d.job.data(now_ms());
        for attempt in 1..=attempts.max(1) {
            let sent = http
                .post(&d.url)
                .timeout(Duration::from_secs(5))
                .json(&payload)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            if attempt < attempts {
                tokio::time::sleep(interval).await;
            }
        }
        counts.abandoned.fetch_add(1, Ordering::Relaxed);
    });
}
