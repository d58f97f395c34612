//! Scheduling: each cluster is due at a fixed phase of the interval, derived
//! from its id, on a grid of Unix milliseconds shared by every monitor. A
//! handoff therefore keeps the phase, and checks spread evenly.
//!
//! One task owns the timetable; checks run on a bounded pool (a semaphore
//! permit is taken before a check is accepted) and never twice at once for
//! one cluster. A check that cannot start on time is skipped and counted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::check::{CheckCtx, CheckReport, Checker};
use crate::clock::{ms, Clock};
use crate::feed::{ClusterEntry, ClusterEvent, ClusterMap};
use crate::metrics::{names, Metrics};
use crate::model::{BucketAssignment, BUCKETS};

/// FNV-1a, 64 bit: stable across versions and platforms, so monitors of
/// different builds agree on every cluster's phase during a rolling upgrade.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cluster's offset within the interval, in `[0, interval_ms)`.
pub fn phase_ms(id: &str, interval_ms: i64) -> i64 {
    (fnv1a(id) % interval_ms as u64) as i64
}

/// The first due time at or after `t`: the smallest `d >= t` with
/// `d ≡ phase (mod interval)`.
pub fn next_due(t: i64, phase: i64, interval: i64) -> i64 {
    t + (phase - t).rem_euclid(interval)
}

/// This monitor's view of the assignment.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub generation: u64,
    pub buckets: Arc<Vec<BucketAssignment>>,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: i64,
}

impl Assignment {
    pub fn empty() -> Self {
        Self {
            generation: 0,
            buckets: Arc::new(vec![BucketAssignment::default(); BUCKETS]),
            lease_owner: None,
            lease_expires_ms: 0,
        }
    }

    pub fn bucket(&self, b: u8) -> &BucketAssignment {
        &self.buckets[usize::from(b)]
    }
}

/// Result of the last check of a cluster, for operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LastCheck {
    pub started_ms: i64,
    pub duration_ms: u64,
    pub report: CheckReport,
}

/// Counters shared with the membership loop (self metrics, heartbeat stats).
#[derive(Debug, Default)]
pub struct SchedStats {
    pub started: AtomicU64,
    pub inflight: AtomicUsize,
    pub scheduled: AtomicUsize,
    pub max_lag_ms: AtomicI64,
}

/// Asks the membership loop for a fresh assignment; answers when done.
pub type RefreshRequest = oneshot::Sender<()>;

pub struct SchedulerDeps {
    pub me: Arc<str>,
    pub interval: Duration,
    pub check_timeout: Duration,
    pub max_concurrent: usize,
    /// A view older than this is refreshed before a check starts.
    pub stale_after: Duration,
    /// How long to wait for that refresh before going on with the old view.
    pub refresh_timeout: Duration,
    pub clock: Clock,
    pub map: ClusterMap,
    pub events: mpsc::Receiver<ClusterEvent>,
    pub assignment: watch::Receiver<Arc<Assignment>>,
    /// Clock time of the last successful assignment read.
    pub assignment_read_ms: Arc<AtomicI64>,
    pub refresh: mpsc::Sender<RefreshRequest>,
    pub checker: Arc<dyn Checker>,
    pub metrics: Metrics,
    pub stats: Arc<SchedStats>,
    pub last_checks: Arc<DashMap<Arc<str>, LastCheck>>,
}

struct Slot {
    gen: u64,
    phase: i64,
    /// This entry is a catch-up of a check a dead owner missed.
    catch_up: bool,
}

pub struct Scheduler {
    d: SchedulerDeps,
    interval_ms: i64,
    permits: Arc<Semaphore>,
    slots: HashMap<Arc<str>, Slot>,
    heap: BinaryHeap<Reverse<(i64, u64, Arc<str>)>>,
    running: HashSet<Arc<str>>,
    checks: JoinSet<(Arc<str>, LastCheck)>,
    next_gen: u64,
    view: Arc<Assignment>,
    last_refresh_try: Option<Instant>,
}

impl Scheduler {
    pub fn new(d: SchedulerDeps) -> Self {
        let view = d.assignment.borrow().clone();
        Self {
            interval_ms: ms(d.interval).max(1),
            permits: Arc::new(Semaphore::new(d.max_concurrent)),
            slots: HashMap::new(),
            heap: BinaryHeap::new(),
            running: HashSet::new(),
            checks: JoinSet::new(),
            next_gen: 0,
            view,
            last_refresh_try: None,
            d,
        }
    }

