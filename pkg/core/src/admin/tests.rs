//! The admin API over a real socket on 127.0.0.1:0, against an engine on the
//! in-memory store (real time, short intervals; every wait has a deadline).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::check::{CheckCtx, CheckReport, Checker};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::contract::cluster;
use crate::store::mem::MemStore;
use crate::store::Store;

struct Counting(AtomicUsize);

#[async_trait]
impl Checker for Counting {
    async fn check(&self, _ctx: CheckCtx<'_>) -> CheckReport {
        self.0.fetch_add(1, Ordering::Relaxed);
        CheckReport::failed("healthz 503")
    }
}

struct Running {
    base: String,
    store: Arc<MemStore>,
    stop: CancellationToken,
    engine: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    client: reqwest::Client,
}

impl Running {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    async fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut b = self.client.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            b = b.bearer_auth(t);
        }
        let r = b.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    async fn wait_status(&self, path: &str, want: u16) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = self.get(path).await;
            if code == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: still {code} ({body}), want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.engine)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.admin)
            .await
            .unwrap()
            .unwrap();
    }
}

const TOKEN: &str = "0123456789abcdef-token";

async fn start(token: Option<&str>) -> Running {
    let store = Arc::new(MemStore::new());
    for i in 0..20 {
        store
            .put_cluster(&cluster(&format!("c{i}"), i))
            .await
            .unwrap();
    }
    start_on(store, "m1", token, |_| {}).await
}

