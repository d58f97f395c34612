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
    # Two tables each: the row "fleet" (or "all") and the rows per monitor.
    "regional_outage": ["clusters", "hanging", "monitors", "interval_ms", "check_timeout_ms", "window_s",
                        "healthy_checks_per_s", "healthy_lag_p50_ms", "healthy_lag_p99_ms", "healthy_skipped",
                        "healthy_missed", "inflight_max", "inflight_expected", "fleetsim_cpu_s_per_1000"],
    "regional_outage/monitor": ["monitor", "buckets", "cached", "checks", "hanging_checks", "inflight_max", "rss_mb",
                                "rss_peak_mb", "credential_mb", "rss_limit_mb", "cpu_s_per_1000", "cpu_percent"],
    "share_memory": ["clusters", "monitors", "buckets", "cached_total", "rss_total_mb", "rss_max_mb", "credential_total_mb",
                     "over_limit_monitors", "register_s", "ready_s"],
    "share_memory/monitor": ["monitor", "buckets", "cached", "rss_mb", "rss_peak_mb", "credential_mb",
                             "rss_limit_mb"],
}
# Scenarios whose summary row has this "monitor" value; the other rows are per monitor.
SUMMARY = {"regional_outage": "fleet", "share_memory": "all"}


def table(cols, rows):
    cols = [c for c in cols if any(c in x for x in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for x in rows:
        print("| " + " | ".join(str(x.get(c, "")) for c in cols) + " |")
    print()


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json"
    with open(path) as f:
        r = json.load(f)
    print(f"Machine: {r['machine']}; date {r['date']}; `{r['command']}`\n")
    for name, rows in r["scenarios"].items():
        n = max((x.get("runs", 1) for x in rows), default=0)
        print(f"### {name} (median of {n} runs)\n")
        if name in SUMMARY:
            top = [x for x in rows if x.get("monitor") == SUMMARY[name]]
            per = [x for x in rows if x.get("monitor") != SUMMARY[name]]
            if top:
                table(COLS[name], top)
                skipped = top[0].get("skipped_by_reason")
                if skipped:
                    print(f"Skipped by reason: {', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))}\n")
            if per:
                print("Per monitor:\n")
                table(COLS[name + "/monitor"], per)
            continue
        cols = [c for c in COLS.get(name, list(rows[0].keys()) if rows else []) if rows and c in rows[0]]
        table(cols, rows)
    print("### targets\n")
    for t in r.get("targets", []):
        print(f"- {'**met**' if t['met'] else '**missed**'}: {t['target']} ({t['detail']})")


if __name__ == "__main__":
    main()
