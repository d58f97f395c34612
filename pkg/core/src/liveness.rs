//! Liveness, the lease and clock offsets from *observed* time.
//!
//! Monitors never compare their wall clock with another host's timestamps
//! to decide who is alive or who holds the lease (a clock that runs ahead
//! would declare everyone dead and take the whole fleet). As client-go's
//! leader election does, a monitor remembers when *it* saw a peer's
//! heartbeat (or the master document) change, on its own clock, and
//! treats the peer as dead (the lease as expired) a TTL after that.
//!
//! The same observations bound each peer's clock offset: a heartbeat that
//! changed between two lists was written between them, so
//! `offset = heartbeatAtMs - write time` lies in a known interval. A monitor
//! whose clock is off from more than half of the fleet by more than
//! `--max-clock-offset` takes no lease and no bucket (CockroachDB refuses to
//! serve past its maximum offset for the same reason).
//!
//! Everything here is pure: times are passed in, in this monitor's clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::model::MonitorDoc;

/// How many offset samples of a peer are intersected.
const OFFSET_SAMPLES: usize = 8;

/// Timings of the observer, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct ObserveTiming {
    pub heartbeat_ttl_ms: i64,
    pub lease_ttl_ms: i64,
    pub max_offset_ms: i64,
}

#[derive(Clone, Debug)]
struct Peer {
    heartbeat_at_ms: i64,
    /// When this monitor saw the heartbeat change (its own clock), or the
    /// presumption made at first sight.
    changed_at_ms: i64,
    /// The last heartbeat was written after this time (this monitor's clock),
    /// when known: the list before the one that saw the change.
    written_after_ms: Option<i64>,
    /// Intervals `[lo, hi]` that each contain the peer's clock minus ours.
    offsets: VecDeque<(i64, i64)>,
    draining: bool,
    clock_ok: bool,
    present: bool,
    admin_url: String,
    /// A probe of its admin endpoint was refused since the last change: the
    /// process is gone (a paused one still accepts connections).
    gone: bool,
    /// Expired when first seen and unchanged since: a leftover document,
    /// not live whatever happened to the store.
    stale_at_first_sight: bool,
    /// Lists that showed this peer's document.
    lists_seen: u32,
}

impl Peer {
    /// The intersection of the samples: the peer's offset lies in it.
    fn offset_bounds(&self) -> Option<(i64, i64)> {
        let mut it = self.offsets.iter();
        let first = *it.next()?;
        Some(it.fold(first, |(lo, hi), (l, h)| (lo.max(*l), hi.min(*h))))
    }
}

/// What this monitor concludes about its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockVerdict {
    /// Not enough observations yet: take no bucket until there are.
    Pending,
    /// Within bounds of the majority (or no peer to compare with).
    Ok,
    /// Off from more than half of the fleet by more than the maximum.
    Skewed,
}

/// Clock offset of this monitor from the fleet (positive: this clock is
/// ahead), as far as the observations tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    pub verdict: ClockVerdict,
    /// Best estimate (median over the fleet, this monitor included as 0).
    pub offset_ms: i64,
    /// Peers with an offset sample, and how many are surely beyond the maximum.
    pub peers_measured: usize,
    pub peers_beyond: usize,
}

/// The observations of one monitor.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    peers: BTreeMap<String, Peer>,
    /// Start of the previous list (this monitor's clock).
    prev_list_ms: Option<i64>,
    first_list_ms: Option<i64>,
    /// Etag of the master document and when it was last seen to change.
    master: Option<(String, i64)>,
}

