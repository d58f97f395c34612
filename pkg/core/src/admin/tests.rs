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
    let mut cfg = EngineConfig::new("m1");
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.heartbeat_ttl = Duration::from_millis(500);
    cfg.lease_ttl = Duration::from_millis(500);
    cfg.feed_interval = Duration::from_millis(50);
    cfg.interval = Duration::from_secs(2);
    cfg.shutdown_grace = Duration::from_secs(1);
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = token.map(|t| Token::new(t).unwrap());
    let admin = tokio::spawn(serve(listener, h, token, stop.clone()));
    let s = stop.clone();
    let engine = tokio::spawn(engine.run(async move { s.cancelled().await }));
    Running {
        base,
        store,
        stop,
        engine,
        admin,
        client: reqwest::Client::new(),
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
    assert!(
        v["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "c3"),
        "the failed check is listed: {body}"
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
