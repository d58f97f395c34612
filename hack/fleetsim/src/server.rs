//! The simulator's listeners: the control endpoint (plain http, the address
//! printed at start-up) and the clusters' API servers (TLS by default, one
//! listener per serving certificate, every cluster under `/clusters/{id}`).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
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
    /// The `slowloris` fault writes one byte per this much time.
    pub slowloris_every: Duration,
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
    /// Set by a request to a `slowloris` cluster: from then on this
    /// connection writes one byte at a time.
    trickle: Arc<AtomicBool>,
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

type Resp = Response<BoxBody<Bytes, Infallible>>;

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed());
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
                let trickle = Arc::new(AtomicBool::new(false));
                let every = fleet.slowloris_every;
                match tls {
                    None => {
                        let info = Arc::new(Conn {
                            role,
                            peer_cert: None,
                            trickle: trickle.clone(),
                        });
                        let io = Trickle::new(TokioIo::new(tcp), trickle, every);
                        serve_conn(io, info, fleet, stop.clone()).await;
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
                        let info = Arc::new(Conn {
                            role,
                            peer_cert,
                            trickle: trickle.clone(),
                        });
                        let io = Trickle::new(TokioIo::new(stream), trickle, every);
                        serve_conn(io, info, fleet, stop.clone()).await;
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
    // The hostile ones answer whoever asks, credentials or not.
    if c.has(Fault::Slowloris) {
        info.trickle.store(true, Ordering::Relaxed);
    }
    if c.has(Fault::RedirectLoop) {
        let mut r = kube_status(302, "Found", "redirected");
        let to = match req.uri().path_and_query() {
            Some(pq) => pq.as_str().to_string(),
            None => format!("/clusters/{}{sub}", c.id),
        };
        if let Ok(v) = to.parse() {
            r.headers_mut().insert(LOCATION, v);
        }
        return Ok(r);
    }
    if c.has(Fault::EndlessBody) {
        let mut r = Response::new(Endless.boxed());
        if let Ok(v) = "application/json".parse() {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        return Ok(r);
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
    for f in sim::LISTENER_FAULTS {
        if faults.contains(f) != new.contains(f) {
            let f = f.as_str();
            return Err((
                409,
                format!("{f} is chosen at start-up (--fault {f}=N): the cluster's URL names its listener"),
            ));
        }
    }
    *faults = new;
    Ok(())
}

/// The `endless-body` answer: 64 KiB chunks for as long as the client reads.
struct Endless;

static FILL: [u8; 64 * 1024] = [b' '; 64 * 1024];

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Unsized: hyper sends it chunked. Writing waits for the client to
        // read, so this only produces what the socket takes.
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL)))))
    }
}

