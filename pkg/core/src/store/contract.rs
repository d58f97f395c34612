//! The store contract suite. Each backend's tests call [`run_all`] with a
//! factory that returns a fresh, empty store; a failure panics with the name
//! of the broken rule.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use super::*;
use crate::model::{BucketAssignment, ClusterDoc, MasterDoc, MonitorDoc, ProvisioningState};

pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    monitors_expire_and_delete(fresh().await).await;
    master_create_and_compare_and_swap(fresh().await).await;
    master_cas_race_has_one_winner(fresh().await).await;
    clusters_crud(fresh().await).await;
    feed_commit_order_and_paging(fresh().await).await;
    feed_resumes_from_continuation(fresh().await).await;
    feed_rejects_garbage_continuation(fresh().await).await;
    cluster_ids_by_bucket(fresh().await).await;
    clusters_in_buckets(fresh().await).await;
}

pub fn monitor(id: &str, expires_at_ms: i64) -> MonitorDoc {
    MonitorDoc {
        id: id.into(),
        hostname: "host".into(),
        version: "test".into(),
        // Stores never read the clock: a fixed start, a TTL before expiry.
        started_at: chrono::DateTime::from_timestamp_millis(expires_at_ms.saturating_sub(10_000))
            .unwrap_or_default(),
        admin_url: String::new(),
        draining: false,
        expires_at_ms,
        heartbeat_at_ms: 0,
        clock_ok: true,
        clock_offset_ms: 0,
        stats: Default::default(),
    }
}

pub fn cluster(id: &str, bucket: u8) -> ClusterDoc {
    ClusterDoc {
        id: id.into(),
        bucket,
        provisioning_state: ProvisioningState::Succeeded,
        api_server: format!("http://127.0.0.1:1/{id}"),
        credentials: Default::default(),
        encrypted_credentials: None,
        labels: BTreeMap::from([("env".into(), "test".into())]),
    }
}

pub async fn monitors_expire_and_delete(s: Arc<dyn Store>) {
    let now = 1_000_000;
    s.upsert_monitor(&monitor("b", now + 10_000)).await.unwrap();
    s.upsert_monitor(&monitor("a", now + 5_000)).await.unwrap();
    s.upsert_monitor(&monitor("dead", now - 1)).await.unwrap();
    let live: Vec<String> = s
        .list_monitors(now)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        live,
        vec!["a", "b"],
        "list_monitors: live only, sorted by id"
    );

    // Upsert replaces (a heartbeat extends the expiry and updates fields).
    let mut a = monitor("a", now + 20_000);
    a.draining = true;
    s.upsert_monitor(&a).await.unwrap();
    let got = s.list_monitors(now + 15_000).await.unwrap();
    assert_eq!(got.len(), 1, "list_monitors: b expired at +10s");
    assert_eq!(got[0].id, "a");
    assert!(got[0].draining, "upsert_monitor must replace the document");

    assert!(
        s.delete_monitor("a").await.unwrap(),
        "delete_monitor of a live doc"
    );
    assert!(
        !s.delete_monitor("a").await.unwrap(),
        "delete_monitor twice"
    );
    assert!(s
        .list_monitors(now)
        .await
        .unwrap()
        .iter()
        .all(|m| m.id != "a"));
}

pub async fn master_create_and_compare_and_swap(s: Arc<dyn Store>) {
    assert!(
        s.read_master().await.unwrap().is_none(),
        "no master at start"
    );
    let mut doc = MasterDoc::empty();
    doc.lease_owner = Some("m1".into());
    doc.lease_expires_ms = 42;
    doc.buckets[3] = BucketAssignment::owned_by("m1");
    let e1 = s.write_master(&doc, None).await.unwrap();
    assert_eq!(
        s.write_master(&doc, None).await.unwrap_err(),
        StoreError::Conflict,
        "creating an existing master"
    );
    let read = s.read_master().await.unwrap().unwrap();
    assert_eq!(read.value, doc, "master round trip");
    assert_eq!(read.etag, e1, "read etag matches the write's");

    doc.generation = 1;
    let e2 = s.write_master(&doc, Some(&e1)).await.unwrap();
    assert_ne!(e1, e2, "a replace changes the etag");
    assert_eq!(
        s.write_master(&doc, Some(&e1)).await.unwrap_err(),
        StoreError::PreconditionFailed,
        "replace with a stale etag"
    );
    assert_eq!(s.read_master().await.unwrap().unwrap().value.generation, 1);
}

pub async fn master_cas_race_has_one_winner(s: Arc<dyn Store>) {
    let e = s.write_master(&MasterDoc::empty(), None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut d = MasterDoc::empty();
            d.lease_owner = Some(format!("m{i}"));
            s.write_master(&d, Some(&e)).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::PreconditionFailed) => {}
            Err(other) => panic!("CAS race: unexpected error {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one compare-and-swap from one etag wins");
}