/// A monitor with its admin API on the given store; `tweak` changes its
/// configuration (its admin URL is set to the listener's).
async fn start_on(
    store: Arc<MemStore>,
    id: &str,
    token: Option<&str>,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Running {
    start_served(store, id, token, None, tweak).await
}

/// The TLS handshake bound of the admin APIs these tests start.
const HANDSHAKE_IN_TESTS: Duration = Duration::from_millis(500);

/// As `start_on`, serving HTTPS with `tls` when given.
async fn start_served(
    store: Arc<MemStore>,
    id: &str,
    token: Option<&str>,
    tls: Option<tls::ServerTls>,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let mut cfg = EngineConfig::new(id);
    cfg.admin_url = base.clone();
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.heartbeat_ttl = Duration::from_millis(500);
    cfg.lease_ttl = Duration::from_millis(500);
    cfg.feed_interval = Duration::from_millis(50);
    cfg.interval = Duration::from_secs(2);
    cfg.shutdown_grace = Duration::from_secs(1);
    tweak(&mut cfg);
    let engine = Engine::new(
        cfg,
        store.clone(),
        Arc::new(Counting(AtomicUsize::new(0))),
        Metrics::disabled(),
        Clock::system(),
    )
    .unwrap();
    let h = engine.handles();
    let stop = CancellationToken::new();
    let token = token.map(|t| crate::reload::Live::new(Token::new(t).unwrap()));
    let opts = ServeOptions {
        token,
        tls,
        handshake_within: HANDSHAKE_IN_TESTS,
        ..Default::default()
    };
    let admin = tokio::spawn(serve(listener, h, opts, stop.clone()));
    let s = stop.clone();
    let engine = tokio::spawn(engine.run(async move { s.cancelled().await }));
    Running {
        base,
        store,
        stop,
        engine,
        admin,
        client: crate::http::client_builder().build().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store_and_names_the_failing_condition() {
    let r = start(None).await;
    assert_eq!(r.get("/healthz/live").await.0, 200);
    r.wait_status("/healthz/ready", 200).await;
    r.store.set_available(false);
    let body = r.wait_status("/healthz/ready", 503).await;
    assert!(body.contains("store unreachable"), "{body}");
    assert!(
        body.contains("heartbeat write (upsert_monitor)") && body.contains("read_master"),
        "the failing store calls are named: {body}"
    );
    assert_eq!(
        r.get("/healthz/live").await.0,
        200,
        "live while the store is down"
    );
    r.store.set_available(true);
    r.wait_status("/healthz/ready", 200).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_views_metrics_page_and_check_now() {
    let r = start(None).await;
    r.wait_status("/healthz/ready", 200).await;
    let (code, body) = r.get("/debug/clusters/c3").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bucket"], 3);
    assert_eq!(v["state"], "Succeeded");
    assert!(v["next_due_ms"].as_i64().unwrap() > 0);
    assert_eq!(r.get("/debug/clusters/nope").await.0, 404);

    let (code, body) = r.post("/admin/check/c3", None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["summary"], "healthz 503");
    let (_, body) = r.get("/debug/clusters/c3").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["last_check"]["summary"], "healthz 503",
        "check-now is recorded"
    );
    assert_eq!(r.post("/admin/check/nope", None).await.0, 404);

    let (_, body) = r.get("/debug/assignment").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["owned"].as_array().unwrap().len(),
        256,
        "a lone monitor owns everything"
    );

    let (code, page) = r.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("clustermon_monitor_heartbeat{monitor=\"none\"} 1"),
        "{page}"
    );
    assert!(page.contains("# TYPE clustermon_monitor_buckets_owned gauge"));

    let (code, html) = r.get("/").await;
    assert_eq!(code, 200);
    assert!(html.contains("id=\"grid\""));
    let (code, body) = r.get("/api/status").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["buckets"].as_array().unwrap().len(), 256);
    assert_eq!(v["fleet"]["monitors"][0]["id"], "m1");
    let c3 = v["failing"]["failing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "c3")
        .cloned();
    let c3 = c3.unwrap_or_else(|| panic!("the failed check is listed: {body}"));
    assert_eq!(c3["summary"], "HTTP 503 from /healthz", "{c3}");
    assert_eq!(
        c3["detail"], "healthz 503",
        "the raw summary in the details: {c3}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_endpoints_need_the_token_and_drain_hands_everything_back() {
    let r = start(Some(TOKEN)).await;
    r.wait_status("/healthz/ready", 200).await;
    assert_eq!(r.post("/admin/drain", None).await.0, 401);
    assert_eq!(
        r.post("/admin/drain", Some("wrong-token-wrong-token"))
            .await
            .0,
        401
    );
    assert_eq!(
        r.post("/admin/check/c1", Some("0123456789abcdef-tokem"))
            .await
            .0,
        401
    );
    assert_eq!(
        r.get("/debug/assignment").await.0,
        200,
        "reads need no token"
    );
    let (code, body) = r.post("/admin/drain", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = r.get("/debug/assignment").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["draining"], true);
    assert!(v["owned"].as_array().unwrap().is_empty(), "drained: {v}");
    assert_eq!(
        r.get("/healthz/live").await.0,
        200,
        "a drained monitor stays up"
    );
    r.stop().await;
}

#[test]
fn readiness_lists_the_last_probe_of_each_peer() {
    let probes = vec![
        api::ProbeAnswer {
            peer: "m2".into(),
            outcome: "alive".into(),
            at_ms: 8_800,
        },
        api::ProbeAnswer {
            peer: "m3".into(),
            outcome: "refused".into(),
            at_ms: 10_000,
        },
    ];
    assert_eq!(
        probe_lines(&probes, 10_000),
        "probe m2: alive 1.2s ago\nprobe m3: refused 0.0s ago\n"
    );
    assert_eq!(probe_lines(&[], 10_000), "");
}

#[test]
fn tokens_are_compared_whole_and_never_printed() {
    let t = Token::new(TOKEN).unwrap();
    assert!(t.accepts(Some(&format!("Bearer {TOKEN}"))));
    assert!(!t.accepts(Some(&format!("Bearer {TOKEN}x"))));
    assert!(!t.accepts(Some("Bearer 0123456789abcdef")));
    assert!(!t.accepts(Some(TOKEN)));
    assert!(!t.accepts(None));
    assert!(Token::new("short").is_err());
    assert!(!format!("{t:?}").contains("token-"));
}

/// A token file of several lines, mid rotation: each line is accepted, the
/// first is sent; a short line is named by its number, not its content.
#[test]
fn a_token_file_of_several_lines_accepts_each_and_sends_the_first() {
    let old = "old-token-0123456789";
    let new = "new-token-0123456789";
    let t = Token::new(&format!("{old}\n\n  {new}  \n")).unwrap();
    assert_eq!(t.sent(), old);
    assert!(t.accepts(Some(&format!("Bearer {old}"))));
    assert!(t.accepts(Some(&format!("Bearer {new}"))));
    assert!(!t.accepts(Some("Bearer other-token-0123456789")));
    assert!(!t.accepts(Some(&format!("Bearer {old}{new}"))));
    let e = Token::new(&format!("{old}\nshort-secret")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 2: an admin token must be at least 16 characters"
    );
    assert!(Token::new("\n \n").is_err());
    assert!(!format!("{t:?}").contains("token-"));
}

/// Every failing check fails the API server; alerts fire after one check.
fn failing_fast(cfg: &mut EngineConfig) {
    cfg.alerts = Some(crate::alerts::AlertConfig::tracking(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_view_gathers_every_monitors_failing_clusters_with_their_alert_state() {
    let store = Arc::new(MemStore::new());
    for i in 0..20 {
        store
            .put_cluster(&cluster(&format!("c{i}"), i * 13))
            .await
            .unwrap();
    }
    let m1 = start_on(store.clone(), "m1", None, failing_fast).await;
    let m2 = start_on(store.clone(), "m2", None, failing_fast).await;
    // Both monitors hold buckets, every cluster has failed and fires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let (code, body) = m1.get("/api/status").await;
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let f = &v["failing"];
            let rows = f["failing"].as_array().cloned().unwrap_or_default();
            let firing = rows.iter().filter(|c| c["state"] == "firing").count();
            let by: std::collections::BTreeSet<String> = rows
                .iter()
                .filter_map(|c| c["monitor"].as_str().map(str::to_string))
                .collect();
            if firing == 20 && by.len() == 2 {
                break v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view never held 20 firing clusters from both monitors: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let f: api::FleetFailing = serde_json::from_value(view["failing"].clone()).unwrap();
    assert_eq!(f.failing_total, 20);
    let mut ids: Vec<&str> = f.failing.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one row per cluster");
    for c in &f.failing {
        assert_eq!(c.summary, "HTTP 503 from /healthz");
        assert_eq!(c.alerts.len(), 1, "{c:?}");
        assert_eq!(c.alerts[0].alertname, "ClusterApiServerDown");
    }
    assert_eq!(
        f.monitors
            .iter()
            .map(|m| (m.monitor.as_str(), m.ok))
            .collect::<Vec<_>>(),
        vec![("m1", true), ("m2", true)]
    );
    assert!(f.silences.is_none(), "no Alertmanager configured");

    // Each monitor answers for its own clusters only.
    let (_, body) = m2.get("/api/monitor?limit=3").await;
    let r: api::MonitorReport = serde_json::from_str(&body).unwrap();
    assert_eq!(r.monitor, "m2");
    assert!(r.failing.len() <= 3 && r.failing_total > 3, "limit: {r:?}");
    assert!(r.failing.iter().all(|c| c.monitor == "m2"));

    // A peer that is gone costs one row, named, without its URL.
    let client = fleet::client(&[]).unwrap();
    let e = fleet::fetch_report(&client, "http://127.0.0.1:1", 10)
        .await
        .unwrap_err();
    assert!(!e.contains("127.0.0.1"), "{e}");
    m2.stop().await;
    m1.stop().await;
}

/// Hostile peers on the status page's gather: one that sends an answer
/// larger than the 16 MB bound (a 20 MB body, as fast as it can), one that
/// sends its head and then a byte a second. Each costs its own row's error,
/// within the gather's 1.5 s, never more memory than the bound.
#[tokio::test]
async fn a_peer_with_an_oversize_or_endless_answer_costs_its_row_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn serve(huge: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let len = if huge { 20 << 20 } else { 1 << 20 };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 << 10];
                    let mut sent = 0;
                    while sent < len {
                        let n = if huge { chunk.len() } else { 1 };
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        sent += n;
                        if !huge {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                });
            }
        });
        url
    }
    let client = fleet::client(&[]).unwrap();
    for (huge, want) in [
        (true, "answer larger than"),
        (false, "the answer did not end within 1s 500ms"),
    ] {
        let url = serve(huge).await;
        let t = tokio::time::Instant::now();
        let e = fleet::fetch_report(&client, &url, 10).await.unwrap_err();
        let took = t.elapsed();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains("127.0.0.1"), "{e}");
        assert!(
            took < fleet::GATHER_TIMEOUT + Duration::from_millis(500),
            "bounded by the gather's timeout: {took:?}"
        );
    }
}