/// An I/O that, once `on` is set (the `slowloris` fault), writes one byte
/// per `every`: status line, headers and body alike.
struct Trickle<I> {
    inner: I,
    on: Arc<AtomicBool>,
    every: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Trickle<I> {
    fn new(inner: I, on: Arc<AtomicBool>, every: Duration) -> Self {
        Self {
            inner,
            on,
            every,
            wait: None,
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Trickle<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Trickle<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() || !this.on.load(Ordering::Relaxed) {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if let Some(w) = &mut this.wait {
            ready!(w.as_mut().poll(cx));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..1]))?;
        // Push the byte out now (a TLS record of one byte), not at the end.
        let _ = Pin::new(&mut this.inner).poll_flush(cx);
        this.wait = Some(Box::pin(tokio::time::sleep(this.every)));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The `tls-reset` listener: reads the start of the ClientHello, then
/// closes the socket with SO_LINGER 0, so the client gets a TCP RST in the
/// middle of its handshake.
pub async fn serve_reset(listener: TcpListener, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (mut tcp, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conns.spawn(async move {
            let mut hello = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut hello)).await;
            if let Err(e) = tcp.set_zero_linger() {
                tracing::debug!(error = %e, "SO_LINGER 0 failed; closing normally");
            }
            drop(tcp);
        });
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::sim::Flavor;

    fn cluster(id: &str, faults: &[Fault]) -> Arc<Cluster> {
        Arc::new(Cluster {
            id: id.into(),
            index: 0,
            url: String::new(),
            base_flavor: Flavor::Vanilla,
            nodes: 3,
            pods: 3,
            auth: Auth::None,
            faults: Mutex::new(faults.iter().copied().collect()),
            requests: AtomicU64::new(0),
        })
    }

    /// A plain-http fleet: healthy `ok`, and one cluster per hostile fault
    /// named after it. Returns the address and the stop token.
    async fn fleet() -> (std::net::SocketAddr, CancellationToken) {
        let clusters = vec![
            cluster("ok", &[]),
            cluster("endless", &[Fault::EndlessBody]),
            cluster("slowloris", &[Fault::Slowloris]),
            cluster("loop", &[Fault::RedirectLoop]),
        ];
        let by_id = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        let fleet = Arc::new(Fleet {
            clusters,
            by_id,
            slow_delay: Duration::from_secs(60),
            slowloris_every: Duration::from_millis(50),
            page_cap: 500,
            seen: None,
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let role = Role::Control { clusters: true };
        tokio::spawn(serve(l, None, role, fleet, stop.clone()));
        (addr, stop)
    }

    async fn ask(addr: std::net::SocketAddr, path: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        tcp
    }

    /// Reads until `n` bytes came or the peer closed; bytes read and time taken.
    async fn read_n(tcp: &mut TcpStream, n: usize) -> (Vec<u8>, Duration) {
        let t = Instant::now();
        let mut out = Vec::new();
        let mut b = vec![0u8; 64 * 1024];
        while out.len() < n {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(k) => out.extend_from_slice(&b[..k]),
            }
        }
        (out, t.elapsed())
    }

    #[tokio::test]
    async fn hostile_faults_on_the_wire() {
        let (addr, stop) = fleet().await;

        let mut c = ask(addr, "/clusters/endless/healthz").await;
        let (got, _) = read_n(&mut c, 4 << 20).await;
        let head = String::from_utf8_lossy(&got[..200]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(got.len() >= 4 << 20, "still sending after 4 MiB");

        let mut c = ask(addr, "/clusters/loop/healthz?x=1").await;
        let (got, _) = read_n(&mut c, 1 << 20).await;
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 302"), "{text}");
        assert!(
            text.contains("location: /clusters/loop/healthz?x=1\r\n"),
            "{text}"
        );

        // One byte per 50 ms: 6 bytes take at least 250 ms; a healthy
        // cluster's whole answer comes at once.
        let mut c = ask(addr, "/clusters/slowloris/healthz").await;
        let (got, took) = read_n(&mut c, 6).await;
        assert_eq!(got, b"HTTP/1");
        assert!(took >= Duration::from_millis(250), "{took:?}");
        let mut c = ask(addr, "/clusters/ok/healthz").await;
        let (got, took) = read_n(&mut c, 60).await;
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert!(took < Duration::from_millis(200), "{took:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn tls_reset_listener_resets_after_the_client_hello() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_reset(l, stop.clone()));
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a TLS 1.2+ ClientHello record.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf4, 0x01])
            .await
            .unwrap();
        let mut b = [0u8; 16];
        let e = tcp.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        stop.cancel();
    }

    #[test]
    fn listener_faults_are_start_up_only() {
        let c = cluster("r", &[Fault::TlsReset]);
        let e = set_faults(&c, br#"{"faults": []}"#).unwrap_err();
        assert_eq!(e.0, 409);
        assert!(e.1.contains("tls-reset"), "{}", e.1);
        let c = cluster("h", &[]);
        set_faults(
            &c,
            br#"{"faults": ["endless-body", "slowloris", "redirect-loop"]}"#,
        )
        .unwrap();
        assert_eq!(c.faults().len(), 3);
        assert_eq!(
            set_faults(&c, br#"{"faults": ["tls-reset"]}"#)
                .unwrap_err()
                .0,
            409
        );
    }
}
