//! Store outages: the store stops answering writes (another
//! process holds `BEGIN EXCLUSIVE` on the SQLite file) or answers 503 to
//! everything (the Cosmos endpoint) for a minute. docs/monitoring.md's
//! guarantee: nothing moves, no gap, no duplicate; readiness says which
//! store call fails and recovers within a pass of the store's return.

use super::super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(super) const OUTAGE: Duration = Duration::from_secs(60);

/// A store fault of fixed length.
pub(super) trait Fault {
    /// Starts the fault; when it took effect.
    fn begin(&mut self) -> Instant;
    /// Blocks until the fault is over; when it ended.
    fn end(&mut self) -> Instant;
}

/// Another process holds `BEGIN EXCLUSIVE` on the SQLite file.
struct SqliteLocked {
    dir: PathBuf,
    db: PathBuf,
    held: Option<SqliteLock>,
}

impl Fault for SqliteLocked {
    fn begin(&mut self) -> Instant {
        let l = SqliteLock::hold(&self.dir, &self.db, OUTAGE.as_secs());
        let at = l.locked_at;
        self.held = Some(l);
        at
    }
    fn end(&mut self) -> Instant {
        self.held
            .as_mut()
            .expect("locked")
            .wait_released(OUTAGE + Duration::from_secs(10))
    }
}

/// The Cosmos endpoint answers 503 to every request.
struct CosmosDown<'a> {
    emu: &'a CosmosEmulator,
    outage: Duration,
    since: Option<Instant>,
}

impl Fault for CosmosDown<'_> {
    fn begin(&mut self) -> Instant {
        self.emu
            .set_faults(serde_json::json!({"unavailable": true, "kinds": null}));
        let at = Instant::now();
        self.since = Some(at);
        at
    }
    fn end(&mut self) -> Instant {
        // A fault of fixed length: sleeping for it is the point.
        let until = self.since.expect("begun") + self.outage;
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        self.emu
            .set_faults(serde_json::json!({"unavailable": false}));
        Instant::now()
    }
}

/// The peer probes each monitor has counted so far, read from its own
/// `/metrics` (no metric line in flight): monitor id → probes, every
/// outcome summed.
fn peer_probes(urls: &BTreeMap<String, String>) -> BTreeMap<String, f64> {
    const NAME: &str = "clustermon_monitor_peer_probes_total{";
    urls.iter()
        .map(|(id, url)| {
            let page = match http_get(&format!("{url}/metrics")) {
                Ok((200, page)) => page,
                other => panic!("{id}'s /metrics: {other:?}"),
            };
            let n = page
                .lines()
                .filter(|l| l.starts_with(NAME))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (id.clone(), n)
        })
        .collect()
}

/// The store-outage guarantees for one outage of `outage`, on three
/// balanced monitors that have checked every cluster once: (a) no cluster
/// goes longer than an interval without a check, (b) no check is skipped,
/// (c) none is run twice, (d) readiness is 503 naming the failing call
/// while the store is down and 200 again within a pass of its return,
/// (e) no bucket moves, (f) no monitor probes a peer's admin endpoint
/// once it has found the store failing (docs/monitoring.md, *Failover*:
/// "Probes run only while the store answers for the prober"; nobody can
/// write, so every heartbeat and the master document are quiet, and a
/// monitor that probed anyway would probe every pass).
/// Notes when each alert was first and last seen.
fn note_alerts(
    seen: &mut BTreeMap<String, (Instant, Instant)>,
    alerts: &[(String, String, String)],
) {
    let now = Instant::now();
    for (n, _, _) in alerts {
        seen.entry(n.clone()).or_insert((now, now)).1 = now;
    }
}

