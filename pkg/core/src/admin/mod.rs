//! The admin API of one monitor: health, Prometheus metrics, debug views,
//! check-now and drain, and the status page. HTTP/1.1 on hyper, plain or
//! over TLS (`tls.rs`).
//!
//! GETs answer from the engine's handles (and, for the status page, two
//! store reads bounded by a heartbeat interval); POSTs need the bearer token
//! when one is configured. No answer ever contains credentials: cluster
//! entries are shown by id, bucket, state and check results only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::{CheckNowError, EngineHandles};
use crate::schedule::{next_due, phase_ms, LastCheck};
use crate::status::{bucket_owners, fleet_status};

pub mod api;
pub mod fleet;
pub mod tls;

use api::{CheckAnswer, DrainAnswer, ErrorAnswer};

const PAGE: &str = include_str!("page.html");
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNS: usize = 64;

type Resp = Response<Full<Bytes>>;

/// The bearer tokens that mutating endpoints accept, from the token file's
/// lines: the first is the one this process sends (pushed assignments, the
/// CLI's calls); every line is accepted, so that a token is rotated by
/// writing "old, new", then "new, old", then "new" into the file, each
/// once every monitor has read the one before (docs/runbook.md).
#[derive(Clone)]
pub struct Token(Arc<[Box<str>]>);

/// A token file without a token, or with a line too short to be one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenTooShort {
    #[error("the admin token must be at least 16 characters")]
    Short,
    #[error("line {0}: an admin token must be at least 16 characters")]
    ShortLine(usize),
}

impl Token {
    /// Parses a token file: one token per non-empty line (surrounding
    /// white space ignored). Errors name the line, never its content.
    pub fn new(text: &str) -> Result<Self, TokenTooShort> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        if lines.is_empty() {
            return Err(TokenTooShort::Short);
        }
        let many = lines.len() > 1;
        let mut tokens = Vec::with_capacity(lines.len());
        for (n, l) in lines {
            if l.len() < 16 {
                return Err(if many {
                    TokenTooShort::ShortLine(n)
                } else {
                    TokenTooShort::Short
                });
            }
            tokens.push(Box::from(l));
        }
        Ok(Self(tokens.into()))
    }

    /// The token this process sends: the file's first.
    pub fn sent(&self) -> &str {
        &self.0[0]
    }

    /// How many tokens are accepted.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Constant-time comparison of an `Authorization` header value with
    /// each accepted token (all of them compared, whichever matches).
    fn accepts(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|engine| engine.strip_prefix("Bearer ")) else {
            return false;
        };
        // `subtle` compares in constant time for equal lengths (a length
        // difference is answered at once: the token's length is no secret).
        use subtle::ConstantTimeEq;
        let given = given.trim().as_bytes();
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |ok, t| {
                ok | given.ct_eq(t.as_bytes())
            })
            .into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How the admin API is served.
#[derive(Clone)]
pub struct ServeOptions {
    /// The bearer tokens POSTs need (none: POSTs are open; loopback only).
    pub token: Option<crate::reload::Live<Token>>,
    /// HTTPS instead of plain HTTP.
    pub tls: Option<tls::ServerTls>,
    /// Asks peers and Alertmanager for the fleet-wide view
    /// ([`fleet::client`], with `--admin-ca-file`'s roots; rebuilt when
    /// that file changes).
    pub fleet_client: crate::reload::Live<Option<reqwest::Client>>,
    /// How long a client may take over its TLS handshake.
    pub handshake_within: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token: None,
            tls: None,
            fleet_client: crate::reload::Live::new(fleet::client(&[])),
            handshake_within: HANDSHAKE_WITHIN,
        }
    }
}

