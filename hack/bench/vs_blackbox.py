#!/usr/bin/env python3
"""clustermon (healthz profile) against Prometheus + blackbox_exporter, on the
same simulated fleet at the same probe rate (clusters / interval per second).

  hack/bench/vs_blackbox.py --clusters 500 --interval 5 --seconds 20

One fleetsim (plain http, registered into WORKDIR/store.db) serves both sides.
The phases run one after the other, never at once (clustermon, then
Prometheus + exporter; with --rounds N that pair is repeated N times and the
medians are reported). In each phase the side under test gets a warm-up of one
interval + 2 s, then a steady window of --seconds during which we take:

  * CPU seconds (utime+stime from /proc/PID/stat) of the side under test:
    clustermon alone, or Prometheus + blackbox_exporter together; and of
    fleetsim, reported apart;
  * the work done in the window:
      clustermon: `apiserver.healthz.code` statsd lines received on our own
      UDP socket (one per check);
      blackbox:   probe_success samples that Prometheus stored with a
      timestamp inside the window (`sum(count_over_time(probe_success[W]))`
      evaluated at the window's end, W = window length): one per probe that
      the exporter ran and Prometheus ingested.
    Cross-checks: fleetsim's own count of requests its clusters answered
    (GET /control/stats) for both sides, and Prometheus' scrape count
    (prometheus_target_interval_length_seconds_count) for the blackbox side;
  * RSS (VmRSS at the end of the window; VmHWM as *_rss_peak_mb) of the side
    under test, summed over Prometheus + exporter.

Installs Debian's prometheus and prometheus-blackbox-exporter with apt-get
when missing (needs root). Every process started here runs in its own process
group and is stopped (SIGTERM, then SIGKILL) before returning, also on errors.
All traffic stays on 127.0.0.1. Prints one JSON object.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_s, mem_kb  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
EXPORTER = "/usr/bin/prometheus-blackbox-exporter"
HEALTHZ_PREFIX = b"apiserver.healthz.code"


def log(msg):
    print(f"vs_blackbox: {msg}", file=sys.stderr, flush=True)


# /proc helpers: shared with bench.py

def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_tcp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_http_ok(url, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            http_get(url, timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer {url} within {timeout}s")
            time.sleep(0.2)


# --- processes -----------------------------------------------------------------

class Procs:
    """Processes started here, each in its own process group."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        try:
            p = subprocess.Popen(args, start_new_session=True, **kw)
        finally:
            # Log files opened for the child: it has its own copy now.
            for k in ("stdout", "stderr"):
                if hasattr(kw.get(k), "fileno") and hasattr(kw.get(k), "close"):
                    kw[k].close()
        self.procs.append(p)
        return p

    def stop(self, p, timeout=20):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ({p.args[0]}) ignored SIGTERM for {timeout}s; SIGKILL")
        # Whatever is left in the group (the leader or anything it spawned).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        # Signal everything first, so the waits overlap.
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in list(reversed(self.procs)):
            self.stop(p)


def pids_of(exes):
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/exe") in exes:
                    out.add(int(d))
            except OSError:
                pass
    return out


def ensure_installed():
    if os.path.exists(PROMETHEUS) and os.path.exists(EXPORTER):
        return
    log("prometheus / prometheus-blackbox-exporter missing: installing with apt-get")
    watched = {PROMETHEUS, EXPORTER, "/usr/bin/prometheus-node-exporter"}
    before = pids_of(watched)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "prometheus", "prometheus-blackbox-exporter"]):
        log("$ " + " ".join(cmd))
        r = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with {r.returncode}")
    # The packages' maintainer scripts may start the daemons (on hosts without
    # a policy-rc.d that forbids it). Those were started by us: stop them.
    for pid in sorted(pids_of(watched) - before):
        log(f"stopping daemon pid {pid} started by the package install")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not (os.path.exists(PROMETHEUS) and os.path.exists(EXPORTER)):
        raise RuntimeError("install finished but the binaries are still missing")
    log("installed")


# --- statsd receiver ---------------------------------------------------------------

