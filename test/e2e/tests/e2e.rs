//! End-to-end behaviours of the core engine: three monitors, 300
//! simulated clusters, a 10s interval, real processes on one SQLite file.
//! Bounds come from the flags' defaults: heartbeat 2s, heartbeat TTL 10s,
//! lease TTL 10s, feed 2s. `SLACK` absorbs process start-up and UDP
//! delivery on a loaded 2-core CI machine; each assertion names its bound.

// The e2e harness times real processes: std's clock is the right one here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use clustermon_e2e::prometheus::{instance, Prometheus};
use clustermon_e2e::*;

#[path = "chaos/mod.rs"]
mod chaos;

#[path = "alerts/mod.rs"]
mod alerts;

const INTERVAL: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
const LEASE_TTL: Duration = Duration::from_secs(10);
const FEED: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(2);
const CLUSTERS: usize = 300;

struct Setup {
    mons: Monitors,
    cosmos: Option<CosmosEmulator>,
    postgres: Option<PostgresServer>,
    dir: TempDir,
    store: String,
    statsd: Statsd,
    fleet: Fleet,
    ids: Vec<String>,
}

#[derive(PartialEq)]
enum Backend {
    Sqlite,
    Cosmos,
    Postgres,
}

fn setup(name: &str, fleet_args: &[&str]) -> Setup {
    setup_on(name, Backend::Sqlite, fleet_args, &[])
}

fn setup_on(name: &str, backend: Backend, fleet_args: &[&str], mon_args: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let mut postgres = None;
    let (store, cosmos) = match backend {
        Backend::Sqlite => (
            format!("sqlite:{}", dir.path().join("store.db").display()),
            None,
        ),
        Backend::Cosmos => {
            let emu = CosmosEmulator::start(dir.path(), name);
            (emu.store.clone(), Some(emu))
        }
        Backend::Postgres => {
            let pg = PostgresServer::start(dir.path());
            let store = pg.store.clone();
            postgres = Some(pg);
            (store, None)
        }
    };
    let statsd = Statsd::start();
    let n = CLUSTERS.to_string();
    let mut args = vec!["--clusters", &n];
    args.extend_from_slice(fleet_args);
    let fleet = Fleet::start(dir.path(), &store, &args);
    let ids: Vec<String> = fleet
        .clusters()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), CLUSTERS);
    let mut margs = vec!["--interval", "10s"];
    margs.extend_from_slice(mon_args);
    let mons = Monitors::new(dir.path(), &store, &statsd, &margs);
    Setup {
        mons,
        cosmos,
        postgres,
        dir,
        store,
        statsd,
        fleet,
        ids,
    }
}

/// Starts m1..m3: within 15s all 256 buckets are owned, loads differ by at
/// most 1, and there is one master. Returns when they have settled.
fn start_three(s: &mut Setup) -> Instant {
    let t0 = Instant::now();
    for m in ["m1", "m2", "m3"] {
        s.mons.start(m);
    }
    let store = s.store.clone();
    wait_until(
        "all 256 buckets owned by m1..m3, loads within 1",
        Duration::from_secs(15).saturating_sub(t0.elapsed()),
        || buckets(&store).filter(|o| balanced(o, &["m1", "m2", "m3"])),
    );
    let owned_after = t0.elapsed();
    eprintln!("start: balanced after {owned_after:?}");
    assert!(master(&store).is_some(), "status names a master");
    wait_until(
        "exactly one monitor reports monitor.master=1",
        Duration::from_secs(5),
        || {
            let g = s.statsd.last_self_gauge("monitor.master");
            (g.len() == 3 && g.values().filter(|v| *v == "1").count() == 1).then_some(())
        },
    );
    Instant::now()
}

