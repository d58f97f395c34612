//! Hostile cluster labels: a 5 MB label value, 100
//! labels, keys and values full of statsd's separators. Every per-cluster
//! line carries the labels as tags; the bound on label tags
//! (`metrics::labels`) keeps every line within one 1432-byte datagram, so
//! these clusters are still monitored, the labels left out are counted with
//! their reason, and the rest of the fleet keeps its cadence. Run once with
//! DogStatsD and once with MDM lines, side by side on two stores.

#[allow(unused_imports)]
use super::super::*;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The bound every datagram and line must keep (`metrics::MAX_LINE`).
const MAX_LINE: usize = 1432;
const CHECK_EVERY: Duration = Duration::from_secs(5);
const FLEET: usize = 8;
/// At most this many label tags on a line (`metrics::labels::MAX_LABEL_TAGS`).
const MAX_LABEL_TAGS: usize = 16;

const BIG: &str = "hostile-big";
const MANY: &str = "hostile-many";
const CHARS: &str = "hostile-chars";

/// A datagram and its arrival time.
type Datagram = (Instant, Vec<u8>);

/// Every datagram received, with its arrival time.
struct Receiver {
    addr: String,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr").to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = thread::spawn(move || {
            // Larger than any datagram, so an oversize one would show.
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    g.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
                }
            }
        });
        Self {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn datagrams(&self) -> Vec<Datagram> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One MDM line as a [`Line`]: `{"Metric":..,"Dims":{..},..}:VALUE|g`.
fn parse_mdm(at: Instant, raw: &str) -> Option<Line> {
    let (json, rest) = raw.rsplit_once("}:")?;
    let v: Value = serde_json::from_str(&format!("{json}}}")).ok()?;
    let tags = v["Dims"]
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(Line {
        at,
        name: v["Metric"].as_str()?.to_string(),
        value: rest.split('|').next()?.to_string(),
        tags,
    })
}

/// One store, its fleet, one monitor and the receiver of its metrics.
struct Run {
    mdm: bool,
    _dir: TempDir,
    _fleet: Fleet,
    mons: Monitors,
    rx: Receiver,
    healthy: Vec<String>,
}

impl Run {
    fn start(name: &str, mdm: bool) -> Self {
        let dir = TempDir::new(name);
        let db = dir.path().join("store.db");
        let store = format!("sqlite:{}", db.display());
        let n = FLEET.to_string();
        let fleet = Fleet::start(dir.path(), &store, &["--clusters", &n, "--plain-http"]);
        let clusters = fleet.clusters();
        let healthy: Vec<String> = clusters
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        let url = |i: usize| clusters[i]["url"].as_str().unwrap().to_string();

        // 5 MB does not fit a command line (128 KiB per argument): written
        // as the store writes it, seq taken in the writing transaction.
        let py = r#"
import json, sqlite3, sys
db, id_, api = sys.argv[1:4]
c = sqlite3.connect(db, timeout=30, isolation_level=None)
doc = json.loads(c.execute("SELECT doc FROM clusters WHERE doc IS NOT NULL LIMIT 1").fetchone()[0])
doc.update(id=id_, apiServer=api, bucket=7, labels={"big": "x" * (5 << 20), "env": "prod"})
c.execute("BEGIN IMMEDIATE")
seq = c.execute("INSERT INTO meta(k, v) VALUES('seq', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1 RETURNING v").fetchone()[0]
c.execute("INSERT INTO clusters(id, seq, doc) VALUES(?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, doc = excluded.doc", (id_, seq, json.dumps(doc)))
c.execute("COMMIT")
"#;
        let st = std::process::Command::new("python3")
            .args(["-c", py, &db.display().to_string(), BIG, &url(0)])
            .status()
            .expect("python3");
        assert!(st.success(), "writing the 5 MB label document");

        let put = |id: &str, api: String, labels: &[String]| {
            let mut args = vec![
                "cluster",
                "put",
                "--store",
                &store,
                "--id",
                id,
                "--api-server",
                &api,
            ];
            for l in labels {
                args.extend(["--label", l]);
            }
            let (code, out, err) = clustermon(&args);
            assert_eq!(code, 0, "cluster put {id}: {out}{err}");
        };
        let many: Vec<String> = (0..100).map(|i| format!("l{i:03}=v{i}")).collect();
        put(MANY, url(1), &many);
        let chars: Vec<String> = [
            "a|b,c#d:e\nf=x|y,z#w:v\nq",
            "env=prod|dev,#:\n\r\tx",
            "t|x=1",
            "t,x=2", // t_x as well once sanitised: one of the two is invalid
            "resourceId=spoof",
            "team\"\\=\"quoted\\\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        put(CHARS, url(2), &chars);

        let rx = Receiver::start();
        let interval = format!("{}s", CHECK_EVERY.as_secs());
        let mut extra = vec!["--interval", &interval, "--check-timeout", "3s"];
        if mdm {
            extra.extend([
                "--metrics-format",
                "mdm",
                "--mdm-account",
                "acct",
                "--mdm-namespace",
                "ns",
            ]);
        }
        let mut mons = Monitors {
            store: store.clone(),
            statsd: format!("udp:{}", rx.addr),
            dir: dir.path().to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: "info".into(),
            procs: BTreeMap::new(),
        };
        mons.start("m1");
        Self {
            mdm,
            _dir: dir,
            _fleet: fleet,
            mons,
            rx,
            healthy,
        }
    }

    fn what(&self) -> &'static str {
        if self.mdm {
            "mdm"
        } else {
            "dogstatsd"
        }
    }

    /// Every line received; panics on a datagram or line over the bound or
    /// a line that does not parse.
    fn lines(&self) -> Vec<Line> {
        let mut out = Vec::new();
        for (at, d) in self.rx.datagrams() {
            assert!(
                d.len() <= MAX_LINE,
                "{}: a datagram of {} bytes",
                self.what(),
                d.len()
            );
            let text = std::str::from_utf8(&d).expect("utf-8 datagram");
            for raw in text.split('\n') {
                assert!(
                    !raw.is_empty() && !raw.contains('\r'),
                    "{}: {raw:?}",
                    self.what()
                );
                let l = if self.mdm {
                    parse_mdm(at, raw)
                } else {
                    Line::parse(at, raw)
                };
                let l = l.unwrap_or_else(|| panic!("{}: unparsable line {raw:?}", self.what()));
                out.push(l);
            }
        }
        out
    }

    fn of<'a>(lines: &'a [Line], name: &str, id: &str) -> Vec<&'a Line> {
        lines
            .iter()
            .filter(|l| l.name == name && l.resource() == Some(id))
            .collect()
    }

    fn dropped(lines: &[Line], reason: &str) -> u64 {
        lines
            .iter()
            .filter(|l| {
                l.name == "monitor.metrics.labels.dropped" && l.tag("reason") == Some(reason)
            })
            .filter_map(|l| l.value.parse::<u64>().ok())
            .sum()
    }
}