/// How long a client may take over its TLS handshake, by default.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until `stop` is cancelled; then
/// stops accepting and ends open connections.
pub async fn serve(
    listener: TcpListener,
    engine: EngineHandles,
    opts: ServeOptions,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNS));
    let mut conns = JoinSet::new();
    let state = Arc::new(State {
        engine,
        token: opts.token,
        client: opts.fleet_client,
    });
    let (tls, handshake_within) = (opts.tls, opts.handshake_within);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        // The configuration of the moment: a renewed certificate is
        // served from the next connection on.
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.get()));
        conns.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                return serve_conn(TokioIo::new(tcp), state, stop).await;
            };
            let shake = tokio::time::timeout(handshake_within, acceptor.accept(tcp));
            let tls = tokio::select! {
                _ = stop.cancelled() => return,
                r = shake => match r {
                    Ok(Ok(tls)) => tls,
                    // A plain-HTTP client, a wrong CA, a scanner: the
                    // connection ends; nothing to answer.
                    Ok(Err(e)) => return tracing::debug!(error = %e, "admin TLS handshake failed"),
                    Err(_) => return tracing::debug!("admin TLS handshake timed out"),
                },
            };
            serve_conn(TokioIo::new(tls), state, stop).await
        });
    }
    conns.shutdown().await;
}

/// One connection's requests, until it ends or `stop`.
async fn serve_conn<I>(io: I, state: Arc<State>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, svc);
    tokio::select! {
        _ = stop.cancelled() => {}
        r = conn => if let Err(e) = r { tracing::debug!(error = %e, "admin connection ended") },
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_resp(status: StatusCode, v: &impl Serialize) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => respond(status, "application/json", b),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the answer failed: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    respond(status, "text/plain; charset=utf-8", body.into())
}

/// What every connection shares.
struct State {
    engine: EngineHandles,
    /// Replaced when the token file changes (`crate::reload`).
    token: Option<crate::reload::Live<Token>>,
    /// Asks peers and Alertmanager for the fleet-wide view (none: reqwest
    /// could not start; the view then has this monitor's clusters only).
    client: crate::reload::Live<Option<reqwest::Client>>,
}

/// `?limit=N` of a query, bounded; the default otherwise.
fn limit_of(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(fleet::DEFAULT_LIMIT)
        .clamp(1, fleet::MAX_LIMIT)
}

/// A pushed bucket table: 256 buckets with their handoffs fit in a few
/// tens of KB.
const PUSHED_TABLE_MAX: usize = 1 << 20;
/// How long a pushed table's body may take to arrive (its sender gives up
/// after a quarter of a heartbeat interval).
const PUSHED_TABLE_WITHIN: Duration = Duration::from_secs(2);