    /// Schedules and runs checks until `stop_starting` is cancelled, then
    /// waits for in-flight checks until they finish or `abort` is cancelled.
    pub async fn run(mut self, stop_starting: CancellationToken, abort: CancellationToken) {
        self.rescan();
        loop {
            let next_at = self
                .heap
                .peek()
                .map(|Reverse((due, _, _))| self.d.clock.instant_at(*due));
            tokio::select! {
                biased;
                _ = stop_starting.cancelled() => break,
                Some(done) = self.checks.join_next(), if !self.checks.is_empty() => self.finished(done),
                ev = self.d.events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                changed = self.d.assignment.changed() => {
                    if changed.is_err() { break }
                    self.view = self.d.assignment.borrow_and_update().clone();
                    self.rescan();
                }
                _ = sleep_until_opt(next_at) => self.fire_due().await,
            }
        }
        // Drain: no new checks; in-flight ones finish or are aborted.
        loop {
            tokio::select! {
                _ = abort.cancelled() => {
                    let n = self.checks.len();
                    if n > 0 {
                        tracing::warn!(checks = n, "shutdown grace over: cancelling in-flight checks");
                    }
                    self.checks.shutdown().await;
                    break;
                }
                done = self.checks.join_next() => match done {
                    Some(done) => self.finished(done),
                    None => break,
                },
            }
        }
        self.d.stats.inflight.store(0, Ordering::Relaxed);
    }

    fn wanted(&self, e: &ClusterEntry, now_ms: i64) -> bool {
        e.state.is_checkable() && self.view.bucket(e.bucket).involves(&self.d.me, now_ms)
    }

    fn schedule_at(&mut self, id: Arc<str>, due: i64, phase: i64) {
        self.schedule_slot(id, due, phase, false);
    }

    fn schedule_slot(&mut self, id: Arc<str>, due: i64, phase: i64, catch_up: bool) {
        self.next_gen += 1;
        let gen = self.next_gen;
        self.slots.insert(
            id.clone(),
            Slot {
                gen,
                phase,
                catch_up,
            },
        );
        self.heap.push(Reverse((due, gen, id)));
    }

    fn ensure(&mut self, e: &ClusterEntry, now_ms: i64, fresh: bool) {
        if self.slots.contains_key(&e.id) && !fresh {
            return;
        }
        let phase = phase_ms(&e.id, self.interval_ms);
        let next = next_due(now_ms, phase, self.interval_ms);
        let catch_up = !fresh && self.missed_by_dead_owner(e, next);
        let due = if fresh || catch_up { now_ms } else { next };
        self.schedule_slot(e.id.clone(), due, phase, catch_up);
    }

    /// Whether the cluster's latest due time (the one before `next`) fell
    /// to this monitor after a dead owner may have stopped checking: the
    /// bucket came without a live handoff and is marked since when checks
    /// may have been missed. That check is run at once (catch-up), so a
    /// crash costs at most the failover time, not one interval more.
    fn missed_by_dead_owner(&self, e: &ClusterEntry, next: i64) -> bool {
        let a = self.view.bucket(e.bucket);
        let last_due = next - self.interval_ms;
        a.prev.is_none()
            && a.handoff_at_ms != 0
            && a.owner.as_deref() == Some(&*self.d.me)
            && last_due >= a.handoff_at_ms
    }

