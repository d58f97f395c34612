#!/usr/bin/env python3
"""Two or more builds side by side: `quick.py` runs, the builds alternated
round by round (the machine's drift spreads over all of them), then each
build's median and range of the monitor's CPU per check and of its ratio
to fleetsim's CPU in the same run.

  hack/bench/ab.py --rounds 3 --build before=/tmp/bin-before --build after=target/release \\
      -- --clusters 2000 --interval 4s --seconds 20 --profile healthz

A build is LABEL=BIN_DIR, optionally followed by `|` and quick.py arguments
of its own (`--build 'off=target/release|--monitor-arg=--dispatch-tick=0'`).
Arguments after `--` go to every run. Prints one line per run as it ends,
then one JSON object with the summary.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

QUICK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quick.py")


def parse_build(text):
    head, _, extra = text.partition("|")
    label, sep, bin_dir = head.partition("=")
    if not sep or not label or not bin_dir:
        raise argparse.ArgumentTypeError("a build is LABEL=BIN_DIR[|quick.py arguments]")
    return label, bin_dir, shlex.split(extra)


def main():
    ap = argparse.ArgumentParser(usage="%(prog)s --build L=DIR --build L=DIR [--rounds N] -- QUICK_ARGS")
    ap.add_argument("--build", action="append", type=parse_build, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    common = []
    if "--" in argv:
        i = argv.index("--")
        argv, common = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    if len(a.build) < 2:
        ap.error("give two builds or more")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    runs = {label: [] for label, _, _ in a.build}
    for r in range(a.rounds):
        for label, bin_dir, extra in a.build:
            out = subprocess.run([sys.executable, QUICK, "--bin-dir", bin_dir, *common, *extra],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{label}, round {r + 1}: quick.py failed: {out.stderr.strip()[-500:]}")
            d = json.loads(out.stdout)
            d["ratio"] = round(d["monitor_cpu_percent"] / max(d["fleetsim_cpu_percent"], 0.1), 3)
            runs[label].append(d)
            print(f"round {r + 1} {label}: {d['monitor_cpu_s_per_1000_checks']} CPU-ms per check, "
                  f"ratio {d['ratio']}, {d['achieved_per_s']}/s, anon RSS {d['monitor_rss_anon_mb']} MB",
                  file=sys.stderr, flush=True)

    def spread(values):
        return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}

    summary = {
        "command": "hack/bench/ab.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "rounds": a.rounds,
        "builds": {
            label: {
                "cpu_ms_per_check": spread([d["monitor_cpu_s_per_1000_checks"] for d in ds]),
                "ratio_to_fleetsim": spread([d["ratio"] for d in ds]),
                "achieved_per_s": spread([d["achieved_per_s"] for d in ds]),
                "monitor_rss_anon_mb": spread([d["monitor_rss_anon_mb"] for d in ds]),
            }
            for label, ds in runs.items()
        },
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
