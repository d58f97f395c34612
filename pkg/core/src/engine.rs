//! The monitor engine: membership (heartbeat, lease, assignment), the feed
//! reflector and the scheduler, wired together with a graceful, bounded
//! shutdown. All I/O with the store happens here and in the feed; every
//! decision is delegated to the pure functions of `balance` and `schedule`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{self, MasterAction, Membership, PassTiming};
use crate::check::Checker;
use crate::clock::{ms, Clock};
use crate::config::EngineConfig;
use crate::feed::{self, ClusterMap, Reflector};
use crate::liveness::{ClockState, ClockVerdict, HandledThrough, ObserveTiming, Observer};
use crate::metrics::{names, Metrics};
use crate::model::{MasterDoc, MonitorDoc, MonitorStats};
use crate::schedule::{
    Assignment, CheckNowAnswer, CheckNowRequest, LastCheck, RefreshRequest, SchedStats, Scheduler,
    SchedulerDeps, StoredCheck,
};
use crate::store::{Etag, Store, StoreError, StoreResult, Versioned};

/// What the membership loop last learnt about the store, the master
/// document and this monitor's clock; readiness reads it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// The store calls of the last pass that failed: (call, error).
    pub store_failures: Vec<(String, String)>,
    /// Since when (clock ms) the store has been failing, if it is.
    pub store_failing_since_ms: Option<i64>,
    /// Why the master document does not decode, while it does not.
    pub master_invalid: Option<String>,
    pub clock: Option<ClockState>,
}

/// Heartbeat documents are listed back this far past their expiry time:
/// liveness is judged by observing them change, not by comparing their
/// expiry with this host's clock, so a peer whose clock runs behind stays
/// visible (its documents are deleted by the store's own housekeeping).
const LIST_HORIZON_MS: i64 = 3_600_000;

/// Views of a running engine and its controls, for operator tooling (the
/// admin API). Reading never blocks the engine.
#[derive(Clone)]
pub struct EngineHandles {
    pub me: Arc<str>,
    pub version: String,
    pub interval: Duration,
    pub heartbeat_interval: Duration,
    pub check_timeout: Duration,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    pub map: ClusterMap,
    pub assignment: watch::Receiver<Arc<Assignment>>,
    pub assignment_read_ms: Arc<AtomicI64>,
    /// Clock time of the last pass whose store calls all succeeded (0: none yet).
    pub store_ok_ms: Arc<AtomicI64>,
    /// Clock time at which the membership loop last finished a pass.
    pub pass_done_ms: Arc<AtomicI64>,
    pub health: Arc<std::sync::Mutex<Health>>,
    pub max_clock_offset: Duration,
    /// The last probe of each peer's admin endpoint.
    pub probes: Arc<std::sync::Mutex<BTreeMap<String, ProbeRecord>>>,
    /// The client of peer probes and pushed assignments, rebuilt when
    /// `--admin-ca-file` changes ([`peer_client`]).
    pub peer_http: crate::reload::Live<Option<reqwest::Client>>,
    /// Asks the membership loop for a pass now (a pushed assignment).
    sync: mpsc::Sender<RefreshRequest>,
    /// The newest bucket table a peer pushed (it wrote it to the store
    /// first): applied only by a pass whose master read fails.
    pushed: Arc<std::sync::Mutex<Option<MasterDoc>>>,
    pub draining: Arc<AtomicBool>,
    pub stats: Arc<SchedStats>,
    pub last_checks: Arc<DashMap<Arc<str>, StoredCheck>>,
    /// Every alert of this monitor's clusters (pending, firing, resolved).
    pub alerts: crate::alerts::AlertBoard,
    /// `--alertmanager-url` and its token: the status page reads silences.
    pub alertmanagers: Vec<crate::alerts::sender::SendConfig>,
    metrics: Metrics,
    cmds: mpsc::Sender<Cmd>,
    check_now: mpsc::Sender<CheckNowRequest>,
}

/// The outcome of one probe of a peer's admin endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// It answered: the process runs (its heartbeat may be late).
    Alive,
    /// Connection refused: the process is gone, its buckets move at once.
    Refused,
    /// No answer in time: proves nothing (a paused process's kernel still
    /// accepts connections); the heartbeat TTL decides.
    Timeout,
    /// Any other failure (DNS, reset, an error status): proves nothing.
    Error,
}

impl ProbeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeRecord {
    pub outcome: ProbeOutcome,
    pub at_ms: i64,
    pub url: String,
}

/// Why a check-now did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckNowError {
    #[error("no such cluster in this monitor's cache")]
    Unknown,
    #[error("a check of this cluster is running; ask again when it is done")]
    Busy,
    #[error("every worker is busy (--max-concurrent-checks)")]
    PoolFull,
    #[error("the monitor is stopping")]
    Stopping,
}

