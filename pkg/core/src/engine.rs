//! The monitor engine: membership (heartbeat, lease, assignment), the feed
//! reflector and the scheduler, wired together with a graceful, bounded
//! shutdown. All I/O with the store happens here and in the feed; every
//! decision is delegated to the pure functions of `balance` and `schedule`.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::feed::{self, ClusterEvent, ClusterMap, Reflector};
use crate::metrics::{names, Metrics};
use crate::model::{MasterDoc, MonitorDoc, MonitorStats};
use crate::schedule::{
    Assignment, LastCheck, RefreshRequest, SchedStats, Scheduler, SchedulerDeps,
};
use crate::store::{Store, StoreError, StoreResult};

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
    pub draining: Arc<AtomicBool>,
    pub stats: Arc<SchedStats>,
    pub last_checks: Arc<DashMap<Arc<str>, LastCheck>>,
    checker: Arc<dyn Checker>,
    metrics: Metrics,
    cmds: mpsc::Sender<Cmd>,
}

impl EngineHandles {
    /// Why this monitor is not ready, if it is not: the store answered
    /// within two heartbeat intervals, the assignment was read, the initial
    /// feed replay is done.
    pub fn not_ready(&self) -> Vec<String> {
        let now = self.clock.now_ms();
        let mut why = Vec::new();
        let ok = self.store_ok_ms.load(Ordering::Acquire);
        let limit = ms(self.heartbeat_interval * 2);
        if ok == 0 {
            why.push("the store has not answered yet".to_string());
        } else if now - ok > limit {
            why.push(format!(
                "the store has not answered for {:.1}s (limit {:.1}s)",
                (now - ok) as f64 / 1000.0,
                limit as f64 / 1000.0
            ));
        }
        if self.assignment_read_ms.load(Ordering::Acquire) == 0 {
            why.push("the bucket assignment has not been read yet".into());
        }
        if !self.map.replay_done() {
            why.push("the initial change feed replay is not done".into());
        }
        why
    }

    /// The self metrics in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        self.metrics.prometheus()
    }

    /// Clusters whose last check here failed.
    pub fn failing(&self) -> Vec<(Arc<str>, LastCheck)> {
        self.last_checks
            .iter()
            .filter(|e| !e.value().report.ok)
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
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

    /// Checks a cluster now, as the scheduler would (metrics included), and
    /// records the result. `None` when this monitor does not know the cluster.
    pub async fn check_now(&self, id: &str) -> Option<LastCheck> {
        let entry = self.map.get(id)?;
        let started = Instant::now();
        let started_ms = self.clock.now_ms();
        let deadline = started + self.check_timeout;
        let ctx = crate::check::CheckCtx {
            cluster: &entry,
            metrics: &self.metrics,
            deadline,
        };
        let report = match tokio::time::timeout_at(
            deadline + Duration::from_secs(1),
            self.checker.check(ctx),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => crate::check::CheckReport::failed("check timed out"),
        };
        let last = LastCheck {
            started_ms,
            duration_ms: ms(started.elapsed()) as u64,
            report,
        };
        self.last_checks.insert(entry.id.clone(), last.clone());
        Some(last)
    }
}

