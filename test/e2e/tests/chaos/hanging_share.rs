//! A regional outage: half the fleet's API servers accept
//! connections and never answer (fleetsim's `slow` fault, from outside the
//! monitor). Once their first checks have timed out, their checks hold at
//! most `--hanging-share` of the pool, the clusters that answer keep their
//! cadence, and none of them is skipped for want of a worker.

#[allow(unused_imports)]
use super::super::*;

const INTERVAL: Duration = Duration::from_secs(2);
const CLUSTERS: usize = 40;
const HANGING: usize = 20;
const POOL: usize = 8;
/// 50% of the pool.
const SHARE: u64 = 4;
const WINDOW: Duration = Duration::from_secs(12);

/// The value of a Prometheus series on `/metrics` (the first line whose
/// name, and label text when given, match).
fn prom(admin: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let (_, body) = http_get(&format!("{admin}/metrics")).ok()?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            n == name && label.is_none_or(|want| labels.contains(want))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn hanging_clusters_hold_their_share_and_the_others_keep_their_cadence() {
    let dir = TempDir::new("hanging-share");
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let statsd = Statsd::start();
    let (n, hang) = (CLUSTERS.to_string(), format!("slow={HANGING}"));
    let fleet = Fleet::start(
        dir.path(),
        &store,
        &[
            "--clusters",
            &n,
            "--plain-http",
            "--fault",
            &hang,
            "--slow-delay",
            "600s",
        ],
    );
    let healthy: Vec<String> = fleet
        .clusters()
        .iter()
        .filter(|c| c["faults"].as_array().is_none_or(|f| f.is_empty()))
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(healthy.len(), CLUSTERS - HANGING);
    let pool = POOL.to_string();
    let mut mons = Monitors::new(
        dir.path(),
        &store,
        &statsd,
        &[
            "--interval",
            "2s",
            "--check-timeout",
            "3s",
            "--max-concurrent-checks",
            &pool,
            "--hanging-share",
            "50",
        ],
    );
    mons.start("m1");
    let admin = wait_until("the admin URL", Duration::from_secs(30), || {
        admin_urls(&store).get("m1").cloned()
    });
    // Warm-up: every hanging cluster's first check has timed out.
    wait_until(
        "every hanging cluster known",
        Duration::from_secs(60),
        || {
            (prom(&admin, "clustermon_monitor_checks_hanging", None)? >= HANGING as f64)
                .then_some(())
        },
    );
    let skipped = |reason: &str| {
        prom(
            &admin,
            "clustermon_monitor_checks_skipped_total",
            Some(&format!("reason=\"{reason}\"")),
        )
        .unwrap_or(0.0)
    };
    let (full0, share0) = (skipped("pool_full"), skipped("hanging_share"));
    let from = Instant::now();
    let mut most = 0.0f64;
    while from.elapsed() < WINDOW {
        if let Some(v) = prom(&admin, "clustermon_monitor_checks_inflight_hanging", None) {
            most = most.max(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let to = Instant::now();
    let (full1, share1) = (skipped("pool_full"), skipped("hanging_share"));
    eprintln!(
        "hanging share: at most {most} hanging checks at once, pool_full +{}, hanging_share +{}",
        full1 - full0,
        share1 - share0
    );
    assert!(
        most <= SHARE as f64,
        "hanging checks at once: {most} (share {SHARE} of {POOL})"
    );
    assert!(most >= 1.0, "the hanging checks did run: {most}");
    assert_eq!(full1 - full0, 0.0, "no check waited for a worker");
    assert!(
        share1 > share0,
        "hanging checks beyond the share are skipped and counted"
    );
    // Every answering cluster: a check at least every interval (+1 s of
    // delivery and scheduling slack) through the window.
    let times = statsd.check_times();
    for id in &healthy {
        let mut t: Vec<Instant> = times
            .get(id)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|t| *t >= from && *t <= to)
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        assert!(t.len() >= 5, "{id}: {} checks in {WINDOW:?}", t.len());
        for w in t.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap <= INTERVAL + Duration::from_secs(1),
                "{id}: gap {gap:?}"
            );
        }
    }
}