pub async fn clusters_crud(s: Arc<dyn Store>) {
    s.put_cluster(&cluster("c2", 2)).await.unwrap();
    s.put_cluster(&cluster("c1", 1)).await.unwrap();
    let mut c1 = cluster("c1", 1);
    c1.provisioning_state = ProvisioningState::Deleting;
    s.put_cluster(&c1).await.unwrap();
    assert_eq!(s.count_clusters().await.unwrap(), 2);
    let ids: Vec<String> = s
        .list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec!["c1", "c2"], "list_clusters sorted by id");
    let got = s.get_cluster("c1").await.unwrap().expect("c1 exists");
    assert_eq!(ClusterDoc::decode(&got.body).unwrap(), c1, "put replaces");
    assert!(s.get_cluster("nope").await.unwrap().is_none());
    assert!(s.delete_cluster("c1").await.unwrap());
    assert!(!s.delete_cluster("c1").await.unwrap(), "deleting twice");
    assert_eq!(s.count_clusters().await.unwrap(), 1);
    let mut bad = cluster("c3", 3);
    bad.api_server = "not a url".into();
    assert!(
        matches!(s.put_cluster(&bad).await, Err(StoreError::Invalid(_))),
        "put_cluster validates"
    );
}

/// Applies a feed to a map, as the engine's reflector does.
async fn replay(
    s: &dyn Store,
    from: Option<String>,
    page: usize,
    map: &mut BTreeMap<String, String>,
) -> (String, usize) {
    let mut cont = from;
    let mut pages = 0;
    loop {
        let p = s.read_feed(cont.as_deref(), page).await.unwrap();
        assert!(p.changes.len() <= page, "read_feed returned more than max");
        pages += 1;
        for c in p.changes {
            match c {
                Change::Upsert(r) => {
                    map.insert(r.id, r.body);
                }
                Change::Delete { id } => {
                    map.remove(&id);
                }
            }
        }
        cont = Some(p.continuation);
        if p.caught_up {
            return (cont.unwrap(), pages);
        }
        assert!(pages < 1000, "feed never caught up");
    }
}

async fn snapshot(s: &dyn Store) -> BTreeMap<String, String> {
    s.list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.body))
        .collect()
}

pub async fn feed_commit_order_and_paging(s: Arc<dyn Store>) {
    for i in 0..25 {
        s.put_cluster(&cluster(&format!("c{i:02}"), i as u8))
            .await
            .unwrap();
    }
    let mut updated = cluster("c03", 3);
    updated.labels.insert("v".into(), "2".into());
    s.put_cluster(&updated).await.unwrap();
    if s.feed_reports_deletes() {
        s.delete_cluster("c05").await.unwrap();
    }
    let mut map = BTreeMap::new();
    let (_, pages) = replay(&*s, None, 10, &mut map).await;
    assert!(
        pages >= 3,
        "25 changes in pages of 10 take at least 3 pages, got {pages}"
    );
    assert_eq!(
        map,
        snapshot(&*s).await,
        "replaying the feed from the start rebuilds the store"
    );
}

pub async fn feed_resumes_from_continuation(s: Arc<dyn Store>) {
    s.put_cluster(&cluster("a", 1)).await.unwrap();
    s.put_cluster(&cluster("b", 2)).await.unwrap();
    let mut map = BTreeMap::new();
    let (cont, _) = replay(&*s, None, 100, &mut map).await;

    // Nothing new: an empty, caught-up page that keeps the continuation usable.
    let empty = s.read_feed(Some(&cont), 100).await.unwrap();
    assert!(
        empty.changes.is_empty() && empty.caught_up,
        "no changes after catching up"
    );

    let mut a2 = cluster("a", 1);
    a2.api_server = "http://127.0.0.1:2/a".into();
    s.put_cluster(&a2).await.unwrap();
    s.put_cluster(&cluster("c", 3)).await.unwrap();
    if s.feed_reports_deletes() {
        s.delete_cluster("b").await.unwrap();
    }
    // Reading from the same continuation twice gives the same changes: a
    // reader that failed to apply a page can retry it.
    let p1 = s.read_feed(Some(&empty.continuation), 100).await.unwrap();
    let p2 = s.read_feed(Some(&empty.continuation), 100).await.unwrap();
    assert_eq!(
        p1.changes, p2.changes,
        "re-reading a continuation is repeatable"
    );
    let ids: Vec<&str> = p1.changes.iter().map(|c| c.id()).collect();
    let want: &[&str] = if s.feed_reports_deletes() {
        &["a", "c", "b"]
    } else {
        &["a", "c"]
    };
    assert_eq!(
        ids, want,
        "only changes after the continuation, in commit order"
    );
    if s.feed_reports_deletes() {
        assert!(
            matches!(p1.changes[2], Change::Delete { .. }),
            "delete delivered"
        );
    }
    replay(&*s, Some(cont), 1, &mut map).await;
    assert_eq!(map, snapshot(&*s).await, "incremental replay converges");
}

pub async fn feed_rejects_garbage_continuation(s: Arc<dyn Store>) {
    s.put_cluster(&cluster("a", 1)).await.unwrap();
    match s.read_feed(Some("garbage-token"), 10).await {
        Err(StoreError::ContinuationExpired(_)) | Err(StoreError::Invalid(_)) => {}
        other => panic!("a garbage continuation must be refused, got {other:?}"),
    }
}

