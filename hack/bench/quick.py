#!/usr/bin/env python3
"""One monitor against a simulated fleet on loopback: checks per second,
CPU and peak memory of the monitor (fleetsim's own CPU reported apart).

  hack/bench/quick.py --clusters 10000 --interval 10s --seconds 40 --profile full

Prints one JSON object. Uses the binaries in --bin-dir (default
target/release; build them with `cargo build --release --bins`).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Statsd, cpu_s, mem_kb  # noqa: E402



def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def duration_s(text):
    """Seconds in a humantime-style duration as clustermon's flags take it:
    500ms, 10s, 1m, 1h30m, 1.5s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, num, i = 0.0, "", 0
    text = text.strip()
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else c
        if unit not in units or not num:
            raise ValueError(f"not a duration: {text!r}")
        total += float(num) * units[unit]
        num, i = "", i + len(unit)
    if num:
        raise ValueError(f"not a duration (unit missing): {text!r}")
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--profile", choices=["full", "healthz"], default="full")
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--plain-http", action="store_true")
    ap.add_argument("--serving-key", choices=["ecdsa-p256", "rsa-2048"], default="ecdsa-p256",
                    help="fleetsim's API servers' serving key (rsa-2048: kubeadm's default "
                         "for API servers)")
    ap.add_argument("--statsd-receiver", choices=["fleetsim", "apart", "python"], default="fleetsim",
                    help="who receives the monitor's statsd: the simulated fleet itself (its CPU then "
                         "includes parsing every line), a second fleetsim of one cluster, or bench.py's "
                         "Python receiver (a thread of this script); the last two are counted by "
                         "neither side")
    ap.add_argument("--floor", action="store_true",
                    help="after the window, run tcp-floor (BIN_DIR/tcp-floor) at the same rate for 10 s: "
                         "a minimal client's and server's CPU per plain-HTTP probe over the loopback")
    ap.add_argument("--monitor-env", action="append", default=[], metavar="K=V",
                    help="extra environment of the monitor alone (e.g. TOKIO_WORKER_THREADS=1)")
    ap.add_argument("--monitor-arg", action="append", default=[], metavar="ARG",
                    help="extra argument of `clustermon run` (e.g. --threads=2)")
    a = ap.parse_args()
    mon_env = dict(os.environ)
    for kv in a.monitor_env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            ap.error("--monitor-env wants K=V: a name, '=', then the value")
        mon_env[k] = v

    tmp = tempfile.mkdtemp(prefix="clustermon-bench-")
    store = f"sqlite:{tmp}/store.db"
    port = free_udp_port()
    procs = []
    py_rx, rx_url = None, None
    try:
        sim_args = [f"{a.bin_dir}/fleetsim", "--clusters", str(a.clusters), "--register", store]
        if a.statsd_receiver == "fleetsim":
            sim_args += ["--statsd-listen", f"127.0.0.1:{port}"]
        elif a.statsd_receiver == "python":
            py_rx = Statsd()
            port = py_rx.port
        else:
            rx = subprocess.Popen([f"{a.bin_dir}/fleetsim", "--clusters", "1", "--id-prefix", "statsd-rx-",
                                   "--statsd-listen", f"127.0.0.1:{port}"],
                                  stdout=subprocess.PIPE, stderr=open(f"{tmp}/statsd-rx.log", "w"), text=True)
            procs.append(rx)
            rx_url = rx.stdout.readline().strip().removeprefix("fleetsim listening on ")
        if a.plain_http:
            sim_args.append("--plain-http")
        else:
            sim_args += ["--serving-key", a.serving_key]
        t = time.monotonic()
        sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=open(f"{tmp}/fleetsim.log", "w"), text=True)
        procs.append(sim)
        url = sim.stdout.readline().strip().removeprefix("fleetsim listening on ")
        statsd_url = {"fleetsim": url, "apart": rx_url}.get(a.statsd_receiver)
        register_s = time.monotonic() - t
        mon = subprocess.Popen([f"{a.bin_dir}/clustermon", "run", "--store", store, "--statsd", f"udp:127.0.0.1:{port}",
                                "--id", "bench", "--admin-listen", "127.0.0.1:0", "--interval", a.interval, "--collectors", a.profile, *a.monitor_arg],
                               stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/monitor.log", "w"), env=mon_env)
        procs.append(mon)

        def stats():
            if py_rx is not None:
                with py_rx.lock:
                    return {"checks_total": len(py_rx.checks), "unhealthy": []}
            with urllib.request.urlopen(f"{statsd_url}/control/statsd", timeout=5) as r:
                return json.load(r)

        # Warm up for one interval, then measure.
        interval_s = duration_s(a.interval)
        time.sleep(interval_s + 3)
        rx_pid = rx.pid if a.statsd_receiver == "apart" else (os.getpid() if py_rx else None)
        c0, s0, f0, r0, t0 = cpu_s(mon.pid), stats(), cpu_s(sim.pid), rx_pid and cpu_s(rx_pid), time.monotonic()
        time.sleep(a.seconds)
        c1, s1, f1, r1, t1 = cpu_s(mon.pid), stats(), cpu_s(sim.pid), rx_pid and cpu_s(rx_pid), time.monotonic()
        checks = s1["checks_total"] - s0["checks_total"]
        out = {
            "profile": a.profile,
            "transport": "http" if a.plain_http else f"tls, serving key {a.serving_key}",
            "statsd_receiver": a.statsd_receiver,
            "clusters": a.clusters,
            "interval_s": interval_s,
            "offered_per_s": a.clusters / interval_s,
            "achieved_per_s": round(checks / (t1 - t0), 1),
            "monitor_cpu_s_per_1000_checks": round((c1 - c0) / max(checks, 1) * 1000, 3),
            "monitor_cpu_percent": round((c1 - c0) / (t1 - t0) * 100, 1),
            "fleetsim_cpu_percent": round((f1 - f0) / (t1 - t0) * 100, 1),
            "statsd_receiver_cpu_percent": round((r1 - r0) / (t1 - t0) * 100, 1) if rx_pid else None,
            "monitor_rss_mb": round(mem_kb(mon.pid, "VmRSS") / 1024, 1),
            "monitor_rss_peak_mb": round(mem_kb(mon.pid, "VmHWM") / 1024, 1),
            # RSS less the binary's file-backed pages, which differ between
            # two builds of the same code by a megabyte or more.
            "monitor_rss_anon_mb": round(mem_kb(mon.pid, "RssAnon") / 1024, 1),
            "unhealthy_seen": len(s1["unhealthy"]),
            "register_s": round(register_s, 1),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if py_rx is not None:
            py_rx.close()
        subprocess.run(["rm", "-rf", tmp])
    if a.floor:
        # Once the monitor and fleetsim are gone: the machine as quiet as
        # it was for them.
        r = subprocess.run([f"{a.bin_dir}/tcp-floor", "--rate", f"{a.clusters / interval_s:g}", "--seconds", "10"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"tcp-floor failed: {r.stderr.strip()}")
        f = json.loads(r.stdout)
        out["floor_client_us"], out["floor_server_us"] = f["client_us"], f["server_us"]
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
