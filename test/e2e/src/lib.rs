//! End-to-end harness: the real `clustermon` and `fleetsim` binaries (built
//! by `make build`), a real SQLite file in a temporary directory, and a real
//! UDP statsd receiver recording every line with its arrival time. Every
//! wait has a deadline; every child process is killed when its guard drops.

// The e2e harness times real processes: std's clock is the right one here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod forward;
mod postgres;
pub mod prometheus;
pub use forward::Forwarder;
pub use postgres::PostgresServer;

/// `target/debug` (or wherever this test binary was built).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-<hash> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (`make build`, or `make e2e`)",
        p.display()
    );
    p
}

/// A scratch directory removed on drop (kept when the test panicked, for the logs).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "clustermon-e2e-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("e2e: keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let err = File::create(&log).expect("log file");
        let child = cmd
            .env("CLUSTERMON_COSMOS_KEY", EMULATOR_KEY)
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_string(),
            child,
            log,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.name);
    }

    /// SIGKILL and reap.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// One statsd line with its arrival time.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub name: String,
    pub value: String,
    pub tags: BTreeMap<String, String>,
}

impl Line {
    pub fn parse(at: Instant, raw: &str) -> Option<Self> {
        let (name, rest) = raw.split_once(':')?;
        let mut parts = rest.split('|');
        let value = parts.next()?.to_string();
        let mut tags = BTreeMap::new();
        for p in parts {
            if let Some(t) = p.strip_prefix('#') {
                for kv in t.split(',') {
                    let (k, v) = kv.split_once(':').unwrap_or((kv, ""));
                    tags.insert(k.to_string(), v.to_string());
                }
            }
        }
        Some(Self {
            at,
            name: name.to_string(),
            value,
            tags,
        })
    }
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.get(k).map(String::as_str)
    }
    pub fn resource(&self) -> Option<&str> {
        self.tag("resourceId")
    }
}

/// A UDP statsd receiver on 127.0.0.1:0 recording every line.
pub struct Statsd {
    pub addr: String,
    lines: Arc<Mutex<Vec<Line>>>,
    raw: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Statsd {
    pub fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        // A receive buffer of up to 8 MiB (the kernel caps it at
        // net.core.rmem_max): several monitors' bursts on a loaded machine
        // must not overflow it while this thread waits for the CPU.
        {
            use std::os::fd::AsRawFd;
            let size: libc::c_int = 8 << 20;
            // SAFETY: a valid socket and a c_int option of its size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let addr = sock.local_addr().expect("addr").to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, r, s) = (lines.clone(), raw.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                // Parsed before the lock is taken: the test thread's reads
                // hold it, and the socket is not read meanwhile.
                let parsed: Vec<Line> = text
                    .lines()
                    .filter(|x| !x.is_empty())
                    .filter_map(|line| Line::parse(at, line))
                    .collect();
                l.lock().unwrap().extend(parsed);
                r.lock().unwrap().push(text);
            }
        });
        Self {
            addr,
            lines,
            raw,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams the kernel dropped at this receiver (its buffer was
    /// full), from `/proc/net/udp`; `None` when not readable.
    pub fn kernel_drops(&self) -> Option<u64> {
        let port: u16 = self.addr.rsplit(':').next()?.parse().ok()?;
        let local = format!("0100007F:{port:04X}");
        let table = std::fs::read_to_string("/proc/net/udp").ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())).then(|| f.last()?.parse().ok())?
        })
    }

    pub fn target(&self) -> String {
        format!("udp:{}", self.addr)
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    /// Every datagram received, as text.
    pub fn raw(&self) -> String {
        self.raw.lock().unwrap().join("\n")
    }

    /// `(time, cluster id, code)` of every `apiserver.healthz.code` line.
    pub fn checks(&self) -> Vec<(Instant, String, i64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.name == "apiserver.healthz.code")
            .filter_map(|l| Some((l.at, l.resource()?.to_string(), l.value.parse().ok()?)))
            .collect()
    }

    /// Check times per cluster.
    pub fn check_times(&self) -> BTreeMap<String, Vec<Instant>> {
        let mut m: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for (at, id, _) in self.checks() {
            m.entry(id).or_default().push(at);
        }
        m
    }

    /// Sum of a counter's values over every monitor, for lines whose tags
    /// include all of `tags`.
    pub fn counter_sum(&self, name: &str, tags: &[(&str, &str)]) -> u64 {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.name == name && tags.iter().all(|(k, v)| l.tag(k) == Some(*v)))
            .filter_map(|l| l.value.parse::<u64>().ok())
            .sum()
    }

    /// The last value of a self gauge per monitor.
    pub fn last_self_gauge(&self, name: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for l in self.lines.lock().unwrap().iter().filter(|l| l.name == name) {
            if let Some(mon) = l.tag("monitor") {
                m.insert(mon.to_string(), l.value.clone());
            }
        }
        m
    }
}

