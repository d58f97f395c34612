//! End-to-end scenarios of the core engine (issue 2): three monitors, 300
//! simulated clusters, a 10s interval, real processes on one SQLite file.
//! Bounds come from the flags' defaults: heartbeat 2s, heartbeat TTL 10s,
//! lease TTL 10s, feed 2s. `SLACK` absorbs process start-up and UDP
//! delivery on a loaded 2-core CI machine; each assertion names its bound.

use std::time::{Duration, Instant};

use clustermon_e2e::*;

const INTERVAL: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
const LEASE_TTL: Duration = Duration::from_secs(10);
const FEED: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(2);
const CLUSTERS: usize = 300;

struct Setup {
    dir: TempDir,
    store: String,
    statsd: Statsd,
    fleet: Fleet,
    ids: Vec<String>,
    mons: Monitors,
}

fn setup(name: &str, fleet_args: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
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
    let mons = Monitors::new(dir.path(), &store, &statsd, &["--interval", "10s"]);
    Setup {
        dir,
        store,
        statsd,
        fleet,
        ids,
        mons,
    }
}

/// Scenario 1: within 15s all 256 buckets are owned, loads differ by at
/// most 1, and there is one master.
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
    eprintln!("scenario 1: balanced after {owned_after:?}");
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
    wait_until(what, limit, || {
        let t = s.statsd.check_times();
        ids.iter()
            .all(|id| {
                t.get(id)
                    .is_some_and(|v| v.iter().filter(|x| **x >= since).count() >= n)
            })
            .then_some(())
    });
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

fn others(ids: &[String], but: &str) -> Vec<String> {
    ids.iter().filter(|i| *i != but).cloned().collect()
}

/// Scenarios 1, 2, 6 and 7 on a plain-http fleet.
#[test]
fn share_schedule_feed_and_join() {
    let mut s = setup("share", &["--plain-http"]);
    let settled = start_three(&mut s);

    // 2. every cluster checked within one interval, then once per interval.
    wait_checked(
        &s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "every cluster checked once",
    );
    wait_checked(
        &s,
        &s.ids,
        settled,
        3,
        3 * INTERVAL + SLACK,
        "every cluster checked 3 times since the buckets settled",
    );
    let end = Instant::now() - SLACK;
    assert_coverage(&s, &s.ids, settled, end, INTERVAL + SLACK, "scenario 2");
    assert_no_double(&s, settled, end, "scenario 2");

    // 6. a new cluster is checked within feed interval + 1s of its creation.
    let target = s.fleet.clusters()[7]["url"].as_str().unwrap().to_string();
    let t_put = Instant::now();
    let (code, _, err) = clustermon(&[
        "cluster",
        "put",
        "--store",
        &s.store,
        "--id",
        "e2e-new",
        "--api-server",
        &target,
    ]);
    assert_eq!(code, 0, "cluster put: {err}");
    let first = wait_until(
        "the new cluster is checked",
        FEED + Duration::from_secs(1) + SLACK,
        || {
            s.statsd
                .check_times()
                .get("e2e-new")
                .and_then(|v| v.first().copied())
        },
    );
    let delay = first - t_put;
    eprintln!("scenario 6: new cluster checked {delay:?} after `cluster put` started");
    assert!(delay <= FEED + Duration::from_secs(1) + Duration::from_millis(500));

    // ... and a deleted one is no longer checked after feed interval + 1s.
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

    // 7. a fourth monitor joins: at most ceil(256/4) buckets move, without a
    // gap or a duplicate check.
    let before = buckets(&s.store).unwrap();
    let t_join = Instant::now();
    s.mons.start("m4");
    let store = s.store.clone();
    let after = wait_until("m1..m4 balanced", HEARTBEAT_TTL + SLACK * 3, || {
        buckets(&store).filter(|o| balanced(o, &["m1", "m2", "m3", "m4"]))
    });
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    eprintln!(
        "scenario 7: {moved} buckets moved, balanced after {:?}",
        t_join.elapsed()
    );
    assert!(moved <= 64, "{moved} buckets moved on a join (bound 64)");
    wait_checked(
        &s,
        &rest,
        Instant::now(),
        2,
        2 * INTERVAL + SLACK,
        "every cluster checked twice after the join",
    );
    let end = Instant::now() - SLACK;
    let mut live = rest.clone();
    live.push("e2e-new".into());
    assert_coverage(&s, &live, t_join, end, INTERVAL + SLACK, "scenario 7");
    assert_no_double(&s, t_join, end, "scenario 7");
    drop(s.dir);
}