pub(super) fn outage_never_stops_the_checks(
    s: &Setup,
    fault: &mut dyn Fault,
    outage: Duration,
    what: &str,
) {
    let mut v = Verdict::default();
    let urls = admin_urls(&s.store);
    assert_eq!(urls.len(), 3, "{what}: admin URLs of m1..m3: {urls:?}");
    if let Err(last) = poll_ready(&urls, 200, Instant::now(), SLACK) {
        panic!("{what}: not every monitor ready before the outage: {last:?}");
    }
    let before = buckets(&s.store).expect("bucket table before the outage");
    let skipped0 = s.statsd.counter_sum("monitor.checks.skipped", &[]);
    // A real Prometheus with the shipped rules (deploy/prometheus): the
    // outage shows as the store alerts, on every monitor, and as nothing
    // else (nothing moves, so no bucket or master alert).
    let instances: Vec<String> = urls.values().map(|u| instance(u)).collect();
    let prom = Prometheus::scraping(s.dir.path(), urls.values());
    let false_alarms = [
        "ClustermonBucketsUnassigned",
        "ClustermonNoMaster",
        "ClustermonNoMonitorUp",
        "ClustermonMonitorDown",
        "ClustermonChecksSkipped",
        "ClustermonChecksLate",
    ];
    // Each alert seen: when first and last (pending or firing).
    let mut seen_alerts: BTreeMap<String, (Instant, Instant)> = BTreeMap::new();

    let t_down = fault.begin();
    eprintln!("{what}: outage begins ({outage:?})");

    // (d) readiness: 503 within two heartbeat intervals, naming the call.
    let bound_down = 2 * HEARTBEAT + SLACK;
    match poll_ready(&urls, 503, t_down, bound_down) {
        Ok(got) => {
            for (id, (took, body)) in got {
                let body = body.trim().to_string();
                v.check(
                    took <= bound_down,
                    format!("{what}: {id} not ready (503) after {took:?} (bound {bound_down:?}): {body:?}"),
                );
                let lower = body.to_lowercase();
                let names_call = ["heartbeat", "write", "upsert"]
                    .iter()
                    .any(|w| lower.contains(w));
                v.check(
                    lower.contains("store") && names_call,
                    format!("{what}: {id}'s 503 body names the store and the failing call (heartbeat/write/upsert): {body:?}"),
                );
            }
        }
        Err(last) => v.check(
            false,
            format!("{what}: not every monitor answered 503 within {bound_down:?} of the outage; last answers: {last:?}"),
        ),
    }

    // (f) from here, every monitor has recorded a failing pass, and a
    // pass's probes come after its store calls.
    let probes_down = peer_probes(&urls);

    let store_alerts = |alerts: &[(String, String, String)]| {
        let each = instances.iter().all(|i| {
            alerts
                .iter()
                .any(|(a, at, _)| a == "ClustermonStoreUnreachable" && at == i)
        });
        let all = alerts
            .iter()
            .any(|(a, _, _)| a == "ClustermonStoreUnreachableEverywhere");
        each && all
    };
    let raised = wait_for(Duration::from_secs(15), || {
        let a = prom.alerts();
        note_alerts(&mut seen_alerts, &a);
        store_alerts(&a)
    });
    v.check(
        raised,
        format!("{what}: Prometheus raises ClustermonStoreUnreachable for each monitor and ClustermonStoreUnreachableEverywhere (pending: their `for` is 2 minutes) within 15 s of the 503s: {:?}", prom.alerts()),
    );
    // Through the rest of the outage, watched every 2 s.
    while t_down.elapsed() + Duration::from_secs(2) < outage {
        note_alerts(&mut seen_alerts, &prom.alerts());
        std::thread::sleep(Duration::from_secs(2));
    }

    let probes_end = peer_probes(&urls);
    let t_up = fault.end();
    eprintln!("{what}: outage ends after {:?}", t_up - t_down);
    eprintln!("{what}: peer probes counted by each monitor once it was 503 {probes_down:?}, at the outage's end {probes_end:?}");
    v.check(
        probes_end == probes_down,
        format!("{what}: no peer probed while the store failed (monitor.peer.probes once 503: {probes_down:?}, at the outage's end: {probes_end:?})"),
    );

    // (d) ready again within one pass.
    let bound_up = HEARTBEAT + SLACK;
    match poll_ready(&urls, 200, t_up, bound_up) {
        Ok(got) => {
            for (id, (took, _)) in got {
                v.check(
                    took <= bound_up,
                    format!("{what}: {id} ready again {took:?} after the store returned (bound {bound_up:?})"),
                );
            }
        }
        Err(last) => v.check(
            false,
            format!("{what}: not every monitor ready again within {bound_up:?} of the store's return; last answers: {last:?}"),
        ),
    }

    // The store alerts clear once the store answers.
    let cleared = wait_for(Duration::from_secs(15), || {
        let a = prom.alerts();
        note_alerts(&mut seen_alerts, &a);
        !a.iter()
            .any(|(n, _, _)| n.starts_with("ClustermonStoreUnreachable"))
    });
    v.check(
        cleared,
        format!(
            "{what}: the store alerts cleared within 15 s of the store's return: {:?}",
            prom.alerts()
        ),
    );
    let seen: Vec<(String, Duration, Duration)> = seen_alerts
        .iter()
        .map(|(n, (first, last))| {
            (
                n.clone(),
                first.saturating_duration_since(t_down),
                *last - *first,
            )
        })
        .collect();
    eprintln!("{what}: Prometheus alerts seen through the outage (name, first seen after the outage began, seen for): {seen:?}");
    // At the outage's edges a monitor may see the store while the lease
    // holder does not yet (or no longer): a few seconds of pending. A rule
    // that held through the outage would be seen for all of it.
    let edge = Duration::from_secs(10);
    let wrong: Vec<&(String, Duration, Duration)> = seen
        .iter()
        .filter(|(n, _, held)| false_alarms.contains(&n.as_str()) && *held > edge)
        .collect();
    v.check(
        wrong.is_empty(),
        format!("{what}: no bucket, master, monitor or check alert pending longer than {edge:?} through a {outage:?} store outage (nothing moves, checks go on; their `for` is 1 minute or more): {wrong:?}"),
    );

    // (b) no check skipped during the outage (read once its metrics arrived).
    let skipped = s.statsd.counter_sum("monitor.checks.skipped", &[]) - skipped0;
    v.check(
        skipped == 0,
        format!("{what}: monitor.checks.skipped counted {skipped} during the outage (bound 0)"),
    );

    // (a) and (c): wait for every cluster to be checked after both windows.
    let gap_to = t_up + 2 * INTERVAL;
    let dup_to = t_up + Duration::from_secs(30);
    let last_needed = gap_to.max(dup_to);
    let limit = last_needed.saturating_duration_since(Instant::now()) + INTERVAL + SLACK;
    let all_checked = wait_for(limit, || {
        let t = s.statsd.check_times();
        s.ids.iter().all(|id| {
            t.get(id)
                .is_some_and(|v| v.last().is_some_and(|x| *x >= last_needed))
        })
    });
    v.check(
        all_checked,
        format!("{what}: every cluster checked again 30 s after the outage"),
    );
    let times = s.statsd.check_times();
    let (gap, id) = worst_gap(&times, &s.ids, t_down, gap_to);
    let bound_gap = INTERVAL + Duration::from_secs(1);
    v.check(
        gap <= bound_gap,
        format!("{what}: worst gap from the outage to 2 intervals after it {gap:?} ({id}), bound {bound_gap:?}"),
    );
    let bound_dup = INTERVAL - Duration::from_secs(1);
    match closest_pair(&times, t_down, dup_to) {
        Some((d, id)) => v.check(
            d >= bound_dup,
            format!("{what}: closest two checks of one cluster from the outage to 30 s after it {d:?} ({id}), bound >= {bound_dup:?}"),
        ),
        None => v.check(false, format!("{what}: no two checks of any cluster in the outage window")),
    }
    let skipped_all = s.statsd.counter_sum("monitor.checks.skipped", &[]) - skipped0;
    eprintln!("{what}: monitor.checks.skipped up to 30 s after the outage: {skipped_all}");
    v.check(
        skipped_all == 0,
        format!("{what}: monitor.checks.skipped counted {skipped_all} up to 30 s after the outage (bound 0)"),
    );

    // (e) nothing moved.
    let after = buckets(&s.store);
    match after {
        Some(after) => {
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            v.check(
                moved == 0,
                format!("{what}: {moved} buckets moved by the outage (bound 0): loads before {:?}, after {:?}", loads(&before), loads(&after)),
            );
        }
        None => v.check(
            false,
            format!("{what}: bucket table unreadable after the outage"),
        ),
    }
    for (id, p) in &s.mons.procs {
        let log = p.log_text();
        v.check(
            !log.contains("panicked"),
            format!("{what}: {id} did not panic"),
        );
    }
    drop(prom);
    v.finish(what);
}