impl Drop for Statsd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The local Cosmos DB endpoint's well-known key. Every child process gets
/// it as CLUSTERMON_COSMOS_KEY (a SQLite store ignores it).
pub const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// The project's patched local Cosmos DB endpoint (hack/cosmos-emulator),
/// with the database and containers created by `clustermon store init`.
pub struct CosmosEmulator {
    pub proc: Proc,
    /// `cosmos://127.0.0.1:PORT/DATABASE`
    pub store: String,
    /// `http://127.0.0.1:PORT`, for the control endpoints.
    pub base: String,
}

impl CosmosEmulator {
    pub fn start(dir: &Path, database: &str) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/cosmos-emulator/start.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg(database).stdout(Stdio::piped());
        let mut proc = Proc::spawn("cosmos-emulator", &mut cmd, dir);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let url = lines.next().and_then(Result::ok);
            let _key = lines.next();
            let _ = tx.send(url);
            for _ in lines {}
        });
        let store = rx
            .recv_timeout(Duration::from_secs(300))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the cosmos emulator did not start: {}", proc.log_text()));
        let base = store
            .strip_prefix("cosmos://")
            .and_then(|r| r.split('/').next())
            .map(|hp| format!("http://{hp}"))
            .unwrap_or_else(|| panic!("unexpected emulator URL {store:?}"));
        let (code, out, err) = clustermon(&["store", "init", "--store", &store]);
        assert_eq!(code, 0, "clustermon store init: {out}{err}");
        Self { proc, store, base }
    }

    /// Sets the emulator's fault injection (throttle_share, retry_after_ms, unavailable).
    pub fn set_faults(&self, faults: Value) -> Value {
        http(
            "POST",
            &format!("{}/_emulator/faults", self.base),
            Some(&faults.to_string()),
        )
        .expect("POST /_emulator/faults")
    }

    /// Request counts and charges per operation kind since start.
    pub fn stats(&self) -> Value {
        http("GET", &format!("{}/_emulator/stats", self.base), None).expect("GET /_emulator/stats")
    }
}

/// The simulated fleet.
pub struct Fleet {
    pub proc: Proc,
    pub url: String,
}

impl Fleet {
    /// Starts fleetsim and waits for its first stdout line.
    pub fn start(dir: &Path, store: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin("fleetsim"));
        cmd.args(["--listen", "127.0.0.1:0", "--register", store])
            .args(args)
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("fleetsim", &mut cmd, dir);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("fleetsim did not start: {}", proc.log_text()));
        let url = first
            .trim()
            .strip_prefix("fleetsim listening on ")
            .unwrap_or_else(|| panic!("unexpected fleetsim output {first:?}: {}", proc.log_text()))
            .to_string();
        Self { proc, url }
    }

    pub fn clusters(&self) -> Vec<Value> {
        let v = http("GET", &format!("{}/control/clusters", self.url), None)
            .expect("GET /control/clusters");
        v.as_array().cloned().expect("array")
    }

    pub fn set_faults(&self, id: &str, faults: &[&str]) -> Value {
        let body = serde_json::json!({ "faults": faults }).to_string();
        http(
            "POST",
            &format!("{}/control/clusters/{id}/faults", self.url),
            Some(&body),
        )
        .expect("POST faults")
    }
}

