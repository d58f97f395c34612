//! Hostile API servers: fleetsim's `endless-body`, `slowloris`,
//! `redirect-loop` and `tls-reset` clusters next to healthy ones. Each
//! hostile cluster's checks end as failures within `--check-timeout` (the
//! fast ones much sooner) with a short reason, the monitor's memory stays
//! bounded (the 8 MiB body cap holds for a chunked endless body), no
//! redirect is followed, and the healthy clusters keep their cadence.

use std::collections::BTreeMap;

use super::super::*;

const INTERVAL: Duration = Duration::from_secs(4);
const TIMEOUT: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(30);
const PER_KIND: usize = 3;
const CLUSTERS: usize = 24;
/// Peak RSS (VmHWM) allowed for the monitor: 3 endless bodies at once are
/// 24 MiB of capped buffers over a ~15 MB baseline.
const MAX_HWM_KB: u64 = 100 * 1024;

/// Fault kind, the `apiserver.healthz.code` it must give, a piece of the
/// check's summary, and the longest a check of it may take.
const HOSTILE: [(&str, &str, &str, Duration); 4] = [
    // Ended by the body cap, not the timeout (reading 8 MiB takes well
    // under a second on loopback; the bound leaves room for a loaded CI).
    ("endless-body", "0", "larger than", TIMEOUT),
    // Ended by the deadline: one byte per 300 ms never completes a head.
    ("slowloris", "0", "timed out", TIMEOUT),
    (
        "redirect-loop",
        "302",
        "redirect not followed",
        Duration::from_secs(1),
    ),
    ("tls-reset", "0", "reset", Duration::from_secs(1)),
];

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn hostile_api_servers_fail_their_own_checks_only() {
    let dir = TempDir::new("hostile");
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let statsd = Statsd::start();
    let mut args: Vec<String> = [
        "--clusters",
        &CLUSTERS.to_string(),
        "--slowloris-every",
        "300ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (kind, ..) in HOSTILE {
        args.push("--fault".into());
        args.push(format!("{kind}={PER_KIND}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let fleet = Fleet::start(dir.path(), &store, &argv);
    let mut kind_of: BTreeMap<String, Option<String>> = BTreeMap::new();
    for c in fleet.clusters() {
        let kind = c["faults"]
            .as_array()
            .and_then(|f| f.first())
            .and_then(|f| f.as_str())
            .map(str::to_string);
        kind_of.insert(c["id"].as_str().unwrap().to_string(), kind);
    }
    let healthy: Vec<String> = kind_of
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(healthy.len(), CLUSTERS - HOSTILE.len() * PER_KIND);
    let ids: Vec<String> = kind_of.keys().cloned().collect();

    let mut mons = Monitors::new(
        dir.path(),
        &store,
        &statsd,
        &["--interval", "4s", "--check-timeout", "2s"],
    );
    mons.start("m1");
    let pid = mons.get("m1").pid();
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
    let from = Instant::now();
    let first_fds = open_fds(pid);
    let mut max_fds = 0;
    while from.elapsed() < RUN {
        max_fds = max_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let to = Instant::now();
    assert!(
        mons.get("m1").child.try_wait().unwrap().is_none(),
        "the monitor is still running: {}",
        mons.get("m1").log_text()
    );
    let hwm = vm_hwm_kb(pid).expect("VmHWM");

    // Per cluster: healthz codes, and (result, ms) of every check in the run.
    let lines = statsd.lines();
    let mut codes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut checks: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.at >= from && l.at <= to) {
        let Some(id) = l.resource() else { continue };
        match l.name.as_str() {
            "apiserver.healthz.code" => codes.entry(id).or_default().push(&l.value),
            "monitor.check.duration" => checks
                .entry(id)
                .or_default()
                .push((l.tag("result").unwrap_or("?"), l.value.parse().unwrap())),
            _ => {}
        }
    }
    let admin = admin_urls(&store)["m1"].clone();
    let min_checks = (RUN.as_secs() / INTERVAL.as_secs()) as usize - 1;
    for (kind, code, why, longest) in HOSTILE {
        let mut took: Vec<u64> = Vec::new();
        for (id, _) in kind_of.iter().filter(|(_, k)| k.as_deref() == Some(kind)) {
            let ctx = format!("{kind} cluster {id}");
            let c = codes.get(id.as_str()).cloned().unwrap_or_default();
            let r = checks.get(id.as_str()).cloned().unwrap_or_default();
            assert!(
                r.len() >= min_checks,
                "{ctx}: {} checks in {RUN:?}",
                r.len()
            );
            assert!(c.iter().all(|v| *v == code), "{ctx}: healthz codes {c:?}");
            assert!(
                r.iter().all(|(res, _)| *res == "failed"),
                "{ctx}: a failed check, ended by the checker itself: {r:?}"
            );
            let worst = r.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
            assert!(
                worst <= (longest + Duration::from_millis(300)).as_millis() as u64,
                "{ctx}: a check took {worst} ms (bound {longest:?})"
            );
            took.extend(r.iter().map(|(_, ms)| *ms));
            let v = http("GET", &format!("{admin}/debug/clusters/{id}"), None).unwrap();
            let summary = v["last_check"]["summary"].as_str().unwrap_or_default();
            assert!(summary.contains(why), "{ctx}: summary {summary:?}");
            assert!(summary.len() < 160, "{ctx}: a short reason: {summary:?}");
            eprintln!("hostile: {ctx}: {summary}");
        }
        took.sort_unstable();
        eprintln!(
            "hostile: {kind}: {} checks, duration min/median/max {}/{}/{} ms",
            took.len(),
            took[0],
            took[took.len() / 2],
            took[took.len() - 1]
        );
        if kind == "slowloris" {
            assert!(
                took[0] + 100 >= TIMEOUT.as_millis() as u64,
                "slowloris checks last until the deadline: {took:?}"
            );
        }
    }

    // Healthy clusters: all fine, on time.
    for id in &healthy {
        let c = codes.get(id.as_str()).cloned().unwrap_or_default();
        let r = checks.get(id.as_str()).cloned().unwrap_or_default();
        assert!(c.iter().all(|v| *v == "200"), "{id}: healthz {c:?}");
        assert!(r.iter().all(|(res, _)| *res == "ok"), "{id}: {r:?}");
    }
    let (gap, worst) = worst_gap(&statsd.check_times(), &healthy, from, to);
    eprintln!("hostile: healthy worst gap {gap:?} ({worst}); monitor VmHWM {hwm} kB, open fds at most {max_fds} ({first_fds} at the start)");
    assert!(
        gap <= INTERVAL + Duration::from_secs(1),
        "healthy clusters keep their cadence: worst gap {gap:?} for {worst}"
    );
    assert!(hwm < MAX_HWM_KB, "monitor peak RSS {hwm} kB");
    // docs/monitoring.md: no connection outlives its check, so open
    // sockets stay within the checks that can be in flight (one connection
    // each for healthz: at most one per cluster here). A connection leaked
    // per hostile check would add ~80 over the run.
    assert!(
        max_fds <= first_fds + CLUSTERS,
        "open fds at most {max_fds}, {first_fds} at the start of the run: \
         more than one per cluster in flight ({CLUSTERS})"
    );
    let log = mons.get("m1").log_text();
    assert!(!log.contains("panicked"), "no panic: {log}");
}