#[test]
fn a_locked_sqlite_store_never_stops_the_checks() {
    let mut s = setup("chaos-sqlite-locked", &["--plain-http"]);
    warm_up(&mut s);
    let mut fault = SqliteLocked {
        dir: s.dir.path().to_path_buf(),
        db: s.dir.path().join("store.db"),
        held: None,
    };
    outage_never_stops_the_checks(&s, &mut fault, OUTAGE, "sqlite locked");
    drop(fault);
    drop(s.dir);
}

/// docs/monitoring.md, *Graceful shutdown*: SIGTERM while the store is
/// down (a rolling upgrade or an eviction during a store incident). The
/// monitor cannot hand its buckets over: it says so, stops checking and
/// exits 0 within `--shutdown-grace` + max(2 heartbeat intervals, 2 s) +
/// 2 s. The other two keep their own clusters on cadence through the
/// outage, and once the store answers they take the leaver's buckets
/// (its admin port refuses their probe) within TTL + 2 passes, every
/// cluster is checked within an interval of that, and no cluster is
/// checked twice from the leaver's exit on.
#[test]
fn sigterm_while_the_store_is_down_exits_in_bounds_and_peers_take_over_on_its_return() {
    const LOCKED: Duration = Duration::from_secs(20);
    let mut s = setup("chaos-sigterm-store-down", &["--plain-http"]);
    warm_up(&mut s);
    let leaver = a_member(&s.store);
    let stay: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != leaver)
        .collect();
    let bucket_of = cluster_buckets(&s.store);
    let before = buckets(&s.store).expect("bucket table");
    let (theirs, ours): (Vec<String>, Vec<String>) = s
        .ids
        .iter()
        .cloned()
        .partition(|id| owned_by(&bucket_of, &before, id, &leaver));
    let mut lock = SqliteLock::hold(
        s.dir.path(),
        &s.dir.path().join("store.db"),
        LOCKED.as_secs(),
    );
    let t_term = Instant::now();
    s.mons.get(&leaver).signal("TERM");
    let bound_exit = Duration::from_secs(10) + 2 * HEARTBEAT + Duration::from_secs(2);
    let status = wait_until(
        &format!("{leaver} exits after SIGTERM with the store locked"),
        bound_exit + SLACK,
        || s.mons.get(&leaver).child.try_wait().ok().flatten(),
    );
    let t_exit = Instant::now();
    let log = s.mons.get(&leaver).log_text();
    eprintln!(
        "store down: {leaver} exited {status} {:?} after SIGTERM (bound {bound_exit:?})",
        t_exit - t_term
    );
    assert!(status.success(), "exit 0: {status}\n{log}");
    assert!(
        log.contains("could not release buckets")
            || log.contains("releasing buckets did not finish"),
        "the leaver says it could not hand over: {log}"
    );
    let t_up = lock.wait_released(LOCKED + Duration::from_secs(10));
    eprintln!("store down: released {:?} after the exit", t_up - t_exit);
    let store = s.store.clone();
    let bound_own = HEARTBEAT_TTL + 2 * HEARTBEAT;
    wait_until(
        &format!("{stay:?} own every bucket after the store's return"),
        bound_own + SLACK,
        || buckets(&store).filter(|o| balanced(o, &stay)),
    );
    eprintln!("store down: {leaver}'s buckets re-owned {:?} after the store's return (bound {bound_own:?})", t_up.elapsed());
    let bound_all = bound_own + INTERVAL;
    wait_checked(
        &s,
        &theirs,
        t_up,
        1,
        (t_up + bound_all + SLACK).saturating_duration_since(Instant::now()),
        "the leaver's clusters after the return",
    );
    eprintln!(
        "store down: the leaver's {} clusters all checked {:?} after the return (bound {bound_all:?})",
        theirs.len(),
        t_up.elapsed()
    );
    // The others' clusters kept their cadence through it all, no double.
    let end = covered_after(
        &s,
        &ours,
        t_term,
        INTERVAL + SLACK,
        INTERVAL + SLACK,
        "the others' clusters through the outage",
    );
    assert_no_double_of(&s, &ours, t_term, end, "the others' clusters");
    // The leaver's: caught up once taken over, then the grid slot at
    // least half an interval later; never two monitors at once.
    let apart = INTERVAL / 2 - Duration::from_millis(500);
    assert_apart_of(
        &s,
        &theirs,
        t_exit,
        end,
        apart,
        "store down: the leaver's clusters",
    );
    drop(lock);
    drop(s.dir);
}