#[test]
fn oversize_and_hostile_labels_never_silence_a_cluster() {
    let t0 = Instant::now();
    let mut runs = [
        Run::start("metric-lines-dogstatsd", false),
        Run::start("metric-lines-mdm", true),
    ];
    let hostile = [BIG, MANY, CHARS];

    // Each hostile cluster gets its two lines, twice (two checks), and every
    // healthy one three checks, so its cadence shows.
    for r in &runs {
        wait_until(
            &format!(
                "{}: healthz and check duration of every hostile cluster twice, 3 checks of the others",
                r.what()
            ),
            Duration::from_secs(40),
            || {
                let lines = r.lines();
                let hostile_ok = hostile.iter().all(|id| {
                    Run::of(&lines, "apiserver.healthz.code", id)
                        .iter()
                        .filter(|l| l.value == "200")
                        .count()
                        >= 2
                        && Run::of(&lines, "monitor.check.duration", id).len() >= 2
                });
                let healthy_ok = r
                    .healthy
                    .iter()
                    .all(|id| Run::of(&lines, "apiserver.healthz.code", id).len() >= 3);
                (hostile_ok && healthy_ok).then_some(())
            },
        );
    }

    for r in &mut runs {
        let what = r.what();
        let lines = r.lines(); // asserts the bound on every datagram and line
        eprintln!("{what}: {} lines within {MAX_LINE} bytes", lines.len());

        // The tags that went out, per hostile cluster.
        let tags = |id: &str| {
            Run::of(&lines, "apiserver.healthz.code", id)[0]
                .tags
                .clone()
        };
        let big = tags(BIG);
        assert!(
            !big.contains_key("big"),
            "{what}: the 5 MB label is left out"
        );
        assert_eq!(big.get("env").map(String::as_str), Some("prod"), "{what}");
        let many = tags(MANY);
        assert_eq!(
            many.len(),
            1 + MAX_LABEL_TAGS,
            "{what}: resourceId and 16 labels"
        );
        let dur = Run::of(&lines, "monitor.check.duration", MANY)[0];
        assert_eq!(dur.tags.len(), 2 + MAX_LABEL_TAGS, "{what}: plus result");
        assert_eq!(dur.tag("result"), Some("ok"), "{what}");
        let chars = tags(CHARS);
        assert_eq!(
            chars.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a_b_c_d_e_f", "env", "resourceId", "t_x", "team__"],
            "{what}: keys sanitised, a duplicate and a spoofed resourceId left out"
        );
        assert_eq!(chars["resourceId"], CHARS, "{what}");
        assert_eq!(chars["env"], "prod_dev______x", "{what}");
        assert_eq!(chars["a_b_c_d_e_f"], "x_y_z_w_v_q", "{what}");
        assert_eq!(chars["team__"], "_quoted__", "{what}");

        // The counter says why, once per document version.
        assert_eq!(
            Run::dropped(&lines, "too_long"),
            1,
            "{what}: the 5 MB value"
        );
        assert_eq!(
            Run::dropped(&lines, "too_many"),
            100 - MAX_LABEL_TAGS as u64,
            "{what}: labels beyond 16"
        );
        assert_eq!(
            Run::dropped(&lines, "invalid"),
            2,
            "{what}: t,x (a duplicate once sanitised) and resourceId"
        );

        // Logged once per cluster, with lengths, never the value.
        let log = r.mons.get("m1").log_text();
        let warns: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("cluster labels left out"))
            .collect();
        assert_eq!(warns.len(), 3, "{what}: one warning per cluster: {warns:?}");
        assert!(
            warns
                .iter()
                .any(|l| l.contains(BIG) && l.contains("key_len=3,value_len=5242880")),
            "{what}: {warns:?}"
        );
        assert!(
            !log.contains(&"x".repeat(64)),
            "{what}: the label value is never logged"
        );

        // The healthy clusters keep their cadence: from their first check
        // on, checked every interval (within 2 s).
        for id in &r.healthy {
            let mut at: Vec<Instant> = Run::of(&lines, "apiserver.healthz.code", id)
                .iter()
                .map(|l| l.at)
                .collect();
            at.sort();
            assert!(at.len() >= 3, "{what}: {id} checked {} times", at.len());
            let last = *at.last().unwrap();
            assert!(
                Instant::now() - last <= CHECK_EVERY + Duration::from_secs(2),
                "{what}: {id} not checked since {:?}",
                Instant::now() - last
            );
            for w in at.windows(2) {
                let gap = w[1] - w[0];
                assert!(
                    gap <= CHECK_EVERY + Duration::from_secs(2),
                    "{what}: {id} waited {gap:?} between checks"
                );
            }
        }
    }
    eprintln!("took {:?}", t0.elapsed());
}