impl EngineHandles {
    /// Why this monitor is not ready, if it is not: the store answered
    /// within two heartbeat intervals (else the failing calls are named),
    /// the master document decodes, this monitor's clock is within
    /// `--max-clock-offset` of the fleet's, the assignment was read, the
    /// initial feed replay is done.
    pub fn not_ready(&self) -> Vec<String> {
        let now = self.clock.now_ms();
        let mut why = Vec::new();
        let ok = self.store_ok_ms.load(Ordering::Acquire);
        let limit = ms(self.heartbeat_interval * 2);
        let health = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let failing = || {
            health
                .store_failures
                .iter()
                .map(|(call, e)| format!("{call}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if ok == 0 {
            if health.store_failures.is_empty() {
                why.push("the store has not answered yet".to_string());
            } else {
                why.push(format!("store unreachable: {}", failing()));
            }
        } else if now - ok > limit {
            let calls = if health.store_failures.is_empty() {
                "no store call finished".to_string()
            } else {
                failing()
            };
            why.push(format!(
                "store unreachable for {:.1}s (limit {:.1}s): {calls}; checks go on with the last assignment",
                (now - ok) as f64 / 1000.0,
                limit as f64 / 1000.0
            ));
        }
        if let Some(reason) = &health.master_invalid {
            why.push(format!(
                "master document invalid: {reason}; it is rewritten from the last valid version once the lease has expired"
            ));
        }
        match health.clock {
            Some(c) if c.verdict == ClockVerdict::Skewed => why.push(format!(
                "clock offset {:.1}s {} the fleet's exceeds --max-clock-offset {:.1}s: taking no bucket and no lease",
                c.offset_ms.abs() as f64 / 1000.0,
                if c.offset_ms >= 0 { "ahead of" } else { "behind" },
                self.max_clock_offset.as_secs_f64()
            )),
            Some(c) if c.verdict == ClockVerdict::Pending => {
                why.push("clock offset not measured yet".to_string())
            }
            _ => {}
        }
        if self.assignment_read_ms.load(Ordering::Acquire) == 0 {
            why.push("the bucket assignment has not been read yet".into());
        } else if self.assignment.borrow().generation == 0 {
            why.push("no bucket table yet: a new fleet's first one is written a heartbeat interval after its first monitor starts".into());
        }
        if !self.map.replay_done() {
            why.push("the initial change feed replay is not done".into());
        }
        let (pending, since, read_once) = self.map.pending_buckets();
        let hb = crate::clock::ms(self.heartbeat_interval);
        let involved = || {
            let view = self.assignment.borrow();
            view.buckets.iter().any(|b| b.involves(&self.me, now))
        };
        if !read_once && pending == 0 && involved() {
            why.push("the documents of this monitor's share are not read yet".into());
        } else if pending > 0 && (!read_once || now - since > hb) {
            why.push(format!(
                "{pending} buckets of this monitor's share not read yet (for {:.1}s)",
                (now - since).max(0) as f64 / 1000.0
            ));
        }
        why
    }

    /// The self metrics in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        self.metrics.prometheus()
    }

    /// Hands every bucket of this monitor over (no gap, no duplicate) and
    /// keeps it running, draining; answers the handoff time.
    pub async fn drain(&self) -> Result<i64, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Leave(tx))
            .await
            .map_err(|_| "the monitor is stopping".to_string())?;
        rx.await
            .map_err(|_| "the monitor is stopping".to_string())?
    }

    /// A pushed assignment: the lease holder changed this monitor's buckets
    /// and asks it to read the table now rather than at its next pass. A
    /// hint only: when it is lost the next pass reads the change anyway.
    pub fn sync_now(&self) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.sync.try_send(tx).is_ok()
    }

    /// A pushed assignment with the table its writer wrote to the store.
    /// The store stays the source: the table is kept (the newest
    /// generation pushed), forgotten by a pass whose read of the master
    /// document succeeds, and applied only by one whose read fails (and
    /// only if newer than the view), so a monitor cut off from the store alone
    /// learns that its buckets were taken over and stops checking them,
    /// where in an outage of the whole store nobody writes a table and
    /// every monitor goes on with its last one.
    pub fn sync_with(&self, doc: MasterDoc) -> bool {
        {
            let mut slot = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_none_or(|d| d.generation < doc.generation) {
                *slot = Some(doc);
            }
        }
        self.sync_now()
    }

    /// Checks a cluster now through the scheduler's pool: it takes a
    /// worker permit, never overlaps a check of the same cluster, emits the
    /// same metrics and records the result as a scheduled check does.
    pub async fn check_now(&self, id: &str) -> Result<LastCheck, CheckNowError> {
        let (reply, rx) = oneshot::channel();
        let req = CheckNowRequest {
            id: id.to_string(),
            reply,
        };
        self.check_now
            .send(req)
            .await
            .map_err(|_| CheckNowError::Stopping)?;
        match rx.await {
            Ok(CheckNowAnswer::Done(last)) => Ok(last),
            Ok(CheckNowAnswer::Unknown) => Err(CheckNowError::Unknown),
            Ok(CheckNowAnswer::Busy) => Err(CheckNowError::Busy),
            Ok(CheckNowAnswer::PoolFull) => Err(CheckNowError::PoolFull),
            Err(_) => Err(CheckNowError::Stopping),
        }
    }
}

/// The parts of a monitor, built and wired once by [`Engine::new`];
/// [`Engine::run`] only starts them and stops them in order.
pub struct Engine {
    cfg: EngineConfig,
    handles: EngineHandles,
    reflector: Reflector,
    feed: std::pin::Pin<Box<dyn futures::Stream<Item = feed::FeedEvent> + Send>>,
    member: MembershipLoop,
    cmd_rx: mpsc::Receiver<Cmd>,
    refresh_rx: mpsc::Receiver<RefreshRequest>,
    scheduler: Scheduler,
    alerts: crate::alerts::AlertTask,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Arc<dyn Store>,
        checker: Arc<dyn Checker>,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Self, crate::config::ConfigError> {
        cfg.validate()?;
        let (assignment_tx, assignment) = watch::channel(Arc::new(Assignment::empty()));
        let (reflector, map, events) = Reflector::new(metrics.clone(), clock.clone(), 4096);
        let stats = Arc::new(SchedStats::default());
        let reflector = reflector.with_share(feed::Share {
            me: cfg.id.as_str().into(),
            view: assignment.clone(),
            store: store.clone(),
            tick: cfg.heartbeat_interval,
            read_timeout: cfg.heartbeat_ttl,
            release_memory: cfg.release_memory,
            sched: stats.clone(),
        });
        let (cmds, cmd_rx) = mpsc::channel::<Cmd>(4);
        let (check_now, check_now_rx) = mpsc::channel::<CheckNowRequest>(16);
        let (refresh_tx, refresh_rx) = mpsc::channel::<RefreshRequest>(16);
        // Alerts: tracked always (the status page shows them), sent to
        // Alertmanager with `--alertmanager-url`; fed by the scheduler,
        // never waited on.
        let alert_cfg = cfg.alerts.clone().unwrap_or_else(|| {
            crate::alerts::AlertConfig::tracking(crate::config::defaults::ALERT_AFTER)
        });
        let (alerts_tx, alerts) = crate::alerts::AlertTask::new(
            alert_cfg,
            &cfg,
            clock.clone(),
            metrics.clone(),
            map.clone(),
            assignment.clone(),
        );
        let handles = EngineHandles {
            alerts: alerts.board(),
            alertmanagers: alerts.send_configs(),
            me: cfg.id.as_str().into(),
            version: cfg.version.clone(),
            interval: cfg.interval,
            heartbeat_interval: cfg.heartbeat_interval,
            check_timeout: cfg.check_timeout,
            clock: clock.clone(),
            store: store.clone(),
            map,
            assignment,
            assignment_read_ms: Arc::new(AtomicI64::new(0)),
            store_ok_ms: Arc::new(AtomicI64::new(0)),
            pass_done_ms: Arc::new(AtomicI64::new(0)),
            health: Arc::default(),
            max_clock_offset: cfg.max_clock_offset,
            probes: Arc::default(),
            peer_http: crate::reload::Live::new(peer_client(
                cfg.heartbeat_interval,
                &cfg.admin_peer_ca,
            )),
            sync: refresh_tx.clone(),
            pushed: Arc::default(),
            draining: Arc::new(AtomicBool::new(false)),
            stats,
            last_checks: Arc::new(DashMap::new()),
            metrics: metrics.clone(),
            cmds,
            check_now,
        };
        let me: Arc<str> = cfg.id.as_str().into();
        let relist = (!store.feed_reports_deletes() && !cfg.relist_interval.is_zero()).then(|| {
            let view = handles.assignment.clone();
            let me = me.clone();
            let clock = clock.clone();
            feed::Relist {
                interval: cfg.relist_interval,
                buckets: Arc::new(move || {
                    let now = clock.now_ms();
                    let a = view.borrow().clone();
                    (0..=u8::MAX)
                        .filter(|b| a.buckets[usize::from(*b)].involves(&me, now))
                        .collect()
                }),
            }
        });
        let feed = Box::pin(feed::watch(
            store.clone(),
            None,
            cfg.feed_interval,
            cfg.feed_page_size,
            relist,
            cfg.heartbeat_ttl,
        ));
        let member = MembershipLoop {
            cfg: cfg.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            me: me.clone(),
            started_at: clock.now_utc(),
            assignment_tx,
            handles: handles.clone(),
            rate: RateWindow::default(),
            dropped_reported: [0; 3],
            store_reported: Default::default(),
            chains_reported: (0, 0),
            old_key_reported: crate::secrets::old_key_opens(),
            connected_since_ms: None,
            connected_passes: 0,
            live_last_pass: 0,
            observer: Observer::default(),
            handled: BTreeMap::new(),
            last_valid_master: None,
            master_invalid_logged: false,
            corrupt_since_ms: None,
            clock_state: None,
        };
        let scheduler = Scheduler::new(SchedulerDeps {
            me,
            interval: cfg.interval,
            check_timeout: cfg.check_timeout,
            dispatch_tick: cfg.tick(),
            max_concurrent: cfg.max_concurrent_checks,
            hanging_share_pct: cfg.hanging_share_pct,
            stalled_after: cfg.stalled_after(),
            refresh_timeout: cfg.heartbeat_interval,
            // A feed polled less often than the heartbeat (a store that
            // pushes changes) does not widen the window in which a new
            // cluster waits for its grid slot: a prompt first check is
            // worth more than the extra check two feeds further apart can
            // give. (The master's tidy-up, one pass after the handoff,
            // bounded this window before handoffs lingered.)
            feed_skew: cfg.feed_interval.min(cfg.heartbeat_interval),
            pass_done_ms: handles.pass_done_ms.clone(),
            check_now: check_now_rx,
            clock,
            map: handles.map.clone(),
            events,
            assignment: handles.assignment.clone(),
            assignment_read_ms: handles.assignment_read_ms.clone(),
            refresh: refresh_tx,
            checker,
            metrics,
            stats: handles.stats.clone(),
            last_checks: handles.last_checks.clone(),
            alerts: Some(alerts_tx),
        });
        Ok(Self {
            cfg,
            handles,
            reflector,
            feed,
            member,
            cmd_rx,
            refresh_rx,
            scheduler,
            alerts,
        })
    }

