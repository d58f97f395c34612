#!/usr/bin/env python3
"""Draws the throughput scenario of a benchmark results file as one PNG and,
when the file has the regional_outage scenario, its time series as a second
one, outage.png, in the same directory.

  python3 hack/bench/plot.py target/bench/results.json docs/performance.png

results.json: {"machine": ..., "date": ..., "scenarios": {"throughput": [
  {"profile": "healthz"|"full", "offered_per_s": 500, "achieved_per_s": 498.2,
   "lag_p50_ms": 3.1, "lag_p99_ms": 40.2, "cpu_s_per_1000_checks": 0.7,
   "rss_peak_mb": 30.5}, ...], ...}}

Left panel: achieved vs offered checks/s, one line per profile, y = x dashed.
Right panel: p99 lag (ms, log scale) vs offered checks/s, one line per
profile, the 1000 ms target as a horizontal line.

outage.png: from scenarios.regional_outage, the row {"monitor": "fleet",
"series": [[t_s, p99_ms, inflight], ...]}: per second of the measured window,
the p99 lag of the healthy clusters' checks arriving in it and the checks in
flight over all monitors, with the 1000 ms target and the expected in-flight
count (hanging × timeout ÷ interval).

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


def provenance_line(results, scenario):
    """The machine, and the scenario's own commit and date when the file
    records them (a file merged from several runs keeps each scenario's)."""
    prov = (results.get("provenance") or {}).get(scenario) or {}
    parts = [results.get("machine")]
    if prov:
        parts += [f"commit {prov.get('commit')}", prov.get("date")]
    else:
        parts.append(results.get("date"))
    return " · ".join(str(p) for p in parts if p)


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
    scenarios = results.get("scenarios") or {}
    rows = scenarios.get("throughput") or []
    outage = next((r for r in scenarios.get("regional_outage") or []
                   if r.get("monitor") == "fleet" and r.get("series")), None)
    if not rows and not outage:
        sys.exit(f"plot.py: {src} has no scenarios.throughput rows and no regional_outage series")

    ensure_matplotlib()
    import matplotlib
    matplotlib.use("Agg")

    if outage:
        plot_outage(results, outage, os.path.join(os.path.dirname(os.path.abspath(dst)), "outage.png"))
    if rows:
        plot_throughput(results, rows, dst)
    else:
        print(f"plot.py: no throughput rows in {src}; {dst} not written", file=sys.stderr)


def plot_outage(results, row, dst):
    """Healthy clusters' p99 lag and the checks in flight (all monitors),
    per second of the regional outage scenario's measured window."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    pts = [(num(t), num(p99), num(infl)) for t, p99, infl in row["series"]]
    fig, (ax_lag, ax_in) = plt.subplots(2, 1, figsize=(12, 6.4), dpi=120, sharex=True)
    lag = [(t, y) for t, y, _ in pts if t is not None and y is not None]
    if lag:
        ax_lag.plot(*zip(*lag), color="tab:blue", marker=".", linewidth=1, label="healthy checks: p99 lag")
    ax_lag.axhline(LAG_TARGET_MS, color="red", linestyle=":", linewidth=1.5, label=f"target ({LAG_TARGET_MS} ms)")
    # Log scale: lags of a few ms and the 1 s target on one axis.
    ax_lag.set_yscale("log")
    ys = [y for _, y in lag if y > 0] + [LAG_TARGET_MS]
    ax_lag.set_ylim(min(ys) / 2, max(ys) * 3)
    ax_lag.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_lag.set_ylabel("p99 lag (ms, log scale)")
    ax_lag.set_title("Healthy clusters: p99 lag of the checks arriving in each second", fontsize=10)
    ax_lag.grid(True, which="both", alpha=0.3)
    ax_lag.legend(loc="upper right", fontsize=9)

    infl = [(t, y) for t, _, y in pts if t is not None and y is not None]
    if infl:
        ax_in.plot(*zip(*infl), color="tab:orange", linewidth=1.5, label="checks in flight (all monitors)")
    expected = num(row.get("inflight_expected"))
    if expected:
        ax_in.axhline(expected, color="grey", linestyle="--", linewidth=1,
                      label=f"expected: hanging × timeout ÷ interval ({expected:g})")
    ax_in.set_ylim(0, max([y for _, y in infl] + [expected or 0, 1]) * 1.2)
    ax_in.set_ylabel("checks in flight")
    ax_in.set_xlabel("seconds into the measured window")
    ax_in.set_title("Checks in flight, sampled every second from each monitor's /metrics", fontsize=10)
    ax_in.grid(True, alpha=0.3)
    ax_in.legend(loc="lower right", fontsize=9)

    desc = (f"{row.get('clusters')} clusters, {row.get('hanging')} hanging past the "
            f"{num(row.get('check_timeout_ms') or 30000) / 1000:g} s check timeout, {row.get('monitors')} monitors, "
            f"{num(row.get('interval_ms') or 0) / 1000:g} s interval")
    subtitle = provenance_line(results, "regional_outage")
    fig.suptitle(f"clustermon: regional outage ({desc})" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    fig.savefig(dst)
    print(f"wrote {dst}")


def plot_throughput(results, rows, dst):
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

    subtitle = provenance_line(results, "throughput")
    fig.suptitle("clustermon: one monitor against a simulated fleet" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
