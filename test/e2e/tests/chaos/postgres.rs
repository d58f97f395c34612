//! The PostgreSQL store, on a private server started by
//! `hack/postgres/start.sh`: the scenarios SQLite and Cosmos DB run (three
//! monitors share, a new cluster, deletes through the feed, a crash, a
//! drain), the server stopped for a minute, and a restart that drops the
//! monitors' LISTEN connections (polling covers until they are back).

use super::super::*;
use super::store_outage::{outage_never_stops_the_checks, Fault, OUTAGE};

/// `cluster put` of a new cluster on fleet server `k`: the delay to its first check.
fn put_and_time_first_check(s: &Setup, id: &str, k: usize, limit: Duration) -> Duration {
    let target = s.fleet.clusters()[k]["url"].as_str().unwrap().to_string();
    let t_put = Instant::now();
    put_cluster(&s.store, id, &target);
    let first = wait_until(&format!("{id} is checked"), limit, || {
        s.statsd
            .check_times()
            .get(id)
            .and_then(|v| v.first().copied())
    });
    first - t_put
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn postgres_store_share_new_clusters_deletes_crash_and_drain() {
    let mut s = setup_on("pg-share", Backend::Postgres, &["--plain-http"], &[]);
    let settled = start_three(&mut s);
    each_cluster_checked_once_per_interval(
        &s,
        settled,
        2,
        "postgres: each cluster once per interval",
    );
    a_new_cluster_is_checked_within_a_feed_interval(&s, "postgres: a new cluster");

    // Steady state: store transactions and server CPU per monitor per second.
    let pg = s.postgres.as_ref().expect("postgres");
    let (c0, cpu0, t0) = (pg.commits(), pg.cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let (c1, cpu1, dt) = (pg.commits(), pg.cpu_seconds(), t0.elapsed().as_secs_f64());
    eprintln!(
        "postgres steady state, 3 monitors, {} clusters: {:.1} transactions/s ({:.2} per monitor), server CPU {:.2}% of a core ({:.3}% per monitor)",
        s.ids.len(),
        (c1 - c0) as f64 / dt,
        (c1 - c0) as f64 / dt / 3.0,
        (cpu1 - cpu0) / dt * 100.0,
        (cpu1 - cpu0) / dt * 100.0 / 3.0
    );

    // Deletes are in the feed (a tombstone row, pushed by NOTIFY): the
    // deleted cluster is not checked after the delete has been read.
    let gone = s.ids[10].clone();
    let (code, _, err) = clustermon(&["cluster", "delete", "--store", &s.store, "--id", &gone]);
    assert_eq!(code, 0, "cluster delete: {err}");
    let t_del = Instant::now();
    let quiet_from = t_del + Duration::from_secs(1);
    let mut rest = others(&s.ids, &gone);
    rest.push("e2e-new".into());
    wait_checked(
        &s,
        &rest,
        quiet_from,
        1,
        INTERVAL + SLACK,
        "postgres: every other cluster checked after the delete",
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

    // A non-master crashes: the survivors take its buckets.
    let (_, survivors, _) =
        a_crashed_member_is_replaced_without_a_gap(&mut s, &rest, "postgres: a crashed member");

    // Drain one survivor: the other owns everything, no gap, no double.
    let (drained, keeper) = (survivors[0], survivors[1]);
    let t_drain = Instant::now();
    let (code, out, err) = clustermon(&["drain", drained, "--store", &s.store, "--wait"]);
    assert_eq!(code, 0, "drain --wait: {out}{err}");
    eprintln!(
        "postgres drain: {drained} drained after {:?}",
        t_drain.elapsed()
    );
    let owners = buckets(&s.store).unwrap();
    assert!(balanced(&owners, &[keeper]), "{keeper} owns every bucket");
    let end = covered_after(
        &s,
        &rest,
        t_drain,
        INTERVAL + SLACK,
        INTERVAL + SLACK,
        "postgres drain",
    );
    assert_no_double_of(&s, &rest, t_drain, end, "postgres drain");
    drop(s.dir);
}

/// The server is stopped (fast shutdown: every session cut).
struct PostgresStopped<'a> {
    pg: &'a PostgresServer,
    outage: Duration,
    since: Option<Instant>,
}

impl Fault for PostgresStopped<'_> {
    fn begin(&mut self) -> Instant {
        let at = self.pg.stop();
        self.since = Some(at);
        at
    }
    fn end(&mut self) -> Instant {
        // A fault of fixed length: sleeping for it is the point.
        let until = self.since.expect("begun") + self.outage;
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        self.pg.resume()
    }
}

#[test]
fn a_stopped_postgres_server_never_stops_the_checks() {
    let mut s = setup_on("pg-stopped", Backend::Postgres, &["--plain-http"], &[]);
    warm_up(&mut s);
    let pg = s.postgres.as_ref().expect("postgres");
    let mut fault = PostgresStopped {
        pg,
        outage: OUTAGE,
        since: None,
    };
    outage_never_stops_the_checks(&s, &mut fault, OUTAGE, "postgres stopped");
    // The stores came back without a restart of any monitor: a new cluster
    // is still picked up.
    let d = put_and_time_first_check(
        &s,
        "pg-after-outage",
        3,
        FEED + Duration::from_secs(1) + SLACK,
    );
    eprintln!("postgres stopped: a cluster put after the outage checked {d:?} later");
    drop(s.dir);
}

/// A restart of the server cuts the LISTEN connections; each monitor's feed
/// polls at `--feed-interval` (5 s here, so the two are told apart) until
/// its listener is back (back-off up to 5 s). Measured: new cluster to first
/// check with NOTIFY, right after the restart, and once LISTEN is back.
#[test]
fn a_postgres_restart_drops_listen_and_polling_covers_until_it_is_back() {
    const FEED5: Duration = Duration::from_secs(5);
    let mut s = setup_on(
        "pg-listen",
        Backend::Postgres,
        &["--plain-http"],
        &["--feed-interval", "5s"],
    );
    warm_up(&mut s);
    let pg = s.postgres.as_ref().expect("postgres");
    wait_until("three monitors LISTEN", Duration::from_secs(10), || {
        (pg.listeners() == 3).then_some(())
    });
    let bound_push = Duration::from_secs(1);
    let bound_poll = FEED5 + Duration::from_secs(1) + SLACK;

    let mut pushed: Vec<Duration> = (0..5)
        .map(|i| put_and_time_first_check(&s, &format!("pg-push-{i}"), 20 + i, bound_poll))
        .collect();
    let push_med = median(&mut pushed);
    eprintln!("postgres LISTEN up: new cluster to first check {pushed:?} (median {push_med:?})");

    // Down for 12 s: each listener's back-off reaches its 5 s cap, so
    // LISTEN returns up to 5 s after the server does.
    let t_down = pg.stop();
    std::thread::sleep(Duration::from_secs(12));
    let t_up = pg.resume();
    let listeners_at_put = pg.listeners();
    let d_down = put_and_time_first_check(&s, "pg-while-down", 30, bound_poll);
    eprintln!(
        "postgres restart ({:?} down): {listeners_at_put} of 3 monitors listening when a cluster was put; first check {d_down:?} later (bound {bound_poll:?})",
        t_up - t_down
    );
    let back = wait_until(
        "every monitor LISTENs again",
        Duration::from_secs(10),
        || (pg.listeners() == 3).then(Instant::now),
    );
    eprintln!(
        "postgres restart: LISTEN back on all 3 monitors {:?} after the server",
        back - t_up
    );

    let mut after: Vec<Duration> = (0..5)
        .map(|i| put_and_time_first_check(&s, &format!("pg-push-again-{i}"), 40 + i, bound_poll))
        .collect();
    let after_med = median(&mut after);
    eprintln!("postgres LISTEN back: new cluster to first check {after:?} (median {after_med:?})");

    assert!(
        push_med <= bound_push,
        "with NOTIFY, median {push_med:?} (bound {bound_push:?})"
    );
    assert!(
        after_med <= bound_push,
        "after LISTEN is back, median {after_med:?} (bound {bound_push:?})"
    );
    assert!(
        d_down <= bound_poll,
        "while LISTEN is down, polling covers: {d_down:?} (bound {bound_poll:?})"
    );
    for (id, p) in &s.mons.procs {
        let log = p.log_text();
        assert!(
            log.contains("LISTEN connection lost"),
            "{id} logged the lost LISTEN connection"
        );
        assert!(!log.contains("panicked"), "{id} did not panic");
    }
    drop(s.dir);
}