    /// Reconciles the timetable with the map and the current view.
    fn rescan(&mut self) {
        let now = self.d.clock.now_ms();
        let mut wanted: Vec<Arc<ClusterEntry>> = Vec::new();
        self.d.map.for_each(|e| {
            if self.wanted(e, now) {
                wanted.push(e.clone());
            }
        });
        let keep: HashSet<&str> = wanted.iter().map(|e| &*e.id).collect();
        self.slots.retain(|id, _| keep.contains(&**id));
        for e in &wanted {
            self.ensure(e, now, false);
        }
        self.compact_heap();
        self.d
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    /// Drops stale heap entries when they dominate (after big reassignments).
    fn compact_heap(&mut self) {
        if self.heap.len() > 2 * self.slots.len() + 1024 {
            let slots = &self.slots;
            self.heap
                .retain(|Reverse((_, gen, id))| slots.get(id).is_some_and(|s| s.gen == *gen));
        }
    }

    fn on_event(&mut self, ev: ClusterEvent) {
        let now = self.d.clock.now_ms();
        match ev {
            ClusterEvent::Changed { id, fresh } => match self.d.map.get(&id) {
                Some(e) if self.wanted(&e, now) => self.ensure(&e, now, fresh),
                _ => {
                    self.slots.remove(&id);
                }
            },
            ClusterEvent::Removed { id } => {
                self.slots.remove(&id);
                self.d.last_checks.remove(&id);
            }
        }
        self.d
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    async fn fire_due(&mut self) {
        let mut now = self.d.clock.now_ms();
        while let Some(Reverse((due, gen, _))) = self.heap.peek() {
            if *due > now {
                break;
            }
            let (due, gen) = (*due, *gen);
            let Reverse((_, _, id)) = self.heap.pop().expect("peeked");
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            if slot.gen != gen {
                continue;
            }
            if self.view_is_stale(now) {
                self.refresh_view().await;
                now = self.d.clock.now_ms();
            }
            self.fire(id, due, now);
        }
        self.d
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    fn view_is_stale(&self, now_ms: i64) -> bool {
        now_ms - self.d.assignment_read_ms.load(Ordering::Acquire) > ms(self.d.stale_after)
            && self
                .last_refresh_try
                .is_none_or(|t| t.elapsed() >= self.d.refresh_timeout)
    }

    /// Called after a pause: ask for a fresh view before starting checks,
    /// and go on with the old one if the store does not answer in time.
    async fn refresh_view(&mut self) {
        self.last_refresh_try = Some(Instant::now());
        let (tx, rx) = oneshot::channel();
        if self.d.refresh.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(self.d.refresh_timeout, rx).await;
        }
        if self.d.assignment.has_changed().unwrap_or(false) {
            self.view = self.d.assignment.borrow_and_update().clone();
            self.rescan();
        }
    }

    fn fire(&mut self, id: Arc<str>, due: i64, now: i64) {
        let Some(entry) = self.d.map.get(&id) else {
            self.slots.remove(&id);
            return;
        };
        let a = self.view.bucket(entry.bucket).clone();
        let (phase, catch_up) = {
            let slot = &self.slots[&id];
            (slot.phase, slot.catch_up)
        };
        let late = now - due > self.interval_ms / 2;
        // Next due time on the grid. A catch-up is followed by the grid slot
        // at least half an interval later, not at once by a near-duplicate
        // (the failover bound allows it). A new cluster's first check is
        // followed by its next grid slot: no gap beyond one interval.
        let from = if catch_up {
            due + self.interval_ms / 2
        } else {
            due.max(now - self.interval_ms / 2) + 1
        };
        let next = next_due(from, phase, self.interval_ms);
        if entry.state.is_checkable() && a.involves(&self.d.me, next) {
            self.schedule_at(id.clone(), next, phase);
        } else {
            self.slots.remove(&id);
        }
        if a.owner_at(due) != Some(&*self.d.me) {
            return; // the previous or next owner checks this one
        }
        let skip = |reason: &str| {
            self.d
                .metrics
                .self_count(names::CHECKS_SKIPPED, 1, &[("reason", reason)])
        };
        if late {
            skip("late");
            return;
        }
        if self.running.contains(&id) {
            skip("still_running");
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            skip("pool_full");
            return;
        };
        let lag = now - due;
        self.d.stats.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
        self.d.stats.started.fetch_add(1, Ordering::Relaxed);
        self.d.stats.inflight.fetch_add(1, Ordering::Relaxed);
        self.d.metrics.self_count(names::CHECKS_STARTED, 1, &[]);
        self.running.insert(id.clone());

        let checker = self.d.checker.clone();
        let metrics = self.d.metrics.clone();
        let clock = self.d.clock;
        let timeout = self.d.check_timeout;
        self.checks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let started_ms = clock.now_ms();
            let deadline = started + timeout;
            let ctx = CheckCtx {
                cluster: &entry,
                metrics: &metrics,
                deadline,
            };
            // The checker should honour the deadline; this is the backstop. A
            // panicking checker is caught here and reported like a failure.
            let run = std::panic::AssertUnwindSafe(checker.check(ctx)).catch_unwind();
            let res = tokio::time::timeout_at(deadline + Duration::from_secs(1), run).await;
            let duration_ms = ms(started.elapsed()) as u64;
            let (report, result) = match res {
                Ok(Ok(r)) => {
                    let result = if r.ok { "ok" } else { "failed" };
                    (r, result)
                }
                Ok(Err(_)) => {
                    tracing::error!(cluster = %entry.id, "check panicked");
                    (CheckReport::failed("check panicked"), "failed")
                }
                Err(_) => {
                    metrics.self_count(names::CHECKS_TIMEDOUT, 1, &[]);
                    (CheckReport::failed("check timed out"), "timeout")
                }
            };
            metrics.timer_ms(
                names::CHECK_DURATION,
                duration_ms,
                &entry.tags_with(&[("result", result)]),
            );
            (
                entry.id.clone(),
                LastCheck {
                    started_ms,
                    duration_ms,
                    report,
                },
            )
        });
    }