/// A request's body, at most `max` bytes, all of it within `within`.
async fn read_body(body: Incoming, max: usize, within: Duration) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    match tokio::time::timeout(within, http_body_util::Limited::new(body, max).collect()).await {
        Err(_) => Err(format!(
            "the body did not arrive within {}",
            humantime::format_duration(within)
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(format!("the body is larger than {max} bytes"))
        }
        Ok(Err(_)) => Err("the body could not be read".into()),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

async fn handle(req: Request<Incoming>, state: &State) -> Resp {
    let (engine, token) = (&state.engine, state.token.as_ref());
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if method == Method::POST {
        if let Some(t) = token {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !t.get().accepts(auth) {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "a valid bearer token is required\n",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
    }
    match (method, segs.as_slice()) {
        (Method::GET, [""]) => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::GET, ["healthz", "live"]) => {
            let mut r = text(StatusCode::OK, "ok\n");
            let handled = engine.stats.pending_from().filter(|d| *d != i64::MAX);
            if let Some(d) = handled {
                r.headers_mut()
                    .insert(api::HANDLED_THROUGH_HEADER, HeaderValue::from(d));
            }
            r
        }
        (Method::GET, ["healthz", "ready"]) => {
            let why = engine.not_ready();
            // The last probe of each peer follows (the code is what
            // orchestrators read; the body is for the operator).
            let probes = probe_lines(&fleet::probes(engine), engine.clock.now_ms());
            if why.is_empty() {
                text(StatusCode::OK, format!("ready\n{probes}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n{probes}", why.join("; ")),
                )
            }
        }
        (Method::GET, ["metrics"]) => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            engine.prometheus(),
        ),
        (Method::GET, ["debug", "clusters", id]) => match cluster_debug(engine, id) {
            Some(v) => json_resp(StatusCode::OK, &v),
            None => json_resp(
                StatusCode::NOT_FOUND,
                &json!({"id": id, "known": false, "reason": "not in this monitor's cache: it keeps the clusters of its own buckets only (clustermon explain ID names the owner)"}),
            ),
        },
        (Method::GET, ["debug", "assignment"]) => {
            json_resp(StatusCode::OK, &assignment_debug(engine))
        }
        (Method::GET, ["api", "monitor"]) => json_resp(
            StatusCode::OK,
            &fleet::monitor_report(engine, limit_of(req.uri().query())),
        ),
        (Method::GET, ["api", "status"]) => {
            match api_status(state, limit_of(req.uri().query())).await {
                Ok(v) => json_resp(StatusCode::OK, &v),
                Err(e) => json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &ErrorAnswer { id: None, error: e },
                ),
            }
        }
        (Method::POST, ["admin", "check", id]) => match engine.check_now(id).await {
            Ok(last) => json_resp(StatusCode::OK, &CheckAnswer::new(id, &last)),
            Err(e) => {
                let status = match e {
                    CheckNowError::Unknown => StatusCode::NOT_FOUND,
                    CheckNowError::Busy => StatusCode::CONFLICT,
                    CheckNowError::PoolFull | CheckNowError::Stopping => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                let answer = ErrorAnswer {
                    id: Some(id.to_string()),
                    error: e.to_string(),
                };
                json_resp(status, &answer)
            }
        },
        // A pushed assignment from the writer of a new bucket table: read
        // the table now. The body, when there is one, is that table (see
        // `EngineHandles::sync_with`); an empty one is a plain hint.
        (Method::POST, ["admin", "sync"]) => {
            let pushed =
                match read_body(req.into_body(), PUSHED_TABLE_MAX, PUSHED_TABLE_WITHIN).await {
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    Ok(b) if b.is_empty() => None,
                    Ok(b) => match std::str::from_utf8(&b)
                        .map_err(|_| "not UTF-8".to_string())
                        .and_then(crate::model::MasterDoc::decode)
                    {
                        Ok(doc) => Some(doc),
                        Err(e) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("the pushed bucket table does not decode: {e}\n"),
                            )
                        }
                    },
                };
            let queued = match pushed {
                Some(doc) => engine.sync_with(doc),
                None => engine.sync_now(),
            };
            if queued {
                json_resp(
                    StatusCode::ACCEPTED,
                    &json!({"monitor": &*engine.me, "sync": true}),
                )
            } else {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"monitor": &*engine.me, "sync": false, "error": "a pass is already queued or the monitor is stopping"}),
                )
            }
        }
        (Method::POST, ["admin", "drain"]) => match engine.drain().await {
            Ok(handoff_at_ms) => json_resp(
                StatusCode::OK,
                &DrainAnswer {
                    monitor: engine.me.to_string(),
                    draining: true,
                    handoff_at_ms,
                },
            ),
            Err(e) => json_resp(
                StatusCode::SERVICE_UNAVAILABLE,
                &ErrorAnswer { id: None, error: e },
            ),
        },
        (_, ["admin", ..]) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// "probe m2: alive 1.2s ago", one line per peer.
fn probe_lines(probes: &[api::ProbeAnswer], now_ms: i64) -> String {
    probes
        .iter()
        .map(|p| {
            format!(
                "probe {}: {} {:.1}s ago\n",
                p.peer,
                p.outcome,
                (now_ms - p.at_ms).max(0) as f64 / 1000.0
            )
        })
        .collect()
}

fn check_json(id: &str, last: &LastCheck) -> Value {
    serde_json::to_value(CheckAnswer::new(id, last)).unwrap_or(Value::Null)
}