/// Waits until every cluster of `ids` has `n` checks at or after `since`.
fn wait_checked(s: &Setup, ids: &[String], since: Instant, n: usize, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let t = s.statsd.check_times();
        let short: Vec<&String> = ids
            .iter()
            .filter(|id| {
                t.get(*id)
                    .is_none_or(|v| v.iter().filter(|x| **x >= since).count() < n)
            })
            .collect();
        if short.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            // Which clusters, and when each was last checked: a late one
            // and a never-checked one have different causes.
            let now = Instant::now();
            let late: Vec<String> = short
                .iter()
                .take(10)
                .map(|id| match t.get(*id).and_then(|v| v.iter().max()) {
                    Some(at) => format!("{id} (last {:?} ago)", now - *at),
                    None => format!("{id} (never)"),
                })
                .collect();
            let owners = match buckets(&s.store) {
                Some(o) => format!("{} of 256 buckets owned", o.iter().flatten().count()),
                None => "buckets not read".to_string(),
            };
            panic!(
                "timed out after {limit:?} waiting for: {what}: {} of {} clusters short of {n} check(s) since the start, e.g. {late:?}; {owners}; datagrams dropped by the receiver's kernel buffer: {:?}",
                short.len(),
                ids.len(),
                s.statsd.kernel_drops()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_coverage(
    s: &Setup,
    ids: &[String],
    from: Instant,
    to: Instant,
    bound: Duration,
    what: &str,
) {
    let times = s.statsd.check_times();
    let (gap, id) = worst_gap(&times, ids, from, to);
    eprintln!("{what}: worst gap {gap:?} ({id}), bound {bound:?}");
    assert!(
        gap <= bound,
        "{what}: cluster {id} went {gap:?} without a check (bound {bound:?})"
    );
}

/// Waits until every cluster of `ids` is checked once more (up to `wait`
/// from now), then asserts that none went longer than `bound` without a
/// check from `from` on. Answers the end of the window judged.
fn covered_after(
    s: &Setup,
    ids: &[String],
    from: Instant,
    wait: Duration,
    bound: Duration,
    what: &str,
) -> Instant {
    wait_checked(
        s,
        ids,
        Instant::now(),
        1,
        wait,
        &format!("{what}: checks after it"),
    );
    let end = Instant::now() - SLACK;
    assert_coverage(s, ids, from, end, bound, what);
    end
}

fn assert_no_double(s: &Setup, from: Instant, to: Instant, what: &str) {
    let times = s.statsd.check_times();
    if let Some((d, id)) = closest_pair(&times, from, to) {
        eprintln!("{what}: closest two checks of one cluster {d:?} ({id})");
        assert!(
            d >= INTERVAL - Duration::from_secs(1),
            "{what}: cluster {id} checked twice {d:?} apart"
        );
    }
}

fn assert_no_double_of(s: &Setup, ids: &[String], from: Instant, to: Instant, what: &str) {
    assert_apart_of(s, ids, from, to, INTERVAL - Duration::from_secs(1), what);
}

/// No two checks of one cluster of `ids` in `[from, to]` closer than `apart`.
fn assert_apart_of(
    s: &Setup,
    ids: &[String],
    from: Instant,
    to: Instant,
    apart: Duration,
    what: &str,
) {
    let times: std::collections::BTreeMap<String, Vec<Instant>> = s
        .statsd
        .check_times()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .collect();
    if let Some((d, id)) = closest_pair(&times, from, to) {
        eprintln!("{what}: closest two checks of one cluster {d:?} ({id})");
        assert!(
            d >= apart,
            "{what}: cluster {id} checked twice {d:?} apart (bound >= {apart:?})"
        );
    }
}

/// Every cluster checked within one interval of `settled`,
/// then `rounds` more times, each exactly once per interval.
fn each_cluster_checked_once_per_interval(s: &Setup, settled: Instant, rounds: usize, what: &str) {
    wait_checked(
        s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        &format!("{what}: every cluster checked once"),
    );
    wait_checked(
        s,
        &s.ids,
        settled,
        rounds,
        rounds as u32 * INTERVAL + SLACK,
        &format!("{what}: every cluster checked {rounds} times since the buckets settled"),
    );
    let end = Instant::now() - SLACK;
    assert_coverage(s, &s.ids, settled, end, INTERVAL + SLACK, what);
    assert_no_double(s, settled, end, what);
}

/// A new cluster is checked within feed interval + 1s of its creation.
fn a_new_cluster_is_checked_within_a_feed_interval(s: &Setup, what: &str) {
    let target = s.fleet.clusters()[7]["url"].as_str().unwrap().to_string();
    let t_put = Instant::now();
    put_cluster(&s.store, "e2e-new", &target);
    let first = wait_until(
        &format!("{what}: the new cluster is checked"),
        FEED + Duration::from_secs(1) + SLACK,
        || {
            s.statsd
                .check_times()
                .get("e2e-new")
                .and_then(|v| v.first().copied())
        },
    );
    let delay = first - t_put;
    eprintln!("{what}: new cluster checked {delay:?} after `cluster put` started");
    assert!(delay <= FEED + Duration::from_secs(1) + Duration::from_millis(500));
}

/// A non-master crashes; the survivors own its buckets within
/// TTL + two passes, and `ids` stay covered (a caught-up check is followed
/// by its grid slot at least half an interval later: up to 1.5 intervals).
/// Returns the master, the survivors and the bound.
fn a_crashed_member_is_replaced_without_a_gap(
    s: &mut Setup,
    ids: &[String],
    what: &str,
) -> (String, Vec<&'static str>, Duration) {
    let master0 = master(&s.store).expect("a master");
    let victim = a_member(&s.store);
    let survivors: Vec<&'static str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != victim)
        .collect();
    let bound_member_crash = HEARTBEAT_TTL + 2 * HEARTBEAT;
    let t_kill = Instant::now();
    s.mons.get(&victim).crash();
    let store = s.store.clone();
    wait_until(
        &format!("{what}: survivors own every bucket"),
        bound_member_crash + SLACK,
        || buckets(&store).filter(|o| balanced(o, &survivors)),
    );
    let took = t_kill.elapsed();
    eprintln!("{what}: {victim}'s buckets re-owned after {took:?} (bound {bound_member_crash:?})");
    covered_after(
        s,
        ids,
        t_kill,
        INTERVAL * 3 / 2 + SLACK,
        INTERVAL + bound_member_crash + SLACK,
        what,
    );
    (master0, survivors, bound_member_crash)
}

/// `clustermon cluster put` of cluster `id` with API server `target`;
/// panics when it fails.
fn put_cluster(store: &str, id: &str, target: &str) {
    let (code, _, err) = clustermon(&[
        "cluster",
        "put",
        "--store",
        store,
        "--id",
        id,
        "--api-server",
        target,
    ]);
    assert_eq!(code, 0, "cluster put {id}: {err}");
}

fn others(ids: &[String], but: &str) -> Vec<String> {
    ids.iter().filter(|i| *i != but).cloned().collect()
}

/// Starts m1..m3 (`start_three`) and waits until every cluster has been
/// checked once: the settled fleet most behaviours are measured from.
fn warm_up(s: &mut Setup) {
    let settled = start_three(s);
    wait_checked(
        s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "warm-up",
    );
}

/// One of m1..m3 that does not hold the lease.
fn a_member(store: &str) -> String {
    let m0 = master(store).expect("a master");
    ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != m0)
        .unwrap()
        .to_string()
}

/// Whether cluster `id` is in a bucket that `owners` gives to `monitor`.
fn owned_by(
    bucket_of: &std::collections::BTreeMap<String, usize>,
    owners: &[Option<String>],
    id: &str,
    monitor: &str,
) -> bool {
    bucket_of
        .get(id)
        .and_then(|b| owners[*b].as_deref())
        .is_some_and(|o| o == monitor)
}

/// Each cluster's bucket, from `clustermon cluster list --output json`.
fn cluster_buckets(store: &str) -> std::collections::BTreeMap<String, usize> {
    let (code, out, err) = clustermon(&["cluster", "list", "--store", store, "--output", "json"]);
    assert_eq!(code, 0, "cluster list: {err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("cluster list JSON");
    listed
        .iter()
        .filter_map(|c| {
            Some((
                c["id"].as_str()?.to_string(),
                c["bucket"].as_u64()? as usize,
            ))
        })
        .collect()
}

/// Starts m1 and waits until it holds the lease, then m2, then m3 as
/// `start_m3` does (on another store URL, with other flags), and waits
/// until the three are balanced and every cluster has been checked once:
/// a settled fleet whose m3 is a member, never the master.
fn warm_up_with_m3(s: &mut Setup, start_m3: impl FnOnce(&mut Monitors)) {
    let t0 = Instant::now();
    let store = s.store.clone();
    s.mons.start("m1");
    wait_until("m1 is master", SLACK * 5, || {
        master(&store).filter(|m| m == "m1")
    });
    s.mons.start("m2");
    start_m3(&mut s.mons);
    wait_until(
        "m1..m3 balanced",
        Duration::from_secs(15).saturating_sub(t0.elapsed()) + SLACK * 3,
        || buckets(&store).filter(|o| balanced(o, &["m1", "m2", "m3"])),
    );
    let settled = Instant::now();
    wait_checked(s, &s.ids, settled, 1, INTERVAL + SLACK, "warm-up");
}

/// Three monitors share the 256 buckets evenly and check each cluster once
/// per interval, three intervals long: no gap, no duplicate.
#[test]
fn three_monitors_check_each_cluster_once_per_interval() {
    let mut s = setup("share", &["--plain-http"]);
    let settled = start_three(&mut s);
    each_cluster_checked_once_per_interval(&s, settled, 3, "schedule");
    drop(s.dir);
}

/// A cluster put in the store is checked within the feed interval + 1s.
#[test]
fn a_cluster_put_in_the_store_is_checked_within_a_feed_interval() {
    let mut s = setup("feed-put", &["--plain-http"]);
    warm_up(&mut s);
    a_new_cluster_is_checked_within_a_feed_interval(&s, "new cluster");
    drop(s.dir);
}

/// A cluster deleted from the store is no longer checked once the feed
/// interval + 1s has passed, while every other cluster still is.
#[test]
fn a_cluster_deleted_from_the_store_is_no_longer_checked_after_a_feed_interval() {
    let mut s = setup("feed-delete", &["--plain-http"]);
    warm_up(&mut s);
    let gone = s.ids[10].clone();
    let (code, _, err) = clustermon(&["cluster", "delete", "--store", &s.store, "--id", &gone]);
    assert_eq!(code, 0, "cluster delete: {err}");
    let t_del = Instant::now();
    let quiet_from = t_del + FEED + Duration::from_secs(1);
    let rest = others(&s.ids, &gone);
    wait_checked(
        &s,
        &rest,
        quiet_from,
        1,
        FEED + INTERVAL + 2 * SLACK,
        "every other cluster checked after the delete settled",
    );
    let late: Vec<_> = s.statsd.check_times()[&gone]
        .iter()
        .filter(|t| **t > quiet_from)
        .map(|t| *t - t_del)
        .collect();
    assert!(
        late.is_empty(),
        "deleted cluster still checked at {late:?} after the delete"
    );
    drop(s.dir);
}

/// A fourth monitor joins three: at most ceil(256/4) = 64 buckets move, and
/// no cluster has a gap or a duplicate check.
#[test]
fn a_fourth_monitor_joins_moving_at_most_a_quarter_of_the_buckets_with_no_gap_or_duplicate() {
    let mut s = setup("join", &["--plain-http"]);
    warm_up(&mut s);
    let before = buckets(&s.store).unwrap();
    let t_join = Instant::now();
    s.mons.start("m4");
    let store = s.store.clone();
    let after = wait_until("m1..m4 balanced", HEARTBEAT_TTL + SLACK * 3, || {
        buckets(&store).filter(|o| balanced(o, &["m1", "m2", "m3", "m4"]))
    });
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    eprintln!(
        "join: {moved} buckets moved, balanced after {:?}",
        t_join.elapsed()
    );
    assert!(moved <= 64, "{moved} buckets moved on a join (bound 64)");
    wait_checked(
        &s,
        &s.ids,
        Instant::now(),
        2,
        2 * INTERVAL + SLACK,
        "every cluster checked twice after the join",
    );
    let end = Instant::now() - SLACK;
    assert_coverage(&s, &s.ids, t_join, end, INTERVAL + SLACK, "join");
    assert_no_double(&s, t_join, end, "join");
    // The buckets given away gave their memory back: each monitor holds a
    // zone (`monitor.cache.zones`) for each bucket it owns that has
    // clusters, and none for a bucket it gave away.
    let owners = buckets(&s.store).unwrap();
    let mut with_clusters = [false; 256];
    for b in cluster_buckets(&s.store).values() {
        with_clusters[*b] = true;
    }
    let mons = ["m1", "m2", "m3", "m4"];
    let owned = |m: &str| {
        owners
            .iter()
            .zip(with_clusters)
            .filter(|(o, has)| *has && o.as_deref() == Some(m))
            .count()
    };
    let latest = || {
        let z = metric_values(&s.statsd, "monitor.cache.zones");
        mons.map(|m| z.get(m).and_then(|v| v.last().copied()).unwrap_or(-1.0) as i64)
    };
    let zones = wait_until(
        "each monitor's zones: one per bucket it owns with clusters",
        2 * HEARTBEAT + SLACK,
        || {
            let z = latest();
            z.iter()
                .zip(mons)
                .all(|(&n, m)| n > 0 && n as usize == owned(m))
                .then_some(z)
        },
    );
    eprintln!("join: zones {zones:?}, buckets owned {:?}", mons.map(owned));
    drop(s.dir);
}

/// kill -9 a member: the survivors take its buckets within the heartbeat
/// TTL; then the master: a new master within the lease TTL (TLS fleet,
/// full checks).
#[test]
fn crash_of_a_member_then_of_the_master() {
    let mut s = setup("crash", &[]);
    warm_up(&mut s);
    let ids = s.ids.clone();
    let (master0, survivors, bound_member_crash) =
        a_crashed_member_is_replaced_without_a_gap(&mut s, &ids, "member crash");
    let store = s.store.clone();

    // The master crashes: a new master within lease TTL + one pass.
    let bound_master_crash = LEASE_TTL + HEARTBEAT;
    let t_kill = Instant::now();
    s.mons.get(&master0).crash();
    let last: Vec<&str> = survivors
        .iter()
        .copied()
        .filter(|m| *m != master0)
        .collect();
    let new_master = wait_until("a new master", bound_master_crash + SLACK, || {
        master(&store).filter(|m| *m != master0)
    });
    let took = t_kill.elapsed();
    eprintln!("master crash: {new_master} is master after {took:?} (bound {bound_master_crash:?})");
    assert_eq!(vec![new_master.as_str()], last);
    wait_until(
        "the survivor owns every bucket",
        HEARTBEAT_TTL + 2 * HEARTBEAT + SLACK,
        || buckets(&store).filter(|o| balanced(o, &last)),
    );
    covered_after(
        &s,
        &s.ids,
        t_kill,
        INTERVAL * 3 / 2 + SLACK,
        INTERVAL + bound_member_crash + SLACK,
        "master crash",
    );
    drop(s.dir);
}

/// SIGTERM the master: exit 0 within the grace period, buckets
/// move within two heartbeat intervals, no gap and no duplicate.
#[test]
fn graceful_stop_hands_over() {
    let mut s = setup("graceful", &[]);
    warm_up(&mut s);
    let leaver = master(&s.store).expect("a master");
    let stay: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != leaver)
        .collect();

    let t_term = Instant::now();
    s.mons.get(&leaver).signal("TERM");
    let mut moved_at = None;
    let mut exited = None;
    let store = s.store.clone();
    wait_until(
        "the leaver exits and its buckets move",
        Duration::from_secs(10) + SLACK,
        || {
            if moved_at.is_none() && buckets(&store).is_some_and(|o| balanced(&o, &stay)) {
                moved_at = Some(t_term.elapsed());
            }
            if exited.is_none() {
                if let Ok(Some(st)) = s.mons.get(&leaver).child.try_wait() {
                    exited = Some((st, t_term.elapsed()));
                }
            }
            (moved_at.is_some() && exited.is_some()).then_some(())
        },
    );
    let (status, exit_after) = exited.unwrap();
    let moved_after = moved_at.unwrap();
    eprintln!(
        "graceful stop: buckets moved after {moved_after:?}, exit {status} after {exit_after:?}"
    );
    assert!(
        status.success(),
        "graceful stop exits 0: {status}\n{}",
        s.mons.get(&leaver).log_text()
    );
    assert!(
        exit_after <= Duration::from_secs(10),
        "exit within the grace period"
    );
    assert!(
        moved_after <= 2 * HEARTBEAT + SLACK,
        "buckets move within two heartbeats"
    );
    s.mons.get(&leaver).wait_exit(Duration::from_secs(1));

    let end = covered_after(
        &s,
        &s.ids,
        t_term,
        INTERVAL + SLACK,
        INTERVAL + 2 * HEARTBEAT + SLACK,
        "graceful stop",
    );
    assert_no_double(&s, t_term - INTERVAL, end, "graceful stop");
    let new_master = master(&s.store).expect("a master after the handoff");
    assert!(stay.contains(&new_master.as_str()));
    // Over TLS, checks after a cluster's first on a monitor take its
    // server chain from the entry's memo (`monitor.tls.chains`).
    let chains = |how| s.statsd.counter_sum("monitor.tls.chains", &[("how", how)]);
    let (remembered, verified) = (chains("remembered"), chains("verified"));
    eprintln!("graceful stop: server chains remembered {remembered}, verified {verified}");
    assert!(
        remembered > 0 && verified > 0,
        "chains remembered {remembered}, verified {verified}"
    );
    drop(s.dir);
}

/// Two of five monitors get SIGTERM together. Each releases its buckets
/// to the monitors it believes eligible, so some of the first one's go to
/// the second, which releases them again before their handoff time. The
/// first keeps checking what is due before that first handoff time (it
/// need not read the newer table sooner), the others take the rest: no
/// cluster is checked twice, none misses its slot. Before handoff chains,
/// the second monitor took the first's part from its own write while the
/// first still checked it (a bench run: 126 clusters started twice within
/// 8 ms when all three monitors were stopped at once).
#[test]
fn monitors_stopped_together_hand_over_with_no_gap_or_duplicate() {
    let mut s = setup("stopped-together", &[]);
    s.mons.log = "info,clustermon_core::schedule=debug".into();
    let all = ["m1", "m2", "m3", "m4", "m5"];
    let t0 = Instant::now();
    for m in all {
        s.mons.start(m);
    }
    let store = s.store.clone();
    wait_until(
        "all 256 buckets owned by m1..m5, loads within 1",
        Duration::from_secs(20),
        || buckets(&store).filter(|o| balanced(o, &all)),
    );
    eprintln!("stopped together: balanced over 5 after {:?}", t0.elapsed());
    let settled = Instant::now();
    wait_checked(
        &s,
        &s.ids,
        settled,
        1,
        INTERVAL + SLACK,
        "stopped together: warm-up",
    );
    let m0 = master(&store).expect("a master");
    let leavers: Vec<&str> = all.into_iter().filter(|m| *m != m0).take(2).collect();
    let stay: Vec<&str> = all.into_iter().filter(|m| !leavers.contains(m)).collect();
    let t_term = Instant::now();
    for m in &leavers {
        s.mons.get(m).signal("TERM");
    }
    for m in &leavers {
        let st = s.mons.get(m).wait_exit(Duration::from_secs(10) + SLACK);
        assert!(
            st.is_some_and(|st| st.success()),
            "stopped together: {m} exits 0 within the grace period: {st:?}\n{}",
            s.mons.get(m).log_text()
        );
    }
    wait_until(
        "the leavers' buckets balanced over the other three",
        2 * HEARTBEAT + SLACK,
        || buckets(&store).filter(|o| balanced(o, &stay)),
    );
    eprintln!(
        "stopped together: {leavers:?} exited, buckets over {stay:?} after {:?}",
        t_term.elapsed()
    );
    let end = covered_after(
        &s,
        &s.ids,
        t_term,
        INTERVAL + SLACK,
        INTERVAL + 2 * HEARTBEAT + SLACK,
        "stopped together",
    );
    // Doubles by the check starts the monitors logged (a check started
    // before a monitor exits may report after the next owner's).
    let starts = check_starts(&s.mons, unix_ms(t_term - INTERVAL), unix_ms(end));
    let chained: usize = s
        .mons
        .procs
        .values()
        .filter_map(|p| {
            p.log_text()
                .lines()
                .filter(|l| l.contains("assignment changed"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("chained="))
                })
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
        })
        .sum();
    let bound = (INTERVAL - Duration::from_secs(1)).as_millis() as i64;
    let (closest, under) = closest_starts(&starts, bound);
    eprintln!(
        "stopped together: closest two check starts of one cluster {closest:?}; {under} clusters with a pair under {bound} ms; chained buckets seen in the monitors' tables: {chained}"
    );
    if let Some((d, id)) = closest {
        assert!(
            d >= bound,
            "stopped together: {under} clusters started twice within {bound} ms, e.g. {id} {d} ms apart (ms after SIGTERM: {:?})",
            starts[&id]
                .iter()
                .map(|(at, m)| (at - unix_ms(t_term), m.clone()))
                .collect::<Vec<_>>()
        );
    }
    drop(s.dir);
}

