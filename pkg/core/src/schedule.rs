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

use crate::check::{CheckCtx, CheckReport, Checker, CollectorOutcome, HEALTHY_SUMMARY};
use crate::clock::{ms, Clock};
use crate::feed::{ClusterEntry, ClusterEvent, ClusterMap};
use crate::metrics::{names, Metrics};
use crate::model::{BucketAssignment, BUCKETS};

mod due;
pub use due::{
    decide_due, due_after, first_due, fnv1a, hanging_permits, is_hanging, next_due, phase_ms,
    start_at, DueDecision, DueFacts, Entry,
};

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

/// A cluster's last check as [`Scheduler`] keeps it for operators
/// (`EngineHandles::last_checks`, one per cluster held): a check that
/// passed, the common case, as its collectors' times only (56 bytes a
/// table slot with its key, and nothing beside for the healthz profile or
/// 24 bytes a collector for the full one; a whole report takes 104 and
/// 48 a collector); anything else whole. [`StoredCheck::last`]
/// gives back the [`LastCheck`] it was made from.
#[derive(Clone, Debug)]
pub struct StoredCheck {
    pub started_ms: i64,
    /// Saturates at 49 days.
    duration_ms: u32,
    kept: Kept,
}

#[derive(Clone, Debug)]
enum Kept {
    /// [`HEALTHY_SUMMARY`], the API server the only collector.
    Apiserver {
        ms: u32,
    },
    /// [`HEALTHY_SUMMARY`], every collector passed: names and times.
    Passed(Box<[(&'static str, u32)]>),
    Report(Box<CheckReport>),
}

impl StoredCheck {
    pub fn new(last: LastCheck) -> Self {
        let r = last.report;
        let passed = r.ok
            && r.summary == HEALTHY_SUMMARY
            && r.conditions.is_empty()
            && r.collectors.iter().all(|c| c.ok && c.error.is_none());
        let kept = match &*r.collectors {
            [c] if passed && c.name == "apiserver" => Kept::Apiserver { ms: c.duration_ms },
            cs if passed && !cs.is_empty() => {
                Kept::Passed(cs.iter().map(|c| (c.name, c.duration_ms)).collect())
            }
            _ => Kept::Report(Box::new(r)),
        };
        Self {
            started_ms: last.started_ms,
            duration_ms: u32::try_from(last.duration_ms).unwrap_or(u32::MAX),
            kept,
        }
    }

    pub fn ok(&self) -> bool {
        match &self.kept {
            Kept::Apiserver { .. } | Kept::Passed(_) => true,
            Kept::Report(r) => r.ok,
        }
    }

    /// Failed, or found a condition to alert on.
    pub fn failing_or_alerting(&self) -> bool {
        match &self.kept {
            Kept::Apiserver { .. } | Kept::Passed(_) => false,
            Kept::Report(r) => !r.ok || !r.conditions.is_empty(),
        }
    }

    /// The check as it was reported.
    pub fn last(&self) -> LastCheck {
        let outcome = |name, duration_ms| CollectorOutcome {
            name,
            ok: true,
            duration_ms,
            error: None,
        };
        let passed = |collectors| CheckReport {
            ok: true,
            summary: HEALTHY_SUMMARY.into(),
            collectors,
            conditions: Vec::new(),
        };
        LastCheck {
            started_ms: self.started_ms,
            duration_ms: u64::from(self.duration_ms),
            report: match &self.kept {
                Kept::Apiserver { ms } => passed(Box::new([outcome("apiserver", *ms)])),
                Kept::Passed(cs) => passed(cs.iter().map(|&(n, ms)| outcome(n, ms)).collect()),
                Kept::Report(r) => (**r).clone(),
            },
        }
    }
}

/// Counters shared with the membership loop (self metrics, heartbeat stats).
#[derive(Debug, Default)]
pub struct SchedStats {
    pub started: AtomicU64,
    pub inflight: AtomicUsize,
    /// Checks in flight of hanging clusters (within `inflight`).
    pub inflight_hanging: AtomicUsize,
    /// Clusters whose last check used nearly its whole timeout.
    pub hanging: AtomicUsize,
    pub scheduled: AtomicUsize,
    pub max_lag_ms: AtomicI64,
    /// The earliest due time not handled yet (`i64::MAX`: none; 0: the
    /// scheduler has not run). A leaving monitor waits until it passes its
    /// handoff time, and the feed keeps a bucket handed over until it
    /// passes that bucket's: a check due just before it may fire a little
    /// after it (timers round up, a busy thread), and must still start.
    pub pending_from_ms: AtomicI64,
}

impl SchedStats {
    /// The earliest due time the scheduler has not handled yet
    /// ([`Self::pending_from_ms`]): `Some(i64::MAX)` when none is pending,
    /// `None` when the scheduler has not run yet. Each reader decides what
    /// `None` means for it.
    pub fn pending_from(&self) -> Option<i64> {
        match self.pending_from_ms.load(Ordering::Acquire) {
            0 => None,
            v => Some(v),
        }
    }
}

/// Asks the membership loop for a fresh assignment; answers when done.
pub type RefreshRequest = oneshot::Sender<()>;

/// A check asked for by an operator (`POST /admin/check/{id}`): it goes
/// through the same pool, never overlaps a scheduled check of the cluster,
/// and emits the same metrics.
pub struct CheckNowRequest {
    pub id: String,
    pub reply: oneshot::Sender<CheckNowAnswer>,
}

#[derive(Clone, Debug)]
pub enum CheckNowAnswer {
    Done(LastCheck),
    /// This monitor's cache has no such (checkable or not) cluster.
    Unknown,
    /// A check of the cluster is running now: ask again when it is done.
    Busy,
    /// No worker permit is free.
    PoolFull,
}

pub struct SchedulerDeps {
    pub me: Arc<str>,
    pub interval: Duration,
    pub check_timeout: Duration,
    /// Checks due within one tick start together at its end
    /// ([`start_at`]); zero: each at its due millisecond.
    pub dispatch_tick: Duration,
    pub max_concurrent: usize,
    /// Percent of the pool that hanging clusters may hold ([`is_hanging`]).
    pub hanging_share_pct: u8,
    /// A membership loop that has not finished a pass for this long has
    /// stalled: the view is refreshed before the next check starts.
    pub stalled_after: Duration,
    /// How long to wait for that refresh before going on with the old view.
    pub refresh_timeout: Duration,
    /// How far apart two monitors' change feeds may deliver one document
    /// (one feed interval): see [`first_due`].
    pub feed_skew: Duration,
    /// Clock time at which the membership loop last finished a pass.
    pub pass_done_ms: Arc<AtomicI64>,
    pub check_now: mpsc::Receiver<CheckNowRequest>,
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
    pub last_checks: Arc<DashMap<Arc<str>, StoredCheck>>,
    /// Finished checks of owned clusters for the alert task (`crate::alerts`).
    pub alerts: Option<mpsc::Sender<crate::alerts::AlertInput>>,
}

struct Slot {
    gen: u64,
    /// When this slot's check is due (its heap entry's time).
    due: i64,
    phase: i64,
    /// This entry is a catch-up of a check a dead owner missed.
    catch_up: bool,
}

/// A check's worker permit, and its hanging-share permit if the cluster is
/// hanging: both given back when the check ends.
struct Permits(
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

pub struct Scheduler {
    deps: SchedulerDeps,
    interval_ms: i64,
    permits: Arc<Semaphore>,
    /// The hanging clusters' share of the pool: a check of one takes a
    /// permit here as well as one of `permits`.
    hanging_permits: Arc<Semaphore>,
    /// Clusters whose last check used (nearly) its whole timeout.
    hanging: HashSet<Arc<str>>,
    slots: HashMap<Arc<str>, Slot>,
    heap: BinaryHeap<Reverse<(i64, u64, Arc<str>)>>,
    running: HashSet<Arc<str>>,
    checks: JoinSet<(Arc<str>, LastCheck, bool)>,
    next_gen: u64,
    view: Arc<Assignment>,
    /// The `pass_done_ms` for which a refresh was asked (one per stall).
    refreshed_for: Option<i64>,
    /// The next handoff time at which this monitor hands a bucket over:
    /// the timetable is rescanned then, so that the slots of checks due
    /// after it (no longer this monitor's) go at once, not when each falls
    /// due or when the master tidies the handoff up, half an interval on.
    /// Their ids keep the bucket's zone (`zone`) from being given back.
    next_handoff_ms: Option<i64>,
    /// Operators waiting for the check-now of a cluster.
    waiters: HashMap<Arc<str>, oneshot::Sender<CheckNowAnswer>>,
}

impl Scheduler {
    pub fn new(deps: SchedulerDeps) -> Self {
        let view = deps.assignment.borrow().clone();
        Self {
            interval_ms: ms(deps.interval).max(1),
            permits: Arc::new(Semaphore::new(deps.max_concurrent)),
            hanging_permits: Arc::new(Semaphore::new(hanging_permits(
                deps.max_concurrent,
                deps.hanging_share_pct,
            ))),
            hanging: HashSet::new(),
            slots: HashMap::new(),
            heap: BinaryHeap::new(),
            running: HashSet::new(),
            checks: JoinSet::new(),
            next_gen: 0,
            view,
            refreshed_for: None,
            next_handoff_ms: None,
            waiters: HashMap::new(),
            deps,
        }
    }

    /// Schedules and runs checks until `stop_starting` is cancelled, then
    /// waits for in-flight checks until they finish or `abort` is cancelled.
    pub async fn run(mut self, stop_starting: CancellationToken, abort: CancellationToken) {
        self.rescan();
        loop {
            let next_due = self.heap.peek().map(|Reverse((due, _, _))| *due);
            self.deps
                .stats
                .pending_from_ms
                .store(next_due.unwrap_or(i64::MAX), Ordering::Release);
            let tick = ms(self.deps.dispatch_tick);
            let next_at = next_due.map(|due| self.deps.clock.instant_at(start_at(due, tick)));
            let handoff_at = self
                .next_handoff_ms
                .map(|t| self.deps.clock.instant_at(t.saturating_add(1)));
            tokio::select! {
                biased;
                _ = stop_starting.cancelled() => break,
                Some(done) = self.checks.join_next(), if !self.checks.is_empty() => self.finished(done),
                Some(req) = self.deps.check_now.recv() => self.check_now(req),
                ev = self.deps.events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                changed = self.deps.assignment.changed() => {
                    if changed.is_err() { break }
                    self.view = self.deps.assignment.borrow_and_update().clone();
                    self.rescan();
                }
                _ = sleep_until_opt(next_at) => self.fire_due().await,
                _ = sleep_until_opt(handoff_at) => self.rescan(),
            }
        }
        // Drain: no new checks; in-flight ones finish or are aborted.
        self.deps
            .stats
            .pending_from_ms
            .store(i64::MAX, Ordering::Release);
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
        self.deps.stats.inflight.store(0, Ordering::Relaxed);
    }

    fn wanted(&self, e: &ClusterEntry, now_ms: i64) -> bool {
        e.state.is_checkable() && self.view.bucket(e.bucket).involves(&self.deps.me, now_ms)
    }

    /// Whether a timetable entry this monitor has for `e` may still hold a
    /// check due before a handoff time of its own that has not fired yet:
    /// a timer may fire late (up to half an interval, and then the check is
    /// skipped as late), after a view change past the handoff time. Such an
    /// entry is kept; once it fires, `fire` schedules no next one.
    fn finishing(&self, e: &ClusterEntry, now_ms: i64) -> bool {
        let until = self.view.bucket(e.bucket).handing_over_until(&self.deps.me);
        e.state.is_checkable()
            && until > now_ms - self.interval_ms / 2
            && self.slots.get(&e.id).is_some_and(|s| s.due < until)
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
                due,
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
        let entry = Entry {
            interval_ms: self.interval_ms,
            // Catch-ups ramp over half a heartbeat interval.
            spread_ms: ms(self.deps.refresh_timeout) / 2,
            feed_skew_ms: ms(self.deps.feed_skew),
        };
        let (due, catch_up) = first_due(
            now_ms,
            phase,
            &entry,
            fresh,
            self.view.bucket(e.bucket),
            &self.deps.me,
        );
        self.schedule_slot(e.id.clone(), due, phase, catch_up);
    }

    /// Reconciles the timetable with the map and the current view.
    fn rescan(&mut self) {
        let now = self.deps.clock.now_ms();
        let mut wanted: Vec<Arc<ClusterEntry>> = Vec::new();
        let mut finishing: Vec<Arc<str>> = Vec::new();
        self.deps.map.for_each(|e| {
            if self.wanted(e, now) {
                wanted.push(e.clone());
            } else if self.finishing(e, now) {
                finishing.push(e.id.clone());
            }
        });
        self.next_handoff_ms = (0..=u8::MAX)
            .map(|b| self.view.bucket(b).handing_over_until(&self.deps.me))
            .filter(|&t| t >= now)
            .min();
        let keep: HashSet<&str> = wanted
            .iter()
            .map(|e| &*e.id)
            .chain(finishing.iter().map(|id| &**id))
            .collect();
        self.slots.retain(|id, _| keep.contains(&**id));
        for e in &wanted {
            self.ensure(e, now, false);
        }
        // A view change that took buckets away leaves their clusters'
        // heap entries stale: dropped now rather than when each falls due
        // (up to an interval later), as they hold the clusters' ids, which
        // keep their bucket's zone (`zone`) from being given back.
        if self.heap.len() > self.slots.len() {
            self.drop_stale_heap_entries();
        }
        self.compact();
        self.deps
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    /// Drops stale heap entries when they dominate (after big reassignments),
    /// and sizes the tables down when a share shrank (a first master that
    /// held the whole fleet while its peers started keeps them at their
    /// largest otherwise).
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.slots.len() + 1024 {
            self.drop_stale_heap_entries();
        }
        if self.slots.capacity() > 2 * self.slots.len() + 1024 {
            self.slots.shrink_to_fit();
            self.heap.shrink_to_fit();
            self.hanging.shrink_to_fit();
            self.deps.last_checks.shrink_to_fit();
        }
    }

    fn drop_stale_heap_entries(&mut self) {
        let slots = &self.slots;
        self.heap
            .retain(|Reverse((_, gen, id))| slots.get(id).is_some_and(|s| s.gen == *gen));
    }

    fn on_event(&mut self, ev: ClusterEvent) {
        let now = self.deps.clock.now_ms();
        match ev {
            ClusterEvent::Changed { id, fresh } => match self.deps.map.get(&id) {
                Some(e) if self.wanted(&e, now) => self.ensure(&e, now, fresh),
                Some(e) if self.finishing(&e, now) => {}
                _ => {
                    self.slots.remove(&id);
                }
            },
            ClusterEvent::Removed { id } => {
                self.hanging.remove(&id);
                self.slots.remove(&id);
                self.deps.last_checks.remove(&id);
                self.compact();
            }
        }
        self.deps
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    async fn fire_due(&mut self) {
        while let Some(Reverse((due, gen, _))) = self.heap.peek() {
            let now = self.deps.clock.now_ms();
            if *due > now {
                break;
            }
            let (due, gen) = (*due, *gen);
            let Some(slot) = self
                .heap
                .peek()
                .and_then(|Reverse((_, _, id))| self.slots.get(id))
            else {
                self.heap.pop();
                continue;
            };
            if slot.gen != gen {
                self.heap.pop();
                continue;
            }
            let pass_done_ms = self.deps.pass_done_ms.load(Ordering::Acquire);
            let facts = DueFacts {
                now_ms: now,
                due_ms: due,
                interval_ms: self.interval_ms,
                pass_done_ms,
                stalled_after_ms: ms(self.deps.stalled_after),
                refreshed_for: self.refreshed_for,
                mine_at_due: false,
                running: false,
            };
            if decide_due(&facts) == DueDecision::RefreshFirst {
                // Decided again after the refresh, with the view it brings.
                self.refreshed_for = Some(pass_done_ms);
                self.refresh_view().await;
                continue;
            }
            let Reverse((_, _, id)) = self.heap.pop().expect("peeked");
            self.fire(id, due, now, facts);
        }
        self.deps
            .stats
            .scheduled
            .store(self.slots.len(), Ordering::Relaxed);
    }

    /// After a stall: ask for a fresh view before starting checks, and go on
    /// with the old one if the store does not answer in time.
    async fn refresh_view(&mut self) {
        tracing::info!("the membership loop stalled (a paused process?): refreshing the assignment before the next check");
        let (tx, rx) = oneshot::channel();
        if self.deps.refresh.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(self.deps.refresh_timeout, rx).await;
        }
        if self.deps.assignment.has_changed().unwrap_or(false) {
            self.view = self.deps.assignment.borrow_and_update().clone();
            self.rescan();
        }
    }

    fn fire(&mut self, id: Arc<str>, due: i64, now: i64, facts: DueFacts) {
        let Some(entry) = self.deps.map.get(&id) else {
            self.slots.remove(&id);
            return;
        };
        // The view's `Arc`, not a copy of the bucket's row (its owner's
        // name is a `String`): no allocation per check.
        let view = self.view.clone();
        let a = view.bucket(entry.bucket);
        let (phase, catch_up) = {
            let slot = &self.slots[&id];
            (slot.phase, slot.catch_up)
        };
        let next = due_after(due, now, catch_up, phase, self.interval_ms);
        if entry.state.is_checkable() && a.involves(&self.deps.me, next) {
            self.schedule_at(id.clone(), next, phase);
        } else {
            self.slots.remove(&id);
        }
        let decision = decide_due(&DueFacts {
            mine_at_due: a.owner_at(due) == Some(&*self.deps.me),
            running: self.running.contains(&id),
            ..facts
        });
        let skip = |reason: &str| {
            self.deps
                .metrics
                .self_count(names::CHECKS_SKIPPED, 1, &[("reason", reason)])
        };
        match decision {
            DueDecision::Run => {}
            DueDecision::NotMine | DueDecision::RefreshFirst => return,
            DueDecision::SkipLate => return skip("late"),
            DueDecision::SkipStillRunning => return skip("still_running"),
        }
        let hanging = if self.hanging.contains(&id) {
            match self.hanging_permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return skip("hanging_share"),
            }
        } else {
            None
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            skip("pool_full");
            return;
        };
        let lag = now - due;
        // The start in this monitor's clock, as the rule reads it: the e2e
        // suite pairs checks by it (a check started just before a SIGSTOP
        // reports, and its metric lines arrive, after the SIGCONT).
        tracing::debug!(cluster = %id, due_ms = due, at_ms = now, "check started");
        self.deps.stats.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
        self.start(entry, Permits(permit, hanging));
    }

    /// An operator's check: same pool, same metrics, never two at once.
    fn check_now(&mut self, req: CheckNowRequest) {
        let answer = match self.deps.map.get(&req.id) {
            None => CheckNowAnswer::Unknown,
            Some(e) if self.running.contains(&e.id) => CheckNowAnswer::Busy,
            Some(e) => match self.permits.clone().try_acquire_owned() {
                Err(_) => CheckNowAnswer::PoolFull,
                Ok(permit) => {
                    let at_ms = self.deps.clock.now_ms();
                    tracing::debug!(cluster = %e.id, at_ms, operator = true, "check started");
                    self.waiters.insert(e.id.clone(), req.reply);
                    self.start(e, Permits(permit, None));
                    return;
                }
            },
        };
        let _ = req.reply.send(answer);
    }

    /// Starts a check on the pool; `finished` collects it.
    fn start(&mut self, entry: Arc<ClusterEntry>, permit: Permits) {
        let id = entry.id.clone();
        self.deps.stats.started.fetch_add(1, Ordering::Relaxed);
        self.deps.stats.inflight.fetch_add(1, Ordering::Relaxed);
        if permit.1.is_some() {
            self.deps
                .stats
                .inflight_hanging
                .fetch_add(1, Ordering::Relaxed);
        }
        self.deps.metrics.self_count(names::CHECKS_STARTED, 1, &[]);
        self.running.insert(id.clone());

        let checker = self.deps.checker.clone();
        let metrics = self.deps.metrics.clone();
        let clock = self.deps.clock.clone();
        let timeout = self.deps.check_timeout;
        self.checks.spawn(async move {
            let was_hanging = permit.1.is_some();
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
                id,
                LastCheck {
                    started_ms,
                    duration_ms,
                    report,
                },
                was_hanging,
            )
        });
    }

    fn finished(&mut self, done: Result<(Arc<str>, LastCheck, bool), tokio::task::JoinError>) {
        self.deps.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        match done {
            Ok((id, last, was_hanging)) => {
                if was_hanging {
                    self.deps
                        .stats
                        .inflight_hanging
                        .fetch_sub(1, Ordering::Relaxed);
                }
                self.running.remove(&id);
                let entry = self.deps.map.get(&id);
                // A cluster that left the map while its check ran (its
                // bucket given away, its document deleted) is not kept as
                // hanging: nothing would remove it again, and its id would
                // keep its bucket's zone (`crate::zone`).
                if entry.is_some()
                    && is_hanging(last.duration_ms, ms(self.deps.check_timeout) as u64)
                {
                    self.hanging.insert(id.clone());
                } else {
                    self.hanging.remove(&id);
                }
                self.deps
                    .stats
                    .hanging
                    .store(self.hanging.len(), Ordering::Relaxed);
                // Recorded before the operator hears back, so what they
                // read next shows this check.
                let waiter = self.waiters.remove(&id);
                // Copied for an operator only: a copy per check is an
                // allocation per check that outlives the ones around it.
                let answer = waiter.as_ref().map(|_| last.clone());
                if let Some(entry) = entry {
                    self.alert(entry, &last);
                    self.deps.last_checks.insert(id, StoredCheck::new(last));
                }
                if let (Some(w), Some(answer)) = (waiter, answer) {
                    let _ = w.send(CheckNowAnswer::Done(answer));
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

impl Scheduler {
    /// Forwards a finished check to the alert task when this monitor owned
    /// the cluster at the check's start. Never waits: a full queue drops it,
    /// counted (`monitor.alerts.dropped`, reason input_full).
    fn alert(&self, entry: Arc<ClusterEntry>, last: &LastCheck) {
        let Some(tx) = &self.deps.alerts else { return };
        let owner = self.view.bucket(entry.bucket).owner_at(last.started_ms);
        if !entry.state.is_checkable() || owner != Some(&*self.deps.me) {
            return;
        }
        let input = crate::alerts::AlertInput {
            entry,
            report: last.report.clone(),
            at_ms: self.deps.clock.now_ms(),
        };
        if tx.try_send(input).is_err() {
            self.deps
                .metrics
                .self_count(names::ALERTS_DROPPED, 1, &[("reason", "input_full")]);
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
    fn pending_from_tells_a_scheduler_that_has_not_run_from_one_with_nothing_pending() {
        let s = SchedStats::default();
        assert_eq!(s.pending_from(), None);
        s.pending_from_ms.store(i64::MAX, Ordering::Release);
        assert_eq!(s.pending_from(), Some(i64::MAX));
        s.pending_from_ms.store(1_234, Ordering::Release);
        assert_eq!(s.pending_from(), Some(1_234));
    }

    /// What `last_checks` keeps gives back the report it was made from,
    /// whatever the report; only passed checks are kept compact.
    #[test]
    fn a_stored_check_gives_back_its_report() {
        let outcome = |name, ok: bool, ms, error: Option<&str>| CollectorOutcome {
            name,
            ok,
            duration_ms: ms,
            error: error.map(Into::into),
        };
        let report = |ok, summary: &str, collectors: Vec<CollectorOutcome>| CheckReport {
            ok,
            summary: summary.to_string().into(),
            collectors: collectors.into_boxed_slice(),
            conditions: Vec::new(),
        };
        let api = outcome("apiserver", true, 12, None);
        let nodes = outcome("nodes", true, 30, None);
        let mut alerting = report(true, HEALTHY_SUMMARY, vec![api.clone(), nodes.clone()]);
        alerting.conditions.push(crate::check::Condition {
            name: crate::check::alertnames::NODE_NOT_READY,
            labels: vec![("node", "n1".into())],
            summary: "n1 not ready".into(),
        });
        let cases = [
            (
                "healthz profile",
                report(true, HEALTHY_SUMMARY, vec![api.clone()]),
                true,
                false,
                true,
            ),
            (
                "full profile",
                report(true, HEALTHY_SUMMARY, vec![api.clone(), nodes.clone()]),
                true,
                false,
                true,
            ),
            (
                "failed",
                CheckReport::failed("check timed out"),
                false,
                true,
                false,
            ),
            (
                "healthz 500",
                report(
                    false,
                    "healthz 500",
                    vec![outcome("apiserver", false, 3, Some("healthz 500"))],
                ),
                false,
                true,
                false,
            ),
            (
                "a collector failed",
                report(
                    false,
                    "healthz 200; nodes: 403",
                    vec![api.clone(), outcome("nodes", false, 4, Some("403"))],
                ),
                false,
                true,
                false,
            ),
            ("alerting", alerting, true, true, false),
            (
                "another summary",
                report(true, "readyz 200", vec![api.clone()]),
                true,
                false,
                false,
            ),
            (
                "another only collector",
                report(true, HEALTHY_SUMMARY, vec![nodes.clone()]),
                true,
                false,
                true,
            ),
        ];
        for (what, report, ok, failing, compact) in cases {
            let last = LastCheck {
                started_ms: 1_700_000_000_123,
                duration_ms: 57,
                report,
            };
            let stored = StoredCheck::new(last.clone());
            let back = stored.last();
            assert_eq!(
                (back.started_ms, back.duration_ms),
                (last.started_ms, 57),
                "{what}"
            );
            assert_eq!(back.report, last.report, "{what}");
            assert_eq!(stored.ok(), ok, "{what}");
            assert_eq!(stored.failing_or_alerting(), failing, "{what}");
            assert_eq!(!matches!(stored.kept, Kept::Report(_)), compact, "{what}");
        }
        let long = LastCheck {
            started_ms: 0,
            duration_ms: u64::MAX,
            report: CheckReport::failed("x"),
        };
        assert_eq!(
            StoredCheck::new(long).last().duration_ms,
            u64::from(u32::MAX)
        );
        assert_eq!(std::mem::size_of::<StoredCheck>(), 40);
    }

    #[test]
    fn next_due_is_on_the_grid_and_not_before_t() {
        assert_eq!(next_due(0, 0, 10), 0);
        assert_eq!(next_due(1, 0, 10), 10);
        assert_eq!(next_due(15, 7, 10), 17);
        assert_eq!(next_due(17, 7, 10), 17);
        assert_eq!(next_due(-3, 7, 10), -3); // -3 ≡ 7 (mod 10)
        assert_eq!(next_due(-4, 7, 10), -3);
    }

    #[test]
    fn a_check_starts_at_the_end_of_its_tick() {
        assert_eq!(start_at(0, 10), 0);
        assert_eq!(start_at(1, 10), 10);
        assert_eq!(start_at(10, 10), 10);
        assert_eq!(start_at(19, 10), 20);
        assert_eq!(start_at(-3, 10), 0);
        assert_eq!(start_at(-13, 10), -10);
        assert_eq!(start_at(17, 0), 17, "off");
        assert_eq!(start_at(17, 1), 17, "every millisecond");
        assert_eq!(start_at(i64::MAX - 3, 10), i64::MAX, "saturates");
    }

    proptest! {
        #[test]
        fn start_at_props(due in -1_000_000i64..1_000_000, tick in 2i64..1_000, k in 1i64..100) {
            let s = start_at(due, tick);
            prop_assert!(s >= due && s - due < tick, "never early, at most a tick late");
            prop_assert_eq!(s.rem_euclid(tick), 0, "on the tick grid");
            // Two dues an interval (a multiple of the tick) apart start
            // exactly that far apart.
            prop_assert_eq!(start_at(due + k * tick, tick) - s, k * tick);
        }

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
        /// Clusters whose checks hang past the timeout, and how many of
        /// them run now and at most.
        hang: Vec<String>,
        hanging_now: Arc<AtomicUsize>,
        hanging_max: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Checker for Slow {
        async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport {
            self.log
                .lock()
                .unwrap()
                .push((ctx.cluster.id.to_string(), self.clock.now_ms()));
            if self.hang.iter().any(|h| **h == *ctx.cluster.id) {
                // Cancelled by the scheduler's backstop at the deadline.
                struct Gone(Arc<AtomicUsize>);
                impl Drop for Gone {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let n = self.hanging_now.fetch_add(1, Ordering::SeqCst) + 1;
                self.hanging_max.fetch_max(n, Ordering::SeqCst);
                let _gone = Gone(self.hanging_now.clone());
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
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
        pass_done_ms: Arc<AtomicI64>,
        check_now: mpsc::Sender<CheckNowRequest>,
        /// Stops starting checks; in-flight ones are waited for.
        stop: CancellationToken,
        /// Cancels the checks still running after `stop`.
        abort: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _events: mpsc::Sender<ClusterEvent>,
        _assign: watch::Sender<Arc<Assignment>>,
        /// Kept alive so the scheduler's event channel stays open.
        _reflector: crate::feed::Reflector,
        hanging_max: Arc<AtomicUsize>,
        map: ClusterMap,
        stats: Arc<SchedStats>,
    }

    /// A scheduler owning every bucket, over `ids` (all checkable).
    /// `pass_done_ms`: when the membership loop last finished a pass (a
    /// value far in the future: it never stalls).
    async fn harness(
        ids: &[&str],
        max_concurrent: usize,
        took: Duration,
        pass_done_ms: i64,
    ) -> Harness {
        harness_with(
            ids,
            max_concurrent,
            took,
            pass_done_ms,
            &[],
            50,
            crate::config::defaults::DISPATCH_TICK,
        )
        .await
    }

    /// `hang`: clusters whose checks never end (cut at the 30 s timeout);
    /// `share`: the hanging clusters' percent of the pool.
    async fn harness_with(
        ids: &[&str],
        max_concurrent: usize,
        took: Duration,
        pass_done_ms: i64,
        hang: &[&str],
        share: u8,
        tick: Duration,
    ) -> Harness {
        let hanging_max = Arc::new(AtomicUsize::new(0));
        let clock = Clock::at(0);
        // Room for every cluster's event: the map is filled before the
        // scheduler runs (a smaller queue would block the fill).
        let (reflector, map, events_rx) =
            crate::feed::Reflector::new(Metrics::disabled(), clock.clone(), ids.len() + 64);
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
        let pass_done = Arc::new(AtomicI64::new(pass_done_ms));
        let (events_tx, _) = mpsc::channel(1);
        let (check_now_tx, check_now_rx) = mpsc::channel(4);
        let stats = Arc::new(SchedStats::default());
        let sched = Scheduler::new(SchedulerDeps {
            me: "me".into(),
            interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(30),
            dispatch_tick: tick,
            max_concurrent,
            hanging_share_pct: share,
            stalled_after: Duration::from_secs(5),
            refresh_timeout: Duration::from_secs(2),
            feed_skew: Duration::from_secs(2),
            pass_done_ms: pass_done.clone(),
            check_now: check_now_rx,
            clock: clock.clone(),
            map: map.clone(),
            events: events_rx,
            assignment: assign_rx,
            assignment_read_ms: Arc::new(AtomicI64::new(0)),
            refresh: refresh_tx,
            checker: Arc::new(Slow {
                took,
                log: log.clone(),
                clock,
                hang: hang.iter().map(|h| h.to_string()).collect(),
                hanging_now: Arc::new(AtomicUsize::new(0)),
                hanging_max: hanging_max.clone(),
            }),
            metrics,
            stats: stats.clone(),
            last_checks: Arc::new(DashMap::new()),
            alerts: None,
        });
        let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(sched.run(stop.clone(), abort.clone()));
        Harness {
            log,
            metrics_rx,
            refresh_rx,
            pass_done_ms: pass_done,
            check_now: check_now_tx,
            stop,
            abort,
            task,
            _events: events_tx,
            _assign: assign_tx,
            _reflector: reflector,
            hanging_max,
            map,
            stats,
        }
    }

    fn skipped(h: &mut Harness, reason: &str) -> usize {
        let want = format!("monitor.checks.skipped:1|c|#monitor:me,reason:{reason}");
        std::iter::from_fn(|| h.metrics_rx.try_recv().ok())
            .filter(|q| q.line == want)
            .count()
    }

    /// Clusters of buckets given away keep no timetable entry: after the
    /// rescan their ids are held by the map alone (map key and entry), not
    /// by a heap entry that would stay until it fell due, up to an interval
    /// later, keeping their bucket's zone (`crate::zone`) from being given
    /// back.
    #[tokio::test(start_paused = true)]
    async fn a_rescan_drops_the_timetable_entries_of_clusters_given_away() {
        let ids: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let h = harness(&refs, 10, Duration::from_millis(10), i64::MAX / 2).await;
        let holders = |h: &Harness| -> Vec<usize> {
            refs.iter()
                .map(|id| Arc::strong_count(&h.map.get(id).expect("in the map").id))
                .collect()
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            holders(&h).iter().all(|&n| n >= 4),
            "map key, entry, slot and heap entry: {:?}",
            holders(&h)
        );
        // Bucket 1 (every cluster's) given to another monitor.
        let mut a = Assignment::empty();
        a.buckets = Arc::new(vec![BucketAssignment::owned_by("other"); BUCKETS]);
        h._assign.send(Arc::new(a)).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while holders(&h).iter().any(|&n| n > 2) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still held beyond the map after the rescan: {:?}",
                holders(&h)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.stop.cancel();
        h.task.await.unwrap();
    }

    /// A check due just before a handoff time whose timer fires a little
    /// late, after a table change (any bucket's) was applied past that
    /// time, is still run by the previous owner: the rescan keeps the
    /// timetable entry of a bucket handed over less than half an interval
    /// ago. (The scheduler applies view changes before due timers; without
    /// this the entry was dropped and neither owner checked it.)
    #[tokio::test(start_paused = true)]
    async fn a_check_due_just_before_a_handoff_survives_a_view_change_after_it() {
        let h = harness(&["c0"], 10, Duration::from_millis(10), i64::MAX / 2).await;
        let interval = 10_000i64;
        let phase = phase_ms("c0", interval);
        let bucket = usize::from(h.map.get("c0").expect("in the map").bucket);
        let starts =
            |h: &Harness| -> Vec<i64> { h.log.lock().unwrap().iter().map(|(_, t)| *t).collect() };
        // The first check, at the end of the phase's dispatch tick.
        let tick = ms(crate::config::defaults::DISPATCH_TICK);
        let first = start_at(phase, tick);
        tokio::time::sleep(Duration::from_millis(u64::try_from(phase).unwrap() + 100)).await;
        assert_eq!(starts(&h), vec![first]);
        // The bucket moves to "other", handing over 3 ms after the next due time.
        let due = phase + interval;
        let handoff = due + 3;
        let mut table = vec![BucketAssignment::owned_by("me"); BUCKETS];
        table[bucket] = BucketAssignment {
            owner: Some("other".into()),
            prev: Some("me".into()),
            handoff_at_ms: handoff,
            ..Default::default()
        };
        let view = |table: &Vec<BucketAssignment>, generation| {
            let mut a = Assignment::empty();
            a.generation = generation;
            a.buckets = Arc::new(table.clone());
            Arc::new(a)
        };
        h._assign.send(view(&table, 2)).unwrap();
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(due - 1 - (phase + 100)).unwrap(),
        ))
        .await;
        assert_eq!(starts(&h), vec![first], "nothing due until then");
        // Another bucket's change arrives, and the scheduler next runs 10 ms
        // on: past the due time and the handoff time at once.
        table[(bucket + 1) % BUCKETS] = BucketAssignment::owned_by("third");
        h._assign.send(view(&table, 3)).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            starts(&h),
            vec![first, due + 9],
            "the check due before the handoff ran, late"
        );
        // The next one is the new owner's.
        tokio::time::sleep(Duration::from_millis(u64::try_from(interval).unwrap())).await;
        assert_eq!(
            starts(&h).len(),
            2,
            "checked after the handoff: {:?}",
            starts(&h)
        );
        h.stop.cancel();
        h.task.await.unwrap();
    }

    /// At its own handoff time, with no view change, the scheduler lets go
    /// of the entries of checks due after it (another monitor's now): they
    /// hold the clusters' ids, and so the bucket's zone. Before, they were
    /// kept until each fell due or the master tidied the handoff up half an
    /// interval later (measured: share_memory's monitors held 13 MB more of
    /// zones at their steady state, with a 1-hour interval).
    #[tokio::test(start_paused = true)]
    async fn entries_due_after_a_handoff_go_at_the_handoff_time() {
        let ids = ["c0", "c1", "c2", "c3"];
        let h = harness(&ids, 10, Duration::from_millis(10), i64::MAX / 2).await;
        let interval = 10_000i64;
        // The harness puts every cluster in one bucket.
        let bucket = h.map.get("c0").expect("in the map").bucket;
        let in_bucket = ids
            .iter()
            .filter(|id| h.map.get(id).expect("in the map").bucket == bucket)
            .count();
        // Every first check done (at its phase): each cluster has its next
        // entry, an interval on.
        let phase = |id: &str| phase_ms(id, interval);
        let t0 = ids.iter().map(|id| phase(id)).max().unwrap() + 100;
        tokio::time::sleep(Duration::from_millis(u64::try_from(t0).unwrap())).await;
        assert_eq!(h.stats.scheduled.load(Ordering::Relaxed), ids.len());
        // The handoff falls before the moved clusters' next checks.
        let handoff = ids
            .iter()
            .filter(|id| h.map.get(id).unwrap().bucket == bucket)
            .map(|id| phase(id) + interval)
            .min()
            .unwrap()
            - 500;
        assert!(handoff > t0 + 300, "handoff {handoff}, now {t0}");
        let mut table = vec![BucketAssignment::owned_by("me"); BUCKETS];
        table[usize::from(bucket)] = BucketAssignment {
            owner: Some("other".into()),
            prev: Some("me".into()),
            handoff_at_ms: handoff,
            ..Default::default()
        };
        let mut a = Assignment::empty();
        a.generation = 2;
        a.buckets = Arc::new(table);
        h._assign.send(Arc::new(a)).unwrap();
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(handoff - 200 - t0).unwrap(),
        ))
        .await;
        assert_eq!(
            h.stats.scheduled.load(Ordering::Relaxed),
            ids.len(),
            "still this monitor's until the handoff time"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            h.stats.scheduled.load(Ordering::Relaxed),
            ids.len() - in_bucket,
            "let go at the handoff time, with no view change"
        );
        h.stop.cancel();
        h.task.await.unwrap();
    }

    /// A cluster deleted while its check hangs is not kept as hanging when
    /// the check times out: once the check ends nothing holds its id.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_that_left_while_its_check_hung_is_not_kept() {
        let mut h = harness_with(
            &["c0", "c1"],
            10,
            Duration::from_millis(10),
            i64::MAX / 2,
            &["c0"],
            50,
            crate::config::defaults::DISPATCH_TICK,
        )
        .await;
        // Every cluster's first check has started; c0's hangs.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let id = h.map.get("c0").unwrap().id.clone();
        h._reflector
            .apply(crate::feed::FeedEvent::Page(crate::store::FeedPage {
                changes: vec![crate::store::Change::Delete { id: "c0".into() }],
                continuation: "2".into(),
                caught_up: true,
            }))
            .await
            .unwrap();
        assert!(h.map.get("c0").is_none());
        // Past the 30 s timeout of the hanging check.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&id) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the id is still held ({} holders)",
                Arc::strong_count(&id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.stop.cancel();
        h.task.await.unwrap();
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

    /// Half of 20 clusters hang (a regional outage) at a 10 s interval with a
    /// 30 s timeout, on a pool of 8: once their first checks have timed out,
    /// hanging clusters hold at most their share (4) and every answering
    /// cluster keeps its cadence. With the share at 100% they take the pool
    /// and answering clusters are skipped.
    #[tokio::test(start_paused = true)]
    async fn hanging_clusters_hold_their_share_of_the_pool_only() {
        let ids: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let hang: Vec<&str> = refs[..10].to_vec();
        for (share, bounded) in [(50u8, true), (100, false)] {
            let mut h = harness_with(
                &refs,
                8,
                Duration::from_millis(20),
                i64::MAX / 2,
                &hang,
                share,
                crate::config::defaults::DISPATCH_TICK,
            )
            .await;
            // Warm-up: every hanging cluster's first check times out (≤ 31 s
            // after its start, started within the first interval or two).
            tokio::time::sleep(Duration::from_secs(60)).await;
            let from = Clock::at(0).now_ms();
            let _ = skipped(&mut h, "pool_full");
            h.hanging_max.store(0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            let log = h.log.lock().unwrap().clone();
            let lines: Vec<String> = std::iter::from_fn(|| h.metrics_rx.try_recv().ok())
                .map(|q| q.line)
                .collect();
            let count = |reason: &str| {
                let want = format!("monitor.checks.skipped:1|c|#monitor:me,reason:{reason}");
                lines.iter().filter(|l| **l == want).count()
            };
            let (full, share_skips) = (count("pool_full"), count("hanging_share"));
            let most = h.hanging_max.load(Ordering::SeqCst);
            let healthy_runs = |id: &str| log.iter().filter(|(c, t)| c == id && *t >= from).count();
            if bounded {
                assert!(most <= 4, "hanging checks at once: {most} (share 4 of 8)");
                assert_eq!(full, 0, "no answering cluster waits for a permit");
                assert!(
                    share_skips > 0,
                    "hanging checks beyond the share are skipped"
                );
                for id in &refs[10..] {
                    assert!(
                        healthy_runs(id) >= 6,
                        "{id}: {} checks in 60 s",
                        healthy_runs(id)
                    );
                }
            } else {
                assert!(
                    most > 4,
                    "without the share hanging checks fill the pool: {most}"
                );
                assert!(full > 0, "and answering clusters are skipped");
            }
            h.stop.cancel();
            h.task.await.unwrap();
        }
    }

    #[test]
    fn hanging_rule_and_share() {
        assert!(is_hanging(30_000, 30_000));
        assert!(is_hanging(27_000, 30_000));
        assert!(!is_hanging(26_999, 30_000));
        assert!(is_hanging(31_000, 30_000));
        assert_eq!(hanging_permits(5000, 50), 2500);
        assert_eq!(hanging_permits(1, 50), 1);
        assert_eq!(hanging_permits(8, 100), 8);
        assert_eq!(hanging_permits(8, 200), 8);
    }

    /// Graceful stop: after `stop_starting` no check starts, though checks
    /// keep falling due; the ones running are waited for; `abort` cancels
    /// them and the run ends at once.
    #[tokio::test(start_paused = true)]
    async fn after_the_stop_no_check_starts_and_running_ones_last_until_the_abort() {
        // 40 clusters at a 10 s interval: 4 checks fall due a second, and
        // with checks of 3 s about 12 run at any time.
        let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut h = harness(&refs, 100, Duration::from_secs(3), i64::MAX / 2).await;
        tokio::time::sleep(Duration::from_millis(25_500)).await;
        h.stop.cancel();
        let started = h.log.lock().unwrap().len();
        assert!(started > 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            h.log.lock().unwrap().len(),
            started,
            "no check starts after the stop"
        );
        assert!(
            h.stats.inflight.load(Ordering::Relaxed) > 0 && !h.task.is_finished(),
            "the checks still running are waited for"
        );
        h.abort.cancel();
        tokio::time::timeout(Duration::from_millis(10), &mut h.task)
            .await
            .expect("the abort ends the run at once")
            .unwrap();
        assert_eq!(h.stats.inflight.load(Ordering::Relaxed), 0);
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
    async fn a_stalled_loop_refreshes_once_before_a_check_starts() {
        // The loop last finished a pass 20 s before the start (a paused
        // process): stalled at the first due time.
        let mut h = harness(&["a", "b"], 10, Duration::from_millis(10), -20_000).await;
        let req = tokio::time::timeout(Duration::from_secs(30), h.refresh_rx.recv())
            .await
            .expect("refresh asked")
            .unwrap();
        assert!(
            h.log.lock().unwrap().is_empty(),
            "no check before the refresh answered"
        );
        // The refresh fails (the store is down too): no further refresh is
        // asked for this stall, and the checks go on with the old view.
        drop(req);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(h.refresh_rx.try_recv().is_err(), "one refresh per stall");
        let n = h.log.lock().unwrap().len();
        assert!(n >= 4, "checks go on after the refresh: {n}");
        h.stop.cancel();
        h.task.await.unwrap();
    }

    /// The start times of `id`'s checks in a harness log, in order.
    fn starts_of(log: &[(String, i64)], id: &str) -> Vec<i64> {
        let mut t: Vec<i64> = log
            .iter()
            .filter(|(c, _)| c == id)
            .map(|(_, t)| *t)
            .collect();
        t.sort();
        t
    }

    /// With a dispatch tick, the checks due within one tick start together
    /// at its end: never before their due time, less than a tick after it,
    /// each cluster's checks exactly an interval apart, and the scheduler
    /// starts them on at most one wake-up per tick. Without it, the same
    /// fleet starts on many more distinct milliseconds.
    #[tokio::test(start_paused = true)]
    async fn checks_due_within_a_tick_start_together_at_its_end() {
        let ids: Vec<String> = (0..3000).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let interval = 10_000i64;
        let mut distinct = Vec::new();
        for tick in [Duration::from_millis(10), Duration::ZERO] {
            let h = harness_with(
                &refs,
                5000,
                Duration::from_millis(5),
                i64::MAX / 2,
                &[],
                50,
                tick,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(31_000)).await;
            let log = h.log.lock().unwrap().clone();
            let tick_ms = ms(tick);
            for id in &ids {
                let phase = phase_ms(id, interval);
                let t = starts_of(&log, id);
                assert!(t.len() >= 3, "{id}: {t:?}");
                for (k, start) in t.iter().enumerate() {
                    let due = phase + interval * k as i64;
                    assert!(
                        *start >= due && *start - due < tick_ms.max(1),
                        "{id}: due {due}, started {start} (tick {tick_ms} ms)"
                    );
                    if tick_ms > 1 {
                        assert_eq!(start % tick_ms, 0, "{id}: on the tick grid");
                    }
                }
                assert!(t.windows(2).all(|w| w[1] - w[0] == interval), "{id}: {t:?}");
            }
            let first_pass: HashSet<i64> = log
                .iter()
                .map(|(_, t)| *t)
                .filter(|t| *t < interval)
                .collect();
            distinct.push(first_pass.len());
            h.stop.cancel();
            h.task.await.unwrap();
        }
        assert!(
            distinct[0] <= 1000,
            "at most one start instant per 10 ms tick of the interval: {}",
            distinct[0]
        );
        assert!(
            distinct[1] > 2000,
            "without the tick, 3,000 clusters start on most of 10,000 ms: {}",
            distinct[1]
        );
    }

    /// A pause of 7 s, shorter than the stall bound (SIGSTOP then SIGCONT:
    /// the clock jumps and no task runs in between, checks in flight
    /// included): what fell due in it runs at once when at most half an
    /// interval late, else is skipped as late, and no cluster is started
    /// twice less than half an interval apart, its check before the pause
    /// and those after it included.
    #[tokio::test(start_paused = true)]
    async fn a_pause_never_brings_two_checks_of_a_cluster_closer_than_half_an_interval() {
        let ids: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut h = harness(&refs, 1000, Duration::from_millis(30), i64::MAX / 2).await;
        tokio::time::sleep(Duration::from_millis(12_345)).await;
        tokio::time::advance(Duration::from_secs(7)).await;
        tokio::time::sleep(Duration::from_secs(25)).await;
        let log = h.log.lock().unwrap().clone();
        let mut late_runs = 0;
        for id in &ids {
            let t = starts_of(&log, id);
            assert!(t.len() >= 3, "{id}: {t:?}");
            for w in t.windows(2) {
                assert!(w[1] - w[0] >= 5_000, "{id}: two checks {t:?}");
            }
            late_runs += t.iter().filter(|x| (19_345..19_400).contains(*x)).count();
        }
        assert!(
            late_runs >= 15,
            "due in the pause, run at once: {late_runs}"
        );
        assert!(
            skipped(&mut h, "late") > 0,
            "more than half an interval late: skipped"
        );
        h.stop.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_outage_never_delays_a_check() {
        // The loop keeps finishing (failed) passes every 2 s; the view is
        // never refreshed by the scheduler and every check runs on time.
        let ids: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut h = harness(&refs, 100, Duration::from_millis(50), 0).await;
        let done = h.pass_done_ms.clone();
        let clock = Clock::at(0);
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                done.store(clock.now_ms(), Ordering::Release);
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        beat.abort();
        assert!(
            h.refresh_rx.try_recv().is_err(),
            "no refresh during an outage"
        );
        let log = h.log.lock().unwrap().clone();
        for id in &ids {
            let t = starts_of(&log, id);
            assert!(t.len() >= 5, "{id}: {t:?}");
            for w in t.windows(2) {
                assert!(w[1] - w[0] <= 10_000, "{id}: gap {t:?}");
            }
        }
        assert_eq!(skipped(&mut h, "late"), 0);
        h.stop.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn check_now_takes_a_permit_and_never_overlaps_a_check() {
        // One worker, 3 s checks: a check-now while a check of the same
        // cluster runs answers Busy; one while the pool is full, PoolFull.
        let mut h = harness(&["a", "b"], 1, Duration::from_secs(3), i64::MAX / 2).await;
        let ask = |id: &str| {
            let (reply, rx) = oneshot::channel();
            (
                CheckNowRequest {
                    id: id.into(),
                    reply,
                },
                rx,
            )
        };
        // Wait until a scheduled check runs.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !h.log.lock().unwrap().is_empty() {
                break;
            }
        }
        let running = h.log.lock().unwrap()[0].0.clone();
        let other = if running == "a" { "b" } else { "a" };
        let (req, rx) = ask(&running);
        h.check_now.send(req).await.unwrap();
        assert!(matches!(rx.await.unwrap(), CheckNowAnswer::Busy));
        let (req, rx) = ask(other);
        h.check_now.send(req).await.unwrap();
        assert!(matches!(rx.await.unwrap(), CheckNowAnswer::PoolFull));
        let (req, rx) = ask("nope");
        h.check_now.send(req).await.unwrap();
        assert!(matches!(rx.await.unwrap(), CheckNowAnswer::Unknown));
        // Once the pool is free, a check-now runs and reports, with the
        // scheduled check's metrics.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (req, rx) = ask(other);
        h.check_now.send(req).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(CheckNowAnswer::Done(last))) => assert!(last.report.ok),
            other => panic!("check-now did not run: {other:?}"),
        }
        let lines: Vec<String> = std::iter::from_fn(|| h.metrics_rx.try_recv().ok())
            .map(|q| q.line)
            .collect();
        let started = lines
            .iter()
            .filter(|l| l.starts_with("monitor.checks.started"))
            .count();
        let durations = lines
            .iter()
            .filter(|l| l.starts_with("monitor.check.duration"))
            .count();
        assert!(started >= 2 && durations >= 2, "{lines:?}");
        h.stop.cancel();
        h.task.await.unwrap();
    }
}

#[cfg(test)]
mod decision_tests {
    use super::*;
    use proptest::prelude::*;

    fn facts() -> impl Strategy<Value = DueFacts> {
        (
            0i64..1_000_000,
            0i64..200_000,
            1_000i64..120_000,
            0i64..60_000,
            proptest::option::of(0i64..1_000_000),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(now, late, interval, quiet, refreshed, mine, running)| DueFacts {
                    now_ms: now,
                    due_ms: now - late,
                    interval_ms: interval,
                    pass_done_ms: now - quiet,
                    stalled_after_ms: 5_000,
                    refreshed_for: refreshed,
                    mine_at_due: mine,
                    running,
                },
            )
    }

    proptest! {
        #[test]
        fn never_runs_what_is_not_mine_or_running_or_late(f in facts()) {
            let d = decide_due(&f);
            if d == DueDecision::Run {
                prop_assert!(f.mine_at_due && !f.running && f.now_ms - f.due_ms <= f.interval_ms / 2);
                prop_assert!(f.now_ms - f.pass_done_ms <= f.stalled_after_ms || f.refreshed_for == Some(f.pass_done_ms));
            }
        }

        #[test]
        fn refreshes_once_per_stall(f in facts()) {
            if decide_due(&f) == DueDecision::RefreshFirst {
                let after = DueFacts { refreshed_for: Some(f.pass_done_ms), ..f };
                prop_assert_ne!(decide_due(&after), DueDecision::RefreshFirst);
            }
        }

        /// While the loop keeps finishing passes (a store outage included),
        /// an on-time check of an owned, idle cluster always runs.
        #[test]
        fn a_loop_that_keeps_passing_never_holds_a_check(f in facts(), quiet in 0i64..5_000, late in 0i64..1_000) {
            let f = DueFacts { pass_done_ms: f.now_ms - quiet, due_ms: f.now_ms - late.min(f.interval_ms / 2), mine_at_due: true, running: false, ..f };
            prop_assert_eq!(decide_due(&f), DueDecision::Run);
        }

        /// A cluster created while its bucket is handed over is seen by the
        /// old owner before the handoff time and by the new one after it
        /// (feeds deliver at different times): it is checked once, not by
        /// both "at once".
        #[test]
        fn a_cluster_created_during_a_handoff_is_checked_once(
            phase in 0i64..10_000,
            before in 1i64..3_000,
            after in 0i64..3_000,
            lingers: bool,
        ) {
            let (interval, handoff) = (10_000i64, 1_000_000i64);
            // The feeds deliver it at most one feed interval apart.
            let skew = before + after;
            let t = Entry { interval_ms: interval, spread_ms: 1_000, feed_skew_ms: skew };
            let b = BucketAssignment {
                owner: Some("new".into()),
                prev: Some("old".into()),
                handoff_at_ms: handoff,
                ..Default::default()
            };
            let owner_at = |due: i64| if due < handoff { "old" } else { "new" };
            // The old owner sees it `before` ms ahead of the handoff, the new
            // one `after` ms past it; each runs its first check if it owns
            // the due time.
            let mut checks = Vec::new();
            for (me, seen) in [("old", handoff - before), ("new", handoff + after)] {
                let (due, _) = first_due(seen, phase, &t, true, &b, me);
                if owner_at(due) == me {
                    checks.push(due);
                }
            }
            if let [a, b] = checks[..] {
                prop_assert!((a - b).abs() >= interval, "checked {} ms apart", (a - b).abs());
            }
            // Once the handoff is a feed skew past, a new cluster is checked
            // at once (the handoff may still be listed: it lingers), and
            // only by the owner.
            let later = handoff + skew + after;
            let (due, _) = first_due(later, phase, &t, true, &b, if lingers { "old" } else { "new" });
            prop_assert_eq!(due, later);
            prop_assert_eq!(owner_at(due), "new");
        }

        /// The first due time is now (fresh or catch-up) or the next grid
        /// slot; a catch-up only for a bucket taken from a dead owner whose
        /// last due time fell after the mark.
        #[test]
        fn first_due_props(now in 0i64..1_000_000, phase in 0i64..60_000, interval in 1_000i64..60_000, spread in 1i64..5_000, fresh: bool, mark in 0i64..1_000_000, prev: bool, mine: bool, skew in 0i64..5_000) {
            let phase = phase % interval;
            let t = Entry { interval_ms: interval, spread_ms: spread, feed_skew_ms: skew };
            let b = BucketAssignment {
                owner: Some(if mine { "me" } else { "other" }.into()),
                prev: prev.then(|| "old".to_string()),
                handoff_at_ms: mark,
                ..Default::default()
            };
            let (due, catch_up) = first_due(now, phase, &t, fresh, &b, "me");
            let next = next_due(now, phase, interval);
            let handing_over = prev && now < mark + skew;
            if fresh && !handing_over {
                prop_assert_eq!(due, now);
            } else if catch_up {
                prop_assert!(due >= now && due < now + spread && due < next);
            } else {
                prop_assert_eq!(due, next);
            }
            if catch_up {
                let last_due = next - interval;
                prop_assert!(!fresh && !prev && mine && mark != 0 && last_due >= mark);
                // The missed check is less than half an interval late, so
                // the next grid slot stays: one catch-up, no second miss.
                prop_assert!(due - last_due <= interval / 2);
                prop_assert_eq!(due_after(due, due, true, phase, interval), next);
            }
            // The check after it is on the grid and never more than one
            // interval (a catch-up: half to one and a half) later.
            let next = due_after(due, now, catch_up, phase, interval);
            prop_assert_eq!((next - phase).rem_euclid(interval), 0);
            prop_assert!(next > due);
            if catch_up {
                prop_assert!(next - due >= interval / 2 && next - due <= interval / 2 + interval);
            } else {
                prop_assert!(next - due <= interval);
            }
        }
    }
}