/// What this monitor knows of one cluster.
pub fn cluster_debug(engine: &EngineHandles, id: &str) -> Option<Value> {
    let now = engine.clock.now_ms();
    let entry = engine.map.get(id);
    let invalid = engine.map.invalid_reason(id);
    if entry.is_none() && invalid.is_none() {
        return None;
    }
    let view = engine.assignment.borrow().clone();
    let mut v = json!({
        "id": id,
        "known": entry.is_some(),
        "monitor": &*engine.me,
        "invalid_reason": invalid,
        "generation": view.generation,
    });
    if let Some(e) = &entry {
        let b = view.bucket(e.bucket);
        let interval = crate::clock::ms(engine.interval);
        let due = next_due(now, phase_ms(id, interval), interval);
        v["bucket"] = json!(e.bucket);
        v["state"] = json!(e.state.as_str());
        v["checkable"] = json!(e.state.is_checkable());
        v["owner"] = json!(b.owner);
        v["prev"] = json!(b.prev);
        v["handoff_at_ms"] = json!(b.handoff_at_ms);
        v["earlier"] = json!(b.earlier);
        v["owned"] = json!(b.involves(&engine.me, now));
        v["checker_at_next_due"] = json!(b.owner_at(due));
        v["next_due_ms"] = json!(due);
        v["last_check"] = engine
            .last_checks
            .get(id)
            .map(|l| check_json(id, &l.last()))
            .unwrap_or(Value::Null);
    }
    Some(v)
}

pub fn assignment_debug(engine: &EngineHandles) -> Value {
    let now = engine.clock.now_ms();
    let view = engine.assignment.borrow().clone();
    let me = &*engine.me;
    let owned: Vec<usize> = (0..view.buckets.len())
        .filter(|b| view.buckets[*b].owner.as_deref() == Some(me))
        .collect();
    let handing_over: Vec<Value> = view
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| now < b.handing_over_until(me))
        .map(
            |(i, b)| json!({"bucket": i, "to": b.owner, "handoff_at_ms": b.handing_over_until(me)}),
        )
        .collect();
    json!({
        "monitor": me,
        "generation": view.generation,
        "lease_owner": view.lease_owner,
        "lease_expires_ms": view.lease_expires_ms,
        "read_at_ms": engine.assignment_read_ms.load(Ordering::Acquire),
        "draining": engine.draining.load(Ordering::Acquire),
        "owned": owned,
        "handing_over": handing_over,
        "owners": view.buckets.iter().map(|b| b.owner.clone()).collect::<Vec<_>>(),
        "probes": engine.probes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

/// The status page's data: the fleet as the store says now, and every live
/// monitor's failing clusters with their alert state (`fleet::gather`).
async fn api_status(state: &State, limit: usize) -> Result<Value, String> {
    let engine = &state.engine;
    let now = engine.clock.now_ms();
    let bound = engine.heartbeat_interval.max(Duration::from_secs(1));
    let read = async {
        let live = engine.store.list_monitors(now).await?;
        let master = engine.store.read_master().await?;
        Ok::<_, crate::store::StoreError>((live, master))
    };
    let (live, master) = match tokio::time::timeout(bound, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("store: {e}")),
        Err(_) => return Err("store: no answer within a heartbeat interval".into()),
    };
    let master = master.map(|m| m.value);
    // Each monitor holds its own share only: the fleet's clusters are the
    // sum of the live monitors' caches (a handoff in progress counts twice
    // for a heartbeat interval), with no store query per page poll.
    let held: u64 = live.iter().map(|m| m.stats.cache_size).sum();
    let fleet = fleet_status(master.as_ref(), &live, held, now);
    let owners = bucket_owners(master.as_ref(), &live);
    let client = state.client.get();
    let failing = fleet::gather(engine, client.as_ref().as_ref(), &live, limit).await;
    let not_ready = engine.not_ready();
    Ok(json!({
        "self": {"id": &*engine.me, "version": engine.version, "ready": not_ready.is_empty(), "not_ready": not_ready},
        "probes": fleet::probes(engine),
        "alert_after": engine.alerts.after(),
        "generated_at_ms": now,
        "fleet": fleet,
        "buckets": owners,
        "failing": failing,
    }))
}

#[cfg(test)]
mod tests;
