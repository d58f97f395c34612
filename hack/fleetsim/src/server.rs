//! The simulator's listeners: the control endpoint (plain http, the address
//! printed at start-up) and the clusters' API servers (TLS by default, one
//! listener per serving certificate, every cluster under `/clusters/{id}`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::sim::{self, Auth, Cluster, Fault};
use crate::statsd::Seen;

pub struct Fleet {
    pub clusters: Vec<Arc<Cluster>>,
    pub by_id: HashMap<String, usize>,
    pub slow_delay: Duration,
    pub page_cap: usize,
    pub seen: Option<Arc<Mutex<Seen>>>,
}

impl Fleet {
    fn cluster(&self, id: &str) -> Option<&Arc<Cluster>> {
        self.by_id.get(id).map(|i| &self.clusters[*i])
    }
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Control endpoint; also serves the clusters when TLS is off.
    Control { clusters: bool },
    /// A TLS listener of cluster API servers.
    Clusters,
}

struct Conn {
    role: Role,
    peer_cert: Option<Vec<u8>>,
}

/// A connection the service drops on purpose (the `down` fault).
#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped (fault: down)")
    }
}
impl std::error::Error for Dropped {}

type Resp = Response<Full<Bytes>>;

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_resp(status: u16, v: &Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

fn kube_status(status: u16, reason: &str, message: &str) -> Resp {
    answer_resp(sim::Answer::status(status, reason, message))
}

fn answer_resp(a: sim::Answer) -> Resp {
    let ct = if a.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    respond(a.status, ct, a.body)
}

/// Accepts connections until `stop`; every connection is a task of this
/// loop, aborted when it ends.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    role: Role,
    fleet: Arc<Fleet>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (fleet, stop, tls) = (fleet.clone(), stop.clone(), tls.clone());
        conns.spawn(async move {
            let conn = async {
                match tls {
                    None => {
                        let info = Arc::new(Conn {
                            role,
                            peer_cert: None,
                        });
                        serve_conn(TokioIo::new(tcp), info, fleet, stop.clone()).await;
                    }
                    Some(acceptor) => {
                        let stream = match acceptor.accept(tcp).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                        };
                        let peer_cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        let info = Arc::new(Conn { role, peer_cert });
                        serve_conn(TokioIo::new(stream), info, fleet, stop.clone()).await;
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
    conns.shutdown().await;
}

async fn serve_conn<I>(io: I, info: Arc<Conn>, fleet: Arc<Fleet>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (info, fleet, stop) = (info.clone(), fleet.clone(), stop.clone());
        async move { handle(req, &info, &fleet, &stop).await }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended");
    }
}

async fn handle(
    req: Request<Incoming>,
    info: &Conn,
    fleet: &Fleet,
    stop: &CancellationToken,
) -> Result<Resp, Dropped> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/clusters/") {
        let serves_clusters =
            matches!(info.role, Role::Clusters | Role::Control { clusters: true });
        if !serves_clusters {
            return Ok(kube_status(404, "NotFound", "clusters are served over TLS"));
        }
        let (id, sub) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let Some(c) = fleet.cluster(id) else {
            return Ok(kube_status(404, "NotFound", "no such cluster"));
        };
        return cluster_request(&req, c, sub, &query, info, fleet, stop).await;
    }
    if matches!(info.role, Role::Control { .. }) {
        return Ok(control(req, &path, fleet).await);
    }
    Ok(kube_status(404, "NotFound", "not found"))
}

async fn cluster_request(
    req: &Request<Incoming>,
    c: &Cluster,
    sub: &str,
    query: &str,
    info: &Conn,
    fleet: &Fleet,
    stop: &CancellationToken,
) -> Result<Resp, Dropped> {
    c.count_request();
    if c.has(Fault::Down) {
        return Err(Dropped);
    }
    if c.has(Fault::Slow) {
        tokio::select! {
            _ = stop.cancelled() => return Err(Dropped),
            _ = tokio::time::sleep(fleet.slow_delay) => {}
        }
    }
    if c.has(Fault::Unauthorized) || !authorised(req, c, info) {
        return Ok(kube_status(401, "Unauthorized", "Unauthorized"));
    }
    if req.method() != Method::GET {
        return Ok(kube_status(405, "MethodNotAllowed", "read-only simulator"));
    }
    let a = sim::answer(c, &sim::route(sub), query, fleet.page_cap);
    Ok(answer_resp(a))
}

fn authorised(req: &Request<Incoming>, c: &Cluster, info: &Conn) -> bool {
    match &c.auth {
        Auth::None => true,
        Auth::Bearer(t) => req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == t),
        Auth::ClientCert(der) => info.peer_cert.as_deref() == Some(der.as_slice()),
    }
}