impl Observer {
    /// Records one list of heartbeat documents, read between `started_ms`
    /// and `done_ms`. `me` is skipped (its own clock is the reference).
    pub fn observe_list(
        &mut self,
        me: &str,
        started_ms: i64,
        done_ms: i64,
        docs: &[MonitorDoc],
        t: ObserveTiming,
    ) {
        let prev = self.prev_list_ms;
        self.first_list_ms.get_or_insert(started_ms);
        for p in self.peers.values_mut() {
            p.present = false;
        }
        let listed: BTreeSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        for d in docs.iter().filter(|d| d.id != me) {
            match self.peers.get_mut(&d.id) {
                Some(p) => {
                    p.present = true;
                    p.draining = d.draining;
                    p.clock_ok = d.clock_ok;
                    p.admin_url.clone_from(&d.admin_url);
                    if p.heartbeat_at_ms != d.heartbeat_at_ms {
                        p.gone = false;
                        p.stale_at_first_sight = false;
                        p.heartbeat_at_ms = d.heartbeat_at_ms;
                        p.changed_at_ms = done_ms;
                        p.written_after_ms = prev;
                        if let Some(prev) = prev {
                            push_sample(p, d.heartbeat_at_ms - done_ms, d.heartbeat_at_ms - prev);
                        }
                    }
                }
                None => {
                    // First sight. A document absent from the previous list
                    // was written since it (when there was one).
                    let presumed_live = d.expires_at_ms > done_ms - t.max_offset_ms;
                    let mut p = Peer {
                        heartbeat_at_ms: d.heartbeat_at_ms,
                        changed_at_ms: if presumed_live {
                            done_ms
                        } else {
                            done_ms - t.heartbeat_ttl_ms
                        },
                        written_after_ms: None,
                        offsets: VecDeque::new(),
                        draining: d.draining,
                        clock_ok: d.clock_ok,
                        present: true,
                        admin_url: d.admin_url.clone(),
                        gone: false,
                        stale_at_first_sight: !presumed_live,
                        lists_seen: 0,
                    };
                    if let Some(prev) = prev {
                        if presumed_live {
                            p.written_after_ms = Some(prev);
                            push_sample(
                                &mut p,
                                d.heartbeat_at_ms - done_ms,
                                d.heartbeat_at_ms - prev,
                            );
                        }
                    }
                    self.peers.insert(d.id.clone(), p);
                }
            }
        }
        for (id, p) in self.peers.iter_mut() {
            if listed.contains(id.as_str()) {
                p.lists_seen = p.lists_seen.saturating_add(1);
            }
        }
        // Forget peers long gone (their documents deleted or expired).
        let forget_before = done_ms - 10 * t.heartbeat_ttl_ms;
        self.peers
            .retain(|_, p| p.present || p.changed_at_ms >= forget_before);
        self.prev_list_ms = Some(started_ms);
    }

    /// Records the master document's etag as read at `now_ms` (`None`: there
    /// is none). Only versions that decode count as renewals.
    pub fn observe_master(&mut self, etag: Option<&str>, now_ms: i64) {
        match (etag, &self.master) {
            (None, _) => self.master = None,
            (Some(e), Some((have, _))) if have == e => {}
            (Some(e), _) => self.master = Some((e.to_string(), now_ms)),
        }
    }

    fn since(&self, changed_at_ms: i64, connected_since_ms: i64) -> i64 {
        changed_at_ms.max(connected_since_ms)
    }

    /// Whether a peer is live at `now_ms`: its heartbeat changed within the
    /// TTL, counted from when this monitor last (re)gained the store at the
    /// latest, since a heartbeat nobody could write is no evidence of death.
    pub fn is_live(
        &self,
        id: &str,
        now_ms: i64,
        connected_since_ms: i64,
        t: ObserveTiming,
    ) -> bool {
        self.peers.get(id).is_some_and(|p| {
            p.present
                && !p.gone
                && !p.stale_at_first_sight
                && now_ms - self.since(p.changed_at_ms, connected_since_ms) < t.heartbeat_ttl_ms
        })
    }

    /// Live peers (this monitor not included), sorted.
    pub fn live(&self, now_ms: i64, connected_since_ms: i64, t: ObserveTiming) -> Vec<&str> {
        self.peers
            .keys()
            .filter(|id| self.is_live(id, now_ms, connected_since_ms, t))
            .map(String::as_str)
            .collect()
    }