class StatsdCounter(threading.Thread):
    """Counts `apiserver.healthz.code` lines (one per check) on a UDP socket."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        except OSError:
            pass
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.checks = 0
        self.ok = 0
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                break
            for line in data.split(b"\n"):
                if line.startswith(HEALTHZ_PREFIX):
                    self.checks += 1
                    if line.startswith(HEALTHZ_PREFIX + b":200|"):
                        self.ok += 1

    def close(self):
        self.stopping.set()
        self.join(timeout=2)
        self.sock.close()


# --- the fleet -------------------------------------------------------------------------

def drain(stream):
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def start_fleet(procs, bin_dir, clusters, workdir):
    store = f"sqlite:{workdir}/store.db"
    t = time.monotonic()
    sim = procs.start([f"{bin_dir}/fleetsim", "--listen", "127.0.0.1:0", "--plain-http",
                       "--clusters", str(clusters), "--register", store],
                      stdout=subprocess.PIPE, stderr=open(f"{workdir}/fleetsim.log", "w"), text=True)
    line = sim.stdout.readline().strip()
    if not line.startswith("fleetsim listening on "):
        raise RuntimeError(f"fleetsim did not start (got {line!r}); see {workdir}/fleetsim.log")
    drain(sim.stdout)
    url = line.removeprefix("fleetsim listening on ")
    fleet = json.loads(http_get(f"{url}/control/clusters", timeout=30))
    if len(fleet) != clusters:
        raise RuntimeError(f"fleetsim lists {len(fleet)} clusters, want {clusters}")
    log(f"fleet of {clusters} at {url} (registered in {time.monotonic() - t:.1f}s)")
    return sim, url, store, [c["url"].rstrip("/") + "/healthz" for c in fleet]


def fleet_requests(url):
    return json.loads(http_get(f"{url}/control/stats", timeout=10))["requests"]


def duration(s):
    """Seconds as a Prometheus / clustermon duration string."""
    ms = int(round(s * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# --- phase (a): clustermon -----------------------------------------------------------

def phase_clustermon(procs, bin_dir, sim, fleet_url, store, interval_s, seconds, workdir, tag):
    rx = StatsdCounter()
    rx.start()
    mon = None
    try:
        mon = procs.start([f"{bin_dir}/clustermon", "run", "--store", store,
                           "--statsd", f"udp:127.0.0.1:{rx.port}", "--id", "bench",
                           "--admin-listen", "127.0.0.1:0", "--interval", duration(interval_s),
                           "--collectors", "healthz", "--check-timeout", "5s"],
                          stdout=subprocess.DEVNULL, stderr=open(f"{workdir}/clustermon{tag}.log", "w"))
        time.sleep(interval_s + 2)
        if mon.poll() is not None:
            raise RuntimeError(f"clustermon exited with {mon.returncode}; see {workdir}/clustermon{tag}.log")
        c0, f0, n0, ok0, r0, t0 = cpu_s(mon.pid), cpu_s(sim.pid), rx.checks, rx.ok, fleet_requests(fleet_url), time.monotonic()
        time.sleep(seconds)
        c1, f1, n1, ok1, r1, t1 = cpu_s(mon.pid), cpu_s(sim.pid), rx.checks, rx.ok, fleet_requests(fleet_url), time.monotonic()
        rss, hwm = mem_kb(mon.pid, "VmRSS"), mem_kb(mon.pid, "VmHWM")
        if mon.poll() is not None:
            raise RuntimeError(f"clustermon exited with {mon.returncode} during the window")
    finally:
        if mon is not None:
            procs.stop(mon)
        rx.close()
    n, w = n1 - n0, t1 - t0
    return {
        "checks": n,
        "checks_per_s": n / w,
        "ok_ratio": (ok1 - ok0) / n if n else 0.0,
        "cpu_s_per_1000": (c1 - c0) / max(n, 1) * 1000,
        "cpu_percent": (c1 - c0) / w * 100,
        "rss_mb": rss / 1024,
        "rss_peak_mb": hwm / 1024,
        "fleetsim_cpu_s_per_1000": (f1 - f0) / max(n, 1) * 1000,
        "fleetsim_requests_per_s": (r1 - r0) / w,
    }


def phase_floor(bin_dir, rate, seconds):
    """tcp-floor (hack/fleetsim/src/bin/tcp-floor.rs) at the probe rate: the
    CPU per connection of a minimal blocking client and server over the
    loopback, the share of clustermon's and fleetsim's CPU per probe that
    the kernel's TCP (and its cross-charging between the two ends) takes."""
    out = subprocess.run([f"{bin_dir}/tcp-floor", "--rate", f"{rate:g}", "--seconds", f"{seconds:g}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"tcp-floor failed: {out.stderr.strip()}")
    f = json.loads(out.stdout)
    return {"floor_client_cpu_s_per_1000": f["client_us"] / 1000,
            "floor_server_cpu_s_per_1000": f["server_us"] / 1000}


# --- phase (b): Prometheus + blackbox_exporter --------------------------------------

def prom_query(prom, query, at):
    q = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    body = json.loads(http_get(f"{prom}/api/v1/query?{q}", timeout=30))
    if body.get("status") != "success":
        raise RuntimeError(f"query {query!r} failed: {body}")
    res = body["data"]["result"]
    return float(res[0]["value"][1]) if res else 0.0


def prom_scrapes(prom):
    """Scrapes done so far (all intervals), from Prometheus' own /metrics."""
    total = 0.0
    for line in http_get(f"{prom}/metrics", timeout=10).decode().splitlines():
        if line.startswith("prometheus_target_interval_length_seconds_count"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def phase_blackbox(procs, sim, fleet_url, targets, interval_s, seconds, workdir, tag):
    bb_port, prom_port = free_tcp_port(), free_tcp_port()
    bb_yml, prom_yml = f"{workdir}/blackbox.yml", f"{workdir}/prometheus.yml"
    sd_json, tsdb = f"{workdir}/targets.json", f"{workdir}/prometheus-data{tag}"
    with open(bb_yml, "w") as f:
        f.write(
            "modules:\n"
            "  http_2xx:\n"
            "    prober: http\n"
            "    timeout: 5s\n"
            "    http:\n"
            "      method: GET\n"
            "      valid_status_codes: [200]\n"
            "      preferred_ip_protocol: ip4\n")
    with open(sd_json, "w") as f:
        json.dump([{"targets": targets, "labels": {"fleet": "sim"}}], f)
    iv = duration(interval_s)
    with open(prom_yml, "w") as f:
        f.write(
            "global:\n"
            f"  scrape_interval: {iv}\n"
            f"  scrape_timeout: {iv}\n"   # <= interval; the exporter caps it at the module's 5s
            "  evaluation_interval: 1m\n"
            "scrape_configs:\n"
            "  - job_name: blackbox\n"
            "    metrics_path: /probe\n"
            "    params:\n"
            "      module: [http_2xx]\n"
            "    file_sd_configs:\n"
            f"      - files: ['{sd_json}']\n"
            "        refresh_interval: 5m\n"
            "    relabel_configs:\n"
            "      - source_labels: [__address__]\n"
            "        target_label: __param_target\n"
            "      - source_labels: [__param_target]\n"
            "        target_label: instance\n"
            "      - target_label: __address__\n"
            f"        replacement: 127.0.0.1:{bb_port}\n")
    bb = prom = None
    try:
        bb = procs.start([EXPORTER, f"--config.file={bb_yml}", f"--web.listen-address=127.0.0.1:{bb_port}",
                          "--log.level=warn"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{workdir}/blackbox{tag}.log", "w"))
        wait_http_ok(f"http://127.0.0.1:{bb_port}/metrics", bb, "blackbox_exporter")
        prom_url = f"http://127.0.0.1:{prom_port}"
        prom = procs.start([PROMETHEUS, f"--config.file={prom_yml}", f"--storage.tsdb.path={tsdb}",
                            "--storage.tsdb.retention.time=1h", "--storage.tsdb.retention.size=512MB",
                            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                           stdout=subprocess.DEVNULL, stderr=open(f"{workdir}/prometheus{tag}.log", "w"))
        wait_http_ok(f"{prom_url}/-/ready", prom, "prometheus")
        # Prometheus hands discovered targets to its scrape loops only every
        # 5 s, and each loop waits its own offset before its first scrape:
        # start the warm-up once every target has been probed once.
        deadline = time.monotonic() + 2 * interval_s + 30
        while True:
            for p, what in ((bb, "blackbox_exporter"), (prom, "prometheus")):
                if p.poll() is not None:
                    raise RuntimeError(f"{what} exited with {p.returncode}; see its log in {workdir}")
            active = json.loads(http_get(f"{prom_url}/api/v1/targets?state=active", timeout=30))["data"]["activeTargets"]
            scraped = sum(1 for t in active if t.get("health") != "unknown")
            if len(active) == len(targets) and scraped == len(targets):
                break
            if time.monotonic() > deadline:
                log(f"warning: prometheus has {len(active)} active targets, {scraped} scraped, want {len(targets)}")
                break
            time.sleep(0.5)
        time.sleep(interval_s + 2)

        def cpu():
            return cpu_s(prom.pid) + cpu_s(bb.pid)
        c0, f0, s0, r0, t0, w0 = cpu(), cpu_s(sim.pid), prom_scrapes(prom_url), fleet_requests(fleet_url), time.monotonic(), time.time()
        time.sleep(seconds)
        c1, f1, s1, r1, t1, w1 = cpu(), cpu_s(sim.pid), prom_scrapes(prom_url), fleet_requests(fleet_url), time.monotonic(), time.time()
        rss = mem_kb(prom.pid, "VmRSS") + mem_kb(bb.pid, "VmRSS")
        hwm = mem_kb(prom.pid, "VmHWM") + mem_kb(bb.pid, "VmHWM")
        prom_rss = mem_kb(prom.pid, "VmRSS")
        # Samples are stamped with the scrape's start; give the probes that
        # started just before the window's end time to land.
        time.sleep(1.5)
        win = f"{int(round((w1 - w0) * 1000))}ms"
        probes = prom_query(prom_url, f"sum(count_over_time(probe_success{{job='blackbox'}}[{win}]))", w1)
        ok = prom_query(prom_url, f"sum(sum_over_time(probe_success{{job='blackbox'}}[{win}]))", w1)
        for p, what in ((bb, "blackbox_exporter"), (prom, "prometheus")):
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode} during the window")
    finally:
        for p in (prom, bb):
            if p is not None:
                procs.stop(p)
    w = t1 - t0
    return {
        "checks": probes,
        "checks_per_s": probes / w,
        "ok_ratio": ok / probes if probes else 0.0,
        "cpu_s_per_1000": (c1 - c0) / max(probes, 1) * 1000,
        "cpu_percent": (c1 - c0) / w * 100,
        "rss_mb": rss / 1024,
        "rss_peak_mb": hwm / 1024,
        "prometheus_rss_mb": prom_rss / 1024,
        "scrapes_per_s": (s1 - s0) / w,
        "fleetsim_cpu_s_per_1000": (f1 - f0) / max(probes, 1) * 1000,
        "fleetsim_requests_per_s": (r1 - r0) / w,
    }


# --- the comparison ------------------------------------------------------------------

def run(bin_dir: str, clusters: int, interval_s: float, seconds: float, workdir: str, rounds: int = 1) -> dict:
    ensure_installed()
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    bin_dir = os.path.abspath(bin_dir)
    for b in ("clustermon", "fleetsim", "tcp-floor"):
        if not os.access(f"{bin_dir}/{b}", os.X_OK):
            raise RuntimeError(f"{bin_dir}/{b} missing (cargo build --release --bins)")
    if os.path.exists(f"{workdir}/store.db"):
        os.remove(f"{workdir}/store.db")
    procs = Procs()
    cm, bb = [], []
    try:
        sim, fleet_url, store, targets = start_fleet(procs, bin_dir, clusters, workdir)
        for i in range(rounds):
            tag = f"-{i + 1}" if rounds > 1 else ""
            log(f"round {i + 1}/{rounds}: clustermon healthz, {seconds:g}s window")
            cm.append(phase_clustermon(procs, bin_dir, sim, fleet_url, store, interval_s, seconds, workdir, tag))
            log(f"round {i + 1}/{rounds}: the loopback's floor, tcp-floor at the same rate")
            cm[-1].update(phase_floor(bin_dir, clusters / interval_s, min(seconds, 10.0)))
            log(f"round {i + 1}/{rounds}: prometheus + blackbox_exporter, {seconds:g}s window")
            bb.append(phase_blackbox(procs, sim, fleet_url, targets, interval_s, seconds, workdir, tag))
    finally:
        procs.stop_all()

    def med(rows, key, nd=3):
        return round(statistics.median(r[key] for r in rows), nd)

    out = {
        "clustermon_cpu_s_per_1000": med(cm, "cpu_s_per_1000"),
        "blackbox_cpu_s_per_1000": med(bb, "cpu_s_per_1000"),
        "clustermon_rss_mb": med(cm, "rss_mb", 1),
        "blackbox_rss_mb": med(bb, "rss_mb", 1),
        "clusters": clusters,
        "interval_s": interval_s,
        "offered_per_s": round(clusters / interval_s, 1),
        "clustermon_checks_per_s": med(cm, "checks_per_s", 1),
        "blackbox_probes_per_s": med(bb, "checks_per_s", 1),
        "fleetsim_cpu_s_per_1000_clustermon": med(cm, "fleetsim_cpu_s_per_1000"),
        "fleetsim_cpu_s_per_1000_blackbox": med(bb, "fleetsim_cpu_s_per_1000"),
        # The loopback's floor at the same rate (tcp-floor, run right after
        # each clustermon phase): a minimal blocking client's and server's
        # CPU per plain-HTTP probe.
        "floor_client_cpu_s_per_1000": med(cm, "floor_client_cpu_s_per_1000"),
        "floor_server_cpu_s_per_1000": med(cm, "floor_server_cpu_s_per_1000"),
        # Extras.
        "window_s": seconds,
        "rounds": rounds,
        "clustermon_cpu_percent": med(cm, "cpu_percent", 1),
        "blackbox_cpu_percent": med(bb, "cpu_percent", 1),
        "clustermon_rss_peak_mb": med(cm, "rss_peak_mb", 1),
        "blackbox_rss_peak_mb": med(bb, "rss_peak_mb", 1),
        "prometheus_rss_mb": med(bb, "prometheus_rss_mb", 1),
        "clustermon_ok_ratio": med(cm, "ok_ratio"),
        "blackbox_ok_ratio": med(bb, "ok_ratio"),
        "blackbox_scrapes_per_s": med(bb, "scrapes_per_s", 1),
        "fleetsim_requests_per_s_clustermon": med(cm, "fleetsim_requests_per_s", 1),
        "fleetsim_requests_per_s_blackbox": med(bb, "fleetsim_requests_per_s", 1),
    }
    if rounds > 1:
        out["per_round"] = {"clustermon": cm, "blackbox": bb}
    return out


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--interval", type=float, default=5, help="seconds between two checks of one cluster")
    ap.add_argument("--seconds", type=float, default=20, help="steady window per phase")
    ap.add_argument("--rounds", type=int, default=1, help="clustermon/blackbox pairs to run (medians reported)")
    ap.add_argument("--bin-dir", default=None, help="default: target/release, else target/debug")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory, removed afterwards")
    a = ap.parse_args()
    bin_dir = a.bin_dir
    if bin_dir is None:
        bin_dir = os.path.join(repo, "target/release")
        if not os.path.exists(os.path.join(bin_dir, "clustermon")):
            bin_dir = os.path.join(repo, "target/debug")
            log(f"no release build; using {bin_dir}")
    workdir = a.workdir or tempfile.mkdtemp(prefix="clustermon-vs-blackbox-")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    try:
        out = run(bin_dir, a.clusters, a.interval, a.seconds, workdir, rounds=a.rounds)
    finally:
        if a.workdir is None:
            subprocess.run(["rm", "-rf", workdir])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
