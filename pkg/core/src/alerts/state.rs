//! The alert state machine: pure, per (cluster, condition).
//!
//! ```text
//!             failing (count < N)           failing (count reaches N)
//!   (none) ───────────────────────► pending ─────────────────────────► firing ──┐
//!     ▲  ◄── clear / forget ───────────┘                                 │  ▲     │ failing or
//!     │                                                                  │  └─────┘ unobserved:
//!     └──────── clear: one "resolved" (endsAt = now) ────────────────────┘           re-sent
//!     └──────── forget (cluster left this monitor): nothing sent ────────┘
//! ```
//!
//! - *failing*: the check found the condition; *clear*: the collector that
//!   finds it ran and did not; *unobserved*: it did not run (the API server
//!   is down, or the collector failed), so nothing is known: a pending count
//!   stays as it is, a firing alert is re-sent as it was.
//! - A firing alert is sent on every check, with `endsAt = now + horizon`
//!   ([`horizon`]), so Alertmanager keeps it while the series goes on, even
//!   across a handoff or a crash of its owner.
//! - "Resolved" is sent once, only for an alert this monitor saw firing and
//!   then saw clear; [`Tracker::forget`] (the cluster left this monitor)
//!   sends nothing: the new owner continues the series.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::api::{AlertAnswer, AlertState};

/// One alert of a cluster: its name and the condition's own labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub alertname: &'static str,
    pub labels: Vec<(&'static str, String)>,
}

impl Key {
    /// This alert as the status page shows it.
    fn answer(
        &self,
        state: AlertState,
        failing_checks: u32,
        starts_ms: i64,
        ends_ms: Option<i64>,
        summary: &str,
    ) -> AlertAnswer {
        AlertAnswer {
            alertname: self.alertname.to_string(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            state,
            failing_checks,
            starts_ms,
            ends_ms,
            summary: summary.to_string(),
        }
    }
}

/// What one check said about a cluster's conditions.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// The failing conditions and their one-line summaries.
    pub failing: BTreeMap<Key, String>,
    /// Alert names whose collector did not run (nothing known about them).
    pub unobserved: Vec<&'static str>,
}

impl Observation {
    fn observed(&self, alertname: &str) -> bool {
        !self.unobserved.contains(&alertname)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Firing,
    Resolved,
}

/// One alert to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub key: Key,
    pub phase: Phase,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub summary: String,
}

impl Out {
    /// This alert as the status page shows it (a resolved one: once seen).
    pub fn answer(&self) -> AlertAnswer {
        let state = match self.phase {
            Phase::Firing => AlertState::Firing,
            Phase::Resolved => AlertState::Resolved,
        };
        let ends = (self.phase == Phase::Resolved).then_some(self.ends_ms);
        self.key
            .answer(state, 0, self.starts_ms, ends, &self.summary)
    }
}

#[derive(Clone, Debug)]
struct St {
    /// Consecutive failing checks (unobserved ones not counted), capped.
    count: u32,
    firing: bool,
    /// The first failing check of the series.
    starts_ms: i64,
    summary: String,
}

/// How far ahead a firing alert's `endsAt` is set. A crash of the owner right
/// after its last send (at `t0`) is the worst case: the cluster's next due
/// time is at most one interval later; the buckets move within the failover
/// bound `F` (heartbeat TTL + 2 passes: 14 s at the defaults); the new owner
/// checks at once (catch-up) or at the next grid slot (≤ one interval), then
/// needs N failing checks of its own, the last one finishing at most one
/// check timeout `D` after it started. So the new owner re-fires by
/// `t0 + (N + 1)·interval + F + D`, and
///
/// `horizon = (N + 2)·interval + F + D`
///
/// leaves one interval of slack (for a check that is skipped or late).
/// Defaults (interval 1 m, N 3, F 14 s, D 30 s): re-fire by 4 m 44 s, within
/// Alertmanager's `resolve_timeout` default (5 m); horizon 5 m 44 s. A
/// condition that clears while nobody owns the cluster is resolved by
/// Alertmanager at that `endsAt` (no monitor saw it clear). Assumes a check
/// timeout below the interval (the defaults: 30 s < 1 m).
pub fn horizon(
    interval: Duration,
    after: u32,
    failover: Duration,
    check_timeout: Duration,
) -> Duration {
    interval * (after.max(1) + 2) + failover + check_timeout
}

