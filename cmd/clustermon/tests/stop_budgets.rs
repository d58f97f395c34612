//! The deployment examples give a stopping monitor more time than its
//! shutdown bound (docs/monitoring.md, *Graceful stop*: the grace plus
//! max(2 heartbeat intervals, 2 s) plus 2 s), or the kubelet or systemd
//! kills it mid-stop and its buckets wait for the heartbeat TTL instead of
//! a handoff. A grace raised in one place and not the other fails here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clustermon_core::config::defaults;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The shutdown bound for a grace and a heartbeat interval.
fn bound(grace: Duration, heartbeat: Duration) -> Duration {
    grace + (2 * heartbeat).max(Duration::from_secs(2)) + Duration::from_secs(2)
}

/// The value after `key` in `text`: `key: 30`, `key=30s`, or a YAML list
/// item on the line after `- key`.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if l.starts_with('#') {
            continue;
        }
        let l = l.trim_start_matches("- ");
        if let Some(rest) = l.strip_prefix(key) {
            let rest = rest.trim_start_matches([':', '=']).trim();
            if !rest.is_empty() {
                return Some(rest);
            }
            return lines.next().map(|n| n.trim_start_matches("- ").trim());
        }
    }
    None
}

fn duration(v: &str) -> Duration {
    humantime::parse_duration(v.trim_matches('"'))
        .or_else(|_| v.parse::<u64>().map(Duration::from_secs))
        .unwrap_or_else(|_| panic!("not a duration: {v}"))
}

#[test]
fn the_scan_reads_both_forms() {
    let yaml = "spec:\n  # terminationGracePeriodSeconds: 1\n  terminationGracePeriodSeconds: 30\n  args:\n    - --shutdown-grace\n    - 20s\n";
    assert_eq!(
        value_after(yaml, "terminationGracePeriodSeconds"),
        Some("30")
    );
    assert_eq!(value_after(yaml, "--shutdown-grace"), Some("20s"));
    assert_eq!(
        value_after("TimeoutStopSec=30\n", "TimeoutStopSec"),
        Some("30")
    );
    assert_eq!(value_after("A=1\n", "B"), None);
    assert_eq!(duration("30"), Duration::from_secs(30));
    assert_eq!(
        bound(Duration::from_secs(20), Duration::from_secs(2)),
        Duration::from_secs(26)
    );
}

#[test]
fn the_kubelet_and_systemd_wait_longer_than_the_shutdown_bound() {
    let dep = read("deploy/kubernetes/deployment.yaml");
    let kubelet = duration(
        value_after(&dep, "terminationGracePeriodSeconds").expect("terminationGracePeriodSeconds"),
    );
    let grace = value_after(&dep, "--shutdown-grace").map_or(defaults::SHUTDOWN_GRACE, duration);
    let hb =
        value_after(&dep, "--heartbeat-interval").map_or(defaults::HEARTBEAT_INTERVAL, duration);
    assert!(
        kubelet > bound(grace, hb),
        "deployment.yaml: terminationGracePeriodSeconds {kubelet:?} must exceed the shutdown bound {:?} (grace {grace:?}, heartbeat {hb:?})",
        bound(grace, hb)
    );

    let unit = read("deploy/systemd/clustermon.service");
    let env = read("deploy/systemd/clustermon.env.example");
    let systemd = duration(value_after(&unit, "TimeoutStopSec").expect("TimeoutStopSec"));
    let grace =
        value_after(&env, "CLUSTERMON_SHUTDOWN_GRACE").map_or(defaults::SHUTDOWN_GRACE, duration);
    let hb = value_after(&env, "CLUSTERMON_HEARTBEAT_INTERVAL")
        .map_or(defaults::HEARTBEAT_INTERVAL, duration);
    assert!(
        systemd > bound(grace, hb),
        "clustermon.service: TimeoutStopSec {systemd:?} must exceed the shutdown bound {:?} (grace {grace:?}, heartbeat {hb:?})",
        bound(grace, hb)
    );
}
