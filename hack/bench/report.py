#!/usr/bin/env python3
"""Markdown tables of the medians in target/bench/results.json (for docs/performance.md).

  hack/bench/report.py [target/bench/results.json]
"""
import json
import sys

COLS = {
    "throughput": ["profile", "offered_per_s", "achieved_per_s", "lag_p50_ms", "lag_p99_ms",
                   "cpu_s_per_1000_checks", "rss_peak_mb", "fleetsim_cpu_s_per_1000_checks"],
    "memory": ["clusters", "rss_mb", "cache_rss_mb", "bytes_per_cluster", "credential_bytes_per_cluster", "inflight_checks", "inflight_kb_per_check",
               "baseline_rss_mb"],
    "failover": ["event", "reowned_s", "max_gap_s", "missed_checks", "missed_after_reowned", "duplicate_checks"],
    "startup": ["documents", "ready_s", "rss_mb"],
    "vs_blackbox": ["offered_per_s", "clustermon_cpu_s_per_1000", "blackbox_cpu_s_per_1000", "clustermon_rss_mb",
                    "blackbox_rss_mb"],
}


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json"
    with open(path) as f:
        r = json.load(f)
    print(f"Machine: {r['machine']}; date {r['date']}; `{r['command']}`\n")
    for name, rows in r["scenarios"].items():
        cols = [c for c in COLS.get(name, list(rows[0].keys()) if rows else []) if rows and c in rows[0]]
        n = max((x.get("runs", 1) for x in rows), default=0)
        print(f"### {name} (median of {n} runs)\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for x in rows:
            print("| " + " | ".join(str(x.get(c, "")) for c in cols) + " |")
        print()
    print("### targets\n")
    for t in r.get("targets", []):
        print(f"- {'**met**' if t['met'] else '**missed**'}: {t['target']} ({t['detail']})")


if __name__ == "__main__":
    main()