    /// Live peers that may receive buckets: not draining, clock within bounds.
    pub fn eligible(
        &self,
        now_ms: i64,
        connected_since_ms: i64,
        t: ObserveTiming,
    ) -> BTreeSet<&str> {
        self.live(now_ms, connected_since_ms, t)
            .into_iter()
            .filter(|id| {
                let p = &self.peers[*id];
                !p.draining && p.clock_ok
            })
            .collect()
    }

    /// Live peers whose heartbeat has not changed for `quiet_ms` (one pass
    /// or more: an expected change is missing), with their admin URLs: the
    /// ones worth probing. A refused probe proves the process gone; a
    /// timeout proves nothing (a paused process's kernel still accepts).
    pub fn quiet_peers(
        &self,
        now_ms: i64,
        quiet_ms: i64,
        connected_since_ms: i64,
        t: ObserveTiming,
    ) -> Vec<(String, String)> {
        self.peers
            .iter()
            .filter(|(id, p)| {
                !p.admin_url.is_empty()
                    && self.is_live(id, now_ms, connected_since_ms, t)
                    && now_ms - p.changed_at_ms > quiet_ms
            })
            .map(|(id, p)| (id.clone(), p.admin_url.clone()))
            .collect()
    }

    /// The master document has not changed for `quiet_ms`: its holder's
    /// renewals stopped, or are late.
    pub fn master_quiet(&self, now_ms: i64, quiet_ms: i64) -> bool {
        self.master
            .as_ref()
            .is_some_and(|(_, changed)| now_ms - changed > quiet_ms)
    }

    /// The admin URL a peer advertises, if any.
    pub fn admin_url(&self, id: &str) -> Option<&str> {
        self.peers
            .get(id)
            .map(|p| p.admin_url.as_str())
            .filter(|u| !u.is_empty())
    }

    /// Whether a probe proved the peer gone (since its last change).
    pub fn is_gone(&self, id: &str) -> bool {
        self.peers.get(id).is_some_and(|p| p.gone)
    }

    /// A probe of the peer's admin endpoint was refused: it is dead now,
    /// until its heartbeat changes again.
    pub fn mark_gone(&mut self, id: &str) {
        if let Some(p) = self.peers.get_mut(id) {
            p.gone = true;
        }
    }

    /// The last heartbeat write of each known peer happened after this time
    /// (this monitor's clock), where the observations tell.
    pub fn written_after(&self) -> BTreeMap<String, i64> {
        self.peers
            .iter()
            .filter_map(|(id, p)| p.written_after_ms.map(|t| (id.clone(), t)))
            .collect()
    }

    /// Since when each peer's checks may have been missed: see
    /// [`checks_missed_since`].
    pub fn missed_since(
        &self,
        handled: &BTreeMap<String, HandledThrough>,
        now_ms: i64,
        max_age_ms: i64,
    ) -> BTreeMap<String, i64> {
        checks_missed_since(self.written_after(), handled, now_ms, max_age_ms)
    }

