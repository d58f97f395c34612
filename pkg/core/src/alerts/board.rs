//! What the alert task knows, for the status page: every alert of this
//! monitor's clusters (pending or firing) and the ones resolved in the last
//! hour. Written by the alert task only; read by the admin API.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::admin::api::AlertAnswer;

/// Resolved alerts are shown this long.
pub const RESOLVED_KEEP_MS: i64 = 3_600_000;
/// At most this many resolved alerts are kept.
pub const RESOLVED_MAX: usize = 256;

#[derive(Default)]
struct Inner {
    active: HashMap<Arc<str>, Vec<AlertAnswer>>,
    resolved: VecDeque<(Arc<str>, AlertAnswer)>,
}

/// Cheap to clone; one writer (the alert task).
#[derive(Clone)]
pub struct AlertBoard {
    after: u32,
    inner: Arc<Mutex<Inner>>,
}

impl AlertBoard {
    pub fn new(after: u32) -> Self {
        Self {
            after,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consecutive failing checks before an alert fires.
    pub fn after(&self) -> u32 {
        self.after
    }

    /// A cluster's alerts now (none: it has no state).
    pub fn set(&self, cluster: &Arc<str>, alerts: Vec<AlertAnswer>) {
        let mut inner = self.lock();
        if alerts.is_empty() {
            inner.active.remove(cluster);
        } else {
            inner.active.insert(cluster.clone(), alerts);
        }
    }

    /// The cluster left this monitor: its alerts are no longer ours to show.
    pub fn remove(&self, cluster: &str) {
        self.lock().active.remove(cluster);
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

    pub fn alerts_of(&self, cluster: &str) -> Vec<AlertAnswer> {
        self.lock().active.get(cluster).cloned().unwrap_or_default()
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
    fn keeps_active_alerts_per_cluster_and_resolved_ones_for_an_hour() {
        let b = AlertBoard::new(3);
        let c: Arc<str> = "c1".into();
        b.set(&c, vec![alert("A", AlertState::Firing, None)]);
        assert_eq!(b.alerts_of("c1").len(), 1);
        b.set(&c, Vec::new());
        assert!(b.alerts_of("c1").is_empty());
        b.set(&c, vec![alert("A", AlertState::Pending, None)]);
        b.remove("c1");
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