// ---- cluster checks: faults as metrics, bounded memory ----

/// Fault metrics: a healthy cluster emits none of these.
const FAULT_METRICS: &[&str] = &[
    "apiserver.readyz.failed",
    "node.conditions",
    "pod.conditions",
    "pod.containerstatuses",
    "pod.restartcounter",
    "clusteroperator.conditions",
    "clusterversion.conditions",
    "monitor.cluster.collector.error",
];

/// The fault metrics (name → every tag set seen) and healthz codes per cluster.
struct Seen {
    fault: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<Line>>>,
    healthz: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    cert_days: std::collections::BTreeMap<String, i64>,
}

fn seen(lines: &[Line]) -> Seen {
    let mut s = Seen {
        fault: Default::default(),
        healthz: Default::default(),
        cert_days: Default::default(),
    };
    for l in lines {
        let Some(id) = l.resource() else { continue };
        if FAULT_METRICS.contains(&l.name.as_str()) {
            s.fault
                .entry(id.to_string())
                .or_default()
                .entry(l.name.clone())
                .or_default()
                .push(l.clone());
        } else if l.name == "apiserver.healthz.code" {
            s.healthz
                .entry(id.to_string())
                .or_default()
                .insert(l.value.clone());
        } else if l.name == "certificate.expirationdate" {
            s.cert_days
                .insert(id.to_string(), l.value.parse().unwrap_or(-1));
        }
    }
    s
}

fn has_tags(l: &Line, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| l.tag(k) == Some(*v))
}

