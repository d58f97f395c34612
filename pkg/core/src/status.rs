//! The fleet's state as operators see it, computed from store reads by a
//! pure function (the `status` and `buckets` commands print it).

use serde::Serialize;

use crate::model::{MasterDoc, MonitorDoc};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MasterStatus {
    pub id: String,
    pub lease_expires_in_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorStatus {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub heartbeat_age_s: f64,
    pub buckets: u32,
    pub draining: bool,
    pub checks_per_s: f64,
    pub cache_size: u64,
    pub ready: bool,
    pub admin_url: String,
    pub failing: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetStatus {
    pub master: Option<MasterStatus>,
    pub generation: u64,
    pub monitors: Vec<MonitorStatus>,
    pub unassigned_buckets: u32,
    pub clusters: u64,
}

/// Owner of each bucket; a bucket whose owner is not live counts as unassigned.
pub fn bucket_owners(master: Option<&MasterDoc>, live: &[MonitorDoc]) -> Vec<Option<String>> {
    let empty = MasterDoc::empty();
    let doc = master.cloned().map(MasterDoc::normalised).unwrap_or(empty);
    doc.buckets
        .into_iter()
        .map(|b| b.owner.filter(|o| live.iter().any(|m| &m.id == o)))
        .collect()
}

pub fn fleet_status(
    master: Option<&MasterDoc>,
    live: &[MonitorDoc],
    clusters: u64,
    now_ms: i64,
) -> FleetStatus {
    let owners = bucket_owners(master, live);
    let count = |id: &str| owners.iter().filter(|o| o.as_deref() == Some(id)).count() as u32;
    FleetStatus {
        master: master.and_then(|m| {
            m.lease_held_at(now_ms).map(|id| MasterStatus {
                id: id.to_string(),
                lease_expires_in_s: (m.lease_expires_ms - now_ms) as f64 / 1000.0,
            })
        }),
        generation: master.map_or(0, |m| m.generation),
        monitors: live
            .iter()
            .map(|m| MonitorStatus {
                id: m.id.clone(),
                hostname: m.hostname.clone(),
                version: m.version.clone(),
                heartbeat_age_s: ((now_ms - m.heartbeat_at_ms).max(0)) as f64 / 1000.0,
                buckets: count(&m.id),
                draining: m.draining,
                checks_per_s: m.stats.checks_per_s,
                cache_size: m.stats.cache_size,
                ready: m.stats.ready,
                admin_url: m.admin_url.clone(),
                failing: m.stats.failing,
            })
            .collect(),
        unassigned_buckets: owners.iter().filter(|o| o.is_none()).count() as u32,
        clusters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BucketAssignment;
    use crate::store::contract::monitor;

    #[test]
    fn dead_owners_count_as_unassigned_and_expired_lease_has_no_master() {
        let mut doc = MasterDoc::empty();
        doc.lease_owner = Some("a".into());
        doc.lease_expires_ms = 5_000;
        doc.generation = 3;
        for b in 0..100 {
            doc.buckets[b] = BucketAssignment::owned_by("a");
        }
        for b in 100..200 {
            doc.buckets[b] = BucketAssignment::owned_by("dead");
        }
        let mut a = monitor("a", 10_000);
        a.heartbeat_at_ms = 1_000;
        let s = fleet_status(Some(&doc), &[a], 7, 2_000);
        assert_eq!(
            s.master,
            Some(MasterStatus {
                id: "a".into(),
                lease_expires_in_s: 3.0
            })
        );
        assert_eq!(s.unassigned_buckets, 156);
        assert_eq!(s.monitors[0].buckets, 100);
        assert_eq!(s.monitors[0].heartbeat_age_s, 1.0);
        assert_eq!(s.clusters, 7);
        assert_eq!(s.generation, 3);
        assert_eq!(fleet_status(Some(&doc), &[], 0, 5_000).master, None);
        let j = serde_json::to_value(&s).unwrap();
        for k in [
            "master",
            "generation",
            "monitors",
            "unassigned_buckets",
            "clusters",
        ] {
            assert!(j.get(k).is_some(), "status json has {k}");
        }
    }
}

/// `clustermon explain`: who checks a cluster, and if nobody, why, in plain
/// words. Computed from store reads and (when reachable) the owner's own
/// view of the cluster; a pure function of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub id: String,
    pub bucket: Option<u8>,
    pub state: Option<String>,
    pub owner: Option<String>,
    pub owner_alive: bool,
    pub owner_ready: Option<bool>,
    pub owner_draining: bool,
    /// The owner's record of its last check (time, result per collector).
    pub last_check: Option<serde_json::Value>,
    /// Unix milliseconds of the next scheduled check, from the owner.
    pub next_due: Option<i64>,
    pub checked: bool,
    pub reason: Option<String>,
}

/// What the store holds for the cluster.
pub enum Doc<'a> {
    Missing,
    Invalid(String),
    Valid(&'a crate::model::ClusterDoc),
}

pub fn explain(
    id: &str,
    doc: Doc<'_>,
    master: Option<&MasterDoc>,
    live: &[MonitorDoc],
    owner_view: Option<&serde_json::Value>,
) -> Explanation {
    let mut e = Explanation {
        id: id.to_string(),
        bucket: None,
        state: None,
        owner: None,
        owner_alive: false,
        owner_ready: None,
        owner_draining: false,
        last_check: None,
        next_due: None,
        checked: false,
        reason: None,
    };
    let doc = match doc {
        Doc::Missing => {
            e.reason = Some("no such cluster: the store has no document with this id".into());
            return e;
        }
        Doc::Invalid(why) => {
            e.reason = Some(format!(
                "invalid document ({why}): monitors skip it and keep the last valid version, if any"
            ));
            return e;
        }
        Doc::Valid(d) => d,
    };
    e.bucket = Some(doc.bucket);
    e.state = Some(doc.provisioning_state.as_str().to_string());
    let b = master
        .map(|m| {
            m.buckets
                .get(usize::from(doc.bucket))
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    e.owner = b.owner.clone();
    let owner_doc = b
        .owner
        .as_deref()
        .and_then(|o| live.iter().find(|m| m.id == o));
    e.owner_alive = owner_doc.is_some();
    e.owner_ready = owner_doc.map(|m| m.stats.ready);
    e.owner_draining = owner_doc.is_some_and(|m| m.draining);
    if let Some(v) = owner_view {
        e.last_check = v.get("last_check").filter(|l| !l.is_null()).cloned();
        e.next_due = v.get("next_due_ms").and_then(serde_json::Value::as_i64);
    }
    e.reason = if !doc.provisioning_state.is_checkable() {
        Some(format!(
            "state is {}: clusters are checked only outside Creating and Deleting",
            doc.provisioning_state.as_str()
        ))
    } else if b.owner.is_none() {
        Some(format!(
            "bucket {} is unassigned: no live monitor owns it (is any monitor running and holding the master lease?)",
            doc.bucket
        ))
    } else if let (Some(o), None) = (b.owner.as_deref(), owner_doc) {
        Some(format!(
            "owner {o} is dead (no live heartbeat): its buckets move to live monitors after the heartbeat TTL"
        ))
    } else if e.owner_draining {
        Some(format!(
            "owner {} is draining: bucket {} is being handed to another monitor",
            b.owner.as_deref().unwrap_or_default(),
            doc.bucket
        ))
    } else if e.owner_ready == Some(false) {
        Some(format!(
            "owner {} is alive but not ready (store, assignment or initial feed replay)",
            b.owner.as_deref().unwrap_or_default()
        ))
    } else if owner_view.is_some_and(|v| v.get("known") == Some(&serde_json::Value::Bool(false))) {
        Some(format!(
            "owner {} does not have this cluster in its cache yet (change feed lag)",
            b.owner.as_deref().unwrap_or_default()
        ))
    } else {
        None
    };
    e.checked = e.reason.is_none();
    e
}

#[cfg(test)]
mod explain_tests {
    use super::*;
    use crate::model::{BucketAssignment, ProvisioningState};
    use crate::store::contract::{cluster, monitor};

    fn fleet() -> (MasterDoc, Vec<MonitorDoc>) {
        let mut m = MasterDoc::empty();
        m.buckets[1] = BucketAssignment::owned_by("a");
        m.buckets[2] = BucketAssignment::owned_by("dead");
        m.buckets[3] = BucketAssignment::owned_by("d");
        let mut a = monitor("a", 10_000);
        a.stats.ready = true;
        let mut d = monitor("d", 10_000);
        d.draining = true;
        d.stats.ready = true;
        (m, vec![a, d])
    }

    #[test]
    fn every_reason_in_plain_words() {
        let (m, live) = fleet();
        let ex = |doc: Doc<'_>, view: Option<&serde_json::Value>| {
            explain("x", doc, Some(&m), &live, view)
        };
        let r = ex(Doc::Missing, None);
        assert!(!r.checked && r.reason.unwrap().contains("no such cluster"));
        let r = ex(Doc::Invalid("missing field `apiServer`".into()), None);
        assert!(r.reason.unwrap().contains("invalid document"));

        let owned = cluster("x", 1);
        let view =
            serde_json::json!({"known": true, "next_due_ms": 42, "last_check": {"ok": true}});
        let r = ex(Doc::Valid(&owned), Some(&view));
        assert!(r.checked, "{r:?}");
        assert_eq!(r.reason, None);
        assert_eq!(
            (r.owner.as_deref(), r.owner_alive, r.next_due),
            (Some("a"), true, Some(42))
        );
        assert!(r.last_check.is_some());

        let mut creating = cluster("x", 1);
        creating.provisioning_state = ProvisioningState::Creating;
        assert!(ex(Doc::Valid(&creating), None)
            .reason
            .unwrap()
            .contains("state is Creating"));
        let unassigned = cluster("x", 9);
        assert!(ex(Doc::Valid(&unassigned), None)
            .reason
            .unwrap()
            .contains("bucket 9 is unassigned"));
        let dead = cluster("x", 2);
        let r = ex(Doc::Valid(&dead), None);
        assert!(!r.owner_alive && r.reason.unwrap().contains("owner dead is dead"));
        let draining = cluster("x", 3);
        assert!(ex(Doc::Valid(&draining), None)
            .reason
            .unwrap()
            .contains("draining"));
        let unknown = serde_json::json!({"known": false});
        assert!(ex(Doc::Valid(&owned), Some(&unknown))
            .reason
            .unwrap()
            .contains("cache"));
        let r = explain("x", Doc::Valid(&owned), None, &live, None);
        assert!(
            r.reason.unwrap().contains("unassigned"),
            "no master document at all"
        );
    }
}