    /// Who holds the lease, judged by observation: the named owner while the
    /// master document keeps changing (every renewal writes it) within the
    /// lease TTL, and while its heartbeat document exists. A document seen
    /// for the first time is presumed renewed just now.
    pub fn lease_holder<'a>(
        &self,
        owner: Option<&'a str>,
        me: &str,
        now_ms: i64,
        connected_since_ms: i64,
        t: ObserveTiming,
    ) -> Option<&'a str> {
        let owner = owner?;
        if owner == me {
            return Some(owner);
        }
        let (_, changed) = self.master.as_ref()?;
        let renewed = now_ms - self.since(*changed, connected_since_ms) < t.lease_ttl_ms;
        let exists = self.peers.get(owner).is_some_and(|p| p.present && !p.gone);
        (renewed && exists).then_some(owner)
    }

    /// This monitor's clock against the fleet's.
    pub fn clock(&self, now_ms: i64, connected_since_ms: i64, t: ObserveTiming) -> ClockState {
        let live = self.live(now_ms, connected_since_ms, t);
        let mut estimates = vec![0i64];
        let (mut measured, mut beyond, mut unmeasured) = (0, 0, 0);
        for id in &live {
            match self.peers[*id].offset_bounds() {
                Some((lo, hi)) => {
                    measured += 1;
                    estimates.push((lo + hi) / 2);
                    if lo > t.max_offset_ms || hi < -t.max_offset_ms {
                        beyond += 1;
                    }
                }
                None => unmeasured += 1,
            }
        }
        // A peer whose document looked expired at first sight is not live,
        // yet it may be a live peer whose clock is behind ours (or ours
        // ahead): wait until it changed (measured) or stayed unchanged for
        // two more lists (a leftover document) before giving a verdict.
        unmeasured += self
            .peers
            .values()
            .filter(|p| {
                p.present && p.offsets.is_empty() && p.stale_at_first_sight && p.lists_seen < 3
            })
            .count();
        estimates.sort_unstable();
        // The peers' offsets are theirs minus ours: the fleet's median clock
        // minus ours. Report ours minus the fleet's.
        let offset_ms = -estimates[estimates.len() / 2];
        let waited = self
            .first_list_ms
            .is_some_and(|f| now_ms - f >= t.heartbeat_ttl_ms);
        let verdict = if beyond * 2 > measured + 1 {
            ClockVerdict::Skewed
        } else if unmeasured > 0 && !waited || self.first_list_ms.is_none() {
            ClockVerdict::Pending
        } else {
            ClockVerdict::Ok
        };
        ClockState {
            verdict,
            offset_ms,
            peers_measured: measured,
            peers_beyond: beyond,
        }
    }
}

/// What a peer's probe answer said of its checks: at `probed_ms` (this
/// monitor's clock), its scheduler had handled every due time before
/// `due_ms` (a time of the shared grid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandledThrough {
    pub probed_ms: i64,
    pub due_ms: i64,
}

/// Since when each peer's checks may have been missed, for the catch-up of
/// a dead owner's buckets: after its last heartbeat write (`written_after`),
/// or, where a probe answered within `max_age_ms` of `now_ms`, from the due
/// time before which its scheduler had handled everything, whichever is
/// later. A monitor cut off from the store keeps checking while its
/// heartbeat ages: its heartbeat says nothing of that, its probe answer
/// does. A monitor whose engine is stuck answers with an old due time, and
/// one that does not answer gives none: the catch-up then starts earlier,
/// never later than a check that may have been missed.
pub fn checks_missed_since(
    mut written_after: BTreeMap<String, i64>,
    handled: &BTreeMap<String, HandledThrough>,
    now_ms: i64,
    max_age_ms: i64,
) -> BTreeMap<String, i64> {
    for (id, h) in handled {
        if now_ms - h.probed_ms > max_age_ms {
            continue;
        }
        let since = written_after.entry(id.clone()).or_insert(h.due_ms);
        *since = (*since).max(h.due_ms);
    }
    written_after
}

