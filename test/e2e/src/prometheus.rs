//! A real Prometheus (Debian's, installed by hack/install-test-deps.sh)
//! scraping the monitors' `/metrics` once a second and evaluating
//! deploy/prometheus/clustermon-rules.yaml as shipped: the alerts on
//! clustermon itself, end to end.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{wait_until, Proc};

const BIN: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    _proc: Proc,
    pub url: String,
}

/// `host:port` of an admin URL: the `instance` label Prometheus gives it.
pub fn instance(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl Prometheus {
    /// Scrapes the monitors at `admin_urls` and returns once the last
    /// scrape found every one of them up (15 s at most).
    pub fn scraping<'a>(dir: &Path, admin_urls: impl IntoIterator<Item = &'a String>) -> Self {
        let targets: Vec<String> = admin_urls.into_iter().map(|u| instance(u)).collect();
        let prom = Self::start(dir, &targets);
        wait_until(
            "prometheus scrapes every monitor",
            Duration::from_secs(15),
            || (prom.targets_up() == targets.len()).then_some(()),
        );
        prom
    }

    /// Scrapes `targets` (host:port of each monitor's admin API) as job
    /// `clustermon`, every second; rules evaluated every second.
    pub fn start(dir: &Path, targets: &[String]) -> Self {
        assert!(
            Path::new(BIN).exists(),
            "{BIN} missing: run hack/install-test-deps.sh (Debian package prometheus)"
        );
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/prometheus/clustermon-rules.yaml")
            .canonicalize()
            .expect("the rules file");
        let cfg = dir.join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: clustermon\n    static_configs:\n      - targets: [{list}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let data = dir.join("prometheus-data");
        std::fs::create_dir_all(&data).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null());
        let proc = Proc::spawn("prometheus", &mut cmd, dir);
        wait_until("prometheus ready", Duration::from_secs(30), || {
            get(&format!("{url}/-/ready")).map(|_| ())
        });
        Self { _proc: proc, url }
    }

    /// The alerts pending or firing now (`GET /api/v1/alerts`): each as
    /// (alertname, instance, state).
    pub fn alerts(&self) -> Vec<(String, String, String)> {
        let Some(v) = get(&format!("{}/api/v1/alerts", self.url))
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        else {
            return Vec::new();
        };
        v["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                        (
                            s(&x["labels"]["alertname"]),
                            s(&x["labels"]["instance"]),
                            s(&x["state"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many targets the last scrapes found up.
    pub fn targets_up(&self) -> usize {
        get(&format!("{}/api/v1/query?query=up%3D%3D1", self.url))
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

/// GET over HTTP/1.0, so that a Go server (Prometheus, Alertmanager)
/// answers without chunked encoding, which the harness's HTTP/1.1
/// `http_get` does not decode; the body of a 200, else None.
pub fn get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}
