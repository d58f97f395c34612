//! Crash failover in seconds: the lease holder probes a peer whose
//! heartbeat is late (`GET /healthz/live`); a refused connection proves the
//! process gone and its buckets move at once, pushed to the new owners
//! (`POST /admin/sync`). The others probe a lease holder whose renewals are
//! late the same way. A timeout proves nothing (a paused process still
//! accepts connections): `a_paused_master_is_replaced_and_does_not_double_check`
//! shows that SIGSTOP still waits for the TTL.

use super::super::*;
use std::collections::BTreeMap;

/// kill -9 of a member, then of the master: re-owned within 3 s (a pass to
/// notice the late heartbeat, a probe, a write, a push) plus the harness's
/// slack; every cluster checked again within an interval plus that.
#[test]
fn a_killed_monitor_is_replaced_within_seconds() {
    let mut s = setup("fast-failover", &["--plain-http"]);
    let settled = start_three(&mut s);
    wait_checked(
        &s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "warm-up",
    );
    let store = s.store.clone();
    let bound = Duration::from_secs(3);

    // A member.
    let master0 = master(&store).expect("a master");
    let victim = a_member(&store);
    let rest: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != victim)
        .collect();
    let owners = buckets(&store).expect("bucket table");
    let bucket_of = cluster_buckets(&store);
    // A real Prometheus with the shipped rules: the kill shows as
    // ClustermonMonitorDown for the victim (pending: `for` 2 m).
    let urls = admin_urls(&store);
    let prom = Prometheus::scraping(s.dir.path(), urls.values());
    let victim_instance = instance(&urls[&victim]);
    let t_kill = Instant::now();
    s.mons.get(&victim).crash();
    wait_until("the member's buckets re-owned", bound + SLACK, || {
        buckets(&store).filter(|o| balanced(o, &rest))
    });
    let took = t_kill.elapsed();
    eprintln!("kill -9 of a member: re-owned after {took:?} (bound {bound:?} + slack {SLACK:?})");
    let down = wait_for(Duration::from_secs(10), || {
        prom.alerts()
            .iter()
            .any(|(a, i, _)| a == "ClustermonMonitorDown" && *i == victim_instance)
    });
    let alerts = prom.alerts();
    eprintln!(
        "kill -9 of a member: Prometheus alerts {:?} after the kill: {alerts:?}",
        t_kill.elapsed()
    );
    assert!(
        down && alerts.iter().all(|(a, i, _)| a != "ClustermonMonitorDown" || *i == victim_instance),
        "Prometheus raises ClustermonMonitorDown for the killed member ({victim_instance}) only: {alerts:?}"
    );
    drop(prom);
    let end = covered_after(
        &s,
        &s.ids,
        t_kill,
        INTERVAL + SLACK,
        INTERVAL + bound + SLACK,
        "member crash",
    );
    only_the_dead_owners_clusters_double(
        &s,
        &bucket_of,
        &owners,
        &victim,
        t_kill,
        took,
        end,
        "kill -9 of a member",
    );

    // The master.
    let last: Vec<&str> = rest.iter().copied().filter(|m| *m != master0).collect();
    let owners = buckets(&store).expect("bucket table");
    let t_kill = Instant::now();
    s.mons.get(&master0).crash();
    let new_master = wait_until("a new master", bound + SLACK, || {
        master(&store).filter(|m| *m != master0)
    });
    let took_master = t_kill.elapsed();
    wait_until("the master's buckets re-owned", bound + SLACK, || {
        buckets(&store).filter(|o| balanced(o, &last))
    });
    let took = t_kill.elapsed();
    eprintln!(
        "kill -9 of the master: {new_master} master after {took_master:?}, re-owned after {took:?} (bound {bound:?} + slack {SLACK:?})"
    );
    let end = covered_after(
        &s,
        &s.ids,
        t_kill,
        INTERVAL + SLACK,
        INTERVAL + bound + SLACK,
        "master crash",
    );
    only_the_dead_owners_clusters_double(
        &s,
        &bucket_of,
        &owners,
        &master0,
        t_kill,
        took,
        end,
        "kill -9 of the master",
    );
    let probes = s
        .statsd
        .counter_sum("monitor.peer.probes", &[("outcome", "refused")]);
    assert!(probes >= 2, "two refused probes counted: {probes}");
    let pushed = s
        .statsd
        .counter_sum("monitor.sync.sent", &[("result", "ok")]);
    assert!(pushed >= 1, "pushed assignments counted: {pushed}");
    drop(s.dir);
}