    pub fn handles(&self) -> EngineHandles {
        self.handles.clone()
    }

    /// Runs until `shutdown` completes, then leaves gracefully: hands its
    /// buckets over with a timed handoff (checking until then), stops
    /// starting checks, waits for in-flight ones, deletes its heartbeat.
    /// Everything after `shutdown` fits in `shutdown_grace` + max(2 heartbeat
    /// intervals, the alert sender's flush window): after the grace, the
    /// pass in progress and the heartbeat's deletion run while the alerts
    /// get their last attempt.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Engine {
            cfg,
            handles,
            reflector,
            feed,
            member,
            cmd_rx,
            refresh_rx,
            scheduler,
            alerts,
        } = self;
        let clock = handles.clock;
        let tracker = TaskTracker::new();
        let feed_stop = CancellationToken::new();
        let member_stop = CancellationToken::new();
        let alerts_stop = CancellationToken::new();
        let stop_starting = CancellationToken::new();
        let abort = CancellationToken::new();

        // Dropping this future (a crash in tests, an abort) stops every task
        // it started: nothing outlives the engine.
        let mut guard = AbortOnDrop(Vec::new());
        guard.0.push(
            tracker
                .spawn(reflector.run(feed, feed_stop.clone()))
                .abort_handle(),
        );
        let cmd_tx = handles.cmds.clone();
        let stats = handles.stats.clone();
        guard.0.push(
            tracker
                .spawn(member.run(cmd_rx, refresh_rx, member_stop.clone()))
                .abort_handle(),
        );
        guard.0.push(
            tracker
                .spawn(alerts.run(alerts_stop.clone()))
                .abort_handle(),
        );
        let sched = scheduler;
        let mut sched_task = tracker.spawn(sched.run(stop_starting.clone(), abort.clone()));
        guard.0.push(sched_task.abort_handle());
        tracker.close();

        shutdown.await;
        let deadline = Instant::now() + cfg.shutdown_grace;
        tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: handing buckets over");

        // 1. Hand over, keep checking what is due before the handoff.
        let (tx, rx) = oneshot::channel();
        let left = match cmd_tx.send(Cmd::Leave(tx)).await {
            Ok(()) => tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        match left {
            Some(Ok(handoff_at_ms)) => {
                let until = clock.instant_at(handoff_at_ms).min(deadline);
                tracing::info!(wait = ?until.saturating_duration_since(Instant::now()), "buckets handed over; checking until the handoff time");
                tokio::time::sleep_until(until).await;
                // A check due just before the handoff time may fire just
                // after it: wait until the scheduler has handled every due
                // time before it (measured: a check due 1.7 ms before the
                // handoff time was never started, a 20 s gap).
                // (A scheduler that has not run yet counts as pending; it
                // has run by now, having checked until the handoff time.)
                while stats.pending_from().is_none_or(|p| p < handoff_at_ms)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not release buckets; peers take them over when the heartbeat expires")
            }
            None => tracing::warn!("releasing buckets did not finish within the grace period"),
        }

        // 2. Stop starting checks; in-flight ones get the rest of the grace.
        stop_starting.cancel();
        if tokio::time::timeout_at(deadline, &mut sched_task)
            .await
            .is_err()
        {
            abort.cancel();
            let _ = sched_task.await;
        }

        // 3. Delete the heartbeat, stop following the feed.
        member_stop.cancel();
        feed_stop.cancel();
        alerts_stop.cancel(); // sends what the last checks raised, bounded
        tracker.wait().await;
        tracing::info!("monitor stopped");
    }
}

/// Aborts the engine's tasks when the engine's future is dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

enum Cmd {
    /// Drain: mark this monitor draining and hand its buckets over. Answers
    /// the time until which this monitor still checks its old buckets.
    Leave(oneshot::Sender<Result<i64, String>>),
}

/// Checks per second over the last pass.
#[derive(Default)]
struct RateWindow {
    last: Option<(Instant, u64)>,
    per_s: f64,
}

impl RateWindow {
    fn update(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        if let Some((at, n)) = self.last {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 {
                self.per_s = (total.saturating_sub(n)) as f64 / dt;
            }
        }
        self.last = Some((now, total));
        self.per_s
    }
}