/// Scenarios 3 and 4: kill -9 a member, then the master (TLS fleet, full checks).
#[test]
fn crash_of_a_member_then_of_the_master() {
    let mut s = setup("crash", &[]);
    let settled = start_three(&mut s);
    wait_checked(
        &s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "warm-up",
    );
    let master0 = master(&s.store).expect("a master");
    let victim = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != master0)
        .unwrap()
        .to_string();
    let survivors: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != victim)
        .collect();

    // 3. a non-master crashes: survivors own its buckets within TTL + two passes.
    let bound3 = HEARTBEAT_TTL + 2 * HEARTBEAT;
    let t_kill = Instant::now();
    s.mons.get(&victim).crash();
    let store = s.store.clone();
    wait_until("survivors own every bucket", bound3 + SLACK, || {
        buckets(&store).filter(|o| balanced(o, &survivors))
    });
    let took = t_kill.elapsed();
    eprintln!("scenario 3: {victim}'s buckets re-owned after {took:?} (bound {bound3:?})");
    wait_checked(
        &s,
        &s.ids,
        Instant::now(),
        1,
        INTERVAL + SLACK,
        "checks after the crash",
    );
    let end = Instant::now() - SLACK;
    assert_coverage(
        &s,
        &s.ids,
        t_kill,
        end,
        INTERVAL + bound3 + SLACK,
        "scenario 3",
    );

    // 4. the master crashes: a new master within lease TTL + one pass.
    let bound4 = LEASE_TTL + HEARTBEAT;
    let t_kill = Instant::now();
    s.mons.get(&master0).crash();
    let last: Vec<&str> = survivors
        .iter()
        .copied()
        .filter(|m| *m != master0)
        .collect();
    let new_master = wait_until("a new master", bound4 + SLACK, || {
        master(&store).filter(|m| *m != master0)
    });
    let took = t_kill.elapsed();
    eprintln!("scenario 4: {new_master} is master after {took:?} (bound {bound4:?})");
    assert_eq!(vec![new_master.as_str()], last);
    wait_until(
        "the survivor owns every bucket",
        HEARTBEAT_TTL + 2 * HEARTBEAT + SLACK,
        || buckets(&store).filter(|o| balanced(o, &last)),
    );
    wait_checked(
        &s,
        &s.ids,
        Instant::now(),
        1,
        INTERVAL + SLACK,
        "checks after the master crash",
    );
    let end = Instant::now() - SLACK;
    assert_coverage(
        &s,
        &s.ids,
        t_kill,
        end,
        INTERVAL + bound3 + SLACK,
        "scenario 4",
    );
    drop(s.dir);
}

/// Scenario 5: SIGTERM the master: exit 0 within the grace period, buckets
/// move within two heartbeat intervals, no gap and no duplicate.
#[test]
fn graceful_stop_hands_over() {
    let mut s = setup("graceful", &[]);
    let settled = start_three(&mut s);
    wait_checked(
        &s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "warm-up",
    );
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
        "scenario 5: buckets moved after {moved_after:?}, exit {status} after {exit_after:?}"
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

    wait_checked(
        &s,
        &s.ids,
        Instant::now(),
        1,
        INTERVAL + SLACK,
        "checks after the handoff",
    );
    let end = Instant::now() - SLACK;
    assert_coverage(
        &s,
        &s.ids,
        t_term,
        end,
        INTERVAL + 2 * HEARTBEAT + SLACK,
        "scenario 5",
    );
    assert_no_double(&s, t_term - INTERVAL, end, "scenario 5");
    let new_master = master(&s.store).expect("a master after the handoff");
    assert!(stay.contains(&new_master.as_str()));
    drop(s.dir);
}
