//! The schedule's decisions: the grid every monitor shares (a cluster's
//! phase and due times), what to do with a check that has come due, how a
//! cluster enters the timetable and the hanging clusters' share of the pool.
//! Pure functions of the facts and the time passed in (ARCHITECTURE.md,
//! *Decisions are pure*: `invariants::decisions_do_no_io` checks this file);
//! the scheduler task in `schedule.rs` does the I/O.

use crate::model::BucketAssignment;

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

/// When a check due at `due_ms` starts: at the end of the dispatch tick
/// (`--dispatch-tick`) it falls in, the first multiple of `tick_ms` at or
/// after it; at `due_ms` itself with a tick of 1 ms or less. The checks due
/// within one tick then start on one wake-up of the scheduler, and their
/// connections' events tend to come back together too: fewer wake-ups of
/// the monitor's thread per check (docs/performance.md). A check never
/// starts before its due time and at most a tick minus 1 ms after it; on
/// the absolute grid, so a cluster's checks stay an interval apart when the
/// interval is a multiple of the tick.
pub fn start_at(due_ms: i64, tick_ms: i64) -> i64 {
    if tick_ms <= 1 {
        return due_ms;
    }
    due_ms.saturating_add((-due_ms).rem_euclid(tick_ms))
}

/// What the scheduler does with a check that has come due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueDecision {
    /// The membership loop has stalled (a paused process): ask for a fresh
    /// assignment first, then decide again. Once per stall.
    RefreshFirst,
    /// Another monitor checks this one (the previous or the next owner).
    NotMine,
    /// Due more than half an interval ago (after a pause): skipped, counted.
    SkipLate,
    /// The previous check of this cluster has not finished: skipped, counted.
    SkipStillRunning,
    /// Start it (if a worker permit is free).
    Run,
}

/// The facts a due check is decided on, all in this monitor's clock (ms).
#[derive(Clone, Copy, Debug)]
pub struct DueFacts {
    pub now_ms: i64,
    pub due_ms: i64,
    pub interval_ms: i64,
    /// When the membership loop last finished a pass, successful or not.
    pub pass_done_ms: i64,
    /// A loop that has not finished a pass for this long has stalled.
    pub stalled_after_ms: i64,
    /// The `pass_done_ms` for which a refresh was already asked, if any.
    pub refreshed_for: Option<i64>,
    /// Whether the current view makes this monitor the owner at `due_ms`.
    pub mine_at_due: bool,
    /// Whether a check of this cluster is running.
    pub running: bool,
}

/// The rule for a due check. A store outage keeps the membership loop
/// finishing (failed) passes, so it never stalls it: checks go on with the
/// last assignment, none skipped. Only a loop that stopped (a paused or
/// frozen process, whose buckets peers may have taken over) makes the
/// scheduler refresh first, once, before it trusts its view again.
pub fn decide_due(f: &DueFacts) -> DueDecision {
    if f.now_ms - f.pass_done_ms > f.stalled_after_ms && f.refreshed_for != Some(f.pass_done_ms) {
        return DueDecision::RefreshFirst;
    }
    if !f.mine_at_due {
        return DueDecision::NotMine;
    }
    if f.now_ms - f.due_ms > f.interval_ms / 2 {
        return DueDecision::SkipLate;
    }
    if f.running {
        return DueDecision::SkipStillRunning;
    }
    DueDecision::Run
}

/// A check that used at least nine tenths of its timeout marks its cluster
/// *hanging* (an API server that accepts and never answers, a network that
/// drops packets) until a check of it ends sooner.
pub fn is_hanging(duration_ms: u64, timeout_ms: u64) -> bool {
    duration_ms.saturating_mul(10) >= timeout_ms.saturating_mul(9)
}

/// Worker permits hanging clusters may hold at once: `share_pct` percent of
/// the pool, at least one. The rest of the pool is always open to the
/// clusters that answer, so a region whose API servers hang (thousands of
/// checks each holding a permit for the whole timeout) cannot make healthy
/// clusters wait or be skipped.
pub fn hanging_permits(pool: usize, share_pct: u8) -> usize {
    (pool * usize::from(share_pct.min(100)) / 100).max(1)
}

/// How clusters enter the timetable ([`first_due`]), in ms.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub interval_ms: i64,
    /// Catch-ups are spread over this long.
    pub spread_ms: i64,
    /// How far apart two monitors' change feeds may deliver one document.
    pub feed_skew_ms: i64,
}

/// When a cluster that enters the timetable is first due, and whether that
/// first check is a catch-up. `fresh`: a cluster that became checkable after
/// start-up (checked at once, unless its bucket is being handed over, give
/// or take the feeds' skew: the old and the new owner see the document at
/// different times, one before the handoff and one after, and each would
/// check it "at once"; it then waits for its grid slot, which exactly one
/// of them owns. Once the handoff time is a feed skew past, no monitor can
/// have seen it before that time). A cluster of a bucket taken from a dead owner
/// (no `prev`, `handoff_at_ms` marks since when checks may have been
/// missed) whose latest due time fell after that mark is caught up, so a
/// crash costs at most the failover time, not one interval more:
/// - catch-ups are spread over `spread_ms` by phase (a dead owner's buckets
///   bring thousands at once: their checks, and their metric lines, come
///   as a ramp, not a burst that overflows the metric queue);
/// - only a missed check less than half an interval late is caught up; an
///   older one is lost anyway, and catching it up would push the next grid
///   slot out (a second miss): the cluster then waits for its next slot.
pub fn first_due(
    now_ms: i64,
    phase: i64,
    t: &Entry,
    fresh: bool,
    bucket: &BucketAssignment,
    me: &str,
) -> (i64, bool) {
    let (interval_ms, spread_ms) = (t.interval_ms, t.spread_ms);
    let next = next_due(now_ms, phase, interval_ms);
    let last_due = next - interval_ms;
    if fresh && !bucket.in_handoff(now_ms, t.feed_skew_ms) {
        return (now_ms, false);
    }
    let at = now_ms + phase % spread_ms.max(1);
    let catch_up = bucket.prev.is_none()
        && bucket.handoff_at_ms != 0
        && bucket.owner.as_deref() == Some(me)
        && last_due >= bucket.handoff_at_ms
        && at - last_due <= interval_ms / 2
        && at < next;
    if catch_up {
        (at, true)
    } else {
        (next, false)
    }
}

/// The due time after a check due at `due_ms` that was handled at `now_ms`.
/// A catch-up is followed by the grid slot at least half an interval later
/// (not at once by a near-duplicate: the failover bound allows it); any
/// other check by its next grid slot, never more than one interval on.
pub fn due_after(due_ms: i64, now_ms: i64, catch_up: bool, phase: i64, interval_ms: i64) -> i64 {
    let from = if catch_up {
        due_ms + interval_ms / 2
    } else {
        due_ms.max(now_ms - interval_ms / 2) + 1
    };
    next_due(from, phase, interval_ms)
}