fn push_sample(p: &mut Peer, lo: i64, hi: i64) {
    p.offsets.push_back((lo, hi));
    while p.offsets.len() > OFFSET_SAMPLES {
        p.offsets.pop_front();
    }
    // A clock that jumped makes the samples disagree: keep the newest.
    if let Some((lo, hi)) = p.offset_bounds() {
        if lo > hi {
            let last = *p.offsets.back().expect("just pushed");
            p.offsets.clear();
            p.offsets.push_back(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: ObserveTiming = ObserveTiming {
        heartbeat_ttl_ms: 10_000,
        lease_ttl_ms: 10_000,
        max_offset_ms: 1_000,
    };

    fn doc(id: &str, hb: i64, ttl: i64) -> MonitorDoc {
        MonitorDoc {
            id: id.into(),
            hostname: String::new(),
            version: String::new(),
            started_at: chrono::DateTime::UNIX_EPOCH,
            admin_url: String::new(),
            draining: false,
            expires_at_ms: hb + ttl,
            heartbeat_at_ms: hb,
            clock_ok: true,
            clock_offset_ms: 0,
            stats: Default::default(),
        }
    }

    /// Three monitors heartbeating every 2 s with the given clock offsets
    /// (ms, true clock + offset), observed by monitor 0 for `secs` seconds;
    /// each pass lists 30 ms after its own phase.
    fn run(offsets: [i64; 3], phases: [i64; 3], secs: i64, observer: usize) -> (Observer, i64) {
        let mut o = Observer::default();
        let me = format!("m{observer}");
        let mut last = [i64::MIN; 3];
        let mut real = 0;
        while real <= secs * 1000 {
            for (i, off) in offsets.iter().enumerate() {
                if (real - phases[i]).rem_euclid(2000) == 0 && real >= phases[i] {
                    last[i] = real + off;
                }
            }
            if (real - phases[observer] - 30).rem_euclid(2000) == 0 && real > phases[observer] {
                let docs: Vec<MonitorDoc> = (0..3)
                    .filter(|i| last[*i] != i64::MIN)
                    .map(|i| doc(&format!("m{i}"), last[i], 10_000))
                    .collect();
                let now = real + offsets[observer];
                o.observe_list(&me, now, now + 5, &docs, T);
            }
            real += 10;
        }
        (o, real + offsets[observer])
    }

    #[test]
    fn a_recent_probe_answer_moves_the_catch_up_mark_later_never_earlier() {
        let written = BTreeMap::from([("a".to_string(), 1_000), ("b".to_string(), 5_000)]);
        let h = |probed_ms, due_ms| HandledThrough { probed_ms, due_ms };
        let handled = BTreeMap::from([
            // Cut off, still checking: everything before 9_000 handled.
            ("a".to_string(), h(9_500, 9_000)),
            // A stuck engine: its answer is older than its heartbeat.
            ("b".to_string(), h(9_500, 3_000)),
            // An answer too old to go by.
            ("c".to_string(), h(2_000, 1_500)),
            // Known only by its probe.
            ("d".to_string(), h(9_000, 8_000)),
        ]);
        let m = checks_missed_since(written, &handled, 10_000, 4_000);
        assert_eq!(m["a"], 9_000);
        assert_eq!(m["b"], 5_000);
        assert!(!m.contains_key("c"));
        assert_eq!(m["d"], 8_000);
    }

    #[test]
    fn a_monitor_ahead_or_behind_of_two_peers_finds_itself_skewed() {
        for skew in [15_000, -15_000, 3_500, -3_500] {
            let (o, now) = run([skew, 0, 0], [0, 700, 1300], 20, 0);
            let c = o.clock(now, 0, T);
            assert_eq!(c.verdict, ClockVerdict::Skewed, "skew {skew}: {c:?}");
            assert!((c.offset_ms - skew).abs() <= 2_100, "skew {skew}: {c:?}");
            // The others see one peer beyond and one within: not them.
            for me in [1, 2] {
                let (o, now) = run([skew, 0, 0], [0, 700, 1300], 20, me);
                let c = o.clock(now, 0, T);
                assert_eq!(c.verdict, ClockVerdict::Ok, "skew {skew}, m{me}: {c:?}");
                assert!(c.offset_ms.abs() <= 2_100, "skew {skew}, m{me}: {c:?}");
            }
        }
    }

    #[test]
    fn a_monitor_far_ahead_waits_for_peers_that_look_expired() {
        // Ours is 15 s ahead: both peers' documents look expired at first
        // sight. No verdict until they change; then skewed.
        let mut o = Observer::default();
        let docs = |hb: i64| [doc("p1", hb, 10_000), doc("p2", hb + 300, 10_000)];
        o.observe_list("me", 15_000, 15_010, &docs(0), T);
        assert!(o.live(15_010, 15_010, T).is_empty());
        assert_eq!(o.clock(15_010, 15_010, T).verdict, ClockVerdict::Pending);
        o.observe_list("me", 17_000, 17_010, &docs(2_000), T);
        assert_eq!(o.clock(17_010, 15_010, T).verdict, ClockVerdict::Skewed);
        // Leftover documents that never change stop blocking after 3 lists.
        let mut o = Observer::default();
        for k in 0..3 {
            let now = 15_000 + k * 2_000;
            o.observe_list("me", now, now + 10, &docs(0), T);
        }
        assert_eq!(o.clock(19_010, 15_010, T).verdict, ClockVerdict::Ok);
    }

    #[test]
    fn a_skewed_peer_stays_live_by_observation() {
        // m1 is 15 s behind: its expiresAtMs is in the past for m0, yet its
        // heartbeat keeps changing, so it is live.
        let (o, now) = run([0, -15_000, 0], [0, 700, 1300], 20, 0);
        assert_eq!(o.live(now, 0, T), vec!["m1", "m2"]);
        // m1 15 s ahead is no more live than it should be once it stops.
        let (o, now) = run([0, 15_000, 0], [0, 700, 1300], 20, 0);
        assert!(o.is_live("m1", now, 0, T));
        assert!(!o.is_live("m1", now + 10_001, 0, T));
    }

    #[test]
    fn first_sight_presumes_live_only_what_has_not_expired() {
        let mut o = Observer::default();
        let docs = [doc("fresh", 1_000, 10_000), doc("ghost", -60_000, 10_000)];
        o.observe_list("me", 2_000, 2_010, &docs, T);
        assert_eq!(o.live(2_010, 0, T), vec!["fresh"]);
        assert!(
            !o.is_live("fresh", 12_010, 0, T),
            "no change for a TTL: dead"
        );
        // A ghost that starts heartbeating again is live.
        let docs = [doc("fresh", 1_000, 10_000), doc("ghost", 3_000, 10_000)];
        o.observe_list("me", 4_000, 4_010, &docs, T);
        assert!(o.is_live("ghost", 4_010, 0, T));
    }

    #[test]
    fn a_store_outage_is_no_evidence_of_death() {
        let mut o = Observer::default();
        o.observe_list("me", 0, 10, &[doc("p", 0, 10_000)], T);
        // 30 s without a change, but the store came back at 29 s.
        assert!(!o.is_live("p", 30_000, 0, T));
        assert!(o.is_live("p", 30_000, 29_000, T));
        assert!(!o.is_live("p", 39_001, 29_000, T));
    }

    #[test]
    fn the_lease_is_held_while_the_master_document_changes() {
        let mut o = Observer::default();
        o.observe_list("me", 0, 10, &[doc("boss", 0, 10_000)], T);
        o.observe_master(Some("1"), 10);
        // First sight: presumed renewed, whatever its leaseExpiresMs says.
        assert_eq!(
            o.lease_holder(Some("boss"), "me", 9_000, 0, T),
            Some("boss")
        );
        assert_eq!(o.lease_holder(Some("boss"), "me", 10_010, 0, T), None);
        o.observe_master(Some("2"), 9_500);
        assert_eq!(
            o.lease_holder(Some("boss"), "me", 19_000, 0, T),
            Some("boss")
        );
        assert_eq!(o.lease_holder(None, "me", 9_600, 0, T), None);
        assert_eq!(o.lease_holder(Some("me"), "me", 99_999, 0, T), Some("me"));
        // An owner whose heartbeat document is gone holds nothing.
        o.observe_list("me", 9_700, 9_710, &[], T);
        assert_eq!(o.lease_holder(Some("boss"), "me", 9_800, 0, T), None);
    }

    #[test]
    fn a_lone_monitor_or_a_pair_is_never_skewed() {
        let o = Observer::default();
        assert_eq!(o.clock(0, 0, T).verdict, ClockVerdict::Pending);
        let mut o = Observer::default();
        o.observe_list("me", 0, 10, &[], T);
        assert_eq!(o.clock(10, 0, T).verdict, ClockVerdict::Ok);
        // Two monitors 15 s apart: neither can tell which clock is wrong.
        let mut o = Observer::default();
        for k in 0..10 {
            let now = k * 2_000;
            o.observe_list(
                "me",
                now,
                now + 5,
                &[doc("p", now - 1_000 + 15_000, 10_000)],
                T,
            );
        }
        assert_eq!(o.clock(20_000, 0, T).verdict, ClockVerdict::Ok);
    }

    #[test]
    fn a_refused_probe_kills_a_quiet_peer_until_it_beats_again() {
        let mut o = Observer::default();
        let mut d = doc("p", 0, 10_000);
        d.admin_url = "http://127.0.0.1:1".into();
        o.observe_list("me", 0, 10, std::slice::from_ref(&d), T);
        o.observe_master(Some("1"), 10);
        assert!(
            o.quiet_peers(1_000, 2_500, 0, T).is_empty(),
            "not quiet yet"
        );
        let quiet = o.quiet_peers(3_000, 2_500, 0, T);
        assert_eq!(
            quiet,
            vec![("p".to_string(), "http://127.0.0.1:1".to_string())]
        );
        assert!(o.master_quiet(3_000, 2_500));
        o.mark_gone("p");
        assert!(!o.is_live("p", 3_000, 0, T));
        assert_eq!(
            o.lease_holder(Some("p"), "me", 3_000, 0, T),
            None,
            "a gone holder holds nothing"
        );
        // It beats again (a restart with the same id): live.
        d.heartbeat_at_ms = 4_000;
        o.observe_list("me", 4_000, 4_010, &[d], T);
        assert!(o.is_live("p", 4_010, 0, T));
    }

    proptest! {
        /// Whatever the phases and pass durations, a peer's true offset
        /// always lies in its sample bounds, so a monitor within the
        /// maximum is never judged skewed.
        #[test]
        fn bounds_contain_the_true_offset(
            off1 in -900i64..900, off2 in -900i64..900,
            p1 in 0i64..2000, p2 in 0i64..2000, p0 in 0i64..2000,
        ) {
            let (o, now) = run([0, off1, off2], [p0 / 10 * 10, p1 / 10 * 10, p2 / 10 * 10], 30, 0);
            for (id, off) in [("m1", off1), ("m2", off2)] {
                let (lo, hi) = o.peers[id].offset_bounds().unwrap();
                prop_assert!(lo <= off && off <= hi, "{id}: {off} not in [{lo}, {hi}]");
            }
            prop_assert_eq!(o.clock(now, 0, T).verdict, ClockVerdict::Ok);
        }

        /// docs/monitoring.md, *Clock skew*: an offset beyond
        /// `--max-clock-offset` + one heartbeat interval (3 s here) is
        /// always found, whatever the phases, ahead or behind, within the
        /// TTL or beyond it; and the two right clocks are never flagged.
        #[test]
        fn an_offset_beyond_the_bound_is_always_found(
            size in 3_001i64..=20_000, ahead in any::<bool>(),
            p1 in 0i64..2000, p2 in 0i64..2000, p0 in 0i64..2000,
        ) {
            let skew = if ahead { size } else { -size };
            let phases = [p0 / 10 * 10, p1 / 10 * 10, p2 / 10 * 10];
            let (o, now) = run([skew, 0, 0], phases, 30, 0);
            let c = o.clock(now, 0, T);
            prop_assert_eq!(c.verdict, ClockVerdict::Skewed, "skew {}: {:?}", skew, c);
            for me in [1, 2] {
                let (o, now) = run([skew, 0, 0], phases, 30, me);
                prop_assert_eq!(o.clock(now, 0, T).verdict, ClockVerdict::Ok, "m{}", me);
            }
        }
    }
}