async fn control(req: Request<Incoming>, path: &str, fleet: &Fleet) -> Resp {
    let method = req.method().clone();
    match (&method, path) {
        (&Method::GET, "/control/clusters") => {
            let all: Vec<Value> = fleet.clusters.iter().map(|c| c.summary()).collect();
            json_resp(200, &Value::Array(all))
        }
        (&Method::GET, "/control/stats") => {
            let requests: u64 = fleet
                .clusters
                .iter()
                .map(|c| c.requests.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            let faulty = fleet
                .clusters
                .iter()
                .filter(|c| !c.faults().is_empty())
                .count();
            json_resp(
                200,
                &json!({"clusters": fleet.clusters.len(), "faulty": faulty, "requests": requests}),
            )
        }
        (&Method::GET, "/control/statsd") => match &fleet.seen {
            Some(seen) => {
                let v = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .summary(Instant::now());
                json_resp(200, &v)
            }
            None => json_resp(404, &json!({"error": "started without --statsd-listen"})),
        },
        (&Method::GET, p) if p.starts_with("/control/clusters/") => {
            let id = &p["/control/clusters/".len()..];
            match fleet.cluster(id) {
                Some(c) => json_resp(200, &c.summary()),
                None => json_resp(404, &json!({"error": format!("no cluster {id:?}")})),
            }
        }
        (&Method::POST | &Method::PUT, p)
            if p.starts_with("/control/clusters/") && p.ends_with("/faults") =>
        {
            let id = &p["/control/clusters/".len()..p.len() - "/faults".len()];
            let Some(c) = fleet.cluster(id).cloned() else {
                return json_resp(404, &json!({"error": format!("no cluster {id:?}")}));
            };
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return json_resp(400, &json!({"error": e.to_string()})),
            };
            match set_faults(&c, &body) {
                Ok(()) => json_resp(200, &c.summary()),
                Err((code, e)) => json_resp(code, &json!({"error": e})),
            }
        }
        _ => json_resp(404, &json!({"error": "not found"})),
    }
}

/// `{"faults": ["down", ...]}` replaces the cluster's faults.
fn set_faults(c: &Cluster, body: &[u8]) -> Result<(), (u16, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (400, format!("body must be JSON {{\"faults\": [..]}}: {e}")))?;
    let list = v
        .get("faults")
        .and_then(Value::as_array)
        .ok_or((400, "body must be JSON {\"faults\": [..]}".to_string()))?;
    let mut new = BTreeSet::new();
    for f in list {
        let s = f.as_str().ok_or((400, "faults are strings".to_string()))?;
        new.insert(Fault::parse(s).map_err(|e| (400, e))?);
    }
    let mut faults = c.faults.lock().unwrap_or_else(|p| p.into_inner());
    if faults.contains(&Fault::CertExpiring) != new.contains(&Fault::CertExpiring) {
        return Err((
            409,
            "cert-expiring is chosen at start-up (--fault cert-expiring=N): the cluster's URL names its certificate's listener".into(),
        ));
    }
    *faults = new;
    Ok(())
}