struct MembershipLoop {
    cfg: EngineConfig,
    store: Arc<dyn Store>,
    metrics: Metrics,
    clock: Clock,
    me: Arc<str>,
    started_at: chrono::DateTime<Utc>,
    assignment_tx: watch::Sender<Arc<Assignment>>,
    handles: EngineHandles,
    rate: RateWindow,
    dropped_reported: [u64; 3],
    /// Store counters already emitted.
    store_reported: crate::store::StoreStats,
    /// `check::tls::chain_counts` as last reported.
    chains_reported: (u64, u64),
    /// `secrets::old_key_opens` as last reported.
    old_key_reported: u64,
    /// Start of the current run of passes whose store calls all succeeded
    /// (writes included): a peer whose heartbeat did not change while the
    /// store was failing is not presumed dead for it.
    connected_since_ms: Option<i64>,
    /// Passes in a row whose store calls all succeeded.
    connected_passes: u32,
    /// Live monitors the previous pass listed, while the fleet has no
    /// bucket table yet.
    live_last_pass: usize,
    /// Heartbeats and master versions as this monitor saw them change.
    observer: Observer,
    /// The last master document that decoded: the base of a repair.
    last_valid_master: Option<MasterDoc>,
    master_invalid_logged: bool,
    /// Since when (clock ms) the master document has been corrupt.
    corrupt_since_ms: Option<i64>,
    clock_state: Option<ClockState>,
    /// What each peer's last probe answer said of its checks (kept only
    /// for an answer that said it).
    handled: BTreeMap<String, HandledThrough>,
}

/// How long a peer probe or a sync notice may take: a quarter of a
/// heartbeat interval (500 ms by default), so a pass stays within its bound.
fn peer_timeout(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 4).max(Duration::from_millis(50))
}

/// The client of peer probes and pushed assignments: bounded by a quarter
/// of a heartbeat interval; `ca`, when given, the only roots trusted.
pub fn peer_client(
    heartbeat_interval: Duration,
    ca: &[reqwest::Certificate],
) -> Option<reqwest::Client> {
    let t = peer_timeout(heartbeat_interval);
    let mut b = crate::http::client_builder();
    if !ca.is_empty() {
        b = b.tls_certs_only(ca.iter().cloned());
    }
    match b
        .connect_timeout(t)
        .timeout(t)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client for peer probes; failover waits for the heartbeat TTL");
            None
        }
    }
}

/// Whether an error chain holds a refused connection.
fn refused(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        src = err.source();
    }
    false
}