/// The state of every alert of the clusters this monitor owns.
#[derive(Debug)]
pub struct Tracker {
    after: u32,
    horizon_ms: i64,
    /// Per cluster its alerts, in a small vector: nearly always one or two
    /// (a `BTreeMap` allocates a node of 11 entries, ~1 KB, for one).
    clusters: HashMap<Arc<str>, Vec<(Key, St)>>,
}

impl Tracker {
    /// `after`: consecutive failing checks before an alert fires (≥ 1).
    pub fn new(after: u32, horizon_ms: i64) -> Self {
        Self {
            after: after.max(1),
            horizon_ms,
            clusters: HashMap::new(),
        }
    }

    /// Applies one check of `cluster` at `now_ms`; returns what to send.
    pub fn observe(&mut self, cluster: &Arc<str>, obs: &Observation, now_ms: i64) -> Vec<Out> {
        let states = self.clusters.entry(cluster.clone()).or_default();
        let mut out = Vec::new();
        // Known alerts that did not fail this time.
        states.retain(|(key, st)| {
            if obs.failing.contains_key(key) {
                return true;
            }
            if !obs.observed(key.alertname) {
                if st.firing {
                    out.push(Out {
                        key: key.clone(),
                        phase: Phase::Firing,
                        starts_ms: st.starts_ms,
                        ends_ms: now_ms + self.horizon_ms,
                        summary: st.summary.clone(),
                    });
                }
                return true;
            }
            if st.firing {
                out.push(Out {
                    key: key.clone(),
                    phase: Phase::Resolved,
                    starts_ms: st.starts_ms,
                    ends_ms: now_ms,
                    summary: st.summary.clone(),
                });
            }
            false
        });
        for (key, summary) in &obs.failing {
            // Kept sorted by key, as the map was: outputs in a stable order.
            let i = match states.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => i,
                Err(i) => {
                    states.insert(
                        i,
                        (
                            key.clone(),
                            St {
                                count: 0,
                                firing: false,
                                starts_ms: now_ms,
                                summary: String::new(),
                            },
                        ),
                    );
                    i
                }
            };
            let st = &mut states[i].1;
            st.count = st.count.saturating_add(1).min(self.after);
            st.summary.clone_from(summary);
            if st.count >= self.after {
                st.firing = true;
            }
            if st.firing {
                out.push(Out {
                    key: key.clone(),
                    phase: Phase::Firing,
                    starts_ms: st.starts_ms,
                    ends_ms: now_ms + self.horizon_ms,
                    summary: st.summary.clone(),
                });
            }
        }
        if states.is_empty() {
            self.clusters.remove(cluster);
        }
        out
    }

    /// The cluster left this monitor (handed over, deleted): its state is
    /// dropped and nothing is sent. Returns how many of its alerts fired.
    pub fn forget(&mut self, cluster: &str) -> usize {
        self.clusters
            .remove(cluster)
            .map_or(0, |s| s.iter().filter(|(_, st)| st.firing).count())
    }

    /// Clusters with any state (pending or firing).
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<str>> {
        self.clusters.keys()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> usize {
        self.clusters
            .values()
            .flat_map(|s| s.iter())
            .filter(|(_, st)| st.firing)
            .count()
    }

    /// A cluster's alerts as the status page shows them.
    pub fn answers(&self, cluster: &str) -> Vec<AlertAnswer> {
        self.clusters.get(cluster).map_or_else(Vec::new, |states| {
            states
                .iter()
                .map(|(key, st)| {
                    let state = if st.firing {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    key.answer(state, st.count, st.starts_ms, None, &st.summary)
                })
                .collect()
        })
    }

    /// Pending or firing, for a cluster and alert name (tests, debug).
    pub fn state(&self, cluster: &str, key: &Key) -> Option<(u32, bool)> {
        let (_, st) = self.clusters.get(cluster)?.iter().find(|(k, _)| k == key)?;
        Some((st.count, st.firing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 1_000_000;

    fn key(name: &'static str, node: &str) -> Key {
        Key {
            alertname: name,
            labels: if node.is_empty() {
                vec![]
            } else {
                vec![("node", node.to_string())]
            },
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Ev {
        Fail,
        Clear,
        Unobserved,
        Forget,
    }

    fn obs(k: &Key, ev: Ev) -> Observation {
        let mut o = Observation::default();
        match ev {
            Ev::Fail => {
                o.failing.insert(k.clone(), "s".into());
            }
            Ev::Unobserved => o.unobserved.push(k.alertname),
            Ev::Clear | Ev::Forget => {}
        }
        o
    }

    /// Every sequence of up to 7 events for one alert, N = 1..=3, against
    /// the rule written another way: a count of failing checks since the
    /// last clear or forget (unobserved ones skipped).
    #[test]
    fn every_short_history_matches_the_rule() {
        let evs = [Ev::Fail, Ev::Clear, Ev::Unobserved, Ev::Forget];
        let c: Arc<str> = "c1".into();
        let k = key("ClusterNodeNotReady", "w1");
        let mut histories = 0;
        for n in 1..=3u32 {
            for len in 1..=7u32 {
                for code in 0..4usize.pow(len) {
                    histories += 1;
                    let seq: Vec<Ev> = (0..len).map(|i| evs[code / 4usize.pow(i) % 4]).collect();
                    let mut t = Tracker::new(n, H);
                    let mut fails = 0u32; // the model
                    let mut last: Option<Phase> = None; // the last message sent
                    let mut first_fail = None;
                    for (i, ev) in seq.iter().enumerate() {
                        let now = 1000 * i as i64;
                        let out = if *ev == Ev::Forget {
                            t.forget(&c);
                            fails = 0;
                            last = None;
                            first_fail = None;
                            continue;
                        } else {
                            t.observe(&c, &obs(&k, *ev), now)
                        };
                        let want = match ev {
                            Ev::Fail => {
                                fails += 1;
                                first_fail.get_or_insert(now);
                                (fails >= n).then_some(Phase::Firing)
                            }
                            Ev::Unobserved => (fails >= n).then_some(Phase::Firing),
                            Ev::Clear => {
                                let r = (fails >= n).then_some(Phase::Resolved);
                                fails = 0;
                                first_fail = None;
                                r
                            }
                            Ev::Forget => unreachable!(),
                        };
                        let got = out.first().map(|o| o.phase);
                        assert!(out.len() <= 1);
                        assert_eq!(got, want, "N={n} {seq:?} at {i}");
                        if got == Some(Phase::Resolved) {
                            assert_eq!(
                                last,
                                Some(Phase::Firing),
                                "resolved without having fired: N={n} {seq:?}"
                            );
                        }
                        if let Some(o) = out.first() {
                            let ends = if o.phase == Phase::Firing {
                                now + H
                            } else {
                                now
                            };
                            assert_eq!(o.ends_ms, ends);
                            assert_eq!(Some(o.starts_ms), first_fail.or(Some(o.starts_ms)));
                            assert!(o.starts_ms <= now);
                        }
                        if got.is_some() {
                            last = got;
                        }
                        assert_eq!(t.firing(), usize::from(fails >= n));
                    }
                }
            }
        }
        assert_eq!(histories, 3 * (4 + 16 + 64 + 256 + 1024 + 4096 + 16384));
    }

    #[test]
    fn a_firing_alert_is_resent_every_check_and_resolved_once() {
        let c: Arc<str> = "c1".into();
        let k = key("ClusterApiServerDown", "");
        let mut t = Tracker::new(3, H);
        assert!(t.observe(&c, &obs(&k, Ev::Fail), 0).is_empty());
        assert!(t.observe(&c, &obs(&k, Ev::Fail), 10).is_empty());
        assert_eq!(t.state(&c, &k), Some((2, false)));
        for now in [20, 30, 40] {
            let out = t.observe(&c, &obs(&k, Ev::Fail), now);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].phase, Phase::Firing);
            assert_eq!((out[0].starts_ms, out[0].ends_ms), (0, now + H));
        }
        let out = t.observe(&c, &obs(&k, Ev::Clear), 50);
        assert_eq!(
            (out[0].phase, out[0].starts_ms, out[0].ends_ms),
            (Phase::Resolved, 0, 50)
        );
        assert!(t.observe(&c, &obs(&k, Ev::Clear), 60).is_empty());
        assert_eq!(t.clusters().count(), 0);
    }

    #[test]
    fn a_handed_over_cluster_is_forgotten_without_a_resolved() {
        let c: Arc<str> = "c1".into();
        let k = key("ClusterApiServerDown", "");
        let mut t = Tracker::new(1, H);
        assert_eq!(t.observe(&c, &obs(&k, Ev::Fail), 0).len(), 1);
        assert_eq!(t.forget(&c), 1);
        // Seen again (it came back): a clear sends nothing, a new series starts.
        assert!(t.observe(&c, &obs(&k, Ev::Clear), 10).is_empty());
        assert_eq!(t.firing(), 0);
    }

    #[test]
    fn the_horizon_outlasts_a_crash_and_fits_the_resolve_timeout() {
        let s = Duration::from_secs;
        let failover = s(10) + 2 * s(2);
        // Defaults: interval 1m, N 3, check timeout 30s.
        let (interval, n, d) = (s(60), 3u32, s(30));
        let h = horizon(interval, n, failover, d);
        assert_eq!(h, s(344));
        let refire = interval * (n + 1) + failover + d;
        assert_eq!(refire, s(284));
        assert!(
            refire <= s(300),
            "re-fire within Alertmanager's resolve_timeout (5m)"
        );
        assert!(h >= refire + interval);
        // The e2e settings: interval 3s, N 2.
        assert_eq!(horizon(s(3), 2, failover, d), s(56));
    }

    fn arb_ev() -> impl Strategy<Value = (usize, usize, u8)> {
        // (cluster, key, what): 0-1 fail, 2 clear, 3 unobserved, 4 forget
        (0..3usize, 0..3usize, 0..5u8)
    }

    proptest! {
        /// Many clusters and alerts at once: "resolved" only after "firing"
        /// of the same alert (and no forget in between), at most one message
        /// per alert per check, endsAt as documented, the firing count true.
        #[test]
        fn resolved_only_for_alerts_seen_firing(
            n in 1u32..5,
            evs in proptest::collection::vec(proptest::collection::vec(arb_ev(), 1..6), 1..60),
        ) {
            let clusters: Vec<Arc<str>> = ["a", "b", "c"].iter().map(|s| Arc::from(*s)).collect();
            let names = ["ClusterApiServerDown", "ClusterNodeNotReady", "ClusterPodCrashLooping"];
            let keys: Vec<Key> = names.iter().map(|nm| key(nm, if *nm == "ClusterNodeNotReady" { "w1" } else { "" })).collect();
            let mut t = Tracker::new(n, H);
            let mut last_sent: HashMap<(usize, Key), Phase> = HashMap::new();
            for (step, batch) in evs.iter().enumerate() {
                let now = step as i64 * 1000;
                // One check per cluster in this step.
                let mut per: BTreeMap<usize, Observation> = BTreeMap::new();
                for (c, k, what) in batch {
                    if *what == 4 {
                        t.forget(&clusters[*c]);
                        last_sent.retain(|(cc, _), _| cc != c);
                        per.remove(c);
                        continue;
                    }
                    let o = per.entry(*c).or_default();
                    match what {
                        0 | 1 => { o.failing.insert(keys[*k].clone(), "s".into()); }
                        2 => { o.failing.remove(&keys[*k]); }
                        _ => {
                            o.failing.remove(&keys[*k]);
                            o.unobserved.push(keys[*k].alertname);
                        }
                    }
                }
                for (c, o) in &per {
                    let out = t.observe(&clusters[*c], o, now);
                    let mut seen = std::collections::HashSet::new();
                    for m in out {
                        prop_assert!(seen.insert(m.key.clone()), "one message per alert per check");
                        let prev = last_sent.get(&(*c, m.key.clone())).copied();
                        match m.phase {
                            Phase::Resolved => {
                                prop_assert_eq!(prev, Some(Phase::Firing));
                                prop_assert!(!o.failing.contains_key(&m.key));
                                prop_assert_eq!(m.ends_ms, now);
                            }
                            Phase::Firing => {
                                prop_assert_eq!(m.ends_ms, now + H);
                                prop_assert!(m.starts_ms <= now);
                            }
                        }
                        last_sent.insert((*c, m.key.clone()), m.phase);
                    }
                    // Every alert that fired before and still fails (or is
                    // unobserved) was re-sent in this check.
                    for ((cc, k), p) in &last_sent {
                        if cc == c && *p == Phase::Firing {
                            prop_assert!(t.state(&clusters[*c], k).is_some_and(|s| s.1));
                        }
                    }
                }
                let firing = last_sent.values().filter(|p| **p == Phase::Firing).count();
                prop_assert_eq!(t.firing(), firing);
            }
        }
    }
}
