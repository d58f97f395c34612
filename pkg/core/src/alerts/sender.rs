//! Posting alerts: one bounded outbox and one worker per Alertmanager URL
//! (every URL gets every alert). Pushing never waits: a full outbox drops
//! the alert, counted. The worker posts batches to `/api/v2/alerts`, each
//! request with a timeout, retried with a jittered, doubling backoff; a
//! batch still failing after the last attempt is counted as failed and
//! dropped (a firing alert is sent again at the next check anyway).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{names, Metrics};
use crate::model::Secret;
use crate::reload::Live;

/// How a worker posts.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// The Alertmanager's base URL (`http://host:9093`).
    pub base_url: String,
    pub token: Option<Live<Secret>>,
    pub request_timeout: Duration,
    /// Attempts per batch (the first one included).
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Alerts per request.
    pub batch: usize,
    /// At shutdown, what is queued gets one attempt within this bound.
    pub flush_timeout: Duration,
}

impl SendConfig {
    pub fn new(base_url: &str, token: Option<Live<Secret>>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            request_timeout: Duration::from_secs(5),
            attempts: 4,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            batch: 500,
            flush_timeout: Duration::from_secs(2),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}/api/v2/alerts", self.base_url)
    }
}

/// Counters of one worker (also emitted as `monitor.alerts.*`).
#[derive(Debug, Default)]
pub struct SendStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub requests: AtomicU64,
}

/// A bounded queue of alerts for one Alertmanager.
#[derive(Debug)]
pub struct Outbox {
    q: Mutex<VecDeque<Value>>,
    cap: usize,
    notify: Notify,
    pub stats: SendStats,
}

impl Outbox {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            q: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            notify: Notify::new(),
            stats: SendStats::default(),
        })
    }

    /// Queues an alert without waiting; false (counted) when full.
    pub fn push(&self, alert: Value, metrics: &Metrics) -> bool {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.cap {
            drop(q);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics.self_count(names::ALERTS_DROPPED, 1, &[("reason", "queue_full")]);
            return false;
        }
        q.push_back(alert);
        drop(q);
        self.notify.notify_one();
        true
    }

    pub fn len(&self) -> usize {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn take(&self, n: usize) -> Vec<Value> {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

/// The delay before attempt `attempt + 1`: doubling from `base`, capped at
/// `max`, then a random point in its upper half (so senders spread out).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let d = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// One request: the batch as a JSON array.
async fn post(client: &reqwest::Client, cfg: &SendConfig, body: &str) -> Result<(), String> {
    let mut req = client
        .post(cfg.endpoint())
        .header("content-type", "application/json")
        .timeout(cfg.request_timeout)
        .body(body.to_string());
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t.get().expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        // The error's kind only: reqwest's text names the URL, never a token.
        Err(e) if e.is_timeout() => Err("timeout".into()),
        Err(e) if e.is_connect() => Err("connection failed".into()),
        Err(_) => Err("request failed".into()),
    }
}

/// Posts what the outbox holds until `stop`, then gives what is left one
/// attempt: a request in flight at `stop` and the flush of what is queued
/// share one window of `flush_timeout` from the moment `stop` is seen, so a
/// worker ends within `flush_timeout` of `stop`.
pub async fn run_worker(
    outbox: Arc<Outbox>,
    client: reqwest::Client,
    cfg: SendConfig,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut logged_failure = false;
    // The end of the shutdown window, once `stop` has been seen.
    let mut window: Option<Instant> = None;
    let until =
        |w: &mut Option<Instant>| *w.get_or_insert_with(|| Instant::now() + cfg.flush_timeout);
    loop {
        if outbox.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = outbox.notify.notified() => {}
            }
        }
        while !stop.is_cancelled() {
            let batch = outbox.take(cfg.batch);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let body = Value::Array(batch).to_string();
            let mut result = Err(String::new());
            for attempt in 0..cfg.attempts.max(1) {
                if attempt > 0 {
                    let wait = backoff(attempt - 1, cfg.backoff_base, cfg.backoff_max);
                    let stopped = tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = tokio::time::sleep(wait) => false,
                    };
                    if stopped {
                        // Shutdown: one last attempt, bounded like the flush.
                        outbox.stats.requests.fetch_add(1, Ordering::Relaxed);
                        result =
                            tokio::time::timeout_at(until(&mut window), post(&client, &cfg, &body))
                                .await
                                .unwrap_or_else(|_| Err("timeout".into()));
                        break;
                    }
                }
                outbox.stats.requests.fetch_add(1, Ordering::Relaxed);
                let req = post(&client, &cfg, &body);
                tokio::pin!(req);
                // A request in flight at shutdown gets the shutdown window.
                result = tokio::select! {
                    r = &mut req => r,
                    _ = stop.cancelled() => tokio::time::timeout_at(until(&mut window), req)
                        .await
                        .unwrap_or_else(|_| Err("timeout".into())),
                };
                if result.is_ok() || stop.is_cancelled() {
                    break;
                }
            }
            account(&outbox, &cfg, &metrics, n, result, &mut logged_failure);
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Shutdown: one attempt for what is queued, in what is left of the window.
    let flush = async {
        loop {
            let batch = outbox.take(cfg.batch);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let r = post(&client, &cfg, &Value::Array(batch).to_string()).await;
            account(&outbox, &cfg, &metrics, n, r, &mut logged_failure);
        }
    };
    if tokio::time::timeout_at(until(&mut window), flush)
        .await
        .is_err()
    {
        let left = outbox.take(usize::MAX).len() as u64;
        outbox.stats.failed.fetch_add(left, Ordering::Relaxed);
        metrics.self_count(names::ALERTS_FAILED, left, &[]);
    }
}

fn account(
    outbox: &Outbox,
    cfg: &SendConfig,
    metrics: &Metrics,
    n: u64,
    result: Result<(), String>,
    logged_failure: &mut bool,
) {
    match result {
        Ok(()) => {
            outbox.stats.sent.fetch_add(n, Ordering::Relaxed);
            metrics.self_count(names::ALERTS_SENT, n, &[]);
            if std::mem::take(logged_failure) {
                tracing::info!(alertmanager = %cfg.base_url, "alerts are delivered again");
            }
        }
        Err(e) => {
            outbox.stats.failed.fetch_add(n, Ordering::Relaxed);
            metrics.self_count(names::ALERTS_FAILED, n, &[]);
            if !std::mem::replace(logged_failure, true) {
                tracing::warn!(alertmanager = %cfg.base_url, error = %e, alerts = n, "posting alerts failed after retries (logged once until it works again)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_and_jitters() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 0..20 {
            let d = backoff(attempt, b, m);
            let full = (b * (1 << attempt.min(10))).min(m);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn a_full_outbox_drops_and_counts() {
        let o = Outbox::new(2);
        let m = Metrics::disabled();
        assert!(o.push(Value::Null, &m));
        assert!(o.push(Value::Null, &m));
        assert!(!o.push(Value::Null, &m));
        assert_eq!(o.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(o.take(10).len(), 2);
    }
}