/// A probe, and what an answer said of the peer's checks: the due time
/// before which it had handled all (`admin::api::HANDLED_THROUGH_HEADER`).
async fn probe_handled(client: &reqwest::Client, url: &str) -> (ProbeOutcome, Option<i64>) {
    match client
        .get(format!("{}/healthz/live", url.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            let handled = r
                .headers()
                .get(crate::admin::api::HANDLED_THROUGH_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            (ProbeOutcome::Alive, handled)
        }
        Ok(_) => (ProbeOutcome::Error, None),
        Err(e) if refused(&e) => (ProbeOutcome::Refused, None),
        Err(e) if e.is_timeout() => (ProbeOutcome::Timeout, None),
        Err(_) => (ProbeOutcome::Error, None),
    }
}

/// What one pass read from the store.
struct PassReads {
    heartbeat: StoreResult<()>,
    live: StoreResult<Vec<MonitorDoc>>,
    master: StoreResult<Option<Versioned<MasterDoc>>>,
}

impl MembershipLoop {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut refresh: mpsc::Receiver<RefreshRequest>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Between passes, peers are probed twice as often as they beat: a
        // refused probe starts a pass at once (failover in about a second).
        let mut probe_tick = tokio::time::interval(self.cfg.heartbeat_interval / 2);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(cmd) = cmds.recv() => match cmd {
                    Cmd::Leave(tx) => {
                        let r = self.leave().await;
                        let _ = tx.send(r);
                    }
                },
                Some(tx) = refresh.recv() => {
                    self.pass().await;
                    tick.reset();
                    let _ = tx.send(());
                }
                _ = tick.tick() => self.pass().await,
                _ = probe_tick.tick() => {
                    if self.probe_round().await {
                        self.pass().await;
                        tick.reset();
                    }
                }
            }
        }
        match self
            .store_call("delete_monitor", self.store.delete_monitor(&self.me))
            .await
        {
            Ok(_) => tracing::info!("heartbeat deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "could not delete the heartbeat; it expires by itself")
            }
        }
    }

    fn draining(&self) -> bool {
        self.handles.draining.load(Ordering::Acquire)
    }

    fn timing(&self, now_ms: i64) -> PassTiming {
        PassTiming {
            now_ms,
            lease_ttl_ms: ms(self.cfg.lease_ttl),
            handoff_ms: ms(self.cfg.handoff()),
            dead_lookback_ms: ms(self.cfg.heartbeat_ttl + self.cfg.heartbeat_interval),
            linger_ms: ms(self.cfg.interval / 2).max(ms(self.cfg.feed_interval)),
        }
    }

    fn observe_timing(&self) -> ObserveTiming {
        ObserveTiming {
            heartbeat_ttl_ms: ms(self.cfg.heartbeat_ttl),
            lease_ttl_ms: ms(self.cfg.lease_ttl),
            max_offset_ms: ms(self.cfg.max_clock_offset),
        }
    }

    /// A monitor the fleet finds skewed checks nothing; meanwhile its clock
    /// follows the host's, so fixing the host's time (NTP, by hand) brings
    /// it back without a restart. Otherwise the clock runs on monotonic
    /// time from its start: a host clock stepped under a monitor that
    /// checks is not followed. A step starts the view of peers afresh, as
    /// at start-up: times observed on the old scale would make a live
    /// master's lease look expired (a step forward) or a dead peer alive.
    fn resync_while_skewed(&mut self) {
        let skewed = self
            .clock_state
            .is_some_and(|c| c.verdict == ClockVerdict::Skewed);
        if !skewed {
            return;
        }
        let now = self.clock.now_ms();
        let involved = self
            .assignment_tx
            .borrow()
            .buckets
            .iter()
            .any(|b| b.involves(&self.me, now));
        if involved {
            return;
        }
        let Some(step) = self.clock.resync(ms(self.cfg.max_clock_offset) / 2) else {
            return;
        };
        tracing::warn!(
            step_ms = step,
            "this host's clock was stepped while the fleet found this monitor's clock \
             skewed: following it, and observing the peers afresh"
        );
        self.metrics.self_count(names::CLOCK_RESYNCED, 1, &[]);
        self.observer = Observer::default();
        self.handled.clear();
        self.connected_since_ms = None;
        self.connected_passes = 0;
        self.clock_state = None;
        // Not ready until measured again.
        self.handles
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clock = Some(ClockState {
            verdict: ClockVerdict::Pending,
            offset_ms: 0,
            peers_measured: 0,
            peers_beyond: 0,
        });
    }

    /// How long a probe answer's handled-through time counts: two
    /// heartbeat intervals (the holder probes a quiet peer at every pass).
    fn handled_max_age_ms(&self) -> i64 {
        2 * ms(self.cfg.heartbeat_interval)
    }

    /// A store call bounded by one heartbeat interval, failures counted.
    async fn store_call<T>(
        &self,
        name: &str,
        f: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let r = match timeout(self.cfg.heartbeat_interval, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("{name} timed out"))),
        };
        if let Err(e) = &r {
            if !matches!(
                e,
                StoreError::PreconditionFailed
                    | StoreError::Conflict
                    | StoreError::CorruptMaster { .. }
            ) {
                self.metrics
                    .self_count(names::STORE_ERRORS, 1, &[("op", name)]);
                tracing::warn!(op = name, error = %e, "store call failed");
            }
        }
        r
    }

    fn heartbeat_doc(&mut self, now_ms: i64) -> MonitorDoc {
        let view = self.handles.assignment.borrow().clone();
        let clock = self.clock_state;
        MonitorDoc {
            id: self.me.to_string(),
            hostname: self.cfg.hostname.clone(),
            version: self.cfg.version.clone(),
            started_at: self.started_at,
            admin_url: self.cfg.admin_url.clone(),
            draining: self.draining(),
            expires_at_ms: now_ms + ms(self.cfg.heartbeat_ttl),
            heartbeat_at_ms: now_ms,
            clock_ok: clock.is_some_and(|c| c.verdict == ClockVerdict::Ok),
            clock_offset_ms: clock.map_or(0, |c| c.offset_ms),
            stats: MonitorStats {
                buckets: balance::owned_count(&view.buckets, &self.me) as u32,
                cache_size: self.handles.map.len() as u64,
                checks_per_s: self
                    .rate
                    .update(self.handles.stats.started.load(Ordering::Relaxed)),
                ready: self.handles.not_ready().is_empty(),
                failing: self.handles.last_checks.iter().filter(|e| !e.ok()).count() as u32,
            },
        }
    }

    /// The three reads of a pass (the heartbeat write included) run at once,
    /// so a pass against a store that does not answer still ends within one
    /// heartbeat interval.
    async fn read_all(&mut self, now_ms: i64) -> PassReads {
        let doc = self.heartbeat_doc(now_ms);
        let (heartbeat, live, master) = tokio::join!(
            self.store_call("heartbeat", self.store.upsert_monitor(&doc)),
            self.store_call(
                "list_monitors",
                self.store.list_monitors(now_ms - LIST_HORIZON_MS)
            ),
            self.store_call("read_master", self.store.read_master()),
        );
        PassReads {
            heartbeat,
            live,
            master,
        }
    }

    /// Records what the pass learnt about the store for readiness.
    fn record_store_health(&mut self, reads: &PassReads, done_ms: i64) {
        let mut failures = Vec::new();
        if let Err(e) = &reads.heartbeat {
            failures.push((
                "heartbeat write (upsert_monitor)".to_string(),
                e.to_string(),
            ));
        }
        if let Err(e) = &reads.live {
            failures.push(("list_monitors".to_string(), e.to_string()));
        }
        match &reads.master {
            Err(StoreError::CorruptMaster { .. }) | Ok(_) => {}
            Err(e) => failures.push(("read_master".to_string(), e.to_string())),
        }
        let ok = failures.is_empty();
        if ok {
            self.connected_since_ms.get_or_insert(done_ms);
            self.connected_passes = self.connected_passes.saturating_add(1);
            self.handles.store_ok_ms.store(done_ms, Ordering::Release);
        } else {
            self.connected_since_ms = None;
            self.connected_passes = 0;
        }
        let mut health = self
            .handles
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        health.store_failing_since_ms = match (ok, health.store_failing_since_ms) {
            (true, _) => None,
            (false, since) => Some(since.unwrap_or(done_ms)),
        };
        health.store_failures = failures;
    }

    async fn pass(&mut self) {
        self.resync_while_skewed();
        let started = self.clock.now_ms();
        // The loop is alive: a pass that then waits on a slow store is no
        // stall. After a gap longer than the stall bound (this process was
        // paused) the mark waits for the end of the pass, so the scheduler
        // refreshes its view before trusting it again.
        let last = self.handles.pass_done_ms.load(Ordering::Acquire);
        if started - last <= ms(self.cfg.stalled_after()) {
            self.handles.pass_done_ms.store(started, Ordering::Release);
        }
        let reads = self.read_all(started).await;
        let now = self.clock.now_ms();
        self.record_store_health(&reads, now);
        let t = self.observe_timing();
        if let Ok(docs) = &reads.live {
            self.observer.observe_list(&self.me, started, now, docs, t);
        }
        let connected_since = self.connected_since_ms.unwrap_or(i64::MAX);

        // The master document: valid, absent, corrupt (repaired from the
        // last valid version), or unreadable (keep the last view).
        let (base, expected, corrupt) = match reads.master {
            Ok(Some(v)) => {
                self.drop_pushed();
                self.observer.observe_master(Some(&v.etag.0), now);
                self.set_master_invalid(None);
                self.last_valid_master = Some(v.value.clone());
                (Some(v.value), Some(v.etag), false)
            }
            Ok(None) => {
                self.drop_pushed();
                self.observer.observe_master(None, now);
                self.set_master_invalid(None);
                (None, None, false)
            }
            Err(StoreError::CorruptMaster { etag, reason }) => {
                // A corrupt version is no renewal of the lease: the observer
                // keeps the last valid version's etag and time.
                self.set_master_invalid(Some(reason));
                (self.last_valid_master.clone(), Some(etag), true)
            }
            Err(_) => {
                // Keep checking the last known buckets; readiness and the
                // age metric tell. Unless a peer pushed a newer table: then
                // the store answers others (they wrote it), and the buckets
                // they took from this monitor are theirs.
                self.apply_pushed(now);
                self.finish_pass(reads.heartbeat.is_ok(), None);
                return;
            }
        };

        // Peers (or the lease holder) silent during this pass are probed.
        self.probe_peers(
            base.as_ref().and_then(|d| d.lease_owner.as_deref()),
            now,
            now - started,
        )
        .await;
        let mut clock = self.observer.clock(now, connected_since, t);
        // A verdict once given is not withdrawn because a new peer is not
        // measured yet.
        if let Some(prev) = self.clock_state {
            if clock.verdict == ClockVerdict::Pending && prev.verdict != ClockVerdict::Pending {
                clock.verdict = prev.verdict;
            }
        }
        self.clock_state = Some(clock);
        self.handles
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clock = self.clock_state;
        let clock_ok = self
            .clock_state
            .is_some_and(|c| c.verdict == ClockVerdict::Ok);
        let mut view = base.clone().map(MasterDoc::normalised);
        // A monitor that never saw a valid version leaves the repair to
        // those that did for one lease TTL (they keep the owners).
        let corrupt_since = match (corrupt, self.corrupt_since_ms) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or(now)),
        };
        self.corrupt_since_ms = corrupt_since;
        let wait_for_repair = corrupt
            && self.last_valid_master.is_none()
            && corrupt_since.is_some_and(|t0| now - t0 < ms(self.cfg.lease_ttl));
        // A fleet's first start (no master document yet): see
        // `balance::first_table_waits`.
        let first_start = base.is_none() && !corrupt && {
            let live_now = self.observer.live(now, connected_since, t).len();
            let wait = balance::first_table_waits(
                self.connected_passes,
                self.live_last_pass,
                live_now,
                balance::first_table_max_passes(self.cfg.lease_ttl, self.cfg.heartbeat_interval),
            );
            self.live_last_pass = live_now;
            wait
        };
        if let (false, true, false, false, Ok(_)) = (
            self.draining(),
            clock_ok,
            wait_for_repair,
            first_start,
            &reads.live,
        ) {
            let owner = base.as_ref().and_then(|d| d.lease_owner.as_deref());
            let holder = self
                .observer
                .lease_holder(owner, &self.me, now, connected_since, t);
            let (action, live_n) = {
                let members = self.membership(view.as_ref(), now, connected_since);
                let action = balance::master_pass(
                    &self.me,
                    view.as_ref(),
                    holder,
                    &members,
                    self.timing(now),
                );
                (action, members.live.len())
            };
            match action {
                MasterAction::Follow => {}
                MasterAction::Write(doc) => {
                    match self
                        .store_call(
                            "write_master",
                            self.store.write_master(&doc, expected.as_ref()),
                        )
                        .await
                    {
                        Ok(etag) => {
                            self.observer.observe_master(Some(&etag.0), now);
                            let before = self.handles.assignment.borrow().buckets.clone();
                            self.push_assignment(&before, &doc).await;
                            if corrupt {
                                self.metrics.self_count(names::MASTER_REPAIRED, 1, &[]);
                                tracing::warn!(
                                    generation = doc.generation,
                                    from_valid = self.last_valid_master.is_some(),
                                    "repaired the master document: rewrote it from the last valid version this monitor saw"
                                );
                                // Readiness keeps naming the document until a pass reads a
                                // valid version: a repair does not prove nobody writes it again.
                            } else if holder != Some(&*self.me) {
                                tracing::info!(
                                    generation = doc.generation,
                                    live = live_n,
                                    "took the master lease"
                                );
                            }
                            self.last_valid_master = Some(doc.clone());
                            view = Some(doc);
                        }
                        Err(StoreError::PreconditionFailed | StoreError::Conflict) => {
                            self.metrics.self_count(names::MASTER_CONFLICTS, 1, &[]);
                        }
                        Err(_) => {}
                    }
                }
            }
        } else if !clock_ok && self.lease_is_mine(base.as_ref()) {
            // A skewed clock must not lead: give the lease up (buckets move
            // with a handoff written by the next master's clock).
            self.release_lease(base.as_ref(), expected.as_ref()).await;
        }
        if let Some(doc) = view {
            self.publish(doc, now);
        } else if !corrupt {
            self.publish(MasterDoc::empty(), now);
        }
        let live_n = reads.live.as_ref().ok().map(|l| l.len());
        self.finish_pass(reads.heartbeat.is_ok(), live_n);
    }

    /// Peer probes. The lease holder probes the live peers whose heartbeat
    /// has not changed for `quiet_ms` (-1: all of them); the others probe the
    /// lease holder when the master document has not changed for as long. A
    /// refused connection proves the process gone: it is dead at once (its
    /// buckets move, the lease is free), not a TTL later. A timeout or any
    /// other failure proves nothing: the TTL decides. Only while the store
    /// answers (a silence nobody could write is no evidence). Answers
    /// whether a probe was refused.
    async fn probe_peers(&mut self, owner: Option<&str>, now: i64, quiet_ms: i64) -> bool {
        let http = self.handles.peer_http.get();
        let (Some(client), Some(connected_since)) =
            (http.as_ref().clone(), self.connected_since_ms)
        else {
            return false;
        };
        let t = self.observe_timing();
        let targets: Vec<(String, String)> = match owner {
            Some(o) if o == &*self.me => {
                self.observer.quiet_peers(now, quiet_ms, connected_since, t)
            }
            Some(o)
                if self.observer.master_quiet(now, quiet_ms)
                    && self.observer.is_live(o, now, connected_since, t) =>
            {
                self.observer
                    .admin_url(o)
                    .map(|u| vec![(o.to_string(), u.to_string())])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if targets.is_empty() {
            return false;
        }
        let results = futures::future::join_all(targets.into_iter().map(|(id, url)| {
            let client = &client;
            async move {
                let (outcome, handled) = probe_handled(client, &url).await;
                (id, url, outcome, handled)
            }
        }))
        .await;
        self.record_probes(results)
    }

    /// A probe round between passes, of every live peer (or of the lease
    /// holder). Answers whether one was refused (a pass should run now).
    async fn probe_round(&mut self) -> bool {
        if self.draining() {
            return false;
        }
        let owner = self
            .last_valid_master
            .as_ref()
            .and_then(|d| d.lease_owner.clone());
        let now = self.clock.now_ms();
        self.probe_peers(owner.as_deref(), now, -1).await
    }

    /// Counts and records probe outcomes; a refused one marks the peer gone.
    /// Answers whether one was refused.
    fn record_probes(&mut self, results: Vec<(String, String, ProbeOutcome, Option<i64>)>) -> bool {
        let at_ms = self.clock.now_ms();
        // Answers too old to count are dropped (peers come and go by name).
        let max_age = self.handled_max_age_ms();
        self.handled.retain(|_, h| at_ms - h.probed_ms <= max_age);
        let mut any_refused = false;
        for (id, url, outcome, handled) in results {
            match (outcome, handled) {
                (ProbeOutcome::Alive, Some(due_ms)) => {
                    self.handled.insert(
                        id.clone(),
                        HandledThrough {
                            probed_ms: at_ms,
                            due_ms,
                        },
                    );
                }
                _ => {
                    self.handled.remove(&id);
                }
            }
            self.metrics
                .self_count(names::PEER_PROBES, 1, &[("outcome", outcome.as_str())]);
            if outcome == ProbeOutcome::Refused {
                tracing::warn!(monitor = %id, url = %url, "a peer refused its probe: the process is gone; its buckets move now");
                self.observer.mark_gone(&id);
                any_refused = true;
            }
            self.handles
                .probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id,
                    ProbeRecord {
                        outcome,
                        at_ms,
                        url,
                    },
                );
        }
        any_refused
    }

    /// Pushed assignments: tells the monitors whose buckets changed
    /// between `before` and `doc` (just written) to read the table now
    /// (`POST /admin/sync`, the table in the body). A hint: a lost notice
    /// only means the next pass reads the change; a monitor whose store
    /// reads fail applies the pushed table instead (`EngineHandles::sync_with`).
    async fn push_assignment(&self, before: &[crate::model::BucketAssignment], doc: &MasterDoc) {
        let http = self.handles.peer_http.get();
        let Some(client) = http.as_ref() else {
            return;
        };
        let after = &doc.buckets;
        let mut who: std::collections::BTreeSet<&str> = Default::default();
        for (a, b) in before.iter().zip(after) {
            if a.owner != b.owner || a.prev != b.prev || a.earlier != b.earlier {
                who.extend(
                    [a.owner.as_deref(), b.owner.as_deref(), b.prev.as_deref()]
                        .into_iter()
                        .flatten()
                        .chain(b.earlier.iter().map(|h| h.monitor.as_str())),
                );
            }
        }
        who.remove(&*self.me);
        let targets: Vec<(&str, &str)> = who
            .into_iter()
            .filter_map(|id| self.observer.admin_url(id).map(|u| (id, u)))
            .collect();
        // A lease renewal changes no bucket: nothing to tell, nothing to
        // serialise.
        if targets.is_empty() {
            return;
        }
        let token = self
            .cfg
            .admin_token
            .as_ref()
            .map(|t| t.get().sent().to_string());
        // (An empty body, should the table not serialise, is a plain hint.)
        let body = serde_json::to_string(doc).unwrap_or_default();
        let results = futures::future::join_all(targets.iter().map(|(_, url)| {
            let mut req = client
                .post(format!("{}/admin/sync", url.trim_end_matches('/')))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => "ok",
                    Ok(_) => "refused",
                    Err(_) => "failed",
                }
            }
        }))
        .await;
        for ((id, _), result) in targets.iter().zip(results) {
            self.metrics
                .self_count(names::SYNC_SENT, 1, &[("result", result)]);
            if result != "ok" {
                tracing::debug!(monitor = %id, result, "assignment push not taken; the next pass reads it");
            }
        }
    }

    /// Forgets the pushed table: the store answered this monitor, and its
    /// table is the view (a push it has not caught up with yet is read at
    /// a later pass; one that is never written, whatever its generation,
    /// is never kept for a later outage).
    fn drop_pushed(&self) {
        *self
            .handles
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A pass whose master read failed: applies the table a peer pushed
    /// if it is newer than this monitor's view.
    fn apply_pushed(&mut self, now: i64) {
        let doc = self
            .handles
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(doc) = doc else {
            return;
        };
        let current = self.handles.assignment.borrow().generation;
        if doc.generation <= current {
            return;
        }
        tracing::warn!(
            generation = doc.generation,
            was = current,
            "the store does not answer this monitor: applying the bucket table a peer wrote and pushed (its buckets moved)"
        );
        self.metrics.self_count(names::SYNC_APPLIED, 1, &[]);
        self.publish(doc.normalised(), now);
    }

    fn finish_pass(&mut self, hb_ok: bool, live: Option<usize>) {
        self.handles
            .pass_done_ms
            .store(self.clock.now_ms(), Ordering::Release);
        self.emit_self(hb_ok, live);
    }

    fn lease_is_mine(&self, doc: Option<&MasterDoc>) -> bool {
        doc.and_then(|d| d.lease_owner.as_deref()) == Some(&*self.me)
    }

    async fn release_lease(&mut self, doc: Option<&MasterDoc>, etag: Option<&Etag>) {
        let (Some(doc), Some(etag)) = (doc, etag) else {
            return;
        };
        let mut next = doc.clone();
        next.lease_owner = None;
        next.lease_expires_ms = 0;
        if self
            .store_call("write_master", self.store.write_master(&next, Some(etag)))
            .await
            .is_ok()
        {
            tracing::warn!(
                "released the master lease: this monitor's clock is off from the fleet's"
            );
        }
    }

    fn set_master_invalid(&mut self, reason: Option<String>) {
        match &reason {
            Some(r) if !self.master_invalid_logged => {
                tracing::error!(reason = %r, "the master document does not decode; it is rewritten from the last valid version once the lease has expired (monitor.master.repaired)");
                self.master_invalid_logged = true;
            }
            None => self.master_invalid_logged = false,
            _ => {}
        }
        self.handles
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .master_invalid = reason;
    }

    /// Membership for the master pass, from observed liveness. For one TTL
    /// after this monitor (re)gained the store, the owners named in `table`
    /// are presumed alive: an outage long enough for the store to expire
    /// every heartbeat document does not reshuffle the fleet.
    fn membership<'a>(
        &'a self,
        table: Option<&'a MasterDoc>,
        now: i64,
        connected_since: i64,
    ) -> Membership<'a> {
        let t = self.observe_timing();
        let members = Membership {
            missed_since_ms: self.observer.missed_since(
                &self.handled,
                now,
                self.handled_max_age_ms(),
            ),
            live: self
                .observer
                .live(now, connected_since, t)
                .into_iter()
                .collect(),
            eligible: self.observer.eligible(now, connected_since, t),
        };
        match table {
            Some(doc) if now - connected_since < ms(self.cfg.heartbeat_ttl) => {
                let mut m = members.presume_owners_alive(&doc.buckets);
                // A refused probe is evidence enough.
                m.live.retain(|id| !self.observer.is_gone(id));
                m.eligible.retain(|id| !self.observer.is_gone(id));
                m
            }
            _ => members,
        }
    }

    /// Makes `doc` this monitor's view; wakes the scheduler only when the
    /// assignment itself changed.
    fn publish(&self, doc: MasterDoc, now_ms: i64) {
        self.handles
            .assignment_read_ms
            .store(now_ms, Ordering::Release);
        let me = &*self.me;
        self.assignment_tx.send_if_modified(|cur| {
            let changed = cur.generation != doc.generation || *cur.buckets != doc.buckets;
            if changed {
                let before = balance::owned_count(&cur.buckets, me);
                let after = balance::owned_count(&doc.buckets, me);
                // Buckets moved again before a handoff time (kept as
                // earlier links of a handoff chain).
                let chained = doc.buckets.iter().filter(|b| !b.earlier.is_empty()).count();
                tracing::info!(
                    generation = doc.generation,
                    owned = after,
                    was = before,
                    chained,
                    "assignment changed"
                );
            }
            *cur = Arc::new(Assignment {
                generation: doc.generation,
                buckets: if changed {
                    Arc::new(doc.buckets)
                } else {
                    cur.buckets.clone()
                },
                lease_owner: doc.lease_owner,
                lease_expires_ms: doc.lease_expires_ms,
            });
            changed
        });
    }

    /// Marks this monitor draining and hands its buckets to the others.
    async fn leave(&mut self) -> Result<i64, String> {
        self.handles.draining.store(true, Ordering::Release);
        for _ in 0..5 {
            let now = self.clock.now_ms();
            let reads = self.read_all(now).await;
            let done = self.clock.now_ms();
            let live = reads.live.map_err(|e| e.to_string())?;
            self.observer
                .observe_list(&self.me, now, done, &live, self.observe_timing());
            let (base, etag) = match reads.master {
                Ok(Some(m)) => (m.value, m.etag),
                Ok(None) => return Ok(now), // no assignment at all: nothing to hand over
                Err(StoreError::CorruptMaster { etag, .. }) => match &self.last_valid_master {
                    Some(m) => (m.clone(), etag),
                    None => {
                        return Err(
                            "the master document is invalid and no valid version was seen".into(),
                        )
                    }
                },
                Err(e) => return Err(e.to_string()),
            };
            let connected_since = self.connected_since_ms.unwrap_or(i64::MAX);
            let members = self.membership(Some(&base), done, connected_since);
            let doc = balance::release(&self.me, &base, &members, self.timing(now));
            let handoff = doc
                .buckets
                .iter()
                .map(|b| b.handing_over_until(&self.me))
                .max()
                .filter(|t| *t != i64::MIN)
                .unwrap_or(now);
            match self
                .store_call("write_master", self.store.write_master(&doc, Some(&etag)))
                .await
            {
                Ok(_) => {
                    tracing::info!(generation = doc.generation, "released buckets and lease");
                    self.push_assignment(&base.buckets, &doc).await;
                    self.publish(doc, now);
                    return Ok(handoff);
                }
                Err(StoreError::PreconditionFailed) => {
                    self.metrics.self_count(names::MASTER_CONFLICTS, 1, &[]);
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("lost the master document race five times".into())
    }

    fn emit_self(&mut self, hb_ok: bool, live: Option<usize>) {
        let m = &self.metrics;
        let now = self.clock.now_ms();
        let view = self.handles.assignment.borrow().clone();
        let is_master =
            view.lease_owner.as_deref() == Some(&*self.me) && view.lease_expires_ms > now;
        if hb_ok {
            m.self_gauge(names::HEARTBEAT, 1);
        }
        m.self_gauge(names::MASTER, u64::from(is_master));
        let health = self
            .handles
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        m.self_gauge(
            names::MASTER_INVALID,
            u64::from(health.master_invalid.is_some()),
        );
        m.self_gauge(
            names::STORE_HEALTHY,
            u64::from(health.store_failures.is_empty()),
        );
        if let Some(c) = health.clock {
            let direction = if c.offset_ms >= 0 { "ahead" } else { "behind" };
            m.self_gauge_tagged(
                names::CLOCK_OFFSET,
                c.offset_ms.unsigned_abs(),
                &[("direction", direction)],
            );
            m.self_gauge(
                names::CLOCK_SKEWED,
                u64::from(c.verdict == ClockVerdict::Skewed),
            );
        }
        if let (true, Some(n)) = (is_master, live) {
            m.self_gauge(names::MONITORS_LIVE, n as u64);
        }
        m.self_gauge(
            names::BUCKETS_OWNED,
            balance::owned_count(&view.buckets, &self.me) as u64,
        );
        m.self_gauge(names::GENERATION, view.generation);
        let read = self.handles.assignment_read_ms.load(Ordering::Acquire);
        if read > 0 {
            m.self_gauge(names::ASSIGNMENT_AGE, (now - read).max(0) as u64);
        }
        m.self_gauge(names::CACHE_SIZE, self.handles.map.len() as u64);
        m.self_gauge(
            names::BUCKETS_PENDING,
            self.handles.map.pending_buckets().0 as u64,
        );
        m.self_gauge(names::CACHE_INVALID, self.handles.map.invalid_len() as u64);
        let mut cred_bytes = 0u64;
        self.handles
            .map
            .for_each(|e| cred_bytes += e.credentials.cached_bytes() as u64);
        m.self_gauge(names::CACHE_CREDENTIAL_BYTES, cred_bytes);
        let zones = crate::zone::stats();
        m.self_gauge(names::CACHE_ZONE_BYTES, zones.carved as u64);
        m.self_gauge(names::CACHE_ZONES, zones.zones as u64);
        let s = &self.handles.stats;
        m.self_gauge(
            names::CHECKS_INFLIGHT,
            s.inflight.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::CHECKS_INFLIGHT_HANGING,
            s.inflight_hanging.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::CHECKS_HANGING,
            s.hanging.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::CHECKS_SCHEDULED,
            s.scheduled.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::SCHEDULE_LAG,
            s.max_lag_ms.swap(0, Ordering::Relaxed).max(0) as u64,
        );
        let caught = self.handles.map.caught_up_at_ms();
        if caught > 0 {
            m.self_gauge(names::FEED_LAG, (now - caught).max(0) as u64);
        }
        let st = m.stats();
        let now_dropped = [
            ("queue_full", st.dropped_full.load(Ordering::Relaxed)),
            ("send_failed", st.dropped_send.load(Ordering::Relaxed)),
            ("stale", st.dropped_stale.load(Ordering::Relaxed)),
        ];
        let (remembered, verified) = crate::check::tls::chain_counts();
        let (was_remembered, was_verified) = self.chains_reported;
        for (how, n) in [
            ("remembered", remembered - was_remembered),
            ("verified", verified - was_verified),
        ] {
            if n > 0 {
                m.self_count(names::TLS_CHAINS, n, &[("how", how)]);
            }
        }
        self.chains_reported = (remembered, verified);
        let old_key = crate::secrets::old_key_opens();
        if old_key > self.old_key_reported {
            m.self_count(
                names::CREDENTIALS_OLD_KEY,
                old_key - self.old_key_reported,
                &[],
            );
            self.old_key_reported = old_key;
        }
        let ss = self.store.stats();
        let was = self.store_reported;
        for (reason, n, before) in [
            ("throttled", ss.retries_throttled, was.retries_throttled),
            (
                "unavailable",
                ss.retries_unavailable,
                was.retries_unavailable,
            ),
        ] {
            if n > before {
                m.self_count(names::STORE_RETRIES, n - before, &[("reason", reason)]);
            }
        }
        if ss.invalid_monitor_docs > was.invalid_monitor_docs {
            m.self_count(
                names::HEARTBEATS_INVALID,
                ss.invalid_monitor_docs - was.invalid_monitor_docs,
                &[],
            );
        }
        // Whole request units; the remainder waits for the next pass.
        let ru = ss
            .request_charge_milli
            .saturating_sub(was.request_charge_milli)
            / 1000;
        if ru > 0 {
            m.self_count(names::STORE_REQUEST_CHARGE, ru, &[]);
        }
        self.store_reported = crate::store::StoreStats {
            request_charge_milli: was.request_charge_milli + ru * 1000,
            ..ss
        };
        for (i, (reason, n)) in now_dropped.into_iter().enumerate() {
            if n > self.dropped_reported[i] {
                m.self_count(
                    names::METRICS_DROPPED,
                    n - self.dropped_reported[i],
                    &[("reason", reason)],
                );
                self.dropped_reported[i] = n;
            }
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A refused connection is the only probe outcome that proves a peer
    /// gone; a listener that accepts but never answers (a paused process:
    /// its kernel still accepts) is a timeout, which proves nothing.
    #[tokio::test]
    async fn probes_tell_a_gone_process_from_a_paused_one() {
        let client = peer_client(Duration::from_millis(800), &[]).unwrap();
        // Gone: a port nobody listens on.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        assert_eq!(probe_handled(&client, &gone).await.0, ProbeOutcome::Refused);
        // Paused: accepted by the kernel's backlog, never answered.
        let paused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let paused_url = format!("http://{}", paused.local_addr().unwrap());
        assert_eq!(
            probe_handled(&client, &paused_url).await.0,
            ProbeOutcome::Timeout
        );
        // Alive.
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = format!("http://{}", live.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = live.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlive\n")
                .await
                .unwrap();
        });
        assert_eq!(
            probe_handled(&client, &live_url).await.0,
            ProbeOutcome::Alive
        );
        server.await.unwrap();
        drop(paused);
    }
}