impl Running {
    async fn push(&self, body: impl Into<reqwest::Body>, token: Option<&str>) -> (u16, String) {
        let mut b = self
            .client
            .post(format!("{}/admin/sync", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            b = b.bearer_auth(t);
        }
        let r = b.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Asserts that the view stays `want` (buckets owned, generation) for
    /// 400 ms of passes (a pass every 50 ms).
    async fn view_holds(&self, want: (usize, u64), why: &str) {
        let passes = tokio::time::Instant::now() + Duration::from_millis(400);
        while tokio::time::Instant::now() < passes {
            assert_eq!(self.owned_and_generation().await, want, "{why}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn owned_and_generation(&self) -> (usize, u64) {
        let (_, body) = self.get("/debug/assignment").await;
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["owned"].as_array().unwrap().len(),
            v["generation"].as_u64().unwrap(),
        )
    }
}

/// A pushed bucket table is the store's only when the store does not
/// answer this monitor: while it answers, the table read from it wins (the
/// pushed one is never applied, and forgotten: it is not kept for a later
/// outage); once its reads fail, a pushed table newer than the monitor's
/// view is applied at the pass the push starts (the buckets taken from it
/// are no longer checked). Bodies that are not a table, too large or
/// unauthenticated are refused with a reason that quotes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_table_is_applied_only_when_the_store_does_not_answer() {
    let r = start(Some(TOKEN)).await;
    r.wait_status("/healthz/ready", 200).await;
    let stored = r.store.read_master().await.unwrap().unwrap().value;
    assert_eq!(r.owned_and_generation().await, (256, stored.generation));

    // The table a peer would write once this monitor's heartbeat expired:
    // every bucket to m2.
    let mut taken = stored.clone();
    taken.generation += 1;
    for b in &mut taken.buckets {
        *b = crate::model::BucketAssignment {
            owner: Some("m2".into()),
            ..Default::default()
        };
    }
    let body = serde_json::to_string(&taken).unwrap();
    assert_eq!(r.push(body.clone(), None).await.0, 401);
    let (code, answer) = r.push(body.clone(), Some(TOKEN)).await;
    assert_eq!(code, 202, "{answer}");

    // The store answers: its table stays the view for pass after pass.
    r.view_holds(
        (256, stored.generation),
        "applied although the store answers",
    )
    .await;

    // The store stops answering this monitor: the table pushed while it
    // answered was forgotten...
    r.store.set_available(false);
    r.view_holds(
        (256, stored.generation),
        "a table pushed while the store answered was kept for the outage",
    )
    .await;
    // ...and one pushed now applies.
    let (code, answer) = r.push(body.clone(), Some(TOKEN)).await;
    assert_eq!(code, 202, "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = r.owned_and_generation().await;
        if now == (0, taken.generation) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pushed table was not applied: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An older table pushed afterwards changes nothing.
    let (code, _) = r
        .push(serde_json::to_string(&stored).unwrap(), Some(TOKEN))
        .await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.owned_and_generation().await, (0, taken.generation));

    // Bodies that are no table.
    let (code, answer) = r
        .push(r#"{"buckets": "sk-live-do-not-echo"}"#, Some(TOKEN))
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("does not decode"), "{answer}");
    assert!(!answer.contains("do-not-echo"), "{answer}");
    let (code, answer) = r.push(vec![b' '; 2 << 20], Some(TOKEN)).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("larger than"), "{answer}");
    // A body that never ends: refused at its bound, not held.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = r.base.trim_start_matches("http://");
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t0 = tokio::time::Instant::now();
        c.write_all(
            format!(
                "POST /admin/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"buck"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer))
            .await
            .expect("answered within 5 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        let took = t0.elapsed();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("did not arrive within 2s"), "{answer}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    r.store.set_available(true);
    r.stop().await;
}

/// A CA and a serving certificate for 127.0.0.1 it issued: (CA PEM,
/// certificate PEM, key PEM).
fn issued_for_loopback() -> (String, String, String) {
    let (ca, cert, key) = crate::check::kube::tls_server::issued_for_loopback();
    (ca, cert.pem(), key.serialize_pem())
}

/// Over HTTPS (`--admin-tls-cert-file`): a client that trusts the CA gets
/// its answers, one that does not and a plain-HTTP request get none; a
/// renewed certificate (here from another CA) is served from the next
/// connection on, without a restart; a bad certificate or key is refused
/// with a reason that quotes neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_and_a_renewed_certificate_from_the_next_connection() {
    let (ca1, cert1, key1) = issued_for_loopback();
    let (ca2, cert2, key2) = issued_for_loopback();
    let live =
        crate::reload::Live::new(tls::server_config(cert1.as_bytes(), key1.as_bytes()).unwrap());
    let store = Arc::new(MemStore::new());
    let r = start_served(store, "m1", Some(TOKEN), Some(live.clone()), |_| {}).await;
    assert!(r.base.starts_with("https://"), "{}", r.base);
    let trusting = |ca: &str| {
        crate::http::client_builder()
            .tls_certs_only(tls::ca_certs(ca.as_bytes()).unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let get = |c: reqwest::Client, url: String| async move {
        c.get(url).send().await.map(|r| r.status().as_u16())
    };
    let live_url = format!("{}/healthz/live", r.base);
    assert_eq!(get(trusting(&ca1), live_url.clone()).await.ok(), Some(200));
    assert!(
        get(trusting(&ca2), live_url.clone()).await.is_err(),
        "a client that does not trust the CA gets nothing"
    );
    let plain = live_url.replacen("https://", "http://", 1);
    assert!(
        get(trusting(&ca1), plain).await.is_err(),
        "plain HTTP gets no answer"
    );

    live.set(tls::server_config(cert2.as_bytes(), key2.as_bytes()).unwrap());
    assert_eq!(
        get(trusting(&ca2), live_url.clone()).await.ok(),
        Some(200),
        "the renewed certificate is served to the next connection"
    );
    assert!(get(trusting(&ca1), live_url).await.is_err());

    // Bad files: the reason, never the content.
    for (c, k, want) in [
        ("junk", key1.as_str(), "holds no certificate"),
        (cert1.as_str(), "junk", "no PEM private key"),
        (cert1.as_str(), key2.as_str(), "not usable together"),
    ] {
        let e = tls::server_config(c.as_bytes(), k.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains("PRIVATE KEY") && !e.contains("junk"), "{e}");
    }
    assert!(tls::ca_certs(b"junk").is_err());
    r.stop.cancel();
}

/// A client that connects and never speaks TLS (a scanner, a stuck peer)
/// is dropped at the handshake bound, and holds up no one meanwhile: a
/// client that does speak is answered while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_its_tls_handshake_is_dropped_at_the_bound_and_blocks_no_one() {
    use tokio::io::AsyncReadExt;
    let (ca, cert, key) = issued_for_loopback();
    let live =
        crate::reload::Live::new(tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap());
    let r = start_served(Arc::new(MemStore::new()), "m1", None, Some(live), |_| {}).await;
    let addr = r.base.trim_start_matches("https://").to_string();
    // The clock starts before the connect: the server's bound starts at its
    // accept, which may run before this task resumes from `connect`.
    let t0 = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let client = crate::http::client_builder()
        .tls_certs_only(tls::ca_certs(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let answered = client
        .get(format!("{}/healthz/live", r.base))
        .send()
        .await
        .map(|a| a.status().as_u16());
    assert_eq!(
        answered.ok(),
        Some(200),
        "answered while a silent client waits"
    );
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
        .await
        .expect("the silent connection ends within 5 s")
        .unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        took >= HANDSHAKE_IN_TESTS && took < HANDSHAKE_IN_TESTS + Duration::from_secs(2),
        "dropped at the bound ({HANDSHAKE_IN_TESTS:?}): after {took:?}"
    );
    r.stop.cancel();
}

/// `GET /healthz/live` tells a prober the due time before which this
/// monitor has handled every check (`api::HANDLED_THROUGH_HEADER`): a lease
/// holder that moves the buckets of a monitor cut off from the store
/// catches up from there. It follows the scheduler: at most an interval
/// behind the clock (the oldest entry's due time) and never in the future
/// by more than an interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_liveness_answer_says_through_when_checks_were_handled() {
    let r = start(None).await;
    r.wait_status("/healthz/ready", 200).await;
    let interval = 2_000;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let a = r
            .client
            .get(format!("{}/healthz/live", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(a.status().as_u16(), 200);
        let h: i64 = a
            .headers()
            .get(api::HANDLED_THROUGH_HEADER)
            .expect("the header")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = Clock::system().now_ms();
        assert!(
            (now - interval..=now + interval).contains(&h),
            "handled through {h}, now {now}"
        );
        seen.push(h);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    assert!(seen.windows(2).all(|w| w[1] >= w[0]), "{seen:?}");
    assert!(seen[2] > seen[0], "it moves with the checks: {seen:?}");
    r.stop().await;
}
