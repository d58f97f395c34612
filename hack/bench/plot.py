#!/usr/bin/env python3
"""Draws the throughput scenario of a benchmark results file as one PNG.

  python3 hack/bench/plot.py target/bench/results.json docs/performance.png

results.json: {"machine": ..., "date": ..., "scenarios": {"throughput": [
  {"profile": "healthz"|"full", "offered_per_s": 500, "achieved_per_s": 498.2,
   "lag_p50_ms": 3.1, "lag_p99_ms": 40.2, "cpu_s_per_1000_checks": 0.7,
   "rss_peak_mb": 30.5}, ...], ...}}

Left panel: achieved vs offered checks/s, one line per profile, y = x dashed.
Right panel: p99 lag (ms, log scale) vs offered checks/s, one line per
profile, the 1000 ms target as a horizontal line.

Needs matplotlib; when it is missing, installs it into a venv under
target/bench/venv (python3 -m venv, then pip) and re-runs itself there.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(REPO, "target", "bench", "venv")
LAG_TARGET_MS = 1000
COLORS = {"healthz": "tab:blue", "full": "tab:orange"}


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    venv_py = os.path.join(VENV, "bin", "python3")
    if os.environ.get("CLUSTERMON_PLOT_REEXEC"):
        sys.exit(f"plot.py: matplotlib still missing in {venv_py}")
    if not os.path.exists(venv_py):
        print(f"plot.py: matplotlib missing; creating {VENV}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    chk = subprocess.run([venv_py, "-c", "import matplotlib"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if chk.returncode != 0:
        print("plot.py: pip install matplotlib", file=sys.stderr, flush=True)
        subprocess.run([venv_py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "matplotlib"],
                       stdout=sys.stderr, check=True)
    env = dict(os.environ, CLUSTERMON_PLOT_REEXEC="1")
    os.execve(venv_py, [venv_py, os.path.abspath(__file__)] + sys.argv[1:], env)


def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # drop NaN


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RESULTS.json OUT.png")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        results = json.load(f)
    rows = (results.get("scenarios") or {}).get("throughput") or []
    if not rows:
        sys.exit(f"plot.py: {src} has no scenarios.throughput rows")

    ensure_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    by_profile = {}
    for r in rows:
        offered = num(r.get("offered_per_s"))
        if offered is None:
            continue
        by_profile.setdefault(r.get("profile", "?"), []).append(r)
    order = sorted(by_profile, key=lambda p: (p not in COLORS, list(COLORS).index(p) if p in COLORS else 0, p))

    fig, (ax_rate, ax_lag) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    max_offered = 0.0
    lag_values = []
    for profile in order:
        pts = sorted(by_profile[profile], key=lambda r: num(r["offered_per_s"]))
        color = COLORS.get(profile)
        xs = [num(r["offered_per_s"]) for r in pts]
        max_offered = max(max_offered, max(xs))
        rate = [(x, num(r.get("achieved_per_s"))) for x, r in zip(xs, pts) if num(r.get("achieved_per_s")) is not None]
        if rate:
            ax_rate.plot(*zip(*rate), marker="o", color=color, label=profile)
        # Log scale: a lag of 0 (or missing) cannot be drawn; leave the point out.
        lag = [(x, num(r.get("lag_p99_ms"))) for x, r in zip(xs, pts)
               if num(r.get("lag_p99_ms")) is not None and num(r.get("lag_p99_ms")) > 0]
        if lag:
            ax_lag.plot(*zip(*lag), marker="o", color=color, label=profile)
            lag_values += [y for _, y in lag]

    top = max_offered * 1.05 if max_offered > 0 else 1
    ax_rate.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="ideal (achieved = offered)")
    ax_rate.set_xlim(0, top)
    ax_rate.set_ylim(0, top)
    ax_rate.set_xlabel("offered checks/s")
    ax_rate.set_ylabel("achieved checks/s")
    ax_rate.set_title("Throughput")
    ax_rate.grid(True, alpha=0.3)
    ax_rate.legend(loc="upper left")

    ax_lag.axhline(LAG_TARGET_MS, color="red", linestyle=":", linewidth=1.5, label=f"target ({LAG_TARGET_MS} ms)")
    ax_lag.set_yscale("log")
    lo = min(lag_values + [LAG_TARGET_MS])
    hi = max(lag_values + [LAG_TARGET_MS])
    ax_lag.set_ylim(lo / 2, hi * 3)
    ax_lag.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_lag.set_xlim(0, top)
    ax_lag.set_xlabel("offered checks/s")
    ax_lag.set_ylabel("p99 lag (ms, log scale)")
    ax_lag.set_title("Check lag, p99")
    ax_lag.grid(True, which="both", alpha=0.3)
    ax_lag.legend(loc="upper left")

    subtitle = " · ".join(str(results[k]) for k in ("machine", "date") if results.get(k))
    fig.suptitle("clustermon: one monitor against a simulated fleet" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