pub async fn cluster_ids_by_bucket(s: Arc<dyn Store>) {
    for (id, b) in [("a", 1), ("b", 2), ("c", 1), ("d", 200)] {
        s.put_cluster(&cluster(id, b)).await.unwrap();
    }
    let mut ids = s.list_cluster_ids(&[1, 200]).await.unwrap();
    ids.sort();
    assert_eq!(
        ids,
        vec!["a", "c", "d"],
        "list_cluster_ids: only the buckets asked for"
    );
    s.delete_cluster("c").await.unwrap();
    let mut ids = s.list_cluster_ids(&[1]).await.unwrap();
    ids.sort();
    assert_eq!(ids, vec!["a"], "list_cluster_ids after a delete");
    assert!(s.list_cluster_ids(&[]).await.unwrap().is_empty());

    // An update that moves a document to another bucket.
    s.put_cluster(&cluster("a", 2)).await.unwrap();
    assert!(
        s.list_cluster_ids(&[1]).await.unwrap().is_empty(),
        "list_cluster_ids: a moved document is gone from its old bucket"
    );
    let mut ids = s.list_cluster_ids(&[2]).await.unwrap();
    ids.sort();
    assert_eq!(
        ids,
        vec!["a", "b"],
        "list_cluster_ids: a moved document is under its new bucket"
    );
}

/// `list_clusters_in` as a map from id to decoded document; fails on a
/// duplicate id or a body that does not decode.
async fn docs_in(s: &dyn Store, buckets: &[u8]) -> BTreeMap<String, ClusterDoc> {
    let mut out = BTreeMap::new();
    for r in s.list_clusters_in(buckets).await.unwrap() {
        let doc = ClusterDoc::decode(&r.body)
            .unwrap_or_else(|e| panic!("list_clusters_in: {} does not decode: {e}", r.id));
        assert_eq!(doc.id, r.id, "list_clusters_in: the id is the body's");
        assert!(
            out.insert(r.id.clone(), doc).is_none(),
            "list_clusters_in({buckets:?}): {} listed twice",
            r.id
        );
    }
    out
}

fn by_id(docs: &[&ClusterDoc]) -> BTreeMap<String, ClusterDoc> {
    docs.iter().map(|d| (d.id.clone(), (*d).clone())).collect()
}

pub async fn clusters_in_buckets(s: Arc<dyn Store>) {
    let docs: Vec<ClusterDoc> = [("a", 1), ("b", 2), ("c", 1), ("d", 255), ("e", 1), ("f", 0)]
        .into_iter()
        .map(|(id, b)| cluster(id, b))
        .collect();
    for d in &docs {
        s.put_cluster(d).await.unwrap();
    }
    let [a, b, c, d, e, f] = [0, 1, 2, 3, 4, 5].map(|i| &docs[i]);
    assert_eq!(
        docs_in(&*s, &[1, 255]).await,
        by_id(&[a, c, d, e]),
        "list_clusters_in: the full documents of the buckets asked for, no other"
    );
    assert_eq!(
        docs_in(&*s, &[0]).await,
        by_id(&[f]),
        "list_clusters_in: bucket 0"
    );
    assert_eq!(
        docs_in(&*s, &[1, 1]).await,
        by_id(&[a, c, e]),
        "list_clusters_in: a bucket named twice lists its documents once"
    );
    assert!(
        docs_in(&*s, &[7, 42]).await.is_empty(),
        "list_clusters_in: buckets without documents"
    );
    assert!(
        s.list_clusters_in(&[]).await.unwrap().is_empty(),
        "list_clusters_in(&[]) is empty"
    );

    // A delete, an update in place and an update that moves a document.
    assert!(s.delete_cluster("c").await.unwrap());
    let mut a2 = a.clone();
    a2.labels.insert("v".into(), "2".into());
    a2.api_server = "http://127.0.0.1:2/a".into();
    s.put_cluster(&a2).await.unwrap();
    let mut e2 = e.clone();
    e2.bucket = 3;
    e2.labels.insert("moved".into(), "yes".into());
    s.put_cluster(&e2).await.unwrap();
    assert_eq!(
        docs_in(&*s, &[1]).await,
        by_id(&[&a2]),
        "list_clusters_in after a delete, an update and a move: the latest bodies, \
         no deleted document, no document that moved away"
    );
    assert_eq!(
        docs_in(&*s, &[3]).await,
        by_id(&[&e2]),
        "list_clusters_in: a moved document under its new bucket, at its latest body"
    );
    assert_eq!(
        docs_in(&*s, &[0, 1, 2, 3, 255]).await,
        by_id(&[&a2, b, d, &e2, f]),
        "list_clusters_in: every bucket at once"
    );
    assert!(
        s.list_clusters_in(&[]).await.unwrap().is_empty(),
        "list_clusters_in(&[]) is empty"
    );
}