/// kill -9 of a member whose advertised admin URL accepts connections and
/// never answers (a listener the test holds and never serves: as a lost
/// host or a URL its peers cannot use): the probes time out, which proves
/// nothing, so the heartbeat TTL decides (docs/monitoring.md, guarantees:
/// "TTL + 2 passes = 14 s when its host is gone or its URL unreachable").
/// Re-owned no sooner than the TTL less one heartbeat interval (its last
/// heartbeat was written at most that long before the kill), within TTL +
/// 2 passes; every cluster checked within an interval + that; no probe
/// counted as refused.
#[test]
fn a_killed_monitor_whose_admin_url_never_answers_is_replaced_at_its_ttl() {
    let mut s = setup("ttl-failover", &["--plain-http"]);
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_url = format!("http://{}", mute.local_addr().unwrap());
    let store = s.store.clone();
    warm_up_with_m3(&mut s, |mons| {
        mons.start_with("m3", &[], &["--admin-advertise", &mute_url])
    });
    let refused0 = s
        .statsd
        .counter_sum("monitor.peer.probes", &[("outcome", "refused")]);

    let owners = buckets(&store).expect("bucket table");
    let bucket_of = cluster_buckets(&store);
    let t_kill = Instant::now();
    s.mons.get("m3").crash();
    let bound = HEARTBEAT_TTL + 2 * HEARTBEAT;
    let moved = wait_until("m3's buckets re-owned", bound + SLACK, || {
        buckets(&store)
            .filter(|o| balanced(o, &["m1", "m2"]))
            .map(|_| Instant::now())
    });
    let took = moved - t_kill;
    let not_before = HEARTBEAT_TTL - HEARTBEAT - Duration::from_millis(500);
    let timeouts = s
        .statsd
        .counter_sum("monitor.peer.probes", &[("outcome", "timeout")]);
    let refused = s
        .statsd
        .counter_sum("monitor.peer.probes", &[("outcome", "refused")])
        - refused0;
    eprintln!(
        "kill -9 behind a mute admin URL: re-owned after {took:?} (bounds {not_before:?}..{bound:?} + slack {SLACK:?}); probes: {timeouts} timed out, {refused} refused"
    );
    assert!(
        took >= not_before,
        "re-owned {took:?} after the kill, before the TTL (bound >= {not_before:?}): a probe that timed out was taken as proof"
    );
    assert!(timeouts >= 1, "the probes of m3 timed out: {timeouts}");
    assert_eq!(refused, 0, "no probe of m3 was refused");
    let end = covered_after(
        &s,
        &s.ids,
        t_kill,
        INTERVAL + SLACK,
        INTERVAL + bound + SLACK,
        "TTL failover",
    );
    only_the_dead_owners_clusters_double(
        &s,
        &bucket_of,
        &owners,
        "m3",
        t_kill,
        took,
        end,
        "kill -9 behind a mute URL",
    );
    drop(mute);
    drop(s.dir);
}

/// Duplicates after a crash (docs/monitoring.md, guarantees: at most the
/// checks the dead owner made after its last heartbeat as last observed,
/// < 2 heartbeat intervals' worth). The new owners catch up, at once, the
/// latest check due since that heartbeat: only a cluster of the dead owner
/// with a due time from 2 heartbeat intervals before the kill to the
/// take-over (`took` after it) may be checked twice within an interval (a
/// duplicate, or a late catch-up followed by its grid slot), the second
/// check after the kill; no other cluster.
#[allow(clippy::too_many_arguments)]
fn only_the_dead_owners_clusters_double(
    s: &Setup,
    bucket_of: &BTreeMap<String, usize>,
    owners: &[Option<String>],
    victim: &str,
    t_kill: Instant,
    took: Duration,
    end: Instant,
    what: &str,
) {
    let interval_ms = INTERVAL.as_millis() as i64;
    let (from_ms, to_ms) = (
        unix_ms(t_kill) - 2 * HEARTBEAT.as_millis() as i64 - 500,
        unix_ms(t_kill + took) + 500,
    );
    let may_double = |id: &str| {
        let owned = owned_by(bucket_of, owners, id, victim);
        let phase = phase_ms(id, interval_ms);
        let first_due = from_ms + (phase - from_ms).rem_euclid(interval_ms);
        owned && first_due <= to_ms
    };
    let times = s.statsd.check_times();
    let close = INTERVAL - Duration::from_secs(1);
    let pairs = |id: &String| -> Vec<Duration> {
        times.get(id).map_or(Vec::new(), |ts| {
            ts.windows(2)
                .filter(|w| w[1] >= t_kill && w[1] <= end)
                .map(|w| w[1] - w[0])
                .collect()
        })
    };
    let doubled: Vec<&String> = s
        .ids
        .iter()
        .filter(|id| pairs(id).iter().any(|d| *d < close))
        .collect();
    let allowed = s.ids.iter().filter(|id| may_double(id)).count();
    let victims = s
        .ids
        .iter()
        .filter(|id| owned_by(bucket_of, owners, id, victim))
        .count();
    eprintln!(
        "{what}: {} clusters checked twice within {close:?}, of {allowed} that may be (due in the catch-up window), of the dead owner's {victims}",
        doubled.len()
    );
    let wrong: Vec<String> = doubled
        .iter()
        .filter(|id| !may_double(id))
        .map(|id| {
            let at: Vec<String> = times[*id]
                .iter()
                .filter(|t| **t + INTERVAL >= t_kill && **t <= end)
                .map(|t| {
                    let after = t.saturating_duration_since(t_kill).as_secs_f64();
                    let before = t_kill.saturating_duration_since(*t).as_secs_f64();
                    format!("{:+.2}", after - before)
                })
                .collect();
            let owner = bucket_of.get(*id).and_then(|b| owners[*b].clone());
            format!("{id} (owner {owner:?}, checks at {at:?} s from the kill)")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: clusters checked twice within {close:?} outside the dead owner's catch-up window: {wrong:?}"
    );
}