/// Every fault kind, on a TLS fleet with bearer and client-certificate
/// clusters and encrypted credentials; then a search of every log line,
/// metric and command output for the credential material.
#[test]
fn every_fault_shows_as_its_metric_and_no_secret_leaks() {
    let dir = TempDir::new("faults");
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let key_file = dir.path().join("secrets.key");
    // 32 random bytes, base64 (the key is a secret too).
    let key: Vec<u8> = (0..32u32)
        .map(|i| {
            (std::process::id()
                .wrapping_mul(2654435761)
                .wrapping_add(i * 40503)
                >> 7) as u8
        })
        .collect();
    let key_b64 = b64(&key);
    std::fs::write(&key_file, &key_b64).unwrap();
    // The monitor runs mid key rotation: a new current key, the fleet's
    // key as the older one (every credential opens with it, counted).
    let new_key: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
    let new_key_b64 = b64(&new_key);
    let new_key_file = dir.path().join("secrets-new.key");
    std::fs::write(&new_key_file, &new_key_b64).unwrap();
    let secrets_file = dir.path().join("secrets.jsonl");
    let statsd = Statsd::start();
    let kf = key_file.to_str().unwrap();
    let sf = secrets_file.to_str().unwrap();
    let faults = [
        "down",
        "healthz500",
        "slow",
        "degraded-node",
        "crashloop",
        "operator-degraded",
        "cert-expiring",
        "malformed",
        "unauthorized",
    ];
    let mut args: Vec<String> = [
        "--clusters",
        "20",
        "--slow-delay",
        "30s",
        "--secrets-key-file",
        kf,
        "--credentials-out",
        sf,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in faults {
        args.push("--fault".into());
        args.push(format!("{f}=1"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let fleet = Fleet::start(dir.path(), &store, &argv);
    let clusters = fleet.clusters();
    let fault_of = |id: &str| -> Option<String> {
        clusters.iter().find(|c| c["id"] == id).and_then(|c| {
            c["faults"]
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_string)
        })
    };
    let ids: Vec<String> = clusters
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    for f in faults {
        assert!(
            ids.iter().any(|i| fault_of(i).as_deref() == Some(f)),
            "fleet has a {f} cluster"
        );
    }
    assert!(clusters.iter().any(|c| c["auth"] == "bearer"));
    assert!(clusters.iter().any(|c| c["auth"] == "client-certificate"));

    let mut mons = Monitors::new(
        dir.path(),
        &store,
        &statsd,
        &[
            "--interval",
            "5s",
            "--check-timeout",
            "3s",
            "--secrets-key-file",
            new_key_file.to_str().unwrap(),
            "--secrets-old-key-file",
            kf,
        ],
    );
    // Debug logging: the widest log surface for the leak search.
    mons.log = "debug".into();
    mons.start("m1");
    let t0 = Instant::now();
    wait_until(
        "every cluster checked twice",
        Duration::from_secs(30),
        || {
            let t = statsd.check_times();
            ids.iter()
                .all(|id| t.get(id).is_some_and(|v| v.len() >= 2))
                .then_some(())
        },
    );
    eprintln!(
        "faults: every cluster checked twice after {:?}",
        t0.elapsed()
    );
    assert!(
        mons.get("m1").child.try_wait().unwrap().is_none(),
        "the monitor is still running: {}",
        mons.get("m1").log_text()
    );

    let s = seen(&statsd.lines());
    // Mid rotation: every sealed credential opened with the older key
    // (healthy clusters answer 200 below), and the count says so.
    let old_key = statsd.counter_sum("monitor.credentials.old_key", &[]);
    assert!(
        old_key >= ids.len() as u64,
        "monitor.credentials.old_key counts the opens by the older key: {old_key} for {} clusters checked twice",
        ids.len()
    );
    for id in &ids {
        let fault = fault_of(id);
        let got = s.fault.get(id).cloned().unwrap_or_default();
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        let codes = s.healthz.get(id).cloned().unwrap_or_default();
        let code_is = |c: &str| codes.len() == 1 && codes.contains(c);
        let ctx = format!("{id} ({fault:?}): fault metrics {names:?}, healthz {codes:?}");
        match fault.as_deref() {
            None => {
                assert!(
                    names.is_empty(),
                    "healthy cluster emits no fault metric: {ctx}"
                );
                assert!(code_is("200"), "{ctx}");
                assert!(
                    s.cert_days.get(id).is_some_and(|d| *d > 300),
                    "{ctx}: {:?}",
                    s.cert_days.get(id)
                );
            }
            Some("down") | Some("slow") => {
                assert!(names.is_empty(), "{ctx}");
                assert!(code_is("0"), "unreachable or timed out is code 0: {ctx}");
            }
            Some("healthz500") => {
                assert_eq!(names, ["apiserver.readyz.failed"], "{ctx}");
                assert!(
                    got["apiserver.readyz.failed"]
                        .iter()
                        .all(|l| has_tags(l, &[("check", "etcd")])),
                    "{ctx}"
                );
                assert!(code_is("500"), "{ctx}");
            }
            Some("degraded-node") => {
                assert_eq!(names, ["node.conditions"], "{ctx}");
                let want = [
                    ("nodeName", "worker-0"),
                    ("type", "Ready"),
                    ("status", "False"),
                ];
                assert!(
                    got["node.conditions"].iter().all(|l| has_tags(l, &want)),
                    "{ctx}"
                );
            }
            Some("crashloop") => {
                assert_eq!(
                    names,
                    [
                        "pod.conditions",
                        "pod.containerstatuses",
                        "pod.restartcounter"
                    ],
                    "{ctx}"
                );
                let want = [
                    ("name", "kube-apiserver-guard-0"),
                    ("namespace", "kube-system"),
                    ("containername", "guard"),
                    ("reason", "CrashLoopBackOff"),
                ];
                assert!(
                    got["pod.containerstatuses"]
                        .iter()
                        .all(|l| has_tags(l, &want)),
                    "{ctx}"
                );
                assert!(
                    got["pod.restartcounter"].iter().all(|l| l.value == "12"),
                    "{ctx}"
                );
                assert!(
                    got["pod.conditions"].iter().all(|l| has_tags(
                        l,
                        &[("name", "kube-apiserver-guard-0"), ("status", "False")]
                    )),
                    "{ctx}"
                );
            }
            Some("operator-degraded") => {
                assert_eq!(names, ["clusteroperator.conditions"], "{ctx}");
                let want = [
                    ("name", "authentication"),
                    ("type", "Degraded"),
                    ("status", "True"),
                ];
                assert!(
                    got["clusteroperator.conditions"]
                        .iter()
                        .all(|l| has_tags(l, &want)),
                    "{ctx}"
                );
            }
            Some("cert-expiring") => {
                assert!(names.is_empty(), "{ctx}");
                let days = s.cert_days.get(id).copied();
                assert!(
                    matches!(days, Some(4..=5)),
                    "{ctx}: certificate days left {days:?}"
                );
            }
            Some("malformed") => {
                assert_eq!(names, ["monitor.cluster.collector.error"], "{ctx}");
                let collectors: std::collections::BTreeSet<_> = got
                    ["monitor.cluster.collector.error"]
                    .iter()
                    .filter_map(|l| l.tag("collector"))
                    .collect();
                for c in ["version", "nodes", "pods"] {
                    assert!(collectors.contains(c), "{ctx}: {collectors:?}");
                }
                assert!(code_is("200"), "{ctx}");
            }
            Some("unauthorized") => {
                assert_eq!(names, ["monitor.cluster.collector.error"], "{ctx}");
                assert!(code_is("401"), "{ctx}");
            }
            Some(other) => panic!("unexpected fault {other}"),
        }
    }

    // A fault set at run time shows up on the next checks.
    let healthy = ids[0].clone();
    fleet.set_faults(&healthy, &["degraded-node"]);
    let t_set = Instant::now();
    wait_until(
        "the run-time fault is reported",
        2 * Duration::from_secs(5) + SLACK,
        || {
            statsd
                .lines()
                .iter()
                .any(|l| {
                    l.name == "node.conditions" && l.resource() == Some(&healthy) && l.at > t_set
                })
                .then_some(())
        },
    );

    // Credentials: put one by hand too, then search everything.
    let token_file = dir.path().join("token");
    let hand_token = format!("e2e-hand-token-{}", std::process::id());
    std::fs::write(&token_file, &hand_token).unwrap();
    let ca_file = dir.path().join("ca.pem");
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&secrets_file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&ca_file, first["caBundle"].as_str().unwrap()).unwrap();
    let mut outputs = String::new();
    for args in [
        vec![
            "cluster",
            "put",
            "--store",
            &store,
            "--id",
            "hand",
            "--api-server",
            "https://127.0.0.1:1",
            "--token-file",
            token_file.to_str().unwrap(),
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--secrets-key-file",
            kf,
        ],
        vec![
            "cluster",
            "list",
            "--store",
            &store,
            "--secrets-key-file",
            kf,
        ],
        vec![
            "cluster",
            "list",
            "--store",
            &store,
            "--secrets-key-file",
            kf,
            "--output",
            "json",
        ],
        vec!["cluster", "list", "--store", &store, "--output", "json"],
        vec!["status", "--store", &store],
        vec!["status", "--store", &store, "--output", "json"],
        vec!["buckets", "--store", &store, "--output", "json"],
    ] {
        let (code, out, err) = clustermon(&args);
        assert_eq!(code, 0, "clustermon {args:?}: {err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    // `explain` of every cluster (healthy and failing, bearer and client
    // certificate): the stored document and the owner's view of it.
    for id in &ids {
        let (_, out, err) = clustermon(&["explain", id, "--store", &store]);
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    // Every admin API answer: Prometheus text, the status and monitor
    // APIs, the assignment, each cluster's explanation.
    let admin = admin_url_from_log(mons.get("m1")).expect("m1's admin URL");
    let mut answers = String::new();
    let mut paths: Vec<String> = [
        "/",
        "/metrics",
        "/api/status",
        "/api/monitor?limit=1000",
        "/debug/assignment",
        "/healthz/ready",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    paths.extend(ids.iter().map(|id| format!("/debug/clusters/{id}")));
    for path in &paths {
        let (code, body) = http_get(&format!("{admin}{path}")).expect("admin API answers");
        assert!(code == 200 || code == 503, "GET {path}: {code}");
        answers.push_str(&body);
    }
    assert!(
        answers.contains("apiserver") && answers.contains(ids[0].as_str()),
        "the admin answers hold the checks' results"
    );
    mons.get("m1").signal("TERM");
    let st = mons
        .get("m1")
        .wait_exit(Duration::from_secs(15))
        .expect("monitor exits");
    assert!(st.success());
    let fleet_log = fleet.proc.log_text();
    let mon_log = mons.get("m1").log_text();
    let metrics = statsd.raw();
    assert!(!mon_log.is_empty() && !metrics.is_empty());

    let mut secrets = vec![hand_token.clone(), key_b64.clone(), new_key_b64.clone()];
    for line in std::fs::read_to_string(&secrets_file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["token"].as_str() {
            secrets.push(t.to_string());
        }
        if let Some(k) = v["clientKey"].as_str() {
            // Every line of the key's base64 body.
            secrets.extend(
                k.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string),
            );
        }
    }
    assert!(secrets.len() > 20, "the search has material to look for");
    for (what, text) in [
        ("monitor log", &mon_log),
        ("fleetsim log", &fleet_log),
        ("statsd metrics", &metrics),
        ("command output", &outputs),
        ("admin API answers", &answers),
    ] {
        for sec in &secrets {
            assert!(
                !text.contains(sec.as_str()),
                "{what} contains credential material"
            );
        }
    }
    // Stored documents hold no plaintext either (encrypted at rest).
    let db = std::fs::read(dir.path().join("store.db")).unwrap_or_default();
    let mut wal = std::fs::read(dir.path().join("store.db-wal")).unwrap_or_default();
    wal.extend(db);
    let raw_db = String::from_utf8_lossy(&wal);
    for sec in &secrets {
        assert!(
            !raw_db.contains(sec.as_str()),
            "the store holds plaintext credentials"
        );
    }
    drop(dir);
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Peak resident memory of a process, from /proc (kB).
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A 5,000-node, 50,000-pod cluster is checked in pages: the monitor's peak
/// memory stays within a few MB of a monitor checking a 6-node cluster.
#[test]
fn a_huge_cluster_is_checked_in_bounded_memory() {
    let dir = TempDir::new("huge");
    let statsd = Statsd::start();
    let mut peaks = Vec::new();
    for (name, nodes, pods) in [("small", "6", "24"), ("huge", "5000", "50000")] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let store = format!("sqlite:{}", sub.join("store.db").display());
        let _fleet = Fleet::start(
            &sub,
            &store,
            &[
                "--clusters",
                "1",
                "--id-prefix",
                &format!("{name}-"),
                "--nodes",
                nodes,
                "--pods",
                pods,
                "--vanilla-every",
                "1",
            ],
        );
        let mut mons = Monitors::new(
            &sub,
            &store,
            &statsd,
            &["--interval", "10s", "--check-timeout", "120s"],
        );
        mons.start(name);
        let id = format!("{name}-00000");
        let t0 = Instant::now();
        wait_until(
            &format!("{id} checked completely"),
            Duration::from_secs(150),
            || {
                statsd
                    .lines()
                    .iter()
                    .any(|l| l.name == "monitor.cluster.duration" && l.resource() == Some(&id))
                    .then_some(())
            },
        );
        let took = t0.elapsed();
        let lines = statsd.lines();
        let workers = lines
            .iter()
            .find(|l| {
                l.name == "node.count"
                    && l.resource() == Some(&id)
                    && l.tag("role") == Some("worker")
            })
            .map(|l| l.value.clone());
        let want_workers = (nodes.parse::<u64>().unwrap() - 3).to_string();
        assert_eq!(
            workers.as_deref(),
            Some(want_workers.as_str()),
            "every node page was read"
        );
        let errors: Vec<_> = lines
            .iter()
            .filter(|l| l.name == "monitor.cluster.collector.error" && l.resource() == Some(&id))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let hwm = vm_hwm_kb(mons.get(name).pid()).expect("VmHWM");
        eprintln!("memory: {name} cluster ({nodes} nodes, {pods} pods) checked in {took:?}, monitor peak RSS {hwm} kB");
        peaks.push(hwm);
    }
    let extra_kb = peaks[1].saturating_sub(peaks[0]);
    assert!(
        extra_kb <= 16 * 1024,
        "checking the huge cluster cost {extra_kb} kB more peak memory than the small one"
    );
}

/// The Cosmos DB store's re-list interval in these tests (its change feed
/// carries no deletes: the re-list finds them).
const RELIST: Duration = Duration::from_secs(5);

/// A plain-http fleet and three (not yet started) monitors on the local
/// Cosmos DB endpoint, re-listing every `RELIST`.
fn setup_cosmos(name: &str) -> Setup {
    setup_on(
        name,
        Backend::Cosmos,
        &["--plain-http"],
        &["--relist-interval", "5s"],
    )
}

/// On the Cosmos DB store (the local emulator), three monitors share the
/// buckets evenly and check each cluster once per interval.
#[test]
fn on_cosmos_three_monitors_check_each_cluster_once_per_interval() {
    let mut s = setup_cosmos("cosmos-share");
    let settled = start_three(&mut s);
    each_cluster_checked_once_per_interval(&s, settled, 2, "cosmos schedule");
    drop(s.dir);
}

/// On the Cosmos DB store the checked set follows the store: a cluster put
/// is checked within a feed interval, and a deleted one (not in the feed)
/// is dropped by the re-list and no longer checked. One test for both: they
/// are the two halves of the cluster set following the store, each takes
/// seconds, and an emulator start costs more than either.
#[test]
fn on_cosmos_a_put_cluster_is_checked_and_a_deleted_one_is_dropped_by_the_relist() {
    let mut s = setup_cosmos("cosmos-feed");
    warm_up(&mut s);
    a_new_cluster_is_checked_within_a_feed_interval(&s, "cosmos new cluster");

    let gone = s.ids[10].clone();
    let (code, _, err) = clustermon(&["cluster", "delete", "--store", &s.store, "--id", &gone]);
    assert_eq!(code, 0, "cluster delete: {err}");
    let t_del = Instant::now();
    let dropped = wait_until(
        "cosmos: the re-list drops the deleted cluster",
        RELIST + FEED + SLACK,
        || {
            (s.statsd
                .counter_sum("monitor.changefeed.relist.dropped", &[])
                >= 1)
                .then(Instant::now)
        },
    );
    eprintln!(
        "cosmos re-list: deleted cluster dropped {:?} after the delete",
        dropped - t_del
    );
    let quiet_from = dropped + Duration::from_millis(500);
    let mut rest = others(&s.ids, &gone);
    rest.push("e2e-new".into());
    wait_checked(
        &s,
        &rest,
        quiet_from,
        1,
        INTERVAL + SLACK,
        "cosmos: every other cluster checked after the re-list",
    );
    let late: Vec<_> = s.statsd.check_times()[&gone]
        .iter()
        .filter(|t| **t > quiet_from)
        .map(|t| *t - t_del)
        .collect();
    assert!(
        late.is_empty(),
        "deleted cluster still checked at {late:?} after the delete"
    );
    drop(s.dir);
}

/// On the Cosmos DB store, store faults cost nothing but retries and
/// readiness: with 30% of data-plane requests (those that cost request
/// units) answered 429 for two intervals, the throttled requests are
/// retried and counted, no bucket moves and the checks stay on schedule;
/// with the store unavailable, readiness answers 503 naming the store and
/// the failing call (liveness stays 200), and 200 again once it answers.
/// One test for both: the two faults are injected one after the other
/// into one emulator, and readiness alone would not pay for a second start.
#[test]
fn on_cosmos_throttling_moves_no_bucket_and_an_outage_fails_readiness_until_the_store_answers() {
    let mut s = setup_cosmos("cosmos-faults");
    warm_up(&mut s);
    let emu = s.cosmos.as_ref().expect("cosmos");
    let before = buckets(&s.store).expect("buckets");
    let retried_before = s
        .statsd
        .counter_sum("monitor.store.retries", &[("reason", "throttled")]);
    emu.set_faults(serde_json::json!({
        "throttle_share": 0.3,
        "retry_after_ms": 50,
        "kinds": ["read", "create", "replace", "upsert", "delete", "query", "changefeed"],
    }));
    let t_thr = Instant::now();
    wait_checked(
        &s,
        &s.ids,
        t_thr,
        2,
        2 * INTERVAL + SLACK,
        "cosmos: checks go on while throttled",
    );
    let retried = s
        .statsd
        .counter_sum("monitor.store.retries", &[("reason", "throttled")])
        - retried_before;
    let after = buckets(&s.store).expect("buckets while throttled");
    emu.set_faults(serde_json::json!({"throttle_share": 0.0}));
    let end = Instant::now() - SLACK;
    eprintln!("cosmos throttling: {retried} requests retried after a 429 in two intervals");
    assert!(retried > 0, "throttled requests are retried and counted");
    assert_eq!(before, after, "no bucket moved while throttled");
    assert_coverage(&s, &s.ids, t_thr, end, INTERVAL + SLACK, "cosmos throttled");
    assert_no_double(&s, t_thr, end, "cosmos throttled");

    // Readiness follows the store: 503 (with the reason) while it is
    // unavailable, 200 again once it answers.
    let urls = admin_urls(&s.store);
    let url = format!("{}/healthz/ready", urls["m1"]);
    assert_eq!(http_get(&url).unwrap().0, 200, "ready before the outage");
    emu.set_faults(serde_json::json!({"unavailable": true, "kinds": null}));
    let t_down = Instant::now();
    let body = wait_until(
        "cosmos: readiness 503 while the store is down",
        HEARTBEAT * 3 + SLACK,
        || {
            http_get(&url)
                .ok()
                .filter(|(c, _)| *c == 503)
                .map(|(_, b)| b)
        },
    );
    eprintln!(
        "cosmos readiness: 503 after {:?}: {}",
        t_down.elapsed(),
        body.trim()
    );
    assert!(
        body.contains("store unreachable") && body.contains("heartbeat write"),
        "readiness names the store and the failing call: {body}"
    );
    assert_eq!(
        http_get(&format!("{}/healthz/live", urls["m1"])).unwrap().0,
        200
    );
    emu.set_faults(serde_json::json!({"unavailable": false}));
    let t_up = Instant::now();
    wait_until(
        "cosmos: ready again once the store answers",
        HEARTBEAT * 2 + SLACK,
        || http_get(&url).ok().filter(|(c, _)| *c == 200),
    );
    eprintln!(
        "cosmos readiness: 200 again {:?} after the store returned",
        t_up.elapsed()
    );
    eprintln!("cosmos emulator requests: {}", emu.stats());
    drop(s.dir);
}

/// On the Cosmos DB store, a crashed member's buckets are re-owned by the
/// survivors within the heartbeat TTL + two passes, with no gap.
#[test]
fn on_cosmos_a_crashed_member_is_replaced_without_a_gap() {
    let mut s = setup_cosmos("cosmos-crash");
    warm_up(&mut s);
    let ids = s.ids.clone();
    a_crashed_member_is_replaced_without_a_gap(&mut s, &ids, "cosmos member crash");
    let emu = s.cosmos.as_ref().expect("cosmos");
    eprintln!("cosmos emulator requests: {}", emu.stats());
    drop(s.dir);
}

/// `setup` on a plain-http fleet whose monitors want an admin token (in a
/// file in the test's directory); returns the token file's path too.
fn setup_with_admin_token(name: &str) -> (Setup, String) {
    let mut s = setup(name, &["--plain-http"]);
    let token_file = s.dir.path().join("admin-token");
    // Mid rotation (docs/runbook.md, step 1): the current token first (it
    // is sent), the next one accepted too.
    std::fs::write(
        &token_file,
        "e2e-admin-token-0123456789\ne2e-admin-token-next-0123456789\n",
    )
    .unwrap();
    let tok = token_file.to_str().unwrap().to_string();
    s.mons
        .extra
        .extend(["--admin-token-file".to_string(), tok.clone()]);
    (s, tok)
}

/// `clustermon drain ID --wait` with the CLI's token file, as arguments.
fn drain_wait<'a>(id: &'a str, store: &'a str, token_file: &'a str) -> [&'a str; 7] {
    [
        "drain",
        id,
        "--store",
        store,
        "--wait",
        "--admin-token-file",
        token_file,
    ]
}

/// `clustermon check ID` (run now on its owner) with the CLI's token file.
fn check_now(store: &str, id: &str, token_file: &str) -> (i32, String, String) {
    clustermon(&[
        "check",
        id,
        "--store",
        store,
        "--admin-token-file",
        token_file,
    ])
}

/// `explain` says why a cluster is or is not checked: unassigned before any
/// monitor runs; once checked, its live owner, last check and next due time
/// (JSON and text); a Creating cluster is not checked; an unknown id does
/// not exist.
#[test]
fn explain_says_why_a_cluster_is_or_is_not_checked() {
    let mut s = setup("explain", &["--plain-http"]);
    let target = s.fleet.clusters()[3]["url"].as_str().unwrap().to_string();
    let (code, _, err) = clustermon(&[
        "cluster",
        "put",
        "--store",
        &s.store,
        "--id",
        "e2e-creating",
        "--api-server",
        &target,
        "--state",
        "Creating",
    ]);
    assert_eq!(code, 0, "{err}");
    let store = s.store.clone();
    let explain = |id: &str| {
        clustermon_json(&["explain", id, "--store", &store]).expect("explain --output json")
    };

    // Before any monitor runs: the bucket is unassigned.
    let e = explain(&s.ids[0]);
    assert_eq!(e["checked"], false);
    assert!(e["reason"].as_str().unwrap().contains("unassigned"), "{e}");

    warm_up(&mut s);
    // The owner once it has checked the cluster itself (a bucket may have
    // moved while the three monitors started).
    let e = wait_until(
        "explain shows the owner's last check",
        INTERVAL + SLACK,
        || Some(explain(&s.ids[0])).filter(|e| e["last_check"].is_object()),
    );
    for k in [
        "id",
        "bucket",
        "owner",
        "owner_alive",
        "last_check",
        "next_due",
        "checked",
        "reason",
    ] {
        assert!(e.get(k).is_some(), "explain json has {k}: {e}");
    }
    assert_eq!(e["checked"], true, "{e}");
    assert_eq!(e["owner_alive"], true);
    assert!(e["reason"].is_null());
    assert!(e["last_check"]["started_ms"].as_i64().is_some(), "{e}");
    assert!(e["next_due"].as_i64().unwrap() > e["last_check"]["started_ms"].as_i64().unwrap());
    let e = explain("e2e-creating");
    assert_eq!(e["checked"], false);
    assert!(e["reason"].as_str().unwrap().contains("Creating"), "{e}");
    let e = explain("no-such-cluster");
    assert!(
        e["reason"].as_str().unwrap().contains("no such cluster"),
        "{e}"
    );
    let (code, out, _) = clustermon(&["explain", &s.ids[0], "--store", &s.store]);
    assert_eq!(code, 0);
    assert!(out.contains("checked:     yes"), "{out}");
    drop(s.dir);
}

/// The admin API of monitors given a token refuses a call without it
/// (`drain`: 401) and runs one with it (`check`: the cluster checked now).
#[test]
fn the_admin_api_refuses_a_call_without_the_token_and_runs_one_with_it() {
    let (mut s, tok) = setup_with_admin_token("admin-token");
    warm_up(&mut s);
    let (code, _, err) = clustermon(&["drain", "m2", "--store", &s.store]);
    assert_eq!(code, 1, "drain without the token must fail");
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = check_now(&s.store, &s.ids[1], &tok);
    assert_eq!(code, 0, "check now: {out}{err}");
    assert!(out.contains(": ok"), "{out}");
    // The monitors' file lists two tokens: the second alone is accepted
    // too; a third is not.
    for (token, want) in [
        ("e2e-admin-token-next-0123456789", 0),
        ("e2e-admin-token-other-0123456", 1),
    ] {
        let f = s.dir.path().join("cli-token");
        std::fs::write(&f, format!("{token}\n")).unwrap();
        let (code, out, err) = check_now(&s.store, &s.ids[1], f.to_str().unwrap());
        assert_eq!(code, want, "check now with {token}: {out}{err}");
    }
    // The monitors' pushed assignments, sent with the file's first token,
    // were taken.
    let ok = s
        .statsd
        .counter_sum("monitor.sync.sent", &[("result", "ok")]);
    let refused = s
        .statsd
        .counter_sum("monitor.sync.sent", &[("result", "refused")]);
    assert!(
        ok >= 1 && refused == 0,
        "pushes: {ok} ok, {refused} refused"
    );
    drop(s.dir);
}

/// Written as a mounted Secret changes: a new file renamed over the old.
fn replace_file(path: &std::path::Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Secret files change under a running monitor and take effect without a
/// restart (`--secrets-reload-interval 1s`): a credentials key its fleet
/// was sealed with (every check failed before, every cluster answers 200
/// after), a new admin token (the old one refused from then on); a token
/// file that does not parse is refused and shown in `/metrics` while the
/// last good token stays; SIGHUP reads the files at once and does not end
/// the process; no log line quotes a key or a token.
#[test]
fn secret_files_take_effect_without_a_restart_and_a_bad_one_is_refused() {
    use base64::Engine as _;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let (k_old, k_new) = ([0x5au8; 32], [0xa5u8; 32]);
    let keys = TempDir::new("secret-reload-keys");
    let fleet_key = keys.path().join("fleet.key");
    std::fs::write(&fleet_key, b64(&k_new)).unwrap();
    // A TLS fleet: every document's credentials (its CA bundle with them)
    // sealed with the new key.
    let mut s = setup(
        "secret-reload",
        &["--secrets-key-file", fleet_key.to_str().unwrap()],
    );
    let mon_key = s.dir.path().join("monitor.key");
    std::fs::write(&mon_key, b64(&k_old)).unwrap();
    let token_file = s.dir.path().join("admin-token");
    let (tok_a, tok_b) = (
        "e2e-reload-token-a-0123456789",
        "e2e-reload-token-b-0123456789",
    );
    std::fs::write(&token_file, format!("{tok_a}\n")).unwrap();
    s.mons.extra.extend(
        [
            "--secrets-key-file",
            mon_key.to_str().unwrap(),
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--secrets-reload-interval",
            "1s",
        ]
        .map(String::from),
    );
    s.mons.start("m1");

    // The monitor's key opens nothing: every cluster's check fails on its
    // credentials.
    let failing = |from: Instant| {
        s.statsd
            .lines()
            .iter()
            .filter(|l| l.at >= from && l.name == "monitor.cluster.collector.error")
            .filter(|l| l.tag("collector") == Some("credentials"))
            .filter_map(|l| l.resource().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let t0 = Instant::now();
    wait_until(
        "every check fails on credentials with the old key",
        2 * INTERVAL + SLACK,
        || (failing(t0).len() == s.ids.len()).then_some(()),
    );

    // The new key in the monitor's file: every cluster answers 200 within
    // a reload and an interval, the process the same.
    let t_key = Instant::now();
    replace_file(&mon_key, b64(&k_new).as_bytes());
    let answered = |from: Instant| {
        s.statsd
            .lines()
            .iter()
            .filter(|l| l.at >= from && l.name == "apiserver.healthz.code" && l.value == "200")
            .filter_map(|l| l.resource().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
    };
    wait_until(
        "every cluster answers 200 after the key file changed",
        Duration::from_secs(1) + INTERVAL + SLACK,
        || (answered(t_key).len() == s.ids.len()).then_some(()),
    );
    eprintln!(
        "secret reload: every cluster answered 200 {:?} after the key file changed",
        t_key.elapsed()
    );
    // Checks that started before the reload may still end on credentials;
    // none starts after it.
    let reloaded_at = Instant::now();
    wait_checked(
        &s,
        &s.ids,
        reloaded_at,
        1,
        INTERVAL + SLACK,
        "checks after the key reload",
    );
    assert!(
        failing(reloaded_at + SLACK).is_empty(),
        "no credentials failure once the new key is in effect"
    );

    // The admin token: A accepted, then B alone once the file says so.
    let cli_token = |name: &str, t: &str| {
        let f = s.dir.path().join(name);
        std::fs::write(&f, format!("{t}\n")).unwrap();
        f.to_str().unwrap().to_string()
    };
    let (cli_a, cli_b) = (cli_token("cli-a", tok_a), cli_token("cli-b", tok_b));
    let check_with = |f: &str| {
        let (code, out, err) = check_now(&s.store, &s.ids[1], f);
        (code, format!("{out}{err}"))
    };
    let (code, out) = check_with(&cli_a);
    assert_eq!(code, 0, "check now with the token in effect: {out}");
    replace_file(&token_file, format!("{tok_b}\n").as_bytes());
    wait_until(
        "the new admin token accepted and the old refused",
        Duration::from_secs(5),
        || {
            let (b, _) = check_with(&cli_b);
            let (a, out_a) = check_with(&cli_a);
            (b == 0 && a == 1 && out_a.contains("401")).then_some(())
        },
    );

    // A token file that does not parse: refused, shown, B still in effect.
    let bad = "e2e-short-9z";
    replace_file(&token_file, format!("{bad}\n").as_bytes());
    let url = admin_url_from_log(s.mons.get("m1")).expect("m1's admin URL");
    let refused = || {
        let (_, body) = http_get(&format!("{url}/metrics")).ok()?;
        body.lines()
            .find(|l| {
                l.starts_with("clustermon_monitor_secrets_refused{")
                    && l.contains("file=\"admin-token-file\"")
            })
            .map(|l| l.ends_with(" 1"))
    };
    wait_until(
        "/metrics shows the refused token file",
        Duration::from_secs(5),
        || refused().filter(|r| *r).map(|_| ()),
    );
    let (code, out) = check_with(&cli_b);
    assert_eq!(code, 0, "the last good token stays in effect: {out}");

    // SIGHUP: read at once, and the process goes on.
    s.mons.get("m1").signal("HUP");
    wait_until("SIGHUP logged as a reload", Duration::from_secs(5), || {
        s.mons
            .get("m1")
            .log_text()
            .contains("reloading secret files (signal)")
            .then_some(())
    });
    let m1 = s.mons.get("m1");
    assert!(
        m1.child.try_wait().unwrap().is_none(),
        "m1 still runs after SIGHUP"
    );
    let log = m1.log_text();
    assert_eq!(
        log.matches("monitor starting").count(),
        1,
        "one start, no restart"
    );
    assert!(log.contains("secret file reloaded"), "reloads are logged");
    assert!(log.contains("secret file refused"), "the refusal is logged");
    for secret in [tok_a, tok_b, bad, &b64(&k_old), &b64(&k_new)] {
        assert!(
            !log.contains(secret),
            "the log quotes a secret file's content"
        );
    }
    drop(keys);
    drop(s.dir);
}

/// A CA and a certificate for 127.0.0.1 it issued, made with openssl in
/// `dir`: (CA file, certificate file, key file).
fn admin_certificate(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let p = |n: &str| {
        dir.join(format!("{name}-{n}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let (ca, ca_key, cert, key, csr, ext) = (
        p("admin-ca.pem"),
        p("admin-ca.key"),
        p("admin.pem"),
        p("admin.key"),
        p("admin.csr"),
        p("admin.ext"),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=e2e-admin-ca",
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=clustermon-admin",
    ]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (ca, cert, key)
}

/// The admin API over HTTPS (`--admin-tls-cert-file`, `--admin-ca-file`):
/// every monitor advertises an https:// URL; `check` and `status` (the
/// fleet-wide view a monitor gathers from its peers) work with the CA; a
/// client without it, and plain HTTP, get nothing. Then a CA rotation
/// without a restart (`--secrets-reload-interval 1s`): the monitors' CA
/// file becomes both CAs, their certificate one from the new CA; the CLI
/// trusting the new CA alone is answered, the old alone is not, and
/// `drain --wait` hands over with every push between the monitors taken.
#[test]
fn the_admin_api_over_https_serves_the_runbook_commands_and_the_peers() {
    let (mut s, tok) = setup_with_admin_token("admin-https");
    let dir = s.dir.path().to_path_buf();
    let (ca1, cert1, key1) = admin_certificate(&dir, "first");
    let (ca2, cert2, key2) = admin_certificate(&dir, "second");
    let (mon_ca, mon_cert, mon_key) = (
        dir.join("mon-ca.pem"),
        dir.join("mon.pem"),
        dir.join("mon.key"),
    );
    for (from, to) in [(&ca1, &mon_ca), (&cert1, &mon_cert), (&key1, &mon_key)] {
        std::fs::copy(from, to).unwrap();
    }
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_string();
    s.mons.extra.extend([
        "--admin-tls-cert-file".to_string(),
        arg(&mon_cert),
        "--admin-tls-key-file".to_string(),
        arg(&mon_key),
        "--admin-ca-file".to_string(),
        arg(&mon_ca),
        "--secrets-reload-interval".to_string(),
        "1s".to_string(),
    ]);
    warm_up(&mut s);
    let urls = admin_urls(&s.store);
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert!(
        urls.values().all(|u| u.starts_with("https://127.0.0.1:")),
        "{urls:?}"
    );
    let plain = urls["m1"].replacen("https://", "http://", 1);
    assert!(
        !matches!(http_get(&format!("{plain}/healthz/live")), Ok((200, _))),
        "plain HTTP gets no answer"
    );

    let with_ca = |ca: &str, args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--admin-ca-file", ca]);
        clustermon(&a)
    };
    let check = |ca: &str| {
        with_ca(
            ca,
            &[
                "check",
                &s.ids[1],
                "--store",
                &s.store,
                "--admin-token-file",
                &tok,
            ],
        )
    };
    let (code, out, err) = check(&ca1);
    assert_eq!(code, 0, "check over HTTPS: {out}{err}");
    assert!(out.contains(": ok"), "{out}");
    let (code, out, err) = check_now(&s.store, &s.ids[1], &tok);
    assert_eq!(
        code, 1,
        "without the CA the monitor's certificate is not trusted: {out}{err}"
    );

    let status = wait_until("status gathers the failing view over HTTPS", SLACK, || {
        let (code, out, _) = with_ca(&ca1, &["status", "--store", &s.store, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == 0 && v["gathered_by"].is_string()).then_some(v)
    });
    // The answering monitor asked its two peers over HTTPS: three reports.
    let reports = status["failing"]["monitors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        reports.len() == 3 && reports.iter().all(|m| m["ok"] == true),
        "every monitor's report came: {status}"
    );

    // The CA rotation: both CAs trusted first, then the new certificate.
    let reloaded = |file: &str| {
        s.statsd
            .counter_sum("monitor.secrets.reloaded", &[("file", file)])
    };
    let pem = |p: &str| std::fs::read_to_string(p).unwrap();
    replace_file(&mon_ca, format!("{}{}", pem(&ca1), pem(&ca2)).as_bytes());
    wait_until(
        "every monitor trusts both CAs",
        Duration::from_secs(5),
        || (reloaded("admin-ca-file") >= 3).then_some(()),
    );
    replace_file(&mon_cert, pem(&cert2).as_bytes());
    replace_file(&mon_key, pem(&key2).as_bytes());
    wait_until(
        "every monitor serves the new certificate",
        Duration::from_secs(5),
        || (reloaded("admin-tls-cert-file") >= 3).then_some(()),
    );
    let (code, out, err) = check(&ca2);
    assert_eq!(code, 0, "check trusting the new CA: {out}{err}");
    let (code, out, err) = check(&ca1);
    assert_eq!(
        code, 1,
        "the old CA alone is not trusted any more: {out}{err}"
    );

    let (code, out, err) = with_ca(&ca2, &drain_wait("m2", &s.store, &tok));
    assert_eq!(code, 0, "drain --wait over HTTPS: {out}{err}");
    let owners = buckets(&s.store).unwrap();
    assert!(
        balanced(&owners, &["m1", "m3"]),
        "m2's buckets went to m1 and m3"
    );
    let sent = |r: &str| s.statsd.counter_sum("monitor.sync.sent", &[("result", r)]);
    let (ok, refused, failed) = (sent("ok"), sent("refused"), sent("failed"));
    assert!(
        ok >= 1 && refused == 0 && failed == 0,
        "pushed assignments over HTTPS, across the rotation: {ok} ok, {refused} refused, {failed} failed"
    );
    drop(s.dir);
}

/// `drain --wait` while checks run: the drained monitor's buckets move to
/// the others, evenly, with a timed handoff: no cluster has a gap or is
/// checked twice; the drained monitor stays up and live.
#[test]
fn a_drained_monitor_hands_its_buckets_over_with_no_gap_or_duplicate_and_stays_up() {
    drain_hands_over("drain", &[]);
}

/// As above with a 250 ms handoff notice (`--handoff-notice`): the pushed
/// assignment (`POST /admin/sync`, the fleet's token) reaches the monitors
/// that gain buckets before the handoff time, so the short notice still
/// leaves no gap and no double.
#[test]
fn a_drain_with_a_250ms_handoff_notice_and_pushed_assignments_has_no_gap_or_duplicate() {
    drain_hands_over("drain-short-notice", &["--handoff-notice", "250ms"]);
}

fn drain_hands_over(name: &str, extra: &[&str]) {
    let (mut s, tok) = setup_with_admin_token(name);
    s.mons.extra.extend(extra.iter().map(|a| a.to_string()));
    // Each check's due time, to tell a new cluster's check "at once" from
    // one on its grid.
    s.mons.log = "info,clustermon_core::schedule=debug".into();
    warm_up(&mut s);
    let urls = admin_urls(&s.store);
    let before = buckets(&s.store).unwrap();
    let target = s.fleet.clusters()[7]["url"].as_str().unwrap().to_string();
    let pace = if extra.is_empty() {
        Duration::from_millis(25)
    } else {
        Duration::ZERO
    };
    let t_drain = Instant::now();
    // Clusters are created one after another for as long as the drain
    // runs: those of m2's buckets are created while their bucket is handed
    // over, which m2 and the new owner see at different times.
    let ((code, out, err), created) = std::thread::scope(|sc| {
        let drain = sc.spawn(|| clustermon(&drain_wait("m2", &s.store, &tok)));
        let mut created = Vec::new();
        while !drain.is_finished() {
            let id = format!("{name}-new-{}", created.len());
            put_cluster(&s.store, &id, &target);
            created.push(id);
            // Pacing, not waiting on a condition: ~100 clusters over the
            // default 4 s notice; a short notice gets them as fast as
            // `cluster put` runs (~40 in 250 ms), so that some land in
            // moving buckets.
            std::thread::sleep(pace);
        }
        (drain.join().expect("drain thread"), created)
    });
    assert_eq!(code, 0, "drain --wait: {out}{err}");
    eprintln!(
        "drain: --wait returned after {:?}; {} clusters created meanwhile",
        t_drain.elapsed(),
        created.len()
    );
    wait_checked(
        &s,
        &s.ids,
        Instant::now(),
        2,
        2 * INTERVAL + SLACK,
        "drain: checks go on after the drain",
    );
    wait_checked(
        &s,
        &created,
        t_drain,
        3,
        3 * INTERVAL + SLACK,
        "drain: clusters created during the drain are checked",
    );
    created_during_a_handoff_are_checked_once(&s, &created, &before);
    let end = Instant::now() - SLACK;
    let times = s.statsd.check_times();
    let gaps = s
        .ids
        .iter()
        .filter(|id| {
            worst_gap(&times, std::slice::from_ref(id), t_drain - INTERVAL, end).0
                > INTERVAL + SLACK
        })
        .count();
    let doubles = s
        .ids
        .iter()
        .filter(|id| {
            let mut one = std::collections::BTreeMap::new();
            one.insert((*id).clone(), times.get(*id).cloned().unwrap_or_default());
            closest_pair(&one, t_drain - INTERVAL, end)
                .is_some_and(|(d, _)| d < INTERVAL - Duration::from_secs(1))
        })
        .count();
    eprintln!("drain of m2: {gaps} clusters with a gap, {doubles} checked twice");
    assert_coverage(
        &s,
        &s.ids,
        t_drain - INTERVAL,
        end,
        INTERVAL + SLACK,
        "drain",
    );
    // The fleet's clusters; the new ones' first check at once may precede
    // their grid slot by any amount (checked above).
    assert_no_double_of(&s, &s.ids, t_drain - INTERVAL, end, "drain");
    assert_eq!((gaps, doubles), (0, 0));
    assert!(
        s.mons.get("m2").wait_exit(Duration::ZERO).is_none(),
        "a drained monitor stays up"
    );
    let (code, body) = http_get(&format!("{}/healthz/live", urls["m2"])).unwrap();
    assert_eq!(code, 200, "{body}");
    drop(s.dir);
}

/// docs/monitoring.md (*Handoffs*): a cluster created while its bucket is
/// handed over is not checked "at once" by both owners; it waits for its
/// grid slot, which exactly one of them owns. From the monitors' logs
/// (each check's due time): no cluster of `created` has more than one check
/// off its grid (its check at once), no grid slot is run twice, and some of
/// them were created in buckets that moved (m2's), else the case was not met.
fn created_during_a_handoff_are_checked_once(
    s: &Setup,
    created: &[String],
    before: &[Option<String>],
) {
    let interval_ms = INTERVAL.as_millis() as i64;
    let mut checks: std::collections::BTreeMap<&str, Vec<(LoggedCheck, &str)>> = Default::default();
    for (m, p) in &s.mons.procs {
        for c in logged_checks(&p.log_text()) {
            if let Some(id) = created.iter().find(|id| **id == c.cluster) {
                checks.entry(id.as_str()).or_default().push((c, m.as_str()));
            }
        }
    }
    let mut moved = 0;
    for id in created {
        let e = clustermon_json(&["explain", id, "--store", &s.store]).expect("explain");
        let bucket = e["bucket"].as_u64().expect("a bucket") as usize;
        if before[bucket].as_deref() == Some("m2") {
            moved += 1;
        }
        let mine = checks.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let phase = phase_ms(id, interval_ms);
        let off: Vec<_> = mine
            .iter()
            .filter(|(c, _)| (c.due_ms - phase).rem_euclid(interval_ms) != 0)
            .collect();
        assert!(
            off.len() <= 1,
            "{id} (bucket {bucket}) checked off its grid more than once, \
             by two owners each taking it as new: {off:?}"
        );
        let mut dues: Vec<i64> = mine.iter().map(|(c, _)| c.due_ms).collect();
        dues.sort();
        assert!(
            dues.windows(2).all(|w| w[0] != w[1]),
            "{id}: one due time run twice: {mine:?}"
        );
        assert!(mine.len() >= 3, "{id}: its checks are logged: {mine:?}");
    }
    eprintln!(
        "drain: {} clusters created during the drain, {moved} in buckets that moved: \
         each checked off its grid at most once",
        created.len()
    );
    assert!(
        moved >= 1,
        "no cluster created in a moving bucket: the handoff rule was not tested"
    );
}
