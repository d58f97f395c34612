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
