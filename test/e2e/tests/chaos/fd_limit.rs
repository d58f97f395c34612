//! A low file-descriptor limit: the monitor runs under
//! `ulimit -n 512` against 1,000 API servers that never answer (fleetsim's
//! `slow` fault), so every check holds its socket until `--check-timeout`.
//! The default pool (5,000 checks x 1 socket + the reserve) does not fit:
//! the monitor says so, runs a smaller pool, never runs out of file
//! descriptors, and keeps serving its admin API and heartbeating.

use std::process::{Command, Stdio};

use super::super::*;

const LIMIT: u64 = 512;
const HANGING: usize = 1000;
/// `LIMIT` - `clustermon::cli::FD_RESERVE` (80) at one socket per check.
const POOL: usize = 432;
const RUN: Duration = Duration::from_secs(40);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_low_fd_limit_shrinks_the_pool_and_keeps_the_monitor_serving() {
    let dir = TempDir::new("fd-limit");
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let statsd = Statsd::start();
    let n = HANGING.to_string();
    let fault = format!("slow={HANGING}");
    // fleetsim keeps the normal limit.
    let _fleet = Fleet::start(
        dir.path(),
        &store,
        &["--clusters", &n, "--fault", &fault, "--slow-delay", "300s"],
    );

    let exe = bin("clustermon");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""),
        exe.to_str().unwrap(),
        "run",
        "--store",
        &store,
        "--statsd",
        &statsd.target(),
        "--id",
        "m1",
        "--admin-listen",
        "127.0.0.1:0",
        "--interval",
        "10s",
        "--check-timeout",
        "20s",
        "--collectors",
        "healthz",
    ])
    .env("RUST_LOG", "info")
    .stdout(Stdio::null());
    let mut mon = Proc::spawn("m1", &mut cmd, dir.path());
    let pid = mon.pid();

    let admin = wait_until("the monitor's admin URL", Duration::from_secs(20), || {
        admin_urls(&store).remove("m1")
    });
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string();
    assert!(
        nofile.split_whitespace().nth(3) == Some(&LIMIT.to_string()),
        "the monitor runs under the limit: {nofile}"
    );
    let log = mon.log_text();
    assert!(
        log.contains(&format!("running at most {POOL} checks at once")),
        "the lowered pool is logged: {log}"
    );

    // Run: the admin API answers, the heartbeat keeps coming, fds stay
    // under the limit.
    let t0 = Instant::now();
    let mut max_fds = 0;
    let mut slowest_admin = Duration::ZERO;
    let mut admin_answers = 0;
    while t0.elapsed() < RUN {
        max_fds = max_fds.max(open_fds(pid));
        for path in ["/healthz/live", "/metrics"] {
            let t = Instant::now();
            let (code, _) = http_get(&format!("{admin}{path}"))
                .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", mon.log_text()));
            slowest_admin = slowest_admin.max(t.elapsed());
            assert_eq!(code, 200, "GET {path}");
            admin_answers += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        mon.child.try_wait().unwrap().is_none(),
        "the monitor is still running: {}",
        mon.log_text()
    );

    let lines = statsd.lines();
    let recent = |name: &str, since: Duration| {
        lines
            .iter()
            .filter(|l| l.name == name && l.at >= Instant::now() - since)
            .count()
    };
    // Heartbeats every 2 s: at least 3 in the last 10 s of the run.
    let heartbeats = recent("monitor.heartbeat", Duration::from_secs(10));
    assert!(heartbeats >= 3, "heartbeats in the last 10 s: {heartbeats}");
    let (code, out, err) = clustermon(&["status", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("m1"), "status lists the monitor: {out}");

    // The pool was the bound: saturated, never above it.
    let inflight: Vec<u64> = lines
        .iter()
        .filter(|l| l.name == "monitor.checks.inflight")
        .filter_map(|l| l.value.parse().ok())
        .collect();
    let peak = inflight.iter().copied().max().unwrap_or(0);
    assert!(
        peak <= POOL as u64 && peak + 10 >= POOL as u64,
        "in flight at most the pool and reaching it: {peak}"
    );
    let pool_full = statsd.counter_sum("monitor.checks.skipped", &[("reason", "pool_full")]);
    assert!(
        pool_full > 0,
        "checks beyond the pool are skipped and counted"
    );

    let log = mon.log_text();
    let noisy = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(
        !log.to_lowercase().contains("too many open files"),
        "no EMFILE: {log}"
    );
    assert!(
        noisy < 50,
        "no error storm: {noisy} WARN/ERROR lines: {log}"
    );
    eprintln!(
        "fd-limit: pool {POOL}, in flight at most {peak}, open fds at most {max_fds} (limit {LIMIT}), \
         {pool_full} checks skipped (pool_full), {noisy} WARN/ERROR lines, \
         {admin_answers} admin answers (slowest {slowest_admin:?}), {heartbeats} heartbeats in the last 10 s"
    );
    assert!(max_fds < LIMIT as usize, "open fds {max_fds}");
}
