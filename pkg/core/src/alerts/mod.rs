//! Alerts on Prometheus Alertmanager (`--alertmanager-url`).
//!
//! The scheduler forwards every finished check of a cluster this monitor
//! owned at the check's start ([`AlertInput`], `try_send` on a bounded
//! channel: a full channel drops it, counted, and never delays a check).
//! One task ([`AlertTask`]) turns the checks into alerts through the pure
//! state machine of [`state`] (pending → firing → resolved, per cluster and
//! condition), builds their payload ([`payload`]) and hands them to one
//! sender per Alertmanager ([`sender`]: bounded outbox, batches, retries
//! with jittered backoff, a timeout per request).
//!
//! Handoffs: every heartbeat interval the task forgets the clusters this
//! monitor no longer owns (bucket handed over, cluster deleted), without a
//! "resolved": their firing alerts stay in Alertmanager until their
//! `endsAt` ([`state::horizon`]), by which time the new owner, after N
//! failing checks of its own, has re-sent them. Labels carry nothing
//! monitor-specific, so the re-sent alert is the same alert (same
//! fingerprint) and Alertmanager notifies nobody again.

pub mod board;
pub mod payload;
pub mod sender;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::check::{alertnames, CheckReport};
use crate::clock::{ms, Clock};
use crate::config::EngineConfig;
use crate::feed::{ClusterEntry, ClusterMap};
use crate::metrics::{names, Metrics};
use crate::model::Secret;
use crate::reload::Live;
use crate::schedule::Assignment;
pub use board::AlertBoard;
use sender::{Outbox, SendConfig};
use state::{Key, Observation, Tracker};

/// `--alertmanager-url`, `--alert-after`, `--alertmanager-token-file`,
/// `--alert-labels`, and the queue bounds.
#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// Alertmanager base URLs; each gets every alert.
    pub urls: Vec<String>,
    /// Consecutive failing checks before an alert fires.
    pub after: u32,
    /// Replaced when the token file changes (`crate::reload`).
    pub token: Option<Live<Secret>>,
    pub static_labels: Vec<(String, String)>,
    /// Alerts queued per Alertmanager; more are dropped, counted.
    pub queue: usize,
    /// Finished checks waiting for the alert task; more are dropped, counted.
    pub input_queue: usize,
}

impl AlertConfig {
    pub fn new(
        urls: Vec<String>,
        after: u32,
        token: Option<String>,
        static_labels: Vec<(String, String)>,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("--alertmanager-url: at least one URL".into());
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                return Err(format!(
                    "--alertmanager-url {u:?}: expected http://HOST:PORT"
                ));
            }
        }
        check_after(after)?;
        let token = match token.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err("--alertmanager-token-file: the file is empty".into()),
            Some(t) => Some(Live::new(Secret::new(t))),
        };
        Ok(Self {
            urls,
            after,
            token,
            static_labels,
            queue: 10_000,
            input_queue: 4096,
        })
    }
}

/// `--alert-after`'s range, with or without an Alertmanager.
pub fn check_after(after: u32) -> Result<(), String> {
    if (1..=100).contains(&after) {
        Ok(())
    } else {
        Err("--alert-after must be between 1 and 100".into())
    }
}

impl AlertConfig {
    /// No Alertmanager: the alerts are tracked (the status page shows them
    /// pending and firing) and sent nowhere.
    pub fn tracking(after: u32) -> Self {
        Self {
            urls: Vec::new(),
            after: after.clamp(1, 100),
            token: None,
            static_labels: Vec::new(),
            queue: 0,
            input_queue: 4096,
        }
    }
}

