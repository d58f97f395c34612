//! What the alert task knows, for the status page: the alert state machine
//! itself (every alert of this monitor's clusters, pending or firing) and
//! the alerts resolved in the last hour. The alert task is the only writer;
//! the admin API reads. The tracker is shared, not copied: a regional outage
//! makes thousands of clusters fail, and a copy of each one's alerts would
//! double what they cost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::state::Tracker;
use crate::admin::api::AlertAnswer;

/// Resolved alerts are shown this long.
pub const RESOLVED_KEEP_MS: i64 = 3_600_000;
/// At most this many resolved alerts are kept.
pub const RESOLVED_MAX: usize = 256;

struct Inner {
    tracker: Tracker,
    resolved: VecDeque<(Arc<str>, AlertAnswer)>,
}

/// Cheap to clone; one writer (the alert task).
#[derive(Clone)]
pub struct AlertBoard {
    after: u32,
    inner: Arc<Mutex<Inner>>,
}

impl AlertBoard {
    pub fn new(after: u32, tracker: Tracker) -> Self {
        Self {
            after,
            inner: Arc::new(Mutex::new(Inner {
                tracker,
                resolved: VecDeque::new(),
            })),
        }
    }

    /// The state machine, for its one writer (the alert task).
    pub fn with_tracker<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        f(&mut self.lock().tracker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consecutive failing checks before an alert fires.
    pub fn after(&self) -> u32 {
        self.after
    }

    /// An alert this monitor saw fire and then clear.
    pub fn resolved(&self, cluster: &Arc<str>, alert: AlertAnswer, now_ms: i64) {
        let mut inner = self.lock();
        inner.resolved.push_back((cluster.clone(), alert));
        while inner.resolved.len() > RESOLVED_MAX
            || inner
                .resolved
                .front()
                .is_some_and(|(_, a)| a.ends_ms.unwrap_or(now_ms) < now_ms - RESOLVED_KEEP_MS)
        {
            inner.resolved.pop_front();
        }
    }

    /// A cluster's alerts, pending or firing.
    pub fn alerts_of(&self, cluster: &str) -> Vec<AlertAnswer> {
        self.lock().tracker.answers(cluster)
    }

    /// Resolved within the last hour, newest first.
    pub fn recently_resolved(&self, now_ms: i64) -> Vec<(Arc<str>, AlertAnswer)> {
        self.lock()
            .resolved
            .iter()
            .rev()
            .filter(|(_, a)| a.ends_ms.unwrap_or(now_ms) >= now_ms - RESOLVED_KEEP_MS)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::AlertState;
    use crate::alerts::state::{Key, Observation};

    fn alert(name: &str, state: AlertState, ends_ms: Option<i64>) -> AlertAnswer {
        AlertAnswer {
            alertname: name.into(),
            labels: Default::default(),
            state,
            failing_checks: 3,
            starts_ms: 0,
            ends_ms,
            summary: "s".into(),
        }
    }

    #[test]
    fn shows_the_trackers_alerts_and_resolved_ones_for_an_hour() {
        let b = AlertBoard::new(2, Tracker::new(2, 60_000));
        let c: Arc<str> = "c1".into();
        let mut failing = Observation::default();
        failing.failing.insert(
            Key {
                alertname: "A",
                labels: vec![("node", "n1".into())],
            },
            "down".into(),
        );
        b.with_tracker(|t| t.observe(&c, &failing, 1));
        let a = b.alerts_of("c1");
        assert_eq!(
            (a.len(), a[0].state, a[0].failing_checks),
            (1, AlertState::Pending, 1)
        );
        assert_eq!(a[0].labels.get("node").map(String::as_str), Some("n1"));
        b.with_tracker(|t| t.observe(&c, &failing, 2));
        assert_eq!(b.alerts_of("c1")[0].state, AlertState::Firing);
        b.with_tracker(|t| t.forget("c1"));
        assert!(b.alerts_of("c1").is_empty());

        b.resolved(&c, alert("A", AlertState::Resolved, Some(1_000)), 1_000);
        assert_eq!(b.recently_resolved(1_000).len(), 1);
        assert_eq!(b.recently_resolved(1_000 + RESOLVED_KEEP_MS).len(), 1);
        assert!(b.recently_resolved(1_001 + RESOLVED_KEEP_MS).is_empty());
        for i in 0..(RESOLVED_MAX as i64 + 10) {
            b.resolved(
                &c,
                alert("B", AlertState::Resolved, Some(2_000 + i)),
                2_000 + i,
            );
        }
        let r = b.recently_resolved(2_000 + RESOLVED_MAX as i64 + 10);
        assert_eq!(r.len(), RESOLVED_MAX);
        assert_eq!(
            r[0].1.ends_ms,
            Some(2_000 + RESOLVED_MAX as i64 + 9),
            "newest first"
        );
    }
}