    fn finished(&mut self, done: Result<(Arc<str>, LastCheck), tokio::task::JoinError>) {
        self.d.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        match done {
            Ok((id, last)) => {
                self.running.remove(&id);
                if self.d.map.get(&id).is_some() {
                    self.d.last_checks.insert(id, last);
                }
            }
            Err(e) => {
                // Only cancellation (abort at shutdown) gets here: panics are
                // caught inside the task.
                tracing::debug!(error = %e, "check task cancelled");
                if self.checks.is_empty() {
                    self.running.clear();
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn next_due_is_on_the_grid_and_not_before_t() {
        assert_eq!(next_due(0, 0, 10), 0);
        assert_eq!(next_due(1, 0, 10), 10);
        assert_eq!(next_due(15, 7, 10), 17);
        assert_eq!(next_due(17, 7, 10), 17);
        assert_eq!(next_due(-3, 7, 10), -3); // -3 ≡ 7 (mod 10)
        assert_eq!(next_due(-4, 7, 10), -3);
    }

    proptest! {
        #[test]
        fn next_due_props(t in -1_000_000i64..1_000_000, phase in 0i64..60_000, interval in 1i64..60_000) {
            let phase = phase % interval;
            let d = next_due(t, phase, interval);
            prop_assert!(d >= t && d - t < interval);
            prop_assert_eq!((d - phase).rem_euclid(interval), 0);
        }
    }

    #[test]
    fn phases_spread_evenly() {
        // 10,000 ids over 10 slices of the interval: each within 20% of 1,000.
        let interval = 60_000;
        let mut slices = [0u32; 10];
        for i in 0..10_000 {
            let p = phase_ms(&format!("cluster-{i}"), interval);
            slices[(p * 10 / interval) as usize] += 1;
        }
        for s in slices {
            assert!((800..=1200).contains(&s), "uneven phases: {slices:?}");
        }
        // Stable across runs and builds.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use crate::store::contract::cluster;
    use async_trait::async_trait;
    use std::sync::Mutex;

    struct Slow {
        took: Duration,
        log: Arc<Mutex<Vec<(String, i64)>>>,
        clock: Clock,
    }

    #[async_trait]
    impl Checker for Slow {
        async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport {
            self.log
                .lock()
                .unwrap()
                .push((ctx.cluster.id.to_string(), self.clock.now_ms()));
            tokio::time::sleep(self.took).await;
            CheckReport {
                ok: true,
                summary: "ok".into(),
                ..Default::default()
            }
        }
    }

    struct Harness {
        log: Arc<Mutex<Vec<(String, i64)>>>,
        metrics_rx: mpsc::Receiver<crate::metrics::Queued>,
        refresh_rx: mpsc::Receiver<RefreshRequest>,
        read_ms: Arc<AtomicI64>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _events: mpsc::Sender<ClusterEvent>,
        _assign: watch::Sender<Arc<Assignment>>,
        /// Kept alive so the scheduler's event channel stays open.
        _reflector: crate::feed::Reflector,
    }

    /// A scheduler owning every bucket, over `ids` (all checkable).
    async fn harness(ids: &[&str], max_concurrent: usize, took: Duration, read_ms: i64) -> Harness {
        let clock = Clock::at(0);
        let (reflector, map, events_rx) =
            crate::feed::Reflector::new(Metrics::disabled(), clock, 64);
        let mut reflector = reflector;
        let changes = ids
            .iter()
            .map(|id| {
                crate::store::Change::Upsert(crate::store::RawCluster {
                    id: id.to_string(),
                    body: serde_json::to_string(&cluster(id, 1)).unwrap(),
                })
            })
            .collect();
        reflector
            .apply(crate::feed::FeedEvent::Page(crate::store::FeedPage {
                changes,
                continuation: "1".into(),
                caught_up: true,
            }))
            .await
            .unwrap();
        let mut a = Assignment::empty();
        a.buckets = Arc::new(vec![BucketAssignment::owned_by("me"); BUCKETS]);
        let (assign_tx, assign_rx) = watch::channel(Arc::new(a));
        let (refresh_tx, refresh_rx) = mpsc::channel(4);
        let (metrics, metrics_rx) = Metrics::capture("me", 10_000);
        let log = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::new(AtomicI64::new(read_ms));
        let (events_tx, _) = mpsc::channel(1);
        let sched = Scheduler::new(SchedulerDeps {
            me: "me".into(),
            interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(30),
            max_concurrent,
            stale_after: Duration::from_secs(10),
            refresh_timeout: Duration::from_secs(2),
            clock,
            map,
            events: events_rx,
            assignment: assign_rx,
            assignment_read_ms: read.clone(),
            refresh: refresh_tx,
            checker: Arc::new(Slow {
                took,
                log: log.clone(),
                clock,
            }),
            metrics,
            stats: Arc::new(SchedStats::default()),
            last_checks: Arc::new(DashMap::new()),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(sched.run(stop.clone(), stop.clone()));
        Harness {
            log,
            metrics_rx,
            refresh_rx,
            read_ms: read,
            stop,
            task,
            _events: events_tx,
            _assign: assign_tx,
            _reflector: reflector,
        }
    }

    fn skipped(h: &mut Harness, reason: &str) -> usize {
        let want = format!("monitor.checks.skipped:1|c|#monitor:me,reason:{reason}");
        std::iter::from_fn(|| h.metrics_rx.try_recv().ok())
            .filter(|q| q.line == want)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_longer_than_the_interval_is_never_run_twice_at_once() {
        let mut h = harness(&["a"], 10, Duration::from_secs(25), i64::MAX / 2).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let starts: Vec<i64> = h.log.lock().unwrap().iter().map(|(_, t)| *t).collect();
        // Runs of 25 s at a 10 s interval: start, skip, skip, start, ...
        for w in starts.windows(2) {
            assert!(w[1] - w[0] >= 25_000, "overlapping checks: {starts:?}");
        }
        assert!(starts.len() >= 2);
        assert!(skipped(&mut h, "still_running") >= 3);
        h.stop.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_skips_and_counts_instead_of_queueing() {
        // Ten clusters, one worker, checks of 9 s: most due checks find the pool full.
        let ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut h = harness(&refs, 1, Duration::from_secs(9), i64::MAX / 2).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let started = h.log.lock().unwrap().len();
        assert!(
            (3..=4).contains(&started),
            "one worker, 9 s checks, 30 s: {started} started"
        );
        let full = skipped(&mut h, "pool_full");
        assert!(full >= 20, "pool_full skips counted: {full}");
        h.stop.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_view_is_refreshed_before_a_check_starts() {
        // The view was last read 20 s before the start: stale at the first due time.
        let mut h = harness(&["a"], 10, Duration::from_millis(10), -20_000).await;
        let req = tokio::time::timeout(Duration::from_secs(30), h.refresh_rx.recv())
            .await
            .expect("refresh asked")
            .unwrap();
        assert!(
            h.log.lock().unwrap().is_empty(),
            "no check before the refresh answered"
        );
        h.read_ms.store(i64::MAX / 2, Ordering::Release); // the refresh succeeded
        req.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            h.log.lock().unwrap().len(),
            1,
            "the check runs after the refresh"
        );
        h.stop.cancel();
        h.task.await.unwrap();
    }
}