/// One `--alert-labels` item: `name=value`, name a Prometheus label name
/// that clustermon does not set itself.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || payload::label_name(k) != k {
        return Err(format!(
            "{k:?}: a label name is ASCII letters, digits and _, not starting with a digit"
        ));
    }
    if ["alertname", "cluster"].contains(&k) {
        return Err(format!("{k:?}: clustermon sets this label itself"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A finished check, for the alert task.
#[derive(Clone, Debug)]
pub struct AlertInput {
    pub entry: Arc<ClusterEntry>,
    pub report: CheckReport,
    /// When the check finished (clock ms).
    pub at_ms: i64,
}

/// What a check report says about each alert of its cluster. The API server
/// is down when its outcome failed (or, without one, when the check failed:
/// timeout, credentials, panic); every other alert is known only when its
/// collector ran and succeeded, else it is unobserved (held as it was).
/// Conditions a collector found are failing even if it failed later on.
pub fn observation(report: &CheckReport) -> Observation {
    let outcome = |name: &str| report.collectors.iter().find(|c| c.name == name);
    let api_down = match outcome("apiserver") {
        Some(o) => !o.ok,
        None => !report.ok,
    };
    let mut obs = Observation::default();
    if api_down {
        obs.failing.insert(
            Key {
                alertname: alertnames::API_SERVER_DOWN,
                labels: Vec::new(),
            },
            format!(
                "API server unreachable or unhealthy: {}",
                crate::status::human_summary(report)
            ),
        );
    }
    for (name, source) in alertnames::ALL {
        if *source != "apiserver" && (api_down || !outcome(source).is_some_and(|o| o.ok)) {
            obs.unobserved.push(name);
        }
    }
    for c in &report.conditions {
        let key = Key {
            alertname: c.name,
            labels: c.labels.clone(),
        };
        obs.failing.entry(key).or_insert_with(|| c.summary.clone());
    }
    obs
}

/// Whether this monitor owns a cluster at a time (the sweep's question).
pub type Owned = Arc<dyn Fn(&str, i64) -> bool + Send + Sync>;

/// The alert task: state machine, payloads, and the senders it runs.
pub struct AlertTask {
    cfg: AlertConfig,
    admin_url: String,
    sweep_every: Duration,
    clock: Clock,
    metrics: Metrics,
    owned: Owned,
    rx: mpsc::Receiver<AlertInput>,
    outboxes: Vec<(SendConfig, Arc<Outbox>)>,
    board: AlertBoard,
}

impl AlertTask {
    /// The task and the sender the scheduler forwards checks to. Ownership
    /// is read from the cluster map and the assignment the scheduler uses.
    pub fn new(
        cfg: AlertConfig,
        engine: &EngineConfig,
        clock: Clock,
        metrics: Metrics,
        map: ClusterMap,
        assignment: watch::Receiver<Arc<Assignment>>,
    ) -> (mpsc::Sender<AlertInput>, Self) {
        let me: Arc<str> = engine.id.as_str().into();
        let owned: Owned = Arc::new(move |id, now| {
            map.get(id).is_some_and(|e| {
                e.state.is_checkable()
                    && assignment.borrow().bucket(e.bucket).owner_at(now) == Some(&*me)
            })
        });
        let failover = engine.heartbeat_ttl + 2 * engine.heartbeat_interval;
        let horizon = state::horizon(engine.interval, cfg.after, failover, engine.check_timeout);
        Self::with_owned(
            cfg,
            &engine.admin_url,
            horizon,
            engine.heartbeat_interval,
            clock,
            metrics,
            owned,
        )
    }

    /// As `new`, with the ownership test and timings given (tests).
    pub fn with_owned(
        cfg: AlertConfig,
        admin_url: &str,
        horizon: Duration,
        sweep_every: Duration,
        clock: Clock,
        metrics: Metrics,
        owned: Owned,
    ) -> (mpsc::Sender<AlertInput>, Self) {
        let (tx, rx) = mpsc::channel(cfg.input_queue.max(1));
        let outboxes = cfg
            .urls
            .iter()
            .map(|u| {
                (
                    SendConfig::new(u, cfg.token.clone()),
                    Outbox::new(cfg.queue),
                )
            })
            .collect();
        let task = Self {
            board: AlertBoard::new(cfg.after, Tracker::new(cfg.after, ms(horizon))),
            admin_url: admin_url.to_string(),
            cfg,
            sweep_every: sweep_every.max(Duration::from_millis(10)),
            clock,
            metrics,
            owned,
            rx,
            outboxes,
        };
        (tx, task)
    }

    /// What the task knows, for the status page.
    pub fn board(&self) -> AlertBoard {
        self.board.clone()
    }

    /// How each Alertmanager is reached (URL, token): the status page reads
    /// silences with them.
    pub fn send_configs(&self) -> Vec<SendConfig> {
        self.outboxes.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The outboxes, one per Alertmanager (their counters).
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.outboxes.iter().map(|(_, o)| o.clone()).collect()
    }

    /// Changes how every sender posts (tests: shorter timeouts, backoff).
    pub fn tune(&mut self, f: impl Fn(&mut SendConfig)) {
        for (c, _) in &mut self.outboxes {
            f(c);
        }
    }

    /// Runs until `stop` (or until the scheduler is gone): handles what the
    /// scheduler sent until then, lets each sender flush (bounded), ends.
    pub async fn run(mut self, stop: CancellationToken) {
        let worker_stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        let client = if self.outboxes.is_empty() {
            None
        } else {
            match crate::http::client_builder().build() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "alerts: cannot build an HTTP client; alerts are sent nowhere");
                    None
                }
            }
        };
        if let Some(client) = &client {
            for (c, o) in &self.outboxes {
                workers.spawn(sender::run_worker(
                    o.clone(),
                    client.clone(),
                    c.clone(),
                    self.metrics.clone(),
                    worker_stop.clone(),
                ));
            }
        }
        let mut sweep = tokio::time::interval(self.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                input = self.rx.recv() => match input {
                    Some(i) => self.handle(i),
                    None => break,
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
        while let Ok(i) = self.rx.try_recv() {
            self.handle(i);
        }
        worker_stop.cancel();
        while workers.join_next().await.is_some() {}
    }

    fn handle(&mut self, i: AlertInput) {
        let obs = observation(&i.report);
        let outs = self
            .board
            .with_tracker(|t| t.observe(&i.entry.id, &obs, i.at_ms));
        for out in &outs {
            let v = payload::alert(
                out,
                &payload::Context {
                    cluster: &i.entry.id,
                    cluster_tags: &i.entry.tags,
                    static_labels: &self.cfg.static_labels,
                    admin_url: &self.admin_url,
                },
            );
            if out.phase == state::Phase::Resolved {
                tracing::info!(cluster = %i.entry.id, alert = out.key.alertname, "alert resolved");
                self.board.resolved(&i.entry.id, out.answer(), i.at_ms);
            }
            for (_, o) in &self.outboxes {
                o.push(v.clone(), &self.metrics);
            }
        }
    }

    /// Forgets the clusters this monitor no longer owns (nothing is sent).
    fn sweep(&mut self) {
        let now = self.clock.now_ms();
        let known: Vec<Arc<str>> = self.board.with_tracker(|t| t.clusters().cloned().collect());
        for id in known.into_iter().filter(|id| !(self.owned)(id, now)) {
            let n = self.board.with_tracker(|t| t.forget(&id));
            if n > 0 {
                tracing::info!(cluster = %id, alerts = n, "cluster left this monitor: its firing alerts are left to the new owner");
            }
        }
        self.metrics.self_gauge(
            names::ALERTS_FIRING,
            self.board.with_tracker(|t| t.firing()) as u64,
        );
    }
}

#[cfg(test)]
mod tests;
