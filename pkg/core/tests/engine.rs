//! Several engines on one in-memory store, with tokio's paused clock: the
//! checks of every cluster stay exactly one interval apart through joins,
//! graceful leaves and a store outage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clustermon_core::check::{CheckCtx, CheckReport, Checker};
use clustermon_core::clock::{ms, Clock};
use clustermon_core::config::EngineConfig;
use clustermon_core::engine::Engine;
use clustermon_core::metrics::Metrics;
use clustermon_core::store::contract::cluster;
use clustermon_core::store::mem::MemStore;
use clustermon_core::store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Log = Arc<Mutex<Vec<(String, String, i64)>>>;

struct Recorder {
    me: String,
    clock: Clock,
    log: Log,
}

#[async_trait]
impl Checker for Recorder {
    async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport {
        self.log.lock().unwrap().push((
            ctx.cluster.id.to_string(),
            self.me.clone(),
            self.clock.now_ms(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        CheckReport {
            ok: true,
            summary: "ok".into(),
            ..Default::default()
        }
    }
}

const INTERVAL: Duration = Duration::from_secs(10);

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    handles: clustermon_core::engine::EngineHandles,
}

fn start(id: &str, store: &Arc<MemStore>, clock: Clock, log: &Log) -> Running {
    start_with(id, store, clock, log, |_| {})
}

fn start_with(
    id: &str,
    store: &Arc<MemStore>,
    clock: Clock,
    log: &Log,
    set: impl FnOnce(&mut EngineConfig),
) -> Running {
    let mut cfg = EngineConfig::new(id);
    cfg.interval = INTERVAL;
    set(&mut cfg);
    let checker = Recorder {
        me: id.into(),
        clock: clock.clone(),
        log: log.clone(),
    };
    let engine = Engine::new(
        cfg,
        store.clone() as Arc<dyn Store>,
        Arc::new(checker),
        Metrics::disabled(),
        clock,
    )
    .unwrap();
    let handles = engine.handles();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(engine.run(async {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
        handles,
    }
}

async fn stop(mut r: Running) -> Duration {
    let t0 = tokio::time::Instant::now();
    r.stop.take().unwrap().send(()).unwrap();
    r.task.await.unwrap();
    t0.elapsed()
}

/// Per cluster, the times of its checks (ms) from `from_ms` on, and who checked.
fn by_cluster(log: &Log, from_ms: i64) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut m: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for (c, mon, t) in log.lock().unwrap().iter() {
        if *t >= from_ms {
            m.entry(c.clone()).or_default().push((*t, mon.clone()));
        }
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

/// Every cluster checked in `[from, to)`, consecutive checks exactly one
/// interval apart (±50 ms of scheduling): no gap, no duplicate.
fn assert_exact_cadence(log: &Log, clusters: usize, from_ms: i64, to_ms: i64, what: &str) {
    let m = by_cluster(log, from_ms);
    assert_eq!(m.len(), clusters, "{what}: every cluster checked");
    let iv = INTERVAL.as_millis() as i64;
    for (c, checks) in &m {
        let checks: Vec<_> = checks.iter().filter(|(t, _)| *t < to_ms).collect();
        let n_expected = (to_ms - from_ms) / iv;
        assert!(
            checks.len() as i64 >= n_expected,
            "{what}: cluster {c} checked {} times in {} ms: {checks:?}",
            checks.len(),
            to_ms - from_ms
        );
        for w in checks.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                (iv - 50..=iv + 50).contains(&gap),
                "{what}: cluster {c} gap {gap} ms between {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn join_and_graceful_leave_keep_an_exact_cadence() {
    let store = Arc::new(MemStore::new());
    for i in 0..120 {
        store
            .put_cluster(&cluster(&format!("c{i:03}"), (i * 37 % 256) as u8))
            .await
            .unwrap();
    }
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let t0 = clock.now_ms();
    let m1 = start("m1", &store, clock.clone(), &log);
    let m2 = start("m2", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(40)).await;

    // Steady: one owner per bucket, loads within one.
    let doc = store.read_master().await.unwrap().unwrap().value;
    let owned = |m: &str| {
        doc.buckets
            .iter()
            .filter(|b| b.owner.as_deref() == Some(m))
            .count()
    };
    assert_eq!(owned("m1") + owned("m2"), 256);
    assert!(owned("m1").abs_diff(owned("m2")) <= 1);

    let m3 = start("m3", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let doc = store.read_master().await.unwrap().unwrap().value;
    assert!(
        doc.buckets.iter().any(|b| b.owner.as_deref() == Some("m3")),
        "m3 got buckets"
    );

    let took = stop(m1).await;
    assert!(
        took <= Duration::from_secs(10),
        "graceful stop within the grace period, took {took:?}"
    );
    let doc = store.read_master().await.unwrap().unwrap().value;
    assert!(
        doc.buckets.iter().all(|b| b.owner.as_deref() != Some("m1")),
        "m1's buckets moved"
    );
    assert!(
        store
            .list_monitors(clock.now_ms())
            .await
            .unwrap()
            .iter()
            .all(|m| m.id != "m1"),
        "heartbeat deleted"
    );
    tokio::time::sleep(Duration::from_secs(40)).await;

    let end = clock.now_ms();
    // From the first full interval after start-up to now: join at 40 s and
    // leave at 80 s both fall inside this window.
    assert_exact_cadence(
        &log,
        120,
        t0 + 15_000,
        end - 1_000,
        "join and graceful leave",
    );
    stop(m2).await;
    stop(m3).await;
}

#[tokio::test(start_paused = true)]
async fn store_outage_keeps_checking_the_last_known_buckets() {
    let store = Arc::new(MemStore::new());
    for i in 0..60 {
        store
            .put_cluster(&cluster(&format!("c{i:03}"), (i * 91 % 256) as u8))
            .await
            .unwrap();
    }
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let t0 = clock.now_ms();
    let a = start("a", &store, clock.clone(), &log);
    let b = start("b", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(30)).await;
    store.set_available(false);
    tokio::time::sleep(Duration::from_secs(45)).await; // longer than every TTL
    store.set_available(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let end = clock.now_ms();
    // Heartbeats and the lease expired during the outage; after it, the same
    // owners renew and nobody else was around to take over: still exact.
    assert_exact_cadence(&log, 60, t0 + 15_000, end - 1_000, "store outage");
    stop(a).await;
    stop(b).await;
}

/// docs/monitoring.md, *Store outages and stalls*: a store that never
/// answers (a black-holed connection: no error, no answer) costs each pass
/// at most one heartbeat interval per call. The membership loop keeps
/// finishing passes (so the scheduler never takes it for a stalled
/// process), readiness names the store within two intervals, the owners
/// keep checking their buckets on the exact cadence through 45 s (longer
/// than every TTL) and after.
#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_costs_a_pass_one_heartbeat_interval_and_no_check() {
    let store = Arc::new(MemStore::new());
    seed(&store, 60).await;
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let t0 = clock.now_ms();
    let a = start("a", &store, clock.clone(), &log);
    let b = start("b", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        a.handles.not_ready().is_empty(),
        "{:?}",
        a.handles.not_ready()
    );

    store.set_stalled(true);
    let stalled = clock.now_ms();
    let hb = ms(EngineConfig::new("x").heartbeat_interval);
    let mut not_ready_after = None;
    // The longest time between two finished passes, per monitor.
    let mut last_done = [stalled; 2];
    let mut widest = [0i64; 2];
    while clock.now_ms() - stalled < 45_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = clock.now_ms();
        for (i, m) in [&a, &b].into_iter().enumerate() {
            let done = m.handles.pass_done_ms.load(Ordering::Acquire);
            if done > last_done[i] {
                last_done[i] = done;
            }
            widest[i] = widest[i].max(now - last_done[i]);
        }
        if not_ready_after.is_none()
            && a.handles
                .not_ready()
                .iter()
                .any(|w| w.contains("store unreachable"))
        {
            not_ready_after = Some(now - stalled);
        }
    }
    eprintln!("stalled store: widest time between two passes {widest:?} ms; a not ready after {not_ready_after:?} ms");
    // A pass is its three reads at once (each cut at one interval) and at
    // most a master write (cut at one more), then the wait for the next
    // tick: passes end at most three intervals apart.
    for (i, w) in widest.iter().enumerate() {
        assert!(
            *w <= 3 * hb + 200,
            "monitor {i}: {w} ms between two passes (bound {})",
            3 * hb
        );
    }
    // Not ready once the last good pass is two intervals old.
    let nr = not_ready_after.expect("readiness names the store");
    assert!(nr <= 2 * hb + 200, "not ready {nr} ms into the stall");

    store.set_stalled(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        a.handles.not_ready().is_empty(),
        "{:?}",
        a.handles.not_ready()
    );
    let end = clock.now_ms();
    assert_exact_cadence(&log, 60, t0 + 15_000, end - 1_000, "stalled store");
    stop(a).await;
    stop(b).await;
}

#[tokio::test(start_paused = true)]
async fn new_and_deleted_clusters_follow_the_feed() {
    let store = Arc::new(MemStore::new());
    store.put_cluster(&cluster("old", 1)).await.unwrap();
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let m = start("m", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(15)).await;

    let created = clock.now_ms();
    store.put_cluster(&cluster("new", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = by_cluster(&log, created).get("new").map(|v| v[0].0);
    assert!(
        first.is_some_and(|t| t - created <= 2_100),
        "new cluster checked within one feed interval: {first:?}"
    );

    // Then on its grid: the second check within one interval of the first.
    tokio::time::sleep(INTERVAL).await;
    let checks = by_cluster(&log, created).remove("new").unwrap_or_default();
    assert!(checks.len() >= 2, "new cluster on its grid: {checks:?}");
    assert!(
        checks[1].0 - checks[0].0 <= INTERVAL.as_millis() as i64,
        "no gap after a new cluster's first check: {checks:?}"
    );

    store.delete_cluster("old").await.unwrap();
    let deleted = clock.now_ms();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after: Vec<_> = by_cluster(&log, deleted + 2_100)
        .remove("old")
        .unwrap_or_default();
    assert!(after.is_empty(), "deleted cluster still checked: {after:?}");
    stop(m).await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_owner_costs_at_most_the_failover_time() {
    let store = Arc::new(MemStore::new());
    for i in 0..200 {
        store
            .put_cluster(&cluster(&format!("c{i:03}"), (i * 53 % 256) as u8))
            .await
            .unwrap();
    }
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    // b starts once a and c have written the first table (so one of them
    // is the master), and a second off their passes: its heartbeats fall
    // between theirs, so its buckets move as late as the bounds allow.
    let a = start("a", &store, clock.clone(), &log);
    let c = start("c", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(1)).await;
    while store.read_master().await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let b = start("b", &store, clock.clone(), &log);
    // Crash b just after one of its heartbeats: the longest wait for its TTL.
    tokio::time::sleep(Duration::from_millis(30_100)).await;
    let master = store.read_master().await.unwrap().unwrap().value;
    assert_ne!(master.lease_owner.as_deref(), Some("b"));
    let (victim, rest) = (b, vec![a, c]);
    let crashed = clock.now_ms();
    victim.task.abort();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let end = clock.now_ms();

    // Heartbeat TTL 10 s + two passes of 2 s: the buckets are re-owned within
    // 14 s, and the latest missed check is run at once, so no cluster waits
    // longer than one interval + 14 s (not one interval more).
    let bound = INTERVAL.as_millis() as i64 + 14_000;
    let m = by_cluster(&log, crashed - INTERVAL.as_millis() as i64 - 1_000);
    assert_eq!(m.len(), 200);
    let mut worst = (0, String::new());
    for (id, checks) in &m {
        for w in checks.windows(2) {
            if w[1].0 - w[0].0 > worst.0 {
                worst = (w[1].0 - w[0].0, id.clone());
            }
        }
        let last = checks.last().unwrap().0;
        assert!(
            end - last <= INTERVAL.as_millis() as i64 * 3 / 2,
            "{id} checked again: crash at {crashed}, end {end}, {checks:?}"
        );
    }
    eprintln!("crash: worst gap {} ms ({})", worst.0, worst.1);
    assert!(
        worst.0 <= bound,
        "cluster {} went {} ms without a check (bound {bound} ms)",
        worst.1,
        worst.0
    );
    for r in rest {
        stop(r).await;
    }
}

/// The monitor buckets are being handed to dies before their handoff time
/// (a 20 s notice, longer than the heartbeat TTL, so its death is known
/// while the handoff is pending). It checked nothing of them: the previous
/// owners keep what is due before the handoff time, the next owner takes
/// the rest, and every cluster's checks stay exactly one interval apart.
#[tokio::test(start_paused = true)]
async fn the_monitor_buckets_were_moving_to_dies_before_their_handoff_time() {
    let store = Arc::new(MemStore::new());
    seed(&store, 120).await;
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let notice = |c: &mut EngineConfig| c.handoff_notice = Some(Duration::from_secs(20));
    let a = start_with("a", &store, clock.clone(), &log, notice);
    let b = start_with("b", &store, clock.clone(), &log, notice);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let t0 = clock.now_ms();
    let c = start_with("c", &store, clock.clone(), &log, notice);
    let handoff_at = loop {
        let doc = store.read_master().await.unwrap().unwrap().value;
        if let Some(x) = doc
            .buckets
            .iter()
            .find(|x| x.owner.as_deref() == Some("c") && x.prev.is_some())
        {
            break x.handoff_at_ms;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.task.abort();
    let crashed = clock.now_ms();
    assert!(
        handoff_at - crashed > 15_000,
        "c crashed {} ms before the handoff time",
        handoff_at - crashed
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let end = clock.now_ms();
    let doc = store.read_master().await.unwrap().unwrap().value;
    assert!(
        doc.buckets.iter().all(|x| x.owner.as_deref() != Some("c")),
        "c's buckets moved on"
    );
    assert!(
        log.lock().unwrap().iter().all(|(_, m, _)| m != "c"),
        "c checked nothing"
    );
    assert_exact_cadence(&log, 120, t0, end - 1_000, "owner-to-be died");
    stop(a).await;
    stop(b).await;
}

/// docs/monitoring.md, *Clock skew*: a monitor whose host's clock was
/// wrong at its start is found skewed and takes nothing; once the host's
/// time is fixed (a step, as NTP makes it) it follows, observes its peers
/// afresh and rejoins by a timed handoff, without a restart, while every
/// cluster keeps its exact cadence. A monitor's clock does not follow a
/// step of its host while the fleet finds it right.
#[tokio::test(start_paused = true)]
async fn a_skewed_monitor_rejoins_once_its_hosts_clock_is_fixed() {
    for skew in [15_000i64, -15_000] {
        let store = Arc::new(MemStore::new());
        seed(&store, 60).await;
        let base = 1_700_000_000_000;
        let good = Clock::at(base);
        let bad = Clock::at(base + skew);
        let log: Log = Default::default();
        let m1 = start("m1", &store, good.clone(), &log);
        let m2 = start("m2", &store, good.clone(), &log);
        tokio::time::sleep(Duration::from_secs(15)).await;
        // m3 passes twice per master renewal: every other pass sees the
        // master unchanged, so a view kept from before the step would find
        // the lease expired.
        let m3 = start_with("m3", &store, bad.clone(), &log, |c| {
            c.heartbeat_interval = Duration::from_secs(1)
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        let what = format!("skew {skew} ms");
        let doc = store.read_master().await.unwrap().unwrap().value;
        let o = owners(&doc);
        assert!(
            !o.iter().any(|o| o.as_deref() == Some("m3")),
            "{what}: skewed, m3 owns nothing"
        );
        assert!(m3
            .handles
            .not_ready()
            .iter()
            .any(|w| w.contains("clock offset")));

        // The host's time is fixed under the running monitor.
        let lease0 = doc.lease_owner.clone();
        let t_fix = good.now_ms();
        bad.step_host(-skew);
        let mut joined = None;
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let doc = store.read_master().await.unwrap().unwrap().value;
            // Its old observations would make the live master's lease
            // look expired after a step forward: it never takes the lease.
            assert_eq!(doc.lease_owner, lease0, "{what}: the lease stays");
            let o = owners(&doc);
            let n = |m: &str| o.iter().filter(|o| o.as_deref() == Some(m)).count();
            if (85..=86).contains(&n("m3")) && n("m1") + n("m2") + n("m3") == 256 {
                joined = Some(good.now_ms() - t_fix);
                break;
            }
        }
        let joined = joined.unwrap_or_else(|| panic!("{what}: m3 never got its third"));
        eprintln!("{what}: m3 owns its third {joined} ms after its host's clock was fixed");
        // One pass to follow the host, two to measure its peers, the
        // master's next pass and the handoff notice of two heartbeat
        // intervals: 12 s; 20 s allows for the phase of each.
        assert!(
            joined <= 20_000,
            "{what}: joined {joined} ms after the fix (bound 20 s)"
        );
        assert_eq!(bad.now_ms(), good.now_ms(), "{what}: m3 follows its host");
        assert!(m3.handles.not_ready().iter().all(|w| !w.contains("clock")));
        tokio::time::sleep(INTERVAL * 2).await;
        let m3_checks = by_cluster(&log, t_fix)
            .values()
            .flatten()
            .filter(|(_, m)| m == "m3")
            .count();
        assert!(m3_checks > 0, "{what}: m3 checks its share");
        // From before the fix to now, every cluster on its exact cadence.
        assert_exact_cadence(&log, 60, t_fix - 5_000, good.now_ms() - 1_000, &what);

        // A host stepped under a monitor the fleet finds right is not
        // followed.
        good.step_host(30_000);
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(good.host_ms() - good.now_ms(), 30_000, "{what}");
        for r in [m1, m2, m3] {
            stop(r).await;
        }
    }
}

fn owners(doc: &clustermon_core::model::MasterDoc) -> Vec<Option<String>> {
    doc.buckets.iter().map(|b| b.owner.clone()).collect()
}

async fn seed(store: &Arc<MemStore>, n: usize) {
    for i in 0..n {
        store
            .put_cluster(&cluster(&format!("c{i:03}"), (i * 37 % 256) as u8))
            .await
            .unwrap();
    }
}

/// docs/monitoring.md, *A monitor's memory follows its share*: a monitor
/// is not ready while the documents of buckets it acquired are not read
/// (beyond a heartbeat interval), a failed read is retried every heartbeat
/// interval, and it is ready again within one once the reads answer.
#[tokio::test(start_paused = true)]
async fn a_monitor_is_not_ready_while_its_shares_documents_cannot_be_read() {
    let store = Arc::new(MemStore::new());
    seed(&store, 60).await;
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let a = start("a", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(15)).await;

    // b joins while the bucket reads fail: it gets buckets by handoff and
    // cannot read their documents.
    store.set_bucket_reads_available(false);
    let b = start("b", &store, clock, &log);
    let (h, hb) = (b.handles.clone(), EngineConfig::new("b").heartbeat_interval);
    let unread = |why: &[String]| why.iter().any(|w| w.contains("not read yet"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let why = h.not_ready();
        if unread(&why) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never named its unread share: {why:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It stays not ready while the reads fail (retried, still failing).
    tokio::time::sleep(hb * 5).await;
    let why = h.not_ready();
    assert!(unread(&why), "still unread after 5 retries: {why:?}");

    store.set_bucket_reads_available(true);
    let back = tokio::time::Instant::now();
    loop {
        let why = h.not_ready();
        if why.is_empty() {
            break;
        }
        assert!(
            back.elapsed() <= hb + Duration::from_millis(100),
            "not ready {:?} after the reads answer again (bound one heartbeat interval): {why:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(b).await;
    stop(a).await;
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_master_document_is_repaired_with_its_owners() {
    let store = Arc::new(MemStore::new());
    seed(&store, 60).await;
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let m1 = start("m1", &store, clock.clone(), &log);
    let m2 = start("m2", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = owners(&store.read_master().await.unwrap().unwrap().value);
    assert!(before.iter().all(Option::is_some));
    let t0 = clock.now_ms();
    for garbage in [
        "garbage",
        r#"{"buckets": "x"}"#,
        r#"{"leaseOwner": "m1", "buckets": [{"owner": "#,
        &format!(
            r#"{{"schemaVersion": 99, "buckets": {}}}"#,
            serde_json::to_string(&vec![serde_json::json!({"owner": "m1"}); 256]).unwrap()
        ),
    ] {
        store.put_master_raw(garbage);
        assert!(store.read_master().await.is_err());
        let corrupted_at = tokio::time::Instant::now();
        // Repaired within lease TTL + one pass (10 s + 2 s).
        let mut repaired = None;
        for _ in 0..130 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(m)) = store.read_master().await {
                repaired = Some(m.value);
                break;
            }
        }
        let took = corrupted_at.elapsed();
        let doc = repaired.unwrap_or_else(|| panic!("{garbage:?} not repaired in {took:?}"));
        assert!(
            took <= Duration::from_secs(12),
            "{garbage:?} repaired after {took:?}"
        );
        assert_eq!(owners(&doc), before, "{garbage:?}: the owners are kept");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // Checks went on through it all, with no gap and no duplicate.
    assert_exact_cadence(&log, 60, t0, clock.now_ms() - 1_000, "corrupt master");
    // A third monitor started now joins normally.
    let m3 = start("m3", &store, clock, &log);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let doc = store.read_master().await.unwrap().unwrap().value;
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for o in owners(&doc).into_iter().flatten() {
        *load.entry(o).or_default() += 1;
    }
    assert_eq!(load.len(), 3, "{load:?}");
    assert!(load.values().all(|n| (85..=86).contains(n)), "{load:?}");
    for m in [m1, m2, m3] {
        stop(m).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_monitor_started_on_a_corrupt_master_repairs_it_after_a_lease_ttl() {
    let store = Arc::new(MemStore::new());
    seed(&store, 20).await;
    store.put_master_raw("not json at all");
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let m1 = start("m1", &store, clock, &log);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        store.read_master().await.is_err(),
        "it waits a lease TTL first"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let doc = store.read_master().await.unwrap().unwrap().value;
    assert!(owners(&doc).iter().all(|o| o.as_deref() == Some("m1")));
    stop(m1).await;
}

#[tokio::test(start_paused = true)]
async fn corrupt_heartbeat_documents_are_skipped() {
    let store = Arc::new(MemStore::new());
    seed(&store, 30).await;
    let clock = Clock::at(1_700_000_000_000);
    let log: Log = Default::default();
    let far = clock.now_ms() + 3_600_000;
    store.put_monitor_raw("bad1", far, "garbage");
    store.put_monitor_raw("bad2", far, r#"{"id": 5, "expiresAtMs": "soon"}"#);
    let m1 = start("m1", &store, clock.clone(), &log);
    let m2 = start("m2", &store, clock.clone(), &log);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t0 = clock.now_ms();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_exact_cadence(&log, 30, t0, clock.now_ms() - 1_000, "corrupt heartbeats");
    assert!(store.stats().invalid_monitor_docs >= 2);
    let doc = store.read_master().await.unwrap().unwrap().value;
    assert!(owners(&doc)
        .iter()
        .all(|o| matches!(o.as_deref(), Some("m1" | "m2"))));
    stop(m1).await;
    stop(m2).await;
}

/// One monitor of three with a clock 15 s ahead or behind (more than the
/// heartbeat TTL): it takes no bucket and no lease, whether it starts
/// first or last, and the two others check every cluster exactly once per
/// interval.
#[tokio::test(start_paused = true)]
async fn a_skewed_monitor_takes_no_share() {
    for (skew, skewed_first) in [
        (15_000, false),
        (-15_000, false),
        (15_000, true),
        (-15_000, true),
    ] {
        let store = Arc::new(MemStore::new());
        seed(&store, 60).await;
        let base = 1_700_000_000_000;
        let good = Clock::at(base);
        let bad = Clock::at(base + skew);
        let log: Log = Default::default();
        let mut running = Vec::new();
        if skewed_first {
            running.push(start("skewed", &store, bad.clone(), &log));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        running.push(start("m1", &store, good.clone(), &log));
        running.push(start("m2", &store, good.clone(), &log));
        if !skewed_first {
            tokio::time::sleep(Duration::from_secs(15)).await;
            running.push(start("skewed", &store, bad, &log));
        }
        let what = format!("skew {skew} ms, skewed first: {skewed_first}");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let t0 = good.now_ms();
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let doc = store.read_master().await.unwrap().unwrap().value;
            let o = owners(&doc);
            let skewed = o.iter().filter(|o| o.as_deref() == Some("skewed")).count();
            assert_eq!(skewed, 0, "{what}: the skewed monitor owns {skewed}");
            for m in ["m1", "m2"] {
                let n = o.iter().filter(|o| o.as_deref() == Some(m)).count();
                assert_eq!(n, 128, "{what}: {m} owns {n}");
            }
            assert_ne!(doc.lease_owner.as_deref(), Some("skewed"), "{what}");
        }
        let checked_by_skewed = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m, t)| m == "skewed" && *t >= t0 + skew)
            .count();
        assert_eq!(checked_by_skewed, 0, "{what}");
        let good_log: Log = Arc::new(Mutex::new(
            log.lock()
                .unwrap()
                .iter()
                .filter(|(_, m, _)| m != "skewed")
                .cloned()
                .collect(),
        ));
        assert_exact_cadence(&good_log, 60, t0, good.now_ms() - 1_000, &what);
        for r in running {
            stop(r).await;
        }
    }
}
