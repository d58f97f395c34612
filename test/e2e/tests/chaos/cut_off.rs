//! One monitor cut off from the store while the others still reach it: m3
//! talks to PostgreSQL through a forwarder the test owns, which stops
//! relaying for 30 s (connections stay open, nothing passes: a network
//! partition) and then closes every connection from before.
//!
//! docs/monitoring.md, *Guarantees and their bounds*, "monitor cut off from
//! the store while others are not": its buckets move after its TTL; no
//! cluster goes longer than an interval without a check; duplicates only
//! from its TTL until the table the lease holder wrote and pushed to it
//! (`POST /admin/sync`, which it reaches) is applied, a pass later: it
//! stops checking the buckets taken from it, where in an outage of the
//! whole store nobody writes a table and checking on is right. Readiness
//! names the store; once the store is back it rejoins through a handoff.

use super::super::*;
use std::collections::BTreeMap;

const CUT: Duration = Duration::from_secs(30);

/// The port of a `postgres://…@127.0.0.1:PORT/…` URL.
fn port_of(url: &str) -> u16 {
    let rest = url.split("@127.0.0.1:").nth(1).expect("a 127.0.0.1 URL");
    rest.split('/').next().unwrap().parse().expect("a port")
}

#[test]
fn a_monitor_cut_off_from_the_store_hands_over_after_its_ttl_and_rejoins() {
    let mut s = setup_on("chaos-cut-off", Backend::Postgres, &["--plain-http"], &[]);
    let port = port_of(&s.store);
    let fwd = Forwarder::start(([127, 0, 0, 1], port).into());
    let m3_store = s
        .store
        .replace(&format!("127.0.0.1:{port}"), &fwd.addr.to_string());

    // m1 first, so that it holds the lease: the cut one is a member.
    warm_up_with_m3(&mut s, |mons| mons.start_on("m3", &m3_store, &[], &[]));
    let store = s.store.clone();
    let urls = admin_urls(&store);
    let m3_url: BTreeMap<String, String> = urls
        .iter()
        .filter(|(id, _)| *id == "m3")
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    assert_eq!(m3_url.len(), 1, "m3's admin URL: {urls:?}");
    // A real Prometheus scrapes the three monitors with the shipped rules
    // (deploy/prometheus/clustermon-rules.yaml): the cut shows as an alert
    // on clustermon itself.
    let prom = Prometheus::scraping(s.dir.path(), urls.values());
    let m3_instance = instance(&urls["m3"]);
    let before = buckets(&store).expect("bucket table");
    let m3_had = before.iter().filter(|o| o.as_deref() == Some("m3")).count();
    let bucket_of = cluster_buckets(&store);
    let m3_clusters: Vec<String> = s
        .ids
        .iter()
        .filter(|id| owned_by(&bucket_of, &before, id, "m3"))
        .cloned()
        .collect();

    let t_cut = fwd.cut();
    let mut v = Verdict::default();

    // Readiness: 503 naming the store within two heartbeat intervals.
    let bound_503 = 2 * HEARTBEAT + SLACK;
    match poll_ready(&m3_url, 503, t_cut, bound_503) {
        Ok(got) => {
            let (took, body) = &got["m3"];
            eprintln!(
                "cut off: m3 not ready {took:?} after the cut: {}",
                body.trim()
            );
            v.check(
                body.contains("store"),
                format!("m3's 503 names the store: {body:?}"),
            );
        }
        Err(last) => v.check(
            false,
            format!("m3 not 503 within {bound_503:?} of the cut: {last:?}"),
        ),
    }

    // Its buckets move after its TTL: its last heartbeat was written at
    // most one interval before the cut, and peers count the TTL from when
    // they saw it; then within two passes.
    let moved = wait_until(
        "m3's buckets re-owned by m1 and m2",
        HEARTBEAT_TTL + 2 * HEARTBEAT + SLACK,
        || {
            buckets(&store)
                .filter(|o| balanced(o, &["m1", "m2"]))
                .map(|_| Instant::now())
        },
    );
    let took = moved - t_cut;
    eprintln!("cut off: m3's {m3_had} buckets re-owned {took:?} after the cut");
    let not_before = HEARTBEAT_TTL - HEARTBEAT - Duration::from_millis(500);
    v.check(
        took >= not_before,
        format!(
            "m3's buckets moved {took:?} after the cut, before its TTL (bound >= {not_before:?})"
        ),
    );

    // The lease holder pushed the new table to m3, which reaches its admin
    // API: m3 applies it in the pass the push starts, whose store calls
    // end at their bound (a heartbeat interval); one more if a pass was
    // under way.
    let applied = wait_until(
        "m3 applied the pushed table",
        (moved + 2 * HEARTBEAT + SLACK).saturating_duration_since(Instant::now()),
        || {
            (s.statsd
                .counter_sum("monitor.sync.applied", &[("monitor", "m3")])
                > 0)
            .then(Instant::now)
        },
    );
    eprintln!(
        "cut off: m3 applied the pushed table {:?} after its buckets moved",
        applied - moved
    );
    // Prometheus: ClustermonCutOffFromStore fires for m3 (a scrape and an
    // evaluation after the apply), for nobody else; m3's store alert is
    // pending (its `for` is 2 minutes, longer than the cut).
    let fired = wait_for(Duration::from_secs(10), || {
        prom.alerts().iter().any(|(a, i, st)| {
            a == "ClustermonCutOffFromStore" && *i == m3_instance && st == "firing"
        })
    });
    let alerts = prom.alerts();
    eprintln!(
        "cut off: Prometheus alerts {:?} after the apply: {alerts:?}",
        applied.elapsed()
    );
    v.check(
        fired,
        format!("Prometheus fires ClustermonCutOffFromStore for m3 ({m3_instance}) within 10 s of the apply: {alerts:?}"),
    );
    v.check(
        !alerts
            .iter()
            .any(|(a, i, _)| a == "ClustermonCutOffFromStore" && *i != m3_instance),
        format!("ClustermonCutOffFromStore only for m3: {alerts:?}"),
    );
    v.check(
        alerts
            .iter()
            .any(|(a, i, _)| a == "ClustermonStoreUnreachable" && *i == m3_instance),
        format!("ClustermonStoreUnreachable pending or firing for m3: {alerts:?}"),
    );

    // A partition of fixed length: sleeping for it is the point.
    std::thread::sleep((t_cut + CUT).saturating_duration_since(Instant::now()));
    let t_mend = fwd.mend();

    // It rejoins through a handoff, ready again.
    let rejoined = wait_until("m1..m3 balanced again", HEARTBEAT_TTL + SLACK * 3, || {
        buckets(&store)
            .filter(|o| balanced(o, &["m1", "m2", "m3"]))
            .map(|_| Instant::now())
    });
    eprintln!(
        "cut off: m3 balanced in again {:?} after the store was back",
        rejoined - t_mend
    );
    if let Err(last) = poll_ready(&m3_url, 200, t_mend, HEARTBEAT_TTL + SLACK) {
        v.check(false, format!("m3 ready again after the cut: {last:?}"));
    }

    // Coverage and duplicates, up to two intervals after the rejoin.
    let to = rejoined + 2 * INTERVAL;
    let limit = (to + INTERVAL + SLACK).saturating_duration_since(Instant::now());
    wait_checked(&s, &s.ids, to, 1, limit, "checks after the rejoin");
    let times = s.statsd.check_times();
    let (gap, id) = worst_gap(&times, &s.ids, t_cut, to);
    let bound_gap = INTERVAL + Duration::from_secs(1);
    v.check(
        gap <= bound_gap,
        format!("worst gap from the cut to 2 intervals after the rejoin {gap:?} ({id}), bound {bound_gap:?}"),
    );
    let bound_dup = INTERVAL - Duration::from_secs(1);
    // Before the peers could take m3's buckets, and from one pass after the
    // store was back (m3 reads the new table) on: no two checks closer
    // than an interval.
    for (from, until, what) in [
        (t_cut, t_cut + not_before, "before m3's TTL"),
        (applied, t_mend, "once m3 applied the pushed table"),
        (
            t_mend + HEARTBEAT + SLACK,
            to,
            "after m3 reached the store again",
        ),
    ] {
        match closest_pair(&times, from, until) {
            Some((d, id)) => v.check(
                d >= bound_dup,
                format!("closest two checks of one cluster {what}: {d:?} ({id}), bound >= {bound_dup:?}"),
            ),
            // A window shorter than an interval may hold no pair at all.
            None => eprintln!("cut off: no two checks of one cluster {what}"),
        }
    }
    // Clusters checked twice within an interval while m3 was cut off.
    let doubled_ids: Vec<&String> = times
        .iter()
        .filter(|(_, ts)| {
            ts.windows(2).any(|w| {
                w[0] >= t_cut && w[1] <= t_mend + HEARTBEAT + SLACK && w[1] - w[0] < bound_dup
            })
        })
        .map(|(id, _)| id)
        .collect();
    let doubled = doubled_ids.len();
    // Duplicates: only m3's clusters due between the table's write and
    // m3's apply of the pushed table (both checked them), and a cluster
    // whose catch-up was followed by its grid slot. The holder's catch-up
    // starts from the due time m3's last probe answer said it had handled
    // everything before, not from m3's last heartbeat (which moved every
    // cluster due in the half interval before the take-over too: 64–75 of
    // ~100 before the answer carried it).
    let doubled_m3 = doubled_ids
        .iter()
        .filter(|id| m3_clusters.contains(id))
        .count();
    eprintln!(
        "cut off: worst gap {gap:?}; {doubled} of {} clusters checked twice within an interval while m3 was cut off, {doubled_m3} of m3's {} (m3 had {m3_had} of 256 buckets)",
        s.ids.len(),
        m3_clusters.len()
    );
    v.check(
        doubled == doubled_m3,
        format!("only m3's clusters checked twice: {doubled} in all, {doubled_m3} of m3's"),
    );
    // The catch-up starts at the due time of m3's last answer, which
    // counts while at most two heartbeat intervals old.
    let window = applied - moved + 2 * HEARTBEAT;
    let bound_doubled = (m3_clusters.len() as f64 * window.as_secs_f64() / INTERVAL.as_secs_f64())
        .ceil() as usize
        + 3;
    v.check(
        doubled_m3 <= bound_doubled,
        format!("{doubled_m3} of m3's {} clusters checked twice, bound {bound_doubled} (those due within the {window:?} from the take-over to the apply, and the answer's greatest age, two heartbeat intervals)", m3_clusters.len()),
    );
    let skipped = s.statsd.counter_sum("monitor.checks.skipped", &[]);
    v.check(skipped == 0, format!("checks skipped: {skipped}"));
    for (id, p) in &s.mons.procs {
        v.check(
            !p.log_text().contains("panicked"),
            format!("{id} did not panic"),
        );
    }
    v.finish("monitor cut off from the store");
    drop(prom);
    drop(fwd);
    drop(s.dir);
}