#[test]
fn a_stopped_cosmos_endpoint_never_stops_the_checks() {
    let mut s = setup_on("chaos-cosmos-down", Backend::Cosmos, &["--plain-http"], &[]);
    warm_up(&mut s);
    let emu = s.cosmos.as_ref().expect("cosmos");
    let mut fault = CosmosDown {
        emu,
        outage: OUTAGE,
        since: None,
    };
    outage_never_stops_the_checks(&s, &mut fault, OUTAGE, "cosmos unavailable");
    eprintln!("cosmos emulator requests: {}", emu.stats());
    drop(s.dir);
}

/// The Cosmos endpoint holds every change-feed read without ever answering
/// it (a black-holed connection; the emulator's `stall` fault), while every
/// other call answers. docs/monitoring.md: a feed read is bounded by the
/// heartbeat TTL and one that is not answered is retried from the same
/// continuation. So (a) the checks go on: no gap, nothing skipped; (b) a
/// cluster put during the stall is not seen while it lasts, and is checked
/// once the endpoint answers again, within the held read's bound plus the
/// feed's back-off after one failure: it is not lost.
#[test]
fn a_cosmos_change_feed_that_never_answers_is_cut_at_its_bound() {
    const FEED: Duration = Duration::from_secs(2);
    const TTL: Duration = Duration::from_secs(10);
    let mut s = setup_on(
        "chaos-cosmos-feed-stall",
        Backend::Cosmos,
        &["--plain-http"],
        &[],
    );
    warm_up(&mut s);
    let emu = s.cosmos.as_ref().expect("cosmos");
    let stalled = || emu.stats()["stalled"].as_u64().unwrap_or(0);
    let skipped0 = s.statsd.counter_sum("monitor.checks.skipped", &[]);
    let held0 = stalled();
    emu.set_faults(serde_json::json!({"stall": true, "kinds": ["changefeed"]}));
    let t_stall = Instant::now();
    // Every monitor's next feed read is held (reads come every FEED).
    wait_until("a feed read of each monitor held", FEED + SLACK, || {
        (stalled() >= held0 + 3).then_some(())
    });
    let target = s.fleet.clusters()[7]["url"].as_str().unwrap().to_string();
    put_cluster(&s.store, "e2e-stalled-new", &target);
    // A fault of fixed length: sleeping for it is the point. Shorter than
    // the bound, so the held reads are cut after the endpoint answers again.
    std::thread::sleep(
        (t_stall + Duration::from_secs(6)).saturating_duration_since(Instant::now()),
    );
    let seen_while_stalled = s.statsd.check_times().contains_key("e2e-stalled-new");
    emu.set_faults(serde_json::json!({"stall": false, "kinds": null}));
    let t_up = Instant::now();
    eprintln!(
        "cosmos feed stall: {} reads held in {:?}",
        stalled() - held0,
        t_up - t_stall
    );
    assert!(
        !seen_while_stalled,
        "the new cluster was checked while every feed read was held: the fault did not take"
    );

    // (b) A held read began within FEED of the stall and is cut TTL later;
    // after one failure the next read comes within 2 FEED + a quarter FEED
    // of jitter; a new cluster is checked at once.
    let bound = t_stall + FEED + TTL + FEED * 9 / 4 + SLACK;
    let first = wait_until(
        "the cluster put during the stall is checked",
        bound.saturating_duration_since(Instant::now()),
        || {
            s.statsd
                .check_times()
                .get("e2e-stalled-new")
                .and_then(|v| v.first().copied())
        },
    );
    eprintln!(
        "cosmos feed stall: the cluster put during the stall checked {:?} after the endpoint answered again ({:?} after the stall began; bound {:?})",
        first.saturating_duration_since(t_up),
        first - t_stall,
        bound - t_stall
    );

    // (a) The checks went on through the stall.
    let to = t_up + INTERVAL;
    let limit = (to + INTERVAL + SLACK).saturating_duration_since(Instant::now());
    wait_checked(&s, &s.ids, to, 1, limit, "checks after the stall");
    let (gap, id) = worst_gap(&s.statsd.check_times(), &s.ids, t_stall, to);
    let bound_gap = INTERVAL + Duration::from_secs(1);
    assert!(
        gap <= bound_gap,
        "worst gap through the feed stall {gap:?} ({id}), bound {bound_gap:?}"
    );
    let skipped = s.statsd.counter_sum("monitor.checks.skipped", &[]) - skipped0;
    assert_eq!(skipped, 0, "checks skipped through the feed stall");
    for (id, p) in &s.mons.procs {
        assert!(!p.log_text().contains("panicked"), "{id} panicked");
    }
    drop(s.dir);
}
