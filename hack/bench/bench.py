#!/usr/bin/env python3
"""clustermon benchmarks (`make bench`): throughput, memory, failover,
start-up, side by side with Prometheus + blackbox_exporter, a regional
outage (25% of the clusters hanging past the check timeout, 3 monitors) and
the memory of monitors sharing one large store.

Everything runs on 127.0.0.1 against hack/fleetsim with the release
binaries. Each scenario runs --runs times (default 3); the table printed at
the end holds medians of speed figures and the worst run of correctness
figures (missed, duplicates, skipped, gaps), and target/bench/results.json
holds every run and those summaries, with each scenario's provenance: {"machine", "date", "commands", "scenarios": {name: [median
rows]}, "runs": {name: [all rows]}, "targets": [...]}.

  hack/bench/bench.py [--runs 3] [--only throughput,memory,...] [--quick] [--out FILE]

Stdlib only. fleetsim's own CPU is reported apart from the monitor's.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")
BIN = os.path.join(ROOT, "target", "release")


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# ---- process and /proc helpers ----

def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def mem_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


class Procs:
    """Every child of a scenario; all stopped (SIGTERM, then SIGKILL) on exit."""

    # Every Procs made, so that a failure can show a child's exit and log.
    made = []

    def __init__(self, tmp):
        self.tmp = tmp
        self.all = []
        Procs.made.append(self)

    @classmethod
    def describe(cls, name):
        """Whether the last child called `name` still runs, and its log's tail."""
        for procs in reversed(cls.made):
            for p in reversed(procs.all):
                if p.name == name:
                    try:
                        with open(f"{procs.tmp}/{name}.log") as f:
                            tail = "".join(f.readlines()[-15:])
                    except OSError as e:
                        tail = f"(no log: {e})"
                    state = "running" if p.poll() is None else f"exited with {p.returncode}"
                    return f"{name} {state}; last log lines:\n{tail}"
        return f"{name}: no such child"

    def start(self, name, args, stdout=subprocess.DEVNULL):
        p = subprocess.Popen(args, stdout=stdout, stderr=open(f"{self.tmp}/{name}.log", "w"),
                             text=True, start_new_session=True)
        p.name = name
        self.all.append(p)
        return p

    def stop_all(self):
        for p in self.all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        for p in self.all:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class Statsd:
    """UDP receiver keeping (arrival unix ms, cluster id) of every healthz line."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.checks = []
        # (arrival unix ms, metric, reason or "") of the self counters that
        # explain a miss: checks started, metrics dropped, checks skipped.
        self.counters = []
        self.lock = threading.Lock()
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            now = time.time() * 1000
            got, counted = [], []
            for line in data.decode(errors="replace").split("\n"):
                if line.startswith("apiserver.healthz.code:"):
                    i = line.find("resourceId:")
                    if i >= 0:
                        rid = line[i + 11:].split(",", 1)[0].split("|", 1)[0]
                        got.append((now, rid))
                elif line.startswith(("monitor.checks.started:", "monitor.metrics.dropped:",
                                      "monitor.checks.skipped:")):
                    name, _, rest = line.partition(":")
                    try:
                        n = int(rest.split("|", 1)[0])
                    except ValueError:
                        continue
                    j = rest.find("reason:")
                    reason = rest[j + 7:].split(",", 1)[0] if j >= 0 else ""
                    counted.append((now, name, reason, n))
            if got or counted:
                with self.lock:
                    self.checks.extend(got)
                    self.counters.extend(counted)

    def counted(self, t_from, t_to):
        """Self counters summed over a window: {"metric[:reason]": n}."""
        out = {}
        with self.lock:
            for t, name, reason, n in self.counters:
                if t_from <= t <= t_to:
                    k = f"{name}:{reason}" if reason else name
                    out[k] = out.get(k, 0) + n
        return out

    def since(self, t_ms):
        with self.lock:
            return [c for c in self.checks if c[0] >= t_ms]

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


def start_fleet(procs, args, tmp):
    p = procs.start("fleetsim", [f"{BIN}/fleetsim", "--listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE)
    line = p.stdout.readline().strip()
    if not line.startswith("fleetsim listening on "):
        raise RuntimeError(f"fleetsim did not start: {line!r}; see {tmp}/fleetsim.log")
    return p, line.removeprefix("fleetsim listening on ")


def monitor(procs, name, store, statsd_port, extra):
    return procs.start(name, [f"{BIN}/clustermon", "run", "--store", store, "--statsd",
                              f"udp:127.0.0.1:{statsd_port}", "--id", name,
                              "--admin-listen", "127.0.0.1:0", *extra])


def settled(store, live):
    """Every bucket owned by one of `live`, loads within one."""
    o = cli_json("buckets", "--store", store)
    if not o or any(x not in live for x in o):
        return False
    loads = [o.count(m) for m in live]
    return max(loads) - min(loads) <= 1


def fleet_ids(procs, n, store, tmp):
    """fleetsim serving and registering `n` plain-http clusters: (process, url, ids)."""
    sim, url = start_fleet(procs, ["--clusters", str(n), "--register", store, "--plain-http"], tmp)
    with urllib.request.urlopen(f"{url}/control/clusters", timeout=60) as r:
        ids = [c["id"] for c in json.load(r)]
    return sim, url, ids


def cli_json(*args):
    r = subprocess.run([f"{BIN}/clustermon", *args, "--output", "json"], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def admin_url(store, mon_id, limit=60):
    end = time.time() + limit
    while time.time() < end:
        s = cli_json("status", "--store", store)
        for m in (s or {}).get("monitors", []):
            if m["id"] == mon_id and m.get("admin_url"):
                return m["admin_url"]
        time.sleep(0.2)
    raise RuntimeError(f"{mon_id} did not publish its admin URL: {Procs.describe(mon_id)}")


def http_code(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def prom_value(url, name):
    _, body = http_code(f"{url}/metrics")
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait(what, limit, f, step=0.2):
    end = time.time() + limit
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {limit}s waiting for {what}")


def lags_ms(checks, interval_ms):
    """Lateness of each check: arrival minus the latest due time at or before it."""
    out = []
    phases = {}
    for t, rid in checks:
        ph = phases.get(rid)
        if ph is None:
            ph = phases[rid] = fnv1a(rid) % interval_ms
        out.append((t - ph) % interval_ms)
    return out


# ---- scenarios ----

def throughput(a, tmp):
    """One monitor; offered rate = clusters / interval (interval compressed)."""
    rows = []
    clusters = 5000 if not a.quick else 1000
    for profile in ["healthz", "full"]:
        procs = Procs(tmp)
        statsd = Statsd()
        store = f"sqlite:{tmp}/tp-{profile}.db"
        try:
            fleet_args = ["--clusters", str(clusters), "--register", store]
            sim, _ = start_fleet(procs, fleet_args, tmp)
            for offered in a.rates:
                interval_ms = int(clusters * 1000 / offered)
                mon = monitor(procs, f"tp-{profile}-{offered}", store, statsd.port,
                              ["--interval", f"{interval_ms}ms", "--collectors", profile,
                               "--check-timeout", "10s"])
                url = admin_url(store, f"tp-{profile}-{offered}")
                wait("ready", 60, lambda: http_code(f"{url}/healthz/ready")[0] == 200)
                time.sleep(interval_ms / 1000 + 2)
                window = max(a.window, 2 * interval_ms / 1000)
                c0, f0, t0 = cpu_s(mon.pid), cpu_s(sim.pid), time.time() * 1000
                time.sleep(window)
                c1, f1, t1 = cpu_s(mon.pid), cpu_s(sim.pid), time.time() * 1000
                got = [c for c in statsd.since(t0) if c[0] < t1]
                lag = lags_ms(got, interval_ms)
                n = len(got)
                row = {
                    "profile": profile,
                    "offered_per_s": offered,
                    "achieved_per_s": round(n / ((t1 - t0) / 1000), 1),
                    "lag_p50_ms": round(pct(lag, 50) or 0, 1),
                    "lag_p99_ms": round(pct(lag, 99) or 0, 1),
                    "cpu_s_per_1000_checks": round((c1 - c0) / max(n, 1) * 1000, 3),
                    "checks_per_cpu_s": round(n / max(c1 - c0, 1e-9)),
                    "rss_peak_mb": round(mem_kb(mon.pid, "VmHWM") / 1024, 1),
                    "fleetsim_cpu_s_per_1000_checks": round((f1 - f0) / max(n, 1) * 1000, 3),
                    "monitor_cpu_percent": round((c1 - c0) / ((t1 - t0) / 1000) * 100, 1),
                    "clusters": clusters,
                    "interval_ms": interval_ms,
                }
                log("throughput", json.dumps(row))
                rows.append(row)
                mon.send_signal(signal.SIGTERM)
                mon.wait(timeout=30)
        finally:
            procs.stop_all()
            statsd.close()
    return rows


def memory(a, tmp):
    """Cached clusters with credentials (CA bundle, client certificate or
    token), plus 1,650 slow checks in flight."""
    rows = []
    sizes = [10000, 50000, 100000] if not a.quick else [2000, 5000]
    inflight = 1650 if not a.quick else 200
    for n in sizes:
        procs = Procs(tmp)
        statsd = Statsd()
        store = f"sqlite:{tmp}/mem-{n}.db"
        try:
            t = time.time()
            sim, _ = start_fleet(procs, ["--clusters", str(n), "--register", store,
                                         "--fault", f"slow={inflight}", "--slow-delay", "120s"], tmp)
            log(f"memory: {n} clusters registered in {time.time() - t:.0f}s")
            # A: the cache alone (a one-hour interval: almost no check runs yet).
            mon = monitor(procs, f"mem-{n}-cache", store, statsd.port,
                          ["--interval", "3600s", "--collectors", "healthz"])
            url = admin_url(store, f"mem-{n}-cache")
            wait("ready", 120, lambda: http_code(f"{url}/healthz/ready")[0] == 200)
            time.sleep(3)
            creds = prom_value(url, "clustermon_monitor_cache_credentialbytes") or 0
            cache = prom_value(url, "clustermon_monitor_cache_size") or n
            cache_rss = mem_kb(mon.pid, "VmRSS") * 1024
            mon.send_signal(signal.SIGTERM)
            mon.wait(timeout=30)
            # B: the same, plus the slow clusters' checks hanging in flight.
            interval = 30
            mon = monitor(procs, f"mem-{n}", store, statsd.port,
                          ["--interval", f"{interval}s", "--collectors", "healthz",
                           "--check-timeout", "150s", "--max-concurrent-checks", "4000"])
            url = admin_url(store, f"mem-{n}")
            wait("ready", 120, lambda: http_code(f"{url}/healthz/ready")[0] == 200)
            # One interval: every slow cluster's check has started and hangs.
            time.sleep(interval + 3)
            infl = prom_value(url, "clustermon_monitor_checks_inflight") or 0
            rss = mem_kb(mon.pid, "VmRSS") * 1024
            row = {
                "clusters": n,
                "rss_mb": round(rss / 2**20, 1),
                "cache_rss_mb": round(cache_rss / 2**20, 1),
                "credential_bytes_per_cluster": round(creds / cache),
                "inflight_checks": int(infl),
                "inflight_kb_per_check": round((rss - cache_rss) / max(infl, 1) / 1024, 1),
                "cached": int(cache),
            }
            rows.append(row)
            log("memory", json.dumps(row))
        finally:
            procs.stop_all()
            statsd.close()
    # Baseline: the same monitor with an empty store, to split per cluster.
    procs = Procs(tmp)
    statsd = Statsd()
    try:
        store = f"sqlite:{tmp}/mem-0.db"
        mon = monitor(procs, "mem-0", store, statsd.port, ["--interval", "30s", "--collectors", "healthz"])
        url = admin_url(store, "mem-0")
        wait("ready", 60, lambda: http_code(f"{url}/healthz/ready")[0] == 200)
        time.sleep(3)
        base = mem_kb(mon.pid, "VmRSS") * 1024
    finally:
        procs.stop_all()
        statsd.close()
    for r in rows:
        # What the cache costs per cluster beyond its credential bytes.
        total = (r["cache_rss_mb"] * 2**20 - base) / r["clusters"]
        r["bytes_per_cluster"] = round(total - r["credential_bytes_per_cluster"])
        r["baseline_rss_mb"] = round(base / 2**20, 1)
    return rows


def gaps_and_misses(checks, ids, interval_ms, t_from, t_to, reowned_at, dup_from=None):
    """Worst gap, missed due checks (and those due after `reowned_at`), and
    duplicates: two checks of a cluster less than half an interval apart
    (with `dup_from`, only pairs whose first check arrived at or after it)."""
    by = {}
    for t, rid in checks:
        by.setdefault(rid, []).append(t)
    max_gap = 0
    missed = missed_late = dup = 0
    for rid in ids:
        ts = sorted(by.get(rid, []))
        ph = fnv1a(rid) % interval_ms
        inside = [t for t in ts if t_from - interval_ms <= t <= t_to + interval_ms]
        for x, y in zip(inside, inside[1:]):
            max_gap = max(max_gap, y - x)
            if y - x < interval_ms / 2 and (dup_from is None or x >= dup_from):
                dup += 1
        # Each due slot in the window needs its check before half an
        # interval has passed (a late catch-up counts as missed on time).
        d = t_from + (ph - t_from) % interval_ms
        while d <= t_to - interval_ms:
            if not any(d - 500 <= t <= d + interval_ms / 2 for t in ts):
                missed += 1
                if d > reowned_at:
                    missed_late += 1
            d += interval_ms
    return max_gap, missed, missed_late, dup


def logged_starts(tmp, names):
    """{cluster: [(start unix ms, monitor)]} from the monitors' logs (the
    scheduler's `check started` lines at debug level; operators' left out)."""
    by = {}
    for m in names:
        try:
            f = open(f"{tmp}/{m}.log", errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                if " check started " not in line or "operator=true" in line:
                    continue
                fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
                if "cluster" in fields and fields.get("at_ms", "").isdigit():
                    by.setdefault(fields["cluster"], []).append((int(fields["at_ms"]), m))
    return by


def doubles_started_after(tmp, names, interval_ms, since_ms, until_ms):
    """Pairs of one cluster's logged starts less than half an interval apart
    whose second start is in [since_ms, until_ms]."""
    n = 0
    for starts in logged_starts(tmp, names).values():
        starts.sort()
        for (x, _), (y, _) in zip(starts, starts[1:]):
            if y - x < interval_ms / 2 and since_ms <= y <= until_ms:
                n += 1
    return n


def failover(a, tmp):
    """3 monitors: kill -9 of a non-master, kill -9 of the master, SIGSTOP of
    a non-master beyond the heartbeat TTL, SIGTERM, drain."""
    n = 30000 if not a.quick else 3000
    interval_ms = 30000 if not a.quick else 10000
    rows = []
    procs = Procs(tmp)
    statsd = Statsd()
    store = f"sqlite:{tmp}/failover.db"
    token = f"{tmp}/admin-token"
    with open(token, "w") as f:
        f.write("bench-admin-token-0123456789\n")
    try:
        sim, url, ids = fleet_ids(procs, n, store, tmp)
        # The scheduler's debug lines carry each check's start, which a
        # SIGSTOP does not move (unlike its metric lines' arrival).
        extra = ["--interval", f"{interval_ms}ms", "--collectors", "healthz", "--admin-token-file", token,
                 "--log-level", "info,clustermon_core::schedule=debug"]
        mons = {}
        seq = [0]

        def start_one():
            seq[0] += 1
            name = f"f{seq[0]}"
            mons[name] = monitor(procs, name, store, statsd.port, extra)
            return name

        for _ in range(3):
            start_one()

        def owners():
            return cli_json("buckets", "--store", store)

        def live_names():
            return [m for m, p in mons.items() if p.poll() is None and m not in drained]

        drained = set()
        wait("3 monitors balanced", 120, lambda: settled(store, live_names()))
        time.sleep(interval_ms / 1000 + 2)
        ttl_s = 10  # --heartbeat-ttl's default
        for event in a.failover_events.split(","):
            st = cli_json("status", "--store", store) or {}
            master = (st.get("master") or {}).get("id")
            live = live_names()
            victim = master if event == "kill-9-master" else next(m for m in live if m != master)
            t_ev = time.time() * 1000
            takeover_s = resumed = None
            if event.startswith("kill-9"):
                mons[victim].kill()
            elif event == "sigstop":
                # Paused past the TTL: its kernel still accepts the peers'
                # probes, so only the TTL may move its buckets (no false
                # positive before it); resumed, it must not check twice.
                mons[victim].send_signal(signal.SIGSTOP)
                try:
                    wait(f"{event}: buckets taken from the paused monitor", 90,
                         lambda: victim not in (owners() or [victim]), step=0.1)
                    takeover_s = round(time.time() - t_ev / 1000, 2)
                    time.sleep(max(0.0, t_ev / 1000 + ttl_s + 5 - time.time()))
                finally:
                    mons[victim].send_signal(signal.SIGCONT)
                    resumed = time.time() * 1000
            elif event == "sigterm":
                mons[victim].send_signal(signal.SIGTERM)
            else:
                subprocess.run([f"{BIN}/clustermon", "drain", victim, "--store", store,
                                "--admin-token-file", token], check=True, capture_output=True)
                drained.add(victim)
            rest = [m for m in live if m != victim]
            if event == "sigstop":
                reowned = t_ev + takeover_s * 1000
                wait(f"{event}: resumed monitor back in the table", 120, lambda: settled(store, live_names()))
            else:
                wait(f"{event}: buckets re-owned", 90, lambda: settled(store, rest), step=0.1)
                reowned = time.time() * 1000
            time.sleep(2 * interval_ms / 1000 + 3)
            t_end = time.time() * 1000 - 2000
            gap, missed, late, dup = gaps_and_misses(statsd.since(t_ev - 2 * interval_ms), ids,
                                                     interval_ms, t_ev, t_end, reowned)
            # What the monitors say they did against what arrived: a check
            # started but never seen is a lost metric, not a missed check.
            c = statsd.counted(t_ev, t_end + 2000)
            arrived = sum(1 for t, _ in statsd.since(t_ev) if t <= t_end + 2000)
            row = {
                "event": event,
                "reowned_s": round((reowned - t_ev) / 1000, 2),
                "max_gap_s": round(gap / 1000, 2),
                "missed_checks": missed,
                "missed_after_reowned": late,
                "duplicate_checks": dup,
                "started_checks": c.get("monitor.checks.started", 0),
                "arrived_checks": arrived,
                "skipped_checks": sum(v for k, v in c.items() if k.startswith("monitor.checks.skipped")),
                "dropped_metrics": sum(v for k, v in c.items() if k.startswith("monitor.metrics.dropped")),
                "clusters": n,
                "interval_s": interval_ms / 1000,
            }
            if resumed is not None:
                # Duplicates above include the new owner's catch-ups of checks
                # the paused monitor made after its last heartbeat (as after
                # a crash); a double check after resuming is a pair that
                # starts after the SIGCONT.
                # By arrival, a check started just before the SIGSTOP
                # reports after the SIGCONT and pairs with the new owner's
                # next one; by the starts the monitors logged, a pair counts
                # when its second check started after the SIGCONT.
                row["duplicates_after_resume_by_arrival"] = gaps_and_misses(
                    statsd.since(t_ev - 2 * interval_ms), ids, interval_ms, t_ev, t_end, reowned,
                    dup_from=resumed)[3]
                row["duplicates_after_resume"] = doubles_started_after(
                    tmp, list(mons), interval_ms, resumed, t_end)
            if takeover_s is not None:
                row["takeover_s"] = takeover_s
                row["ttl_s"] = ttl_s
                row["heartbeat_s"] = 2
            log("failover", json.dumps(row))
            rows.append(row)
            # Back to three live monitors before the next event.
            if event not in ("drain", "sigstop"):
                start_one()
                wait("3 monitors balanced again", 120, lambda: settled(store, live_names()))
                time.sleep(interval_ms / 1000 + 2)
    finally:
        procs.stop_all()
        statsd.close()
    return rows


def startup(a, tmp):
    """Process start to ready with 50,000 documents in the store, two cases
    per run, on a copy of one registered store:
    - "new fleet": no bucket table yet, so the first one waits one pass (a
      heartbeat interval) for the monitors started with it;
    - "restart": the same monitor's successor on that store, whose table
      then exists (a rolling restart)."""
    n = 50000 if not a.quick else 5000
    procs = Procs(tmp)
    statsd = Statsd()
    template = f"{tmp}/startup.db"
    rows = []
    try:
        start_fleet(procs, ["--clusters", str(n), "--register", f"sqlite:{template}", "--plain-http"], tmp)
        for i in range(a.runs):
            path = f"{tmp}/startup-{i}.db"
            src, dst = sqlite3.connect(template), sqlite3.connect(path)
            src.backup(dst)
            dst.close()
            src.close()
            for case, name in (("new fleet", f"s{i}"), ("restart", f"r{i}")):
                t0 = time.time()
                mon = monitor(procs, name, f"sqlite:{path}", statsd.port,
                              ["--interval", "60s", "--collectors", "healthz"])
                url = admin_url(f"sqlite:{path}", name)
                wait("ready", 120, lambda: http_code(f"{url}/healthz/ready")[0] == 200, step=0.02)
                ready = time.time() - t0
                rows.append({"documents": n, "case": case, "ready_s": round(ready, 2),
                             "rss_mb": round(mem_kb(mon.pid, "VmRSS") / 1024, 1)})
                log("startup", json.dumps(rows[-1]))
                mon.send_signal(signal.SIGTERM)
                mon.wait(timeout=30)
    finally:
        procs.stop_all()
        statsd.close()
    return rows


def vs_blackbox(a, tmp):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import vs_blackbox as vb
    # 200 probes/s (2,000 clusters every 10 s) and 1,000/s (5,000 every 5 s).
    rates = [(2000, 10.0), (5000, 5.0)] if not a.quick else [(300, 10.0)]
    return [vb.run(BIN, clusters, interval, a.window * 2, tempfile.mkdtemp(dir=tmp))
            for clusters, interval in rates]


# ---- regional outage and shared memory ----

def prom_sum(url, name):
    """Every series of a metric on a monitor's /metrics page: {labels: value}
    (labels as the text between the braces, "" without)."""
    _, body = http_code(f"{url}/metrics")
    out = {}
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, v = line.rpartition(" ")
            labels = head[len(name):].strip("{}")
            try:
                out[labels] = float(v)
            except ValueError:
                pass
    return out


def by_label(series, label):
    """{labels: value} -> {value of one label: summed value}."""
    out = {}
    for labels, v in series.items():
        key = ""
        for kv in labels.split(","):
            k, _, val = kv.partition("=")
            if k == label:
                key = val.strip('"')
        out[key] = out.get(key, 0) + v
    return out


def buckets_settled(store, live):
    """All 256 buckets owned, only by live monitors, evenly (±1)."""
    o = cli_json("buckets", "--store", store)
    if not o or len(o) != 256 or any(x not in live for x in o):
        return False
    loads = [o.count(m) for m in live]
    return max(loads) - min(loads) <= 1


def late_misses(checks, ids, interval_ms, t_from, t_to, slack_ms):
    """Due slots in [t_from, t_to) of the given clusters with no check
    arriving from 0.5 s before to slack_ms after them."""
    by = {}
    for t, rid in checks:
        by.setdefault(rid, []).append(t)
    missed = 0
    missed_ids = set()
    for rid in ids:
        ts = by.get(rid, [])
        ph = fnv1a(rid) % interval_ms
        d = t_from + (ph - t_from) % interval_ms
        while d < t_to:
            if not any(d - 500 <= t <= d + slack_ms for t in ts):
                missed += 1
                missed_ids.add(rid)
            d += interval_ms
    return missed, len(missed_ids)


def fleet_requests(url):
    try:
        with urllib.request.urlopen(f"{url}/control/stats", timeout=10) as r:
            return json.load(r)["requests"]
    except (OSError, ValueError, KeyError):
        return None


def regional_outage(a, tmp):
    """3 monitors, 25% of the clusters hanging past the 30 s check timeout:
    healthy clusters' lag, skips and misses, in-flight checks, memory, CPU."""
    n = a.outage_clusters or (50000 if not a.quick else 5000)
    interval_ms = int((a.outage_interval or (60 if not a.quick else 40)) * 1000)
    timeout_ms = 30000  # clustermon's default --check-timeout, not passed
    n_mons = 3
    hanging = n // 4
    window = a.outage_window or interval_ms / 1000
    slack_ms = min(5000, interval_ms // 2)
    procs = Procs(tmp)
    names = [f"o{i + 1}" for i in range(n_mons)]
    statsds = {m: Statsd() for m in names}
    store = f"sqlite:{tmp}/x.db"
    try:
        t = time.time()
        sim, furl = start_fleet(procs, ["--clusters", str(n), "--register", store,
                                        "--fault", f"slow={hanging}", "--slow-delay", "120s"], tmp)
        register_s = time.time() - t
        with urllib.request.urlopen(f"{furl}/control/clusters", timeout=60) as r:
            docs = json.load(r)
        hang = {c["id"] for c in docs if "slow" in c["faults"]}
        healthy = [c["id"] for c in docs if c["id"] not in hang]
        log(f"regional_outage: {n} clusters ({len(hang)} hanging) registered in {register_s:.0f}s; "
            f"expected in flight per monitor: {len(hang) / n_mons * timeout_ms / interval_ms:.0f}")
        if interval_ms <= timeout_ms:
            log("regional_outage: interval ≤ check timeout: the hanging clusters' next checks are skipped "
                "(still_running), and healthy_skipped counts them too")
        mons = {m: monitor(procs, m, store, statsds[m].port,
                           ["--interval", f"{interval_ms}ms", "--collectors", "healthz"]) for m in names}
        urls = {m: admin_url(store, m, limit=120) for m in names}
        for m in names:
            wait(f"{m} ready", 300, lambda: http_code(f"{urls[m]}/healthz/ready")[0] == 200)
        wait("256 buckets owned by the 3 monitors", 180, lambda: buckets_settled(store, names), step=0.5)
        t_settled = time.time()
        # One interval: every cluster's check has started once; one timeout
        # more: the hanging checks started first are timing out as new ones
        # start, so the in-flight count is at its steady state.
        warm = interval_ms / 1000 + timeout_ms / 1000 + 2
        log(f"regional_outage: settled; warming up {warm:.0f}s, then measuring {window:.0f}s")
        time.sleep(warm)

        def snap():
            return {m: {"cpu": cpu_s(mons[m].pid),
                        "skipped": by_label(prom_sum(urls[m], "clustermon_monitor_checks_skipped_total"), "reason"),
                        "started": prom_value(urls[m], "clustermon_monitor_checks_started_total") or 0}
                    for m in names}

        s0, f0, r0 = snap(), cpu_s(sim.pid), fleet_requests(furl)
        t0 = time.time() * 1000
        polls = []  # (unix ms, {monitor: in flight})
        while time.time() * 1000 < t0 + window * 1000:
            tick = time.time()
            polls.append((tick * 1000, {m: prom_value(urls[m], "clustermon_monitor_checks_inflight") or 0
                                        for m in names}))
            time.sleep(max(0.0, 1 - (time.time() - tick)))
        t1 = time.time() * 1000
        s1, f1, r1 = snap(), cpu_s(sim.pid), fleet_requests(furl)
        # Checks due just before t1 may arrive up to slack_ms later.
        time.sleep(slack_ms / 1000 + 1)
        per_mon = {m: [c for c in statsds[m].since(t0) if c[0] < t1] for m in names}
        late = [c for m in names for c in statsds[m].since(t0) if c[0] <= t1 + slack_ms]
        hset = set(healthy)
        got = sorted(c for m in names for c in per_mon[m] if c[1] in hset)
        lag = lags_ms(got, interval_ms)
        missed, missed_clusters = late_misses(late, healthy, interval_ms, t0, t1, slack_ms)
        skipped = {}
        for m in names:
            for reason, v in s1[m]["skipped"].items():
                d = v - s0[m]["skipped"].get(reason, 0)
                if d:
                    skipped[reason or "?"] = skipped.get(reason or "?", 0) + int(d)
        # Per second: p99 lag of the healthy checks arriving in it, in-flight total.
        series = []
        for i in range(int((t1 - t0) // 1000)):
            a_, b_ = t0 + i * 1000, t0 + (i + 1) * 1000
            sec = [c for c in got if a_ <= c[0] < b_]
            p99 = pct(lags_ms(sec, interval_ms), 99)
            infl = [sum(p.values()) for tp, p in polls if a_ <= tp < b_]
            series.append([i, round(p99, 1) if p99 is not None else None, int(infl[0]) if infl else None])
        rows = []
        answers = (r1 - r0) if r0 is not None and r1 is not None else 0
        fleet = {
            "monitor": "fleet",
            "clusters": n,
            "hanging": len(hang),
            "monitors": n_mons,
            "interval_ms": interval_ms,
            "check_timeout_ms": timeout_ms,
            "window_s": round((t1 - t0) / 1000, 1),
            "healthy_checks": len(got),
            "healthy_checks_per_s": round(len(got) / ((t1 - t0) / 1000), 1),
            "healthy_lag_p50_ms": round(pct(lag, 50) or 0, 1),
            "healthy_lag_p99_ms": round(pct(lag, 99) or 0, 1),
            # hanging_share skips are of hanging clusters only (the skip
            # needs a last check that used its whole timeout); every other
            # reason may hit a healthy one and is counted against it.
            "healthy_skipped": sum(v for k, v in skipped.items() if k != "hanging_share"),
            "hanging_skipped": skipped.get("hanging_share", 0),
            "skipped_by_reason": skipped,
            "healthy_missed": missed,
            "healthy_missed_clusters": missed_clusters,
            "inflight_max": int(max((sum(p.values()) for _, p in polls), default=0)),
            "inflight_expected": round(len(hang) * timeout_ms / interval_ms),
            "fleetsim_cpu_s_per_1000": round((f1 - f0) / max(answers, 1) * 1000, 3),
            "fleetsim_answers": answers,
            "register_s": round(register_s, 1),
            "settled_s_before_window": round(t0 / 1000 - t_settled, 1),
            "series": series,
        }
        rows.append(fleet)
        for m in names:
            checks = len(per_mon[m])
            cred = (prom_value(urls[m], "clustermon_monitor_cache_credentialbytes") or 0) / 2**20
            rss = mem_kb(mons[m].pid, "VmRSS") / 1024
            rows.append({
                "monitor": m,
                "buckets": int(prom_value(urls[m], "clustermon_monitor_buckets_owned") or 0),
                "cached": int(prom_value(urls[m], "clustermon_monitor_cache_size") or 0),
                "checks": checks,
                "started": int(s1[m]["started"] - s0[m]["started"]),
                "hanging_checks": sum(1 for c in per_mon[m] if c[1] in hang),
                "inflight_max": int(max((p[m] for _, p in polls), default=0)),
                "rss_mb": round(rss, 1),
                "rss_peak_mb": round(mem_kb(mons[m].pid, "VmHWM") / 1024, 1),
                "zone_mb": round((prom_value(urls[m], "clustermon_monitor_cache_zonebytes") or 0) / 2**20, 1),
                "credential_mb": round(cred, 1),
                "rss_limit_mb": round(60 + cred, 1),
                "cpu_s_per_1000": round((s1[m]["cpu"] - s0[m]["cpu"]) / max(checks, 1) * 1000, 3),
                "cpu_percent": round((s1[m]["cpu"] - s0[m]["cpu"]) / ((t1 - t0) / 1000) * 100, 1),
            })
        for r in rows:
            log("regional_outage", json.dumps({k: v for k, v in r.items() if k != "series"}))
        return rows
    finally:
        procs.stop_all()
        for s in statsds.values():
            s.close()


def share_memory(a, tmp):
    """6 monitors sharing one store of 300,000 clusters: what each holds."""
    n = a.share_clusters or (300000 if not a.quick else 5000)
    n_mons = 6 if not a.quick else 3
    procs = Procs(tmp)
    statsd = Statsd()
    store = f"sqlite:{tmp}/share.db"
    names = [f"s{i + 1}" for i in range(n_mons)]
    try:
        t = time.time()
        # fleetsim stays up: the few checks due within the hour-long interval
        # that fall in this scenario find their API server.
        sim, _ = start_fleet(procs, ["--clusters", str(n), "--register", store], tmp)
        register_s = time.time() - t
        log(f"share_memory: {n} clusters registered in {register_s:.0f}s")
        t = time.time()
        mons = {m: monitor(procs, m, store, statsd.port, ["--interval", "3600s", "--collectors", "healthz"])
                for m in names}
        urls = {m: admin_url(store, m, limit=300) for m in names}
        for m in names:
            wait(f"{m} ready", 600, lambda: http_code(f"{urls[m]}/healthz/ready")[0] == 200)
        ready_s = time.time() - t
        wait(f"256 buckets owned by the {n_mons} monitors", 300, lambda: buckets_settled(store, names), step=0.5)
        # Handoffs of the buckets moved while the monitors joined end a few
        # seconds later; the outgoing owner drops their documents then:
        # measured once every cluster is held by exactly one monitor.
        # The sum also equals n for a moment while incoming owners read
        # buckets whose outgoing owners still hold them: it must hold for
        # longer than a handoff (4 s) plus a heartbeat interval.
        def held_once_by(group):
            """A condition: every cluster cached by exactly one of `group`
            for 8 s in a row."""
            held = {"since": None}

            def f():
                ok = sum(prom_value(urls[m], "clustermon_monitor_cache_size") or 0 for m in group) == n
                if not ok:
                    held["since"] = None
                    return False
                held["since"] = held["since"] or time.time()
                return time.time() - held["since"] >= 8
            return f

        wait("every cluster cached by exactly one monitor for 8 s", 180, held_once_by(names), step=0.5)
        owners = cli_json("buckets", "--store", store) or []
        rows = []
        for m in names:
            cred = (prom_value(urls[m], "clustermon_monitor_cache_credentialbytes") or 0) / 2**20
            rows.append({
                "monitor": m,
                "clusters": n,
                "monitors": n_mons,
                "buckets": owners.count(m),
                "cached": int(prom_value(urls[m], "clustermon_monitor_cache_size") or 0),
                "rss_mb": round(mem_kb(mons[m].pid, "VmRSS") / 1024, 1),
                "rss_peak_mb": round(mem_kb(mons[m].pid, "VmHWM") / 1024, 1),
                "zone_mb": round((prom_value(urls[m], "clustermon_monitor_cache_zonebytes") or 0) / 2**20, 1),
                "credential_mb": round(cred, 1),
                "rss_limit_mb": round(60 + cred, 1),
            })
        # A crash take-over and the give-back: the first monitor is killed,
        # the five others take its buckets (1.2 shares each), then it comes
        # back with its id and they hand its share back. Each must come
        # back to the memory of its share.
        victim, others = names[0], names[1:]
        os.killpg(mons[victim].pid, signal.SIGKILL)
        mons[victim].wait()
        t = time.time()
        wait(f"{victim}'s buckets owned by the {len(others)} others", 300,
             lambda: buckets_settled(store, others), step=0.5)
        takeover_s = time.time() - t
        wait(f"every cluster cached by one of the {len(others)} others for 8 s", 300,
             held_once_by(others), step=0.5)
        taken = {m: round(mem_kb(mons[m].pid, "VmRSS") / 1024, 1) for m in others}
        old_url = urls[victim]
        mons[victim] = procs.start(f"{victim}.again", [
            f"{BIN}/clustermon", "run", "--store", store, "--statsd", f"udp:127.0.0.1:{statsd.port}",
            "--id", victim, "--admin-listen", "127.0.0.1:0",
            "--interval", "3600s", "--collectors", "healthz"])

        def new_url():
            u = admin_url(store, victim, limit=60)
            return u if u != old_url else None

        urls[victim] = wait(f"{victim} back with a new admin URL", 120, new_url, step=0.5)
        wait(f"{victim} ready again", 600, lambda: http_code(f"{urls[victim]}/healthz/ready")[0] == 200)
        wait(f"256 buckets owned by the {n_mons} monitors again", 300,
             lambda: buckets_settled(store, names), step=0.5)
        wait("every cluster cached by exactly one monitor for 8 s again", 300, held_once_by(names), step=0.5)
        for r in rows:
            m = r["monitor"]
            r["rss_after_giveback_mb"] = round(mem_kb(mons[m].pid, "VmRSS") / 1024, 1)
            r["rss_while_holding_more_mb"] = taken.get(m)
            r["restarted"] = m == victim
        mon_rows = list(rows)
        rows.insert(0, {
            "monitor": "all",
            "clusters": n,
            "monitors": n_mons,
            "buckets": sum(r["buckets"] for r in mon_rows),
            "cached_total": sum(r["cached"] for r in mon_rows),
            "rss_total_mb": round(sum(r["rss_mb"] for r in mon_rows), 1),
            "rss_max_mb": max(r["rss_mb"] for r in mon_rows),
            "credential_total_mb": round(sum(r["credential_mb"] for r in mon_rows), 1),
            "over_limit_monitors": sum(1 for r in mon_rows if r["rss_mb"] > r["rss_limit_mb"]),
            "over_limit_after_giveback": sum(1 for r in mon_rows
                                             if r["rss_after_giveback_mb"] > r["rss_limit_mb"]),
            "takeover_s": round(takeover_s, 1),
            "register_s": round(register_s, 1),
            "ready_s": round(ready_s, 1),
        })
        for r in rows:
            log("share_memory", json.dumps(r))
        return rows
    finally:
        procs.stop_all()
        statsd.close()


def pg_proc_cpu_s(data_dir):
    """CPU seconds (user + system) of a PostgreSQL server's processes: the
    postmaster and its children, from /proc."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pm = f.readline().strip()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # rest[0] state, rest[1] ppid, rest[11] utime, rest[12] stime
        if pid == pm or rest[1] == pm:
            total += int(rest[11]) + int(rest[12])
    return total / tick


def pg_stat(pg_url):
    """(transactions, rows returned) of the database so far."""
    out = subprocess.run(["psql", pg_url, "-Atc",
                          "SELECT xact_commit + xact_rollback, tup_returned FROM pg_stat_database "
                          "WHERE datname = current_database()"],
                         capture_output=True, text=True, check=True).stdout.strip()
    x, rows = out.split("|")
    return int(x), int(rows)


def postgres_store(a, tmp):
    """PostgreSQL store: store requests and server CPU per monitor per second
    at 50,000 clusters and 3 monitors (1-minute interval), then new cluster to
    first check with LISTEN/NOTIFY against polling only (listen=false)."""
    n = 50000 if not a.quick else 5000
    window = 60.0 if not a.quick else 20.0
    # The server runs as user postgres: its directory must be reachable.
    pg_dir = os.path.join(ROOT, "target", "bench", f"pg-{os.getpid()}")
    os.makedirs(pg_dir, exist_ok=True)
    for d in [os.path.join(ROOT, "target", "bench"), pg_dir]:
        os.chmod(d, 0o755)
    start = subprocess.run([os.path.join(ROOT, "hack", "postgres", "start.sh"), pg_dir],
                           capture_output=True, text=True)
    if start.returncode != 0:
        raise RuntimeError(f"postgres did not start: {start.stderr.strip()}")
    base = start.stdout.strip().splitlines()[-1]
    procs = Procs(tmp)
    statsd = Statsd()
    rows = []
    try:
        store = base
        r = subprocess.run([f"{BIN}/clustermon", "store", "init", "--store", store], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"store init: {r.stderr.strip()}")
        t0 = time.time()
        sim, url = start_fleet(procs, ["--clusters", str(n), "--register", store, "--plain-http"], tmp)
        register_s = time.time() - t0
        with urllib.request.urlopen(f"{url}/control/clusters", timeout=60) as resp:
            targets = [c["url"] for c in json.load(resp)]
        extra = ["--interval", "60s", "--collectors", "healthz"]

        def start_three(store_url, tag):
            names = [f"{tag}{i}" for i in range(1, 4)]
            for m in names:
                mons[m] = monitor(procs, m, store_url, statsd.port, extra)
            wait("3 monitors balanced", 180, lambda: settled(store_url, names))
            for m in names:
                u = admin_url(store_url, m)
                wait(f"{m} ready", 180, lambda: http_code(f"{u}/healthz/ready")[0] == 200, step=0.5)
            return names

        def new_cluster_delays(store_url, tag, k):
            delays = []
            for i in range(k):
                cid = f"bench-new-{tag}-{i}"
                t_put = time.time() * 1000
                r = subprocess.run([f"{BIN}/clustermon", "cluster", "put", "--store", store_url, "--id", cid,
                                    "--api-server", targets[i % len(targets)]], capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"cluster put: {r.stderr.strip()}")
                first = wait(f"{cid} checked", 60,
                             lambda: next((t for t, rid in statsd.since(t_put) if rid == cid), None), step=0.01)
                delays.append(first - t_put)
                time.sleep(0.3)
            delays.sort()
            return delays

        mons = {}
        names = start_three(store, "p")
        time.sleep(5)
        tx0, rows0 = pg_stat(store)
        cpu0, w0 = pg_proc_cpu_s(os.path.join(pg_dir, "data")), time.time()
        c_from = len(statsd.since(w0 * 1000))
        time.sleep(window)
        tx1, rows1 = pg_stat(store)
        cpu1, dt = pg_proc_cpu_s(os.path.join(pg_dir, "data")), time.time() - w0
        checks = len(statsd.since(w0 * 1000)) - c_from
        rows.append({
            "case": "steady",
            "clusters": n,
            "monitors": 3,
            "interval_s": 60,
            "window_s": round(dt, 1),
            "register_s": round(register_s, 1),
            "checks_per_s": round(checks / dt, 1),
            "transactions_per_s_per_monitor": round((tx1 - tx0) / dt / 3, 2),
            "rows_read_per_s_per_monitor": round((rows1 - rows0) / dt / 3, 1),
            "server_cpu_pct_of_core": round((cpu1 - cpu0) / dt * 100, 2),
            "server_cpu_pct_per_monitor": round((cpu1 - cpu0) / dt * 100 / 3, 3),
        })
        log("postgres_store", json.dumps(rows[-1]))
        k = 10 if not a.quick else 5
        d = new_cluster_delays(store, "listen", k)
        rows.append({"case": "new_cluster_listen", "clusters": n, "samples": k,
                     "first_check_p50_ms": round(d[len(d) // 2]), "first_check_max_ms": round(d[-1])})
        log("postgres_store", json.dumps(rows[-1]))
        # The same monitors' successors with polling only.
        for m in names:
            mons[m].send_signal(signal.SIGTERM)
        for m in names:
            mons[m].wait(timeout=60)
        poll_store = store + ("&" if "?" in store else "?") + "listen=false"
        start_three(poll_store, "q")
        d = new_cluster_delays(poll_store, "poll", k)
        rows.append({"case": "new_cluster_polling", "clusters": n, "samples": k, "feed_interval_s": 2,
                     "first_check_p50_ms": round(d[len(d) // 2]), "first_check_max_ms": round(d[-1])})
        log("postgres_store", json.dumps(rows[-1]))
        return rows
    finally:
        procs.stop_all()
        statsd.close()
        subprocess.run([os.path.join(ROOT, "hack", "postgres", "stop.sh"), pg_dir], capture_output=True)
        shutil.rmtree(pg_dir, ignore_errors=True)


def handoff_notice(a, tmp):
    """A join and a drain with the default handoff notice (2 heartbeat
    intervals) and shorter ones (--handoff-notice), pushed assignments on:
    missed and doubled checks, and the time to hand over. A case ending in
    `-lost` gives the third monitor another admin token, so every push to it
    is refused (401) and it learns of its new buckets at its next pass."""
    n = 10000 if not a.quick else 3000
    interval_ms = 10000
    rows = []
    for case in a.handoff_cases.split(","):
        notice, lost = case.removesuffix("-lost"), case.endswith("-lost")
        procs = Procs(tmp)
        statsd = Statsd()
        store = f"sqlite:{tmp}/handoff-{case}.db"
        token = f"{tmp}/admin-token"
        with open(token, "w") as f:
            f.write("bench-admin-token-0123456789\n")
        other = f"{tmp}/other-admin-token"
        with open(other, "w") as f:
            f.write("another-admin-token-98765432\n")
        try:
            sim, url, ids = fleet_ids(procs, n, store, tmp)
            extra = ["--interval", f"{interval_ms}ms", "--collectors", "healthz", "--admin-token-file", token,
                     "--handoff-notice", notice]
            extra_h3 = extra[:-3] + [other if lost else token, "--handoff-notice", notice]
            mons = {}

            for m in ["h1", "h2"]:
                mons[m] = monitor(procs, m, store, statsd.port, extra)
            wait("2 monitors balanced", 120, lambda: settled(store, ["h1", "h2"]))
            time.sleep(interval_ms / 1000 + 2)
            for event in ["join", "drain"]:
                t_ev = time.time() * 1000
                if event == "join":
                    mons["h3"] = monitor(procs, "h3", store, statsd.port, extra_h3)
                    live = ["h1", "h2", "h3"]
                else:
                    subprocess.run([f"{BIN}/clustermon", "drain", "h1", "--store", store,
                                    "--admin-token-file", token], check=True, capture_output=True)
                    live = ["h2", "h3"]
                wait(f"{event}: handed over", 120, lambda: settled(store, live), step=0.1)
                handed = time.time() * 1000
                time.sleep(2 * interval_ms / 1000 + 3)
                t_end = time.time() * 1000 - 2000
                gap, missed, late, dup = gaps_and_misses(statsd.since(t_ev - 2 * interval_ms), ids,
                                                         interval_ms, t_ev, t_end, handed)
                row = {"case": f"{case}-{event}", "notice": notice, "pushes_to_new_owner": not lost, "event": event,
                       "handed_over_s": round((handed - t_ev) / 1000, 2), "missed_checks": missed,
                       "duplicate_checks": dup, "max_gap_s": round(gap / 1000, 2),
                       "clusters": n, "interval_s": interval_ms / 1000}
                log("handoff_notice", json.dumps(row))
                rows.append(row)
        finally:
            procs.stop_all()
            statsd.close()
    return rows


SCENARIOS = {
    "throughput": (throughput, ["profile", "offered_per_s"]),
    "memory": (memory, ["clusters"]),
    "failover": (failover, ["event"]),
    "startup": (startup, ["documents", "case"]),
    "vs_blackbox": (vs_blackbox, ["clusters"]),
    "regional_outage": (regional_outage, ["monitor"]),
    "share_memory": (share_memory, ["monitor"]),
    "postgres_store": (postgres_store, ["case"]),
    "handoff_notice": (handoff_notice, ["case"]),
}


# Correctness figures: a table shows the worst run, never a median (one run
# that misses a check is a miss).
WORST = ("missed", "duplicate", "skipped", "max_gap")


def is_correctness(k):
    return any(k.startswith(w) or f"_{w}" in k for w in WORST)


def medians(runs, keys):
    """Per group of rows: speed figures as medians, correctness figures
    (missed, duplicated, skipped, gaps) as the worst run."""
    groups = {}
    for run in runs:
        for row in run:
            groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for _, rows in groups.items():
        m = {}
        for k, v in rows[0].items():
            nums = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            if k in keys or len(nums) != len(rows):
                m[k] = v
            elif is_correctness(k):
                m[k] = max(nums)
            else:
                m[k] = round(statistics.median(nums), 3)
        m["runs"] = len(rows)
        out.append(m)
    return out


def targets(sc):
    t = []

    def add(name, ok, detail):
        t.append({"target": name, "met": bool(ok), "detail": detail})

    tp = sc.get("throughput", [])
    for prof, want in [("healthz", 2000), ("full", 500)]:
        r = [x for x in tp if x["profile"] == prof and x["offered_per_s"] >= want]
        if r:
            x = min(r, key=lambda x: x["offered_per_s"])
            add(f"{want} {prof} checks/s, p99 lag < 1 s",
                x["achieved_per_s"] >= 0.97 * want and x["lag_p99_ms"] < 1000,
                f"{x['achieved_per_s']}/s at {x['offered_per_s']}/s offered, p99 lag {x['lag_p99_ms']} ms")
    for x in sc.get("memory", []):
        add(f"≤ 1 KB per cached cluster beyond credentials ({x['clusters']})", x["bytes_per_cluster"] <= 1024,
            f"{x['bytes_per_cluster']} B/cluster, {x['credential_bytes_per_cluster']} credential B/cluster")
        if x["clusters"] == 50000:
            lim = 60 + 50000 * x["credential_bytes_per_cluster"] / 2**20
            add("RSS at 50,000 clusters ≤ 60 MB + credential bytes (cache)", x["cache_rss_mb"] <= lim,
                f"{x['cache_rss_mb']} MB (limit {lim:.1f} MB)")
            add("... and with 1,650 slow checks in flight", x["rss_mb"] <= lim,
                f"{x['rss_mb']} MB with {x['inflight_checks']} in flight ({x['inflight_kb_per_check']} KB each)")
    for x in sc.get("failover", []):
        if x["event"].startswith("kill"):
            add(f"{x['event']}: re-owned ≤ 3 s (peer probes), no missed check after",
                x["reowned_s"] <= 3 and x["missed_after_reowned"] == 0,
                f"{x['reowned_s']} s, {x['missed_after_reowned']} missed after")
        elif x["event"] == "sigstop":
            # The last heartbeat may precede the pause by one interval.
            bound = x.get("ttl_s", 10) - x.get("heartbeat_s", 2)
            add("sigstop: no take-over before the heartbeat TTL (TTL − one heartbeat interval after the pause), "
                "no double check after it resumes",
                x.get("takeover_s", 0) >= bound and x.get("duplicates_after_resume", x["duplicate_checks"]) == 0,
                f"taken over after {x.get('takeover_s')} s (bound {bound} s), "
                f"{x.get('duplicates_after_resume')} double checks started after resuming"
                + (f" ({x['duplicates_after_resume_by_arrival']} by the arrival of their metrics)"
                   if "duplicates_after_resume_by_arrival" in x else "")
                + ", "
                f"{x['duplicate_checks']} duplicates in all (catch-ups of its checks after its last heartbeat), "
                f"{x['missed_after_reowned']} missed after")
        else:
            if x["event"] == "drain":
                add("drain: handed over ≤ 1 s", x["reowned_s"] <= 1, f"{x['reowned_s']} s")
            add(f"{x['event']}: zero missed checks", x["missed_checks"] == 0 and x["duplicate_checks"] == 0,
                f"{x['missed_checks']} missed, {x['duplicate_checks']} duplicates")
    for x in sc.get("handoff_notice", []):
        pushed = "pushed assignments" if x.get("pushes_to_new_owner", True) else "every push to the joining monitor refused"
        if not x.get("pushes_to_new_owner", True) and x["notice"] != "4s":
            continue  # what a lost push costs below the default: reported, not a target
        add(f"handoff notice {x['notice']} ({x['event']}, {pushed}): 0 missed, 0 doubled checks",
            x["missed_checks"] == 0 and x["duplicate_checks"] == 0,
            f"{x['missed_checks']} missed, {x['duplicate_checks']} doubled, handed over in {x['handed_over_s']} s")
    for x in sc.get("postgres_store", []):
        if x["case"] == "new_cluster_listen":
            poll = next((y for y in sc["postgres_store"] if y["case"] == "new_cluster_polling"), None)
            if poll:
                add("postgres: a new cluster's first check sooner with LISTEN/NOTIFY than by polling",
                    x["first_check_p50_ms"] < poll["first_check_p50_ms"],
                    f"p50 {x['first_check_p50_ms']} ms (max {x['first_check_max_ms']}) vs polling "
                    f"{poll['first_check_p50_ms']} ms (max {poll['first_check_max_ms']})")
    for x in sc.get("startup", []):
        add(f"ready within 5 s with 50,000 documents ({x.get('case', 'new fleet')})", x["ready_s"] <= 5,
            f"{x['ready_s']} s")
    for x in sc.get("regional_outage", []):
        what = f"{x.get('hanging')} of {x.get('clusters')} clusters hanging, {x.get('interval_ms', 0) / 1000:g} s interval"
        if x["monitor"] == "fleet":
            add(f"regional outage ({what}): healthy p99 lag < 1 s", x["healthy_lag_p99_ms"] < 1000,
                f"p99 {x['healthy_lag_p99_ms']} ms, p50 {x['healthy_lag_p50_ms']} ms")
            add("... 0 skipped checks", x["healthy_skipped"] == 0,
                f"{x['healthy_skipped']} skipped"
                + "".join(f", {k} {v}" for k, v in sorted((x.get("skipped_by_reason") or {}).items()))
                + " (counted over all clusters: the skip counter does not name the cluster)")
            add("... 0 missed healthy checks", x["healthy_missed"] == 0,
                f"{x['healthy_missed']} missed ({x.get('healthy_missed_clusters', 0)} clusters)")
        else:
            add(f"regional outage: {x['monitor']} RSS ≤ 60 MB + its credential MB", x["rss_mb"] <= x["rss_limit_mb"],
                f"{x['rss_mb']} MB (limit {x['rss_limit_mb']} MB), {x['inflight_max']} in flight at most")
    for x in sc.get("share_memory", []):
        if x["monitor"] != "all":
            add(f"shared store ({x['clusters']} clusters, {x['monitors']} monitors): {x['monitor']} RSS ≤ 60 MB + its credential MB",
                x["rss_mb"] <= x["rss_limit_mb"],
                f"{x['rss_mb']} MB (limit {x['rss_limit_mb']} MB), {x['cached']} cached, {x['buckets']} buckets")
            if x.get("rss_after_giveback_mb") is not None and not x.get("restarted"):
                add(f"shared store, after taking a killed peer's buckets and giving them back: {x['monitor']} RSS ≤ 60 MB + its credential MB",
                    x["rss_after_giveback_mb"] <= x["rss_limit_mb"],
                    f"{x['rss_after_giveback_mb']} MB (limit {x['rss_limit_mb']} MB), "
                    f"{x['rss_while_holding_more_mb']} MB while holding more")
    for x in sc.get("vs_blackbox", []):
        rate = f"{x.get('clusters')} clusters, {x.get('offered_per_s', '?')} probes/s"
        add(f"≤ half the CPU per probe of Prometheus + blackbox_exporter ({rate})",
            x["clustermon_cpu_s_per_1000"] <= x["blackbox_cpu_s_per_1000"] / 2,
            f"{x['clustermon_cpu_s_per_1000']} vs {x['blackbox_cpu_s_per_1000']} CPU-s per 1000")
        detail = f"{x['clustermon_cpu_s_per_1000']} vs {x['fleetsim_cpu_s_per_1000_clustermon']} CPU-s per 1000"
        if x.get("floor_client_cpu_s_per_1000") is not None:
            # The target stays as written (whole CPU per probe, both ends);
            # the loopback's floor measured in the same run says how much of
            # each side is the kernel's TCP, which no client avoids.
            fc, fs = x["floor_client_cpu_s_per_1000"], x["floor_server_cpu_s_per_1000"]
            detail += (f"; loopback floor (tcp-floor, same rate) client {fc:.3f} vs server {fs:.3f}"
                       f" ({fc / fs:.2f}x); above the floor {x['clustermon_cpu_s_per_1000'] - fc:.3f}"
                       f" vs {x['fleetsim_cpu_s_per_1000_clustermon'] - fs:.3f}")
        add(f"healthz: monitor CPU per probe ≤ fleetsim's per answer, same run ({rate})",
            x["clustermon_cpu_s_per_1000"] <= x["fleetsim_cpu_s_per_1000_clustermon"],
            detail)
    for x in sc.get("throughput", []):
        if x["profile"] == "full" and x["achieved_per_s"] >= 0.97 * x["offered_per_s"]:
            add(f"full profile: monitor CPU per check ≤ half of fleetsim's, same run ({x['offered_per_s']}/s)",
                x["cpu_s_per_1000_checks"] <= x["fleetsim_cpu_s_per_1000_checks"] / 2,
                f"{x['cpu_s_per_1000_checks']} vs {x['fleetsim_cpu_s_per_1000_checks']} CPU-s per 1000 "
                f"({x.get('checks_per_cpu_s', '?')} checks per CPU-second)")
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--rates", default="500,1000,2000,5000")
    ap.add_argument("--window", type=float, default=10.0, help="seconds measured per throughput point")
    ap.add_argument("--quick", action="store_true", help="small sizes, to try the bench itself")
    ap.add_argument("--outage-clusters", type=int, default=0,
                    help="regional_outage: clusters (default 50,000; --quick 5,000)")
    ap.add_argument("--outage-interval", type=float, default=0,
                    help="regional_outage: check interval in seconds (default 60; --quick 40); "
                         "the check timeout stays at clustermon's default 30 s")
    ap.add_argument("--outage-window", type=float, default=0,
                    help="regional_outage: seconds measured after the warm-up (default one interval)")
    ap.add_argument("--failover-events", default="kill-9-member,kill-9-master,sigstop,sigterm,drain",
                    help="failover: the events to run, in order")
    ap.add_argument("--handoff-cases", default="4s,1s,250ms,4s-lost,250ms-lost",
                    help="handoff_notice: notices to run; -lost: the joining monitor refuses every push")
    ap.add_argument("--share-clusters", type=int, default=0,
                    help="share_memory: clusters (default 300,000; --quick 5,000)")
    ap.add_argument("--keep", action="store_true",
                    help="keep each run's temporary directory (the processes' logs)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "results.json"))
    a = ap.parse_args()
    a.rates = [int(x) for x in a.rates.split(",")]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    prev = {}
    if os.path.exists(a.out):
        with open(a.out) as f:
            prev = json.load(f)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {platform.release()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "scenarios": prev.get("scenarios", {}),
        "runs": prev.get("runs", {}),
        # Each scenario keeps the commit, date and command that produced it,
        # also when merged with an older file.
        "provenance": prev.get("provenance", {}),
    }
    try:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    for name in a.only.split(","):
        fn, keys = SCENARIOS[name]
        all_runs = []
        n = 1 if name == "startup" else a.runs  # startup repeats inside
        for i in range(n):
            tmp = tempfile.mkdtemp(prefix=f"clustermon-bench-{name}-")
            try:
                log(f"{name}: run {i + 1}/{n}")
                all_runs.append(fn(a, tmp))
            finally:
                if a.keep:
                    log(f"{name}: kept {tmp}")
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
        if name == "startup":
            # One row per case in each repeat.
            all_runs = [all_runs[0][k:k + 2] for k in range(0, len(all_runs[0]), 2)]
        results["runs"][name] = all_runs
        results["scenarios"][name] = medians(all_runs, keys)
        results["provenance"][name] = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
                                       "command": " ".join(sys.argv), "runs": len(all_runs)}
        results["targets"] = targets(results["scenarios"])
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\nmedians of {a.runs} runs; missed, duplicates, skipped and gaps: the worst run "
          f"({results['machine']}, {results['date']}):")
    for name, rows in results["scenarios"].items():
        print(f"\n## {name}")
        if rows:
            # Every row's keys (the rows of a scenario may differ), without
            # the lists and maps (time series) that only results.json keeps.
            cols = []
            for r in rows:
                cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (list, dict))]
            print(" | ".join(cols))
            for r in rows:
                print(" | ".join(str(r.get(c, "")) for c in cols))
    print("\n## targets")
    for t in results.get("targets", []):
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['detail']}")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
