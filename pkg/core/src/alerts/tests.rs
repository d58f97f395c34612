//! The alert task end to end in one process: reports in, HTTP out, against
//! a local server on 127.0.0.1:0 that can answer 200, 500 or hang.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;
use crate::check::{CollectorOutcome, Condition};
use crate::model::{ClusterDoc, Credentials, ProvisioningState};

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// A tiny Alertmanager: records each request (head, body), answers by mode.
struct Server {
    url: String,
    mode: Arc<AtomicU8>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Server {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(OK));
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (m, s) = (mode.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (m, s) = (m.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body_start) = loop {
                        let Ok(n) = c.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break (String::from_utf8_lossy(&buf[..p]).to_string(), p + 4);
                        }
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < body_start + len {
                        let Ok(n) = c.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body =
                        String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string();
                    s.lock().unwrap().push((head, body));
                    let status = match m.load(Ordering::SeqCst) {
                        OK => "200 OK",
                        FAIL => "500 Internal Server Error",
                        _ => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = c
                        .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        Self { url, mode, seen }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every alert posted so far.
    fn alerts(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| serde_json::from_str::<Vec<Value>>(b).unwrap_or_default())
            .collect()
    }
}

const CANARY: &str = "CANARY-7d1f-token-never-posted";

fn entry(id: &str) -> Arc<ClusterEntry> {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("region".to_string(), "westeurope".to_string());
    let doc = ClusterDoc {
        id: id.into(),
        bucket: 7,
        provisioning_state: ProvisioningState::Succeeded,
        api_server: "https://10.1.2.3:6443".into(),
        credentials: Credentials {
            token: Some(Secret::new(CANARY)),
            ..Default::default()
        },
        encrypted_credentials: None,
        labels,
    };
    Arc::new(ClusterEntry::from_doc(doc))
}

fn outcome(name: &'static str, ok: bool) -> CollectorOutcome {
    CollectorOutcome {
        name,
        ok,
        duration_ms: 1,
        error: (!ok).then(|| "failed".into()),
    }
}

fn healthy() -> CheckReport {
    CheckReport {
        ok: true,
        summary: "healthz 200".into(),
        collectors: [
            "apiserver",
            "certificate",
            "nodes",
            "clusteroperators",
            "pods",
        ]
        .map(|n| outcome(n, true))
        .into(),
        conditions: vec![],
    }
}

fn node_not_ready() -> CheckReport {
    let mut r = healthy();
    r.ok = false;
    r.conditions.push(Condition {
        name: alertnames::NODE_NOT_READY,
        labels: vec![("node", "worker-1".into())],
        summary: "node worker-1: Ready=False".into(),
    });
    r
}

fn input(id: &str, report: CheckReport) -> AlertInput {
    AlertInput {
        entry: entry(id),
        report,
        at_ms: Clock::system().now_ms(),
    }
}

fn config(urls: Vec<String>, after: u32) -> AlertConfig {
    AlertConfig::new(
        urls,
        after,
        Some("s3cret-am-token".into()),
        vec![("team".into(), "sre".into())],
    )
    .unwrap()
}

async fn wait(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn observations_hold_what_a_check_did_not_see() {
    let o = observation(&CheckReport::failed("check timed out"));
    assert_eq!(o.failing.len(), 1);
    let (k, s) = o.failing.iter().next().unwrap();
    assert_eq!(k.alertname, alertnames::API_SERVER_DOWN);
    assert_eq!(s, "API server unreachable or unhealthy: check timed out");
    assert_eq!(o.unobserved.len(), alertnames::ALL.len() - 1);

    let o = observation(&node_not_ready());
    assert_eq!(o.failing.len(), 1);
    assert!(o.unobserved.is_empty());

    // The nodes collector failed: node alerts are unobserved, not cleared.
    let mut r = healthy();
    r.collectors[2] = outcome("nodes", false);
    assert_eq!(observation(&r).unobserved, vec![alertnames::NODE_NOT_READY]);
    // A checker without collectors (healthz only) that passed: no API alert.
    let o = observation(&CheckReport {
        ok: true,
        ..Default::default()
    });
    assert!(o.failing.is_empty());
}

#[test]
fn flags_are_validated() {
    assert!(AlertConfig::new(vec![], 3, None, vec![]).is_err());
    assert!(AlertConfig::new(vec!["am:9093".into()], 3, None, vec![]).is_err());
    assert!(AlertConfig::new(vec!["http://am:9093".into()], 0, None, vec![]).is_err());
    assert!(
        AlertConfig::new(vec!["http://am:9093".into()], 3, Some(" \n".into()), vec![]).is_err()
    );
    assert_eq!(
        parse_label("env=prod").unwrap(),
        ("env".into(), "prod".into())
    );
    assert!(parse_label("cluster=x").is_err());
    assert!(parse_label("a.b=x").is_err());
    assert!(parse_label("novalue").is_err());
    // The token never shows in Debug.
    let c = config(vec!["http://am:9093".into()], 1);
    assert!(!format!("{c:?}").contains("s3cret"));
}

fn task(urls: Vec<String>, after: u32, owned: Owned) -> (mpsc::Sender<AlertInput>, AlertTask) {
    task_with(config(urls, after), owned)
}

fn task_with(mut cfg: AlertConfig, owned: Owned) -> (mpsc::Sender<AlertInput>, AlertTask) {
    cfg.queue = 5;
    cfg.input_queue = 8;
    let (tx, mut t) = AlertTask::with_owned(
        cfg,
        "http://10.0.0.9:9464",
        Duration::from_secs(56),
        Duration::from_millis(50),
        Clock::system(),
        Metrics::disabled(),
        owned,
    );
    t.tune(|c| {
        c.attempts = 3;
        c.backoff_base = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(80);
        c.request_timeout = Duration::from_millis(300);
        c.flush_timeout = Duration::from_millis(300);
    });
    (tx, t)
}

/// Pending for N-1 checks, then firing on every check with the payload of
/// the v2 API, the bearer token, no credential; then one resolved.
#[tokio::test]
async fn fires_after_n_checks_resends_and_resolves_once() {
    let am = Server::start().await;
    let (tx, t) = task(vec![am.url.clone()], 2, Arc::new(|_, _| true));
    let stop = CancellationToken::new();
    let run = tokio::spawn(t.run(stop.clone()));

    tx.send(input("c-1", node_not_ready())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(am.requests(), 0, "pending after 1 of 2 failing checks");
    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("the first firing alert", Duration::from_secs(5), || {
        am.requests() >= 1
    })
    .await;
    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("the re-sent firing alert", Duration::from_secs(5), || {
        am.alerts().len() >= 2
    })
    .await;
    tx.send(input("c-1", healthy())).await.unwrap();
    wait("the resolved alert", Duration::from_secs(5), || {
        am.alerts().len() >= 3
    })
    .await;
    tx.send(input("c-1", healthy())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    run.await.unwrap();

    let alerts = am.alerts();
    assert_eq!(alerts.len(), 3, "firing, firing, resolved: {alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        a["labels"],
        serde_json::json!({"alertname": "ClusterNodeNotReady", "cluster": "c-1", "node": "worker-1", "team": "sre", "region": "westeurope"})
    );
    assert_eq!(
        a["annotations"]["explain_url"],
        "http://10.0.0.9:9464/debug/clusters/c-1"
    );
    let t = |v: &Value, f: &str| {
        chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let horizon = t(a, "endsAt") - t(a, "startsAt");
    assert!(
        (56_000..60_000).contains(&horizon),
        "endsAt = now + horizon: {horizon}"
    );
    assert_eq!(
        t(&alerts[1], "startsAt"),
        t(a, "startsAt"),
        "one series, one startsAt"
    );
    let r = &alerts[2];
    assert!(
        t(r, "endsAt") <= Clock::system().now_ms(),
        "resolved: endsAt = now"
    );
    let seen = am.seen.lock().unwrap().clone();
    for (head, body) in &seen {
        assert!(head.starts_with("POST /api/v2/alerts HTTP/1.1"), "{head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("authorization: bearer s3cret-am-token"));
        assert!(!body.contains(CANARY) && !head.contains(CANARY));
    }
}

/// A new `--alertmanager-token-file` (a reload replaces the token) is sent
/// from the next request on, by the running task.
#[tokio::test]
async fn a_reloaded_token_is_sent_from_the_next_request() {
    let am = Server::start().await;
    let cfg = config(vec![am.url.clone()], 1);
    let token = cfg.token.clone().expect("a token");
    let (tx, t) = task_with(cfg, Arc::new(|_, _| true));
    let stop = CancellationToken::new();
    let run = tokio::spawn(t.run(stop.clone()));
    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("the first alert", Duration::from_secs(5), || {
        am.requests() >= 1
    })
    .await;
    token.set(Secret::new("s3cret-am-token-next"));
    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("the second alert", Duration::from_secs(5), || {
        am.requests() >= 2
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    let heads: Vec<String> = am
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h.to_ascii_lowercase())
        .collect();
    let bearer = |h: &str| {
        h.lines()
            .find_map(|l| l.trim().strip_prefix("authorization: bearer "))
            .map(str::to_string)
    };
    assert_eq!(bearer(&heads[0]).as_deref(), Some("s3cret-am-token"));
    assert_eq!(bearer(&heads[1]).as_deref(), Some("s3cret-am-token-next"));
}

/// An Alertmanager that fails is retried (3 attempts), then counted failed;
/// one that refuses connections too; one that hangs fills its outbox and
/// the rest is dropped, counted; the scheduler's side never waits: 10,000
/// `try_send`s return at once, the surplus counted. Shutdown stays bounded.
#[tokio::test]
async fn a_down_alertmanager_is_retried_and_never_blocks_checks() {
    let am = Server::start().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    am.set(FAIL);
    let (tx, t) = task(vec![am.url.clone(), refused], 1, Arc::new(|_, _| true));
    let boxes = t.outboxes();
    let stop = CancellationToken::new();
    let run = tokio::spawn(t.run(stop.clone()));

    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("3 attempts, then failed", Duration::from_secs(5), || {
        boxes[0].stats.failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(am.requests(), 3);
    wait("the refused URL fails too", Duration::from_secs(5), || {
        boxes[1].stats.failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(boxes[1].stats.requests.load(Ordering::Relaxed), 3);

    // Back: the next check's re-sent alert is delivered.
    am.set(OK);
    tx.send(input("c-1", node_not_ready())).await.unwrap();
    wait("delivered once back", Duration::from_secs(5), || {
        boxes[0].stats.sent.load(Ordering::Relaxed) == 1
    })
    .await;

    // Hanging: the outbox (5) fills, the rest is dropped and counted; the
    // scheduler's try_send never waits.
    am.set(HANG);
    let started = Instant::now();
    let (mut accepted, mut refused_inputs) = (0, 0);
    for i in 0..10_000 {
        match tx.try_send(input(&format!("c-{}", i % 50), node_not_ready())) {
            Ok(()) => accepted += 1,
            Err(_) => refused_inputs += 1,
        }
    }
    let took = started.elapsed();
    eprintln!("10,000 try_send with the Alertmanager hanging: {took:?}, {accepted} accepted, {refused_inputs} dropped (input_full)");
    assert!(
        took < Duration::from_secs(1),
        "try_send never waits: {took:?}"
    );
    assert!(refused_inputs > 0);
    wait("outbox drops counted", Duration::from_secs(5), || {
        boxes[0].stats.dropped.load(Ordering::Relaxed) > 0
    })
    .await;
    eprintln!(
        "hanging Alertmanager: sent {} failed {} dropped {} queued {}",
        boxes[0].stats.sent.load(Ordering::Relaxed),
        boxes[0].stats.failed.load(Ordering::Relaxed),
        boxes[0].stats.dropped.load(Ordering::Relaxed),
        boxes[0].len()
    );
    assert!(boxes[0].len() <= 5, "the outbox stays bounded");

    let t0 = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("shutdown is bounded while the Alertmanager hangs")
        .unwrap();
    eprintln!(
        "shutdown with a hanging Alertmanager took {:?}",
        t0.elapsed()
    );
}

/// At shutdown a request in flight and the flush of what is queued share
/// one window of `flush_timeout`: with an Alertmanager that hangs, the task
/// ends within one window of the stop, not one for the request and one more
/// for the flush (as it did: 2 × `flush_timeout`).
#[tokio::test]
async fn a_request_in_flight_at_shutdown_and_the_flush_share_one_window() {
    let am = Server::start().await;
    am.set(HANG);
    let (tx, mut t) = task(vec![am.url.clone()], 1, Arc::new(|_, _| true));
    let window = Duration::from_millis(500);
    t.tune(|c| {
        c.batch = 1;
        c.request_timeout = Duration::from_secs(30);
        c.flush_timeout = window;
    });
    let boxes = t.outboxes();
    let stop = CancellationToken::new();
    let run = tokio::spawn(t.run(stop.clone()));
    for i in 0..3 {
        tx.send(input(&format!("c-{i}"), node_not_ready()))
            .await
            .unwrap();
    }
    // One request in flight, the other alerts queued behind it.
    wait(
        "a request in flight and alerts queued",
        Duration::from_secs(5),
        || am.requests() == 1 && !boxes[0].is_empty(),
    )
    .await;
    let t0 = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("shutdown is bounded")
        .unwrap();
    let took = t0.elapsed();
    eprintln!("shutdown with a request in flight and alerts queued: {took:?}");
    assert!(
        took >= window,
        "the request in flight got its window: {took:?}"
    );
    assert!(
        took < window + window / 2,
        "one window of {window:?} for the request in flight and the flush, took {took:?}"
    );
    assert!(
        boxes[0].stats.failed.load(Ordering::Relaxed) >= 2,
        "what was not sent is counted failed"
    );
}

/// A cluster that leaves this monitor is forgotten without "resolved"; if
/// it comes back healthy, nothing is sent for the old series.
#[tokio::test]
async fn a_cluster_handed_over_is_forgotten_without_resolved() {
    let am = Server::start().await;
    let mine = Arc::new(AtomicBool::new(true));
    let m = mine.clone();
    let (tx, t) = task(
        vec![am.url.clone()],
        1,
        Arc::new(move |_, _| m.load(Ordering::SeqCst)),
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(t.run(stop.clone()));
    tx.send(input("c-1", CheckReport::failed("healthz 500")))
        .await
        .unwrap();
    wait("firing", Duration::from_secs(5), || am.alerts().len() == 1).await;
    mine.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await; // > 2 sweeps
    mine.store(true, Ordering::SeqCst);
    tx.send(input("c-1", healthy())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    run.await.unwrap();
    let alerts = am.alerts();
    assert_eq!(alerts.len(), 1, "no resolved after a handoff: {alerts:#?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "ClusterApiServerDown");
    assert_eq!(
        alerts[0]["annotations"]["summary"],
        "API server unreachable or unhealthy: HTTP 500 from /healthz",
        "the human line, not the raw summary"
    );
}

/// docs/monitoring.md (*Alerts*, Sending) states the sender's defaults:
/// the queues, the batch, the request timeout, the attempts, the backoff
/// and the shutdown window are the ones the code uses.
#[test]
fn monitoring_md_states_the_senders_defaults() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/monitoring.md"
    ))
    .expect("docs/monitoring.md");
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let a = AlertConfig::new(vec!["http://am-0:9093".into()], 3, None, vec![]).unwrap();
    let s = sender::SendConfig::new("http://am-0:9093", None);
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    let thousands = |n: usize| {
        let t = n.to_string();
        if n >= 1000 {
            format!("{},{}", &t[..t.len() - 3], &t[t.len() - 3..])
        } else {
            t
        }
    };
    for want in [
        format!(
            "to the alert task ({} queued at most,",
            thousands(a.input_queue)
        ),
        format!("per Alertmanager ({} at most,", thousands(a.queue)),
        format!(
            "posts batches of up to {} with a {} timeout, {} attempts with doubling,",
            s.batch,
            secs(s.request_timeout),
            s.attempts
        ),
        format!(
            "jittered backoff ({} to {})",
            secs(s.backoff_base),
            secs(s.backoff_max)
        ),
        format!("share one window of {})", secs(s.flush_timeout)),
    ] {
        assert!(
            doc.contains(&want),
            "docs/monitoring.md should say {want:?}"
        );
    }
}