/// `GET url`: (status code, body), for answers that need not be JSON.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http:// only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok((code, body.to_string()))
}

/// Admin URL of each live monitor, from `clustermon status`.
pub fn admin_urls(store: &str) -> BTreeMap<String, String> {
    clustermon_json(&["status", "--store", store])
        .and_then(|v| v["monitors"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            Some((
                m["id"].as_str()?.to_string(),
                m["admin_url"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Runs headless Chromium (Debian's, installed by `make test`) on `url`
/// with a profile of its own under `dir` and the given extra arguments;
/// returns its stdout.
fn chromium(url: &str, dir: &Path, profile: &str, extra: &[String]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=8000",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", dir.join(profile).display()))
        .arg(url)
        .output()
        .expect("run chromium (make test installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads a page in headless Chromium and returns the DOM after its scripts
/// ran.
pub fn chromium_dom(url: &str, dir: &Path) -> String {
    chromium(url, dir, "chromium-profile", &["--dump-dom".into()])
}

/// Renders a page in headless Chromium to a PNG kept after the run, in
/// `target/e2e-artifacts/NAME` (next to the binaries' directory); returns
/// its path.
pub fn chromium_screenshot(url: &str, dir: &Path, name: &str) -> PathBuf {
    let out_dir = bin_dir()
        .parent()
        .map_or_else(bin_dir, Path::to_path_buf)
        .join("e2e-artifacts");
    std::fs::create_dir_all(&out_dir).expect("create target/e2e-artifacts");
    let shot = out_dir.join(name);
    let _ = std::fs::remove_file(&shot);
    chromium(
        url,
        dir,
        "chromium-profile-shot",
        &[
            "--hide-scrollbars".into(),
            "--window-size=1500,1400".into(),
            format!("--screenshot={}", shot.display()),
        ],
    );
    shot
}

/// A minimal HTTP/1.1 client for the control endpoint (plain http, loopback).
pub fn http(method: &str, url: &str, body: Option<&str>) -> Result<Value, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http:// only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 2") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
}

/// Runs `clustermon ARGS`, returning (exit code, stdout, stderr).
pub fn clustermon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("clustermon"))
        .args(args)
        .env("CLUSTERMON_COSMOS_KEY", EMULATOR_KEY)
        .env_remove("RUST_LOG")
        .output()
        .expect("run clustermon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `clustermon ARGS --output json`, decoded; None when the command failed.
pub fn clustermon_json(args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let (code, out, _) = clustermon(&a);
    if code != 0 {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Owner of each bucket (None when unassigned).
pub fn buckets(store: &str) -> Option<Vec<Option<String>>> {
    let v = clustermon_json(&["buckets", "--store", store])?;
    v.as_array()
        .map(|a| a.iter().map(|o| o.as_str().map(str::to_string)).collect())
}

/// Buckets per owner.
pub fn loads(owners: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in owners.iter().flatten() {
        *m.entry(o.clone()).or_insert(0) += 1;
    }
    m
}

/// The master's id, from `clustermon status`.
pub fn master(store: &str) -> Option<String> {
    let v = clustermon_json(&["status", "--store", store])?;
    v["master"]["id"].as_str().map(str::to_string)
}

/// Monitor processes on one store.
pub struct Monitors {
    pub store: String,
    pub statsd: String,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    /// Log level of the monitors (`CLUSTERMON_LOG_LEVEL`; `--log-level` in `extra` wins).
    pub log: String,
    pub procs: BTreeMap<String, Proc>,
}

impl Monitors {
    pub fn new(dir: &Path, store: &str, statsd: &Statsd, extra: &[&str]) -> Self {
        Self {
            store: store.to_string(),
            statsd: statsd.target(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            // E2E_MONITOR_LOG: a finer level for a run under study, e.g.
            // `info,clustermon_core::schedule=debug` (each check's due time).
            log: std::env::var("E2E_MONITOR_LOG").unwrap_or_else(|_| "info".into()),
            procs: BTreeMap::new(),
        }
    }

    pub fn start(&mut self, id: &str) {
        self.start_with(id, &[], &[]);
    }

    pub fn get(&mut self, id: &str) -> &mut Proc {
        self.procs.get_mut(id).expect("monitor")
    }
}

/// All 256 buckets owned by the given monitors, loads within 1.
pub fn balanced(owners: &[Option<String>], monitors: &[&str]) -> bool {
    if owners.len() != 256 || owners.iter().any(Option::is_none) {
        return false;
    }
    let l = loads(owners);
    if l.len() != monitors.len() || !monitors.iter().all(|m| l.contains_key(*m)) {
        return false;
    }
    let (min, max) = (l.values().min().copied(), l.values().max().copied());
    matches!((min, max), (Some(a), Some(b)) if b - a <= 1)
}

/// The longest time any cluster of `ids` went without a check, counting
/// every gap that overlaps `[from, to]` (a cluster never checked counts as
/// `Duration::MAX`), and that cluster.
pub fn worst_gap(
    times: &BTreeMap<String, Vec<Instant>>,
    ids: &[String],
    from: Instant,
    to: Instant,
) -> (Duration, String) {
    let mut worst = (Duration::ZERO, String::new());
    for id in ids {
        let ts = times.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let mut gap = Duration::ZERO;
        for w in ts.windows(2) {
            if w[1] >= from && w[0] <= to {
                gap = gap.max(w[1] - w[0]);
            }
        }
        match (ts.first(), ts.last()) {
            (None, _) | (_, None) => gap = Duration::MAX,
            (Some(&first), Some(&last)) => {
                if first > from {
                    gap = gap.max(first - from);
                }
                if last < to {
                    gap = gap.max(to - last);
                }
            }
        }
        if gap > worst.0 {
            worst = (gap, id.clone());
        }
    }
    worst
}

/// Unix milliseconds at `t`, an instant of this process: the monitors'
/// clocks read the same system clock, so this compares with their times.
pub fn unix_ms(t: Instant) -> i64 {
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let wall = wall
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    if t <= now {
        wall - (now - t).as_millis() as i64
    } else {
        wall + (t - now).as_millis() as i64
    }
}

/// The scheduled check starts a monitor logged (`check started`, logged at
/// debug level by `clustermon_core::schedule`): `(cluster id, start in Unix
/// ms of the monitor's clock)`. Operators' checks are left out. Unlike a
/// metric line's arrival, a start stays put when the process is stopped
/// during the check: the line says when the scheduler started it.
pub fn logged_check_starts(log: &str) -> Vec<(String, i64)> {
    logged_checks(log)
        .into_iter()
        .map(|c| (c.cluster, c.at_ms))
        .collect()
}

/// Logged check starts by cluster: `(start in Unix ms of the monitor's
/// clock, monitor)`, sorted.
pub type Starts = BTreeMap<String, Vec<(i64, String)>>;

/// Every monitor's logged check starts from `from_ms` to `to_ms` (Unix ms of
/// the monitors' clocks), by cluster, sorted: `(start, monitor)`.
pub fn check_starts(mons: &Monitors, from_ms: i64, to_ms: i64) -> Starts {
    let mut starts: Starts = BTreeMap::new();
    for (m, p) in &mons.procs {
        for (id, at) in logged_check_starts(&p.log_text()) {
            if (from_ms..=to_ms).contains(&at) {
                starts.entry(id).or_default().push((at, m.clone()));
            }
        }
    }
    for v in starts.values_mut() {
        v.sort();
    }
    starts
}

/// The closest two starts of one cluster `(ms apart, cluster)`, and how many
/// clusters have a pair closer than `bound_ms`.
pub fn closest_starts(starts: &Starts, bound_ms: i64) -> (Option<(i64, String)>, usize) {
    let mut closest: Option<(i64, String)> = None;
    let mut under = 0;
    for (id, v) in starts {
        if let Some(d) = v.windows(2).map(|w| w[1].0 - w[0].0).min() {
            under += usize::from(d < bound_ms);
            if closest.as_ref().is_none_or(|c| d < c.0) {
                closest = Some((d, id.clone()));
            }
        }
    }
    (closest, under)
}

/// A scheduled check start as a monitor logged it.
#[derive(Clone, Debug)]
pub struct LoggedCheck {
    pub cluster: String,
    /// When it was due: on the cluster's grid (`phase_ms`), or off it (a new
    /// cluster's check at once, a catch-up).
    pub due_ms: i64,
    pub at_ms: i64,
}

/// Every scheduled check start of a monitor's log (see `logged_check_starts`).
pub fn logged_checks(log: &str) -> Vec<LoggedCheck> {
    log.lines()
        .filter(|l| l.contains(" check started ") && !l.contains("operator=true"))
        .filter_map(|l| {
            let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k));
            Some(LoggedCheck {
                cluster: field("cluster=")?.to_string(),
                due_ms: field("due_ms=")?.parse().ok()?,
                at_ms: field("at_ms=")?.parse().ok()?,
            })
        })
        .collect()
}

/// A cluster's offset on the check grid as docs/monitoring.md states it:
/// due at `phase + k·interval` Unix ms, `phase = FNV-1a(id) mod interval`
/// (64-bit FNV-1a of the id's bytes). Written from the doc here, so the
/// suite checks the documented grid without compiling the core.
pub fn phase_ms(id: &str, interval_ms: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % interval_ms as u64) as i64
}

/// The shortest interval between two checks of one cluster within `[from, to]`.
pub fn closest_pair(
    times: &BTreeMap<String, Vec<Instant>>,
    from: Instant,
    to: Instant,
) -> Option<(Duration, String)> {
    let mut best: Option<(Duration, String)> = None;
    for (id, ts) in times {
        for w in ts.windows(2) {
            if w[0] >= from && w[1] <= to {
                let d = w[1] - w[0];
                if best.as_ref().is_none_or(|b| d < b.0) {
                    best = Some((d, id.clone()));
                }
            }
        }
    }
    best
}

impl Monitors {
    /// Starts one monitor like `start`, with extra environment (e.g.
    /// `LD_PRELOAD`/`FAKETIME`) and extra arguments after the shared ones.
    pub fn start_with(&mut self, id: &str, env: &[(&str, &str)], extra_args: &[&str]) {
        let store = self.store.clone();
        self.start_on(id, &store, env, extra_args);
    }

    /// Starts one monitor like `start_with`, on store URL `store` instead of
    /// the shared one (the same store through a `Forwarder`, say).
    pub fn start_on(&mut self, id: &str, store: &str, env: &[(&str, &str)], extra_args: &[&str]) {
        let mut cmd = Command::new(bin("clustermon"));
        cmd.args([
            "run",
            "--store",
            store,
            "--statsd",
            &self.statsd,
            "--id",
            id,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(&self.extra)
        .args(extra_args)
        .env("CLUSTERMON_LOG_LEVEL", &self.log)
        .envs(env.iter().copied())
        .stdout(Stdio::null());
        let p = Proc::spawn(id, &mut cmd, &self.dir);
        self.procs.insert(id.to_string(), p);
    }
}

/// The admin URL a monitor logged at start-up (`admin API listening
/// admin=HOST:PORT`), for monitors `clustermon status` does not list.
pub fn admin_url_from_log(p: &Proc) -> Option<String> {
    let log = p.log_text();
    let line = log.lines().find(|l| l.contains("admin API listening"))?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))?;
    Some(format!("http://{addr}"))
}

const SQLITE_PY: &str = "import json,sqlite3,sys
c=sqlite3.connect(sys.argv[1],timeout=30,isolation_level=None)
print(json.dumps(c.execute(sys.argv[2],json.loads(sys.argv[3])).fetchall()))";

/// Runs one SQL statement with `params` on a SQLite file from another
/// process (python3's sqlite3); the rows as a JSON array of arrays.
pub fn sqlite_exec_with(db: &Path, sql: &str, params: &[Value]) -> Result<Value, String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(SQLITE_PY)
        .arg(db)
        .arg(sql)
        .arg(Value::Array(params.to_vec()).to_string())
        .output()
        .map_err(|e| format!("run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `sqlite_exec_with` without parameters.
pub fn sqlite_exec(db: &Path, sql: &str) -> Result<Value, String> {
    sqlite_exec_with(db, sql, &[])
}

/// Another process holding `BEGIN EXCLUSIVE` on a SQLite file for a fixed
/// time (killed on drop, which releases the lock).
pub struct SqliteLock {
    pub proc: Proc,
    /// When the lock was taken (the process said so).
    pub locked_at: Instant,
    lines: std::sync::mpsc::Receiver<String>,
}

impl SqliteLock {
    /// Takes the lock (waiting up to 30 s for other writers) and returns
    /// once it is held; it is released `secs` seconds later.
    pub fn hold(dir: &Path, db: &Path, secs: u64) -> Self {
        let py = "import sqlite3,sys,time
c=sqlite3.connect(sys.argv[1],timeout=30,isolation_level=None)
c.execute('BEGIN EXCLUSIVE')
print('locked',flush=True)
time.sleep(float(sys.argv[2]))
c.execute('COMMIT')
print('released',flush=True)";
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(py)
            .arg(db)
            .arg(secs.to_string())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("sqlite-lock", &mut cmd, dir);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(35));
        assert_eq!(
            first.as_deref().ok(),
            Some("locked"),
            "the SQLite lock was not taken: {}",
            proc.log_text()
        );
        Self {
            proc,
            locked_at: Instant::now(),
            lines,
        }
    }

    /// Waits for the lock's release (up to `limit`); its time.
    pub fn wait_released(&mut self, limit: Duration) -> Instant {
        let l = self.lines.recv_timeout(limit);
        assert_eq!(
            l.as_deref().ok(),
            Some("released"),
            "the SQLite lock was not released in {limit:?}: {}",
            self.proc.log_text()
        );
        let at = Instant::now();
        self.proc.wait_exit(Duration::from_secs(5));
        at
    }
}

/// Values of a metric (parsed as numbers) per `monitor` tag.
pub fn metric_values(statsd: &Statsd, name: &str) -> BTreeMap<String, Vec<f64>> {
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in statsd.lines().iter().filter(|l| l.name == name) {
        if let (Some(mon), Ok(v)) = (l.tag("monitor"), l.value.parse::<f64>()) {
            m.entry(mon.to_string()).or_default().push(v);
        }
    }
    m
}

/// Collects failed assertions so that one run reports every measured
/// figure; `finish` panics with all of them.
#[derive(Default)]
pub struct Verdict(pub Vec<String>);

impl Verdict {
    /// Prints `msg` and records it as a failure unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl Into<String>) {
        let msg = msg.into();
        eprintln!("{} {msg}", if ok { "ok:  " } else { "FAIL:" });
        if !ok {
            self.0.push(msg);
        }
    }
    pub fn finish(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} failed assertion(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Polls `GET URL/healthz/ready` of every monitor until each has answered
/// `code` once, up to `limit` after `since`. Per monitor: how long after
/// `since` it answered `code`, and the body; Err: the last answer of those
/// that did not.
pub fn poll_ready(
    urls: &BTreeMap<String, String>,
    code: u16,
    since: Instant,
    limit: Duration,
) -> Result<BTreeMap<String, (Duration, String)>, BTreeMap<String, String>> {
    let mut got = BTreeMap::new();
    let mut last = BTreeMap::new();
    loop {
        for (id, u) in urls {
            if got.contains_key(id) {
                continue;
            }
            match http_get(&format!("{u}/healthz/ready")) {
                Ok((c, b)) if c == code => {
                    got.insert(id.clone(), (since.elapsed(), b));
                }
                Ok((c, b)) => {
                    last.insert(id.clone(), format!("{c} {}", b.trim()));
                }
                Err(e) => {
                    last.insert(id.clone(), format!("error {e}"));
                }
            }
        }
        if got.len() == urls.len() {
            return Ok(got);
        }
        if since.elapsed() >= limit {
            last.retain(|id, _| !got.contains_key(id));
            return Err(last);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` until it returns true or `limit` passes; whether it did.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
