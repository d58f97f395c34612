//! A small DogStatsD receiver for the demo: counts checks (one
//! `apiserver.healthz.code` gauge per check) and remembers each cluster's
//! last code, so `GET /control/statsd` shows what the dashboards would.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const HEALTHZ: &str = "apiserver.healthz.code";
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Seen {
    checks_total: u64,
    recent: VecDeque<Instant>,
    last_code: BTreeMap<String, u64>,
    lines: u64,
}

type Tags<'a> = Vec<(&'a str, &'a str)>;

/// One DogStatsD line: name, value, tags.
pub fn parse_line(line: &str) -> Option<(&str, &str, Tags<'_>)> {
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let value = parts.next()?;
    let mut tags = Vec::new();
    for p in parts {
        if let Some(t) = p.strip_prefix('#') {
            for kv in t.split(',') {
                let (k, v) = kv.split_once(':').unwrap_or((kv, ""));
                tags.push((k, v));
            }
        }
    }
    Some((name, value, tags))
}

impl Seen {
    pub fn record(&mut self, line: &str, now: Instant) {
        self.lines += 1;
        let Some((name, value, tags)) = parse_line(line) else {
            return;
        };
        if name != HEALTHZ {
            return;
        }
        let Some(id) = tags.iter().find(|(k, _)| *k == "resourceId").map(|t| t.1) else {
            return;
        };
        self.checks_total += 1;
        self.recent.push_back(now);
        self.last_code
            .insert(id.to_string(), value.parse().unwrap_or(0));
    }

    pub fn summary(&mut self, now: Instant) -> Value {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.recent.pop_front();
        }
        let unhealthy: Vec<Value> = self
            .last_code
            .iter()
            .filter(|(_, c)| **c != 200)
            .map(|(id, c)| json!({ "id": id, "code": c }))
            .collect();
        json!({
            "lines": self.lines,
            "checks_total": self.checks_total,
            "checks_per_s": self.recent.len() as f64 / WINDOW.as_secs_f64(),
            "clusters_reporting": self.last_code.len(),
            "unhealthy": unhealthy,
        })
    }
}

pub async fn receive(sock: UdpSocket, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "statsd receive failed");
                    continue;
                }
            },
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let now = Instant::now();
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        for line in text.lines().filter(|l| !l.is_empty()) {
            s.record(line, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_checks_and_last_codes() {
        let t0 = Instant::now();
        let mut s = Seen::default();
        s.record("apiserver.healthz.code:200|g|#resourceId:c-1,fleet:sim", t0);
        s.record("apiserver.healthz.code:0|g|#resourceId:c-2", t0);
        s.record("monitor.cluster.duration:5|ms|#resourceId:c-2", t0);
        s.record("garbage", t0);
        let v = s.summary(t0);
        assert_eq!(v["checks_total"], 2);
        assert_eq!(v["clusters_reporting"], 2);
        assert_eq!(v["unhealthy"], json!([{ "id": "c-2", "code": 0 }]));
        assert_eq!(v["lines"], 4);
        let later = s.summary(t0 + Duration::from_secs(11));
        assert_eq!(later["checks_per_s"], 0.0);
    }
}