pub struct Engine {
    cfg: EngineConfig,
    store: Arc<dyn Store>,
    checker: Arc<dyn Checker>,
    metrics: Metrics,
    clock: Clock,
    reflector: Reflector,
    events: mpsc::Receiver<ClusterEvent>,
    assignment_tx: watch::Sender<Arc<Assignment>>,
    handles: EngineHandles,
    cmd_rx: mpsc::Receiver<Cmd>,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Arc<dyn Store>,
        checker: Arc<dyn Checker>,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let (reflector, map, events) = Reflector::new(metrics.clone(), clock, 4096);
        let (assignment_tx, assignment) = watch::channel(Arc::new(Assignment::empty()));
        let (cmds, cmd_rx) = mpsc::channel::<Cmd>(4);
        let handles = EngineHandles {
            me: cfg.id.as_str().into(),
            version: cfg.version.clone(),
            interval: cfg.interval,
            heartbeat_interval: cfg.heartbeat_interval,
            check_timeout: cfg.check_timeout,
            clock,
            store: store.clone(),
            map,
            assignment,
            assignment_read_ms: Arc::new(AtomicI64::new(0)),
            store_ok_ms: Arc::new(AtomicI64::new(0)),
            draining: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(SchedStats::default()),
            last_checks: Arc::new(DashMap::new()),
            checker: checker.clone(),
            metrics: metrics.clone(),
            cmds,
        };
        Ok(Self {
            cfg,
            store,
            checker,
            metrics,
            clock,
            reflector,
            events,
            assignment_tx,
            handles,
            cmd_rx,
        })
    }

    pub fn handles(&self) -> EngineHandles {
        self.handles.clone()
    }

    /// Runs until `shutdown` completes, then leaves gracefully: hands its
    /// buckets over with a timed handoff (checking until then), stops
    /// starting checks, waits for in-flight ones, deletes its heartbeat.
    /// Everything after `shutdown` fits in `shutdown_grace` plus a store call.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Engine {
            cfg,
            store,
            checker,
            metrics,
            clock,
            reflector,
            events,
            assignment_tx,
            handles,
            cmd_rx,
        } = self;
        let me: Arc<str> = cfg.id.as_str().into();
        let tracker = TaskTracker::new();
        let feed_stop = CancellationToken::new();
        let member_stop = CancellationToken::new();
        let stop_starting = CancellationToken::new();
        let abort = CancellationToken::new();

        let relist = (!store.feed_reports_deletes() && !cfg.relist_interval.is_zero()).then(|| {
            let view = handles.assignment.clone();
            let me = me.clone();
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
        let feed = feed::watch(
            store.clone(),
            None,
            cfg.feed_interval,
            cfg.feed_page_size,
            relist,
        );
        // Dropping this future (a crash in tests, an abort) stops every task
        // it started: nothing outlives the engine.
        let mut guard = AbortOnDrop(Vec::new());
        guard.0.push(
            tracker
                .spawn(reflector.run(feed, feed_stop.clone()))
                .abort_handle(),
        );

        let (refresh_tx, refresh_rx) = mpsc::channel::<RefreshRequest>(16);
        let cmd_tx = handles.cmds.clone();
        let member = MembershipLoop {
            cfg: cfg.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            clock,
            me: me.clone(),
            started_at: Utc::now(),
            assignment_tx,
            h: handles.clone(),
            rate: RateWindow::default(),
            dropped_reported: [0; 3],
            store_reported: Default::default(),
            connected_since_ms: None,
            last_heartbeat_ms: BTreeMap::new(),
        };
        guard.0.push(
            tracker
                .spawn(member.run(cmd_rx, refresh_rx, member_stop.clone()))
                .abort_handle(),
        );

        let sched = Scheduler::new(SchedulerDeps {
            me: me.clone(),
            interval: cfg.interval,
            check_timeout: cfg.check_timeout,
            max_concurrent: cfg.max_concurrent_checks,
            stale_after: cfg.heartbeat_ttl,
            refresh_timeout: cfg.heartbeat_interval,
            clock,
            map: handles.map.clone(),
            events,
            assignment: handles.assignment.clone(),
            assignment_read_ms: handles.assignment_read_ms.clone(),
            refresh: refresh_tx,
            checker,
            metrics: metrics.clone(),
            stats: handles.stats.clone(),
            last_checks: handles.last_checks.clone(),
        });
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
        tracker.wait().await;
        tracing::info!("monitor stopped");
    }
}

/// Aborts the engine's tasks when the engine's future is dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
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
    h: EngineHandles,
    rate: RateWindow,
    dropped_reported: [u64; 3],
    /// Store counters already emitted.
    store_reported: crate::store::StoreStats,
    /// Start of the current run of successful store reads.
    connected_since_ms: Option<i64>,
    /// Last heartbeat seen per monitor, kept a while after it dies so the
    /// master knows since when a dead owner's checks may have been missed.
    last_heartbeat_ms: BTreeMap<String, i64>,
}

fn members<'a>(live: &'a [MonitorDoc], seen: &BTreeMap<String, i64>) -> Membership<'a> {
    Membership {
        last_heartbeat_ms: seen.clone(),
        live: live.iter().map(|m| m.id.as_str()).collect(),
        eligible: live
            .iter()
            .filter(|m| !m.draining)
            .map(|m| m.id.as_str())
            .collect::<BTreeSet<_>>(),
    }
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
            }
        }
        match self
            .op("delete_monitor", self.store.delete_monitor(&self.me))
            .await
        {
            Ok(_) => tracing::info!("heartbeat deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "could not delete the heartbeat; it expires by itself")
            }
        }
    }

    fn draining(&self) -> bool {
        self.h.draining.load(Ordering::Acquire)
    }

    fn timing(&self, now_ms: i64) -> PassTiming {
        PassTiming {
            now_ms,
            lease_ttl_ms: ms(self.cfg.lease_ttl),
            handoff_ms: ms(self.cfg.handoff()),
            dead_lookback_ms: ms(self.cfg.heartbeat_ttl + self.cfg.heartbeat_interval),
        }
    }

    /// A store call bounded by one heartbeat interval, failures counted.
    async fn op<T>(&self, name: &str, f: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let r = match timeout(self.cfg.heartbeat_interval, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("{name} timed out"))),
        };
        if let Err(e) = &r {
            if !matches!(e, StoreError::PreconditionFailed | StoreError::Conflict) {
                self.metrics
                    .self_count(names::STORE_ERRORS, 1, &[("op", name)]);
                tracing::warn!(op = name, error = %e, "store call failed");
            }
        }
        r
    }

    async fn heartbeat(&mut self, now_ms: i64) -> bool {
        let view = self.h.assignment.borrow().clone();
        let doc = MonitorDoc {
            id: self.me.to_string(),
            hostname: self.cfg.hostname.clone(),
            version: self.cfg.version.clone(),
            started_at: self.started_at,
            admin_url: self.cfg.admin_url.clone(),
            draining: self.draining(),
            expires_at_ms: now_ms + ms(self.cfg.heartbeat_ttl),
            heartbeat_at_ms: now_ms,
            stats: MonitorStats {
                buckets: balance::owned_count(&view.buckets, &self.me) as u32,
                cache_size: self.h.map.len() as u64,
                checks_per_s: self
                    .rate
                    .update(self.h.stats.started.load(Ordering::Relaxed)),
                ready: self.h.not_ready().is_empty(),
                failing: self.h.last_checks.iter().filter(|e| !e.report.ok).count() as u32,
            },
        };
        self.op("heartbeat", self.store.upsert_monitor(&doc))
            .await
            .is_ok()
    }

    async fn pass(&mut self) {
        let now = self.clock.now_ms();
        let hb_ok = self.heartbeat(now).await;
        let live = self
            .op("list_monitors", self.store.list_monitors(now))
            .await;
        let master = match self.op("read_master", self.store.read_master()).await {
            Ok(m) if live.is_ok() => m,
            _ => {
                // Keep checking the last known buckets; the age metric tells.
                self.connected_since_ms = None;
                self.emit_self(hb_ok, live.ok().map(|l| l.len()));
                return;
            }
        };
        let since = *self.connected_since_ms.get_or_insert(now);
        if hb_ok {
            self.h.store_ok_ms.store(now, Ordering::Release);
        }
        let mut view = master.as_ref().map(|v| v.value.clone().normalised());
        if let (false, Ok(live)) = (self.draining(), &live) {
            let table = view.as_ref().map(|d| d.buckets.clone()).unwrap_or_default();
            for m in live {
                self.last_heartbeat_ms
                    .insert(m.id.clone(), m.heartbeat_at_ms);
            }
            let forget_before = now - 10 * ms(self.cfg.heartbeat_ttl);
            self.last_heartbeat_ms.retain(|_, t| *t >= forget_before);
            let mut members = members(live, &self.last_heartbeat_ms);
            if now - since < ms(self.cfg.heartbeat_ttl) {
                members = members.presume_owners_alive(&table);
            }
            match balance::master_pass(&self.me, view.as_ref(), &members, self.timing(now)) {
                MasterAction::Follow => {}
                MasterAction::Write(doc) => {
                    let expected = master.as_ref().map(|m| &m.etag);
                    match self
                        .op("write_master", self.store.write_master(&doc, expected))
                        .await
                    {
                        Ok(_) => {
                            if master.as_ref().and_then(|m| m.value.lease_held_at(now))
                                != Some(&*self.me)
                            {
                                tracing::info!(
                                    generation = doc.generation,
                                    live = live.len(),
                                    "took the master lease"
                                );
                            }
                            view = Some(doc);
                        }
                        Err(StoreError::PreconditionFailed | StoreError::Conflict) => {
                            self.metrics.self_count(names::MASTER_CONFLICTS, 1, &[]);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        self.publish(view.unwrap_or_else(MasterDoc::empty), now);
        let live_n = live.ok().map(|l| l.len());
        self.emit_self(hb_ok, live_n);
    }

    /// Makes `doc` this monitor's view; wakes the scheduler only when the
    /// assignment itself changed.
    fn publish(&self, doc: MasterDoc, now_ms: i64) {
        self.h.assignment_read_ms.store(now_ms, Ordering::Release);
        let me = &*self.me;
        self.assignment_tx.send_if_modified(|cur| {
            let changed = cur.generation != doc.generation || *cur.buckets != doc.buckets;
            if changed {
                let before = balance::owned_count(&cur.buckets, me);
                let after = balance::owned_count(&doc.buckets, me);
                tracing::info!(
                    generation = doc.generation,
                    owned = after,
                    was = before,
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
        self.h.draining.store(true, Ordering::Release);
        for _ in 0..5 {
            let now = self.clock.now_ms();
            self.heartbeat(now).await;
            let live = self
                .op("list_monitors", self.store.list_monitors(now))
                .await
                .map_err(|e| e.to_string())?;
            let Some(m) = self
                .op("read_master", self.store.read_master())
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(now); // no assignment at all: nothing to hand over
            };
            let doc = balance::release(
                &self.me,
                &m.value,
                &members(&live, &self.last_heartbeat_ms),
                self.timing(now),
            );
            let handoff = doc
                .buckets
                .iter()
                .filter(|b| b.prev.as_deref() == Some(&*self.me))
                .map(|b| b.handoff_at_ms)
                .max()
                .unwrap_or(now);
            match self
                .op("write_master", self.store.write_master(&doc, Some(&m.etag)))
                .await
            {
                Ok(_) => {
                    tracing::info!(generation = doc.generation, "released buckets and lease");
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
        let view = self.h.assignment.borrow().clone();
        let is_master =
            view.lease_owner.as_deref() == Some(&*self.me) && view.lease_expires_ms > now;
        if hb_ok {
            m.self_gauge(names::HEARTBEAT, 1);
        }
        m.self_gauge(names::MASTER, u64::from(is_master));
        if let (true, Some(n)) = (is_master, live) {
            m.self_gauge(names::MONITORS_LIVE, n as u64);
        }
        m.self_gauge(
            names::BUCKETS_OWNED,
            balance::owned_count(&view.buckets, &self.me) as u64,
        );
        m.self_gauge(names::GENERATION, view.generation);
        let read = self.h.assignment_read_ms.load(Ordering::Acquire);
        if read > 0 {
            m.self_gauge(names::ASSIGNMENT_AGE, (now - read).max(0) as u64);
        }
        m.self_gauge(names::CACHE_SIZE, self.h.map.len() as u64);
        m.self_gauge(names::CACHE_INVALID, self.h.map.invalid_len() as u64);
        let mut cred_bytes = 0u64;
        self.h
            .map
            .for_each(|e| cred_bytes += e.credentials.cached_bytes() as u64);
        m.self_gauge(names::CACHE_CREDENTIAL_BYTES, cred_bytes);
        let s = &self.h.stats;
        m.self_gauge(
            names::CHECKS_INFLIGHT,
            s.inflight.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::CHECKS_SCHEDULED,
            s.scheduled.load(Ordering::Relaxed) as u64,
        );
        m.self_gauge(
            names::SCHEDULE_LAG,
            s.max_lag_ms.swap(0, Ordering::Relaxed).max(0) as u64,
        );
        let caught = self.h.map.caught_up_at_ms();
        if caught > 0 {
            m.self_gauge(names::FEED_LAG, (now - caught).max(0) as u64);
        }
        let st = m.stats();
        let now_dropped = [
            ("queue_full", st.dropped_full.load(Ordering::Relaxed)),
            ("send_failed", st.dropped_send.load(Ordering::Relaxed)),
            ("stale", st.dropped_stale.load(Ordering::Relaxed)),
        ];
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

/// Waits until `f` holds, polling; for tests and tools. Returns false at the deadline.
pub async fn wait_for(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
