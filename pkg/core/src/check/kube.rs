//! A small Kubernetes API client for one check: per-cluster TLS and
//! authentication, bodies read with a size cap, lists paged with
//! `limit`/`continue` so memory stays bounded whatever the cluster's size.
//!
//! One check talks to one API server, so a connection is the check's own:
//! TCP and TLS (rustls, [`super::tls_io`]) with the cluster's identity, then the small
//! HTTP/1.1 exchange of [`super::h1`] (no pool shared between checks, no
//! dispatch task, no redirect machinery). It is kept for the check's next
//! request; collectors that run side by side open at most one each.
//! Everything is dropped with the check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::h1::{self, H1Error};
use super::tls::{self, MemoUse, MemoVerifier, VerifiedChain};
use super::tls_io::TlsIo;
use crate::model::{Credentials, Secret};

/// Largest response body a check reads (a page of a list included).
pub const MAX_BODY: usize = 8 << 20;
/// Items per list page.
pub const PAGE: usize = 100;
/// Connections a check keeps open for its next requests.
const MAX_IDLE: usize = 4;
/// Most requests sent at once on one connection ([`KubeClient::lists`],
/// [`KubeClient::prefetch`]) by default: the default collectors' 17 first
/// requests fit. `--pipelined-requests` sets it, up to [`MAX_PIPELINE`].
pub const PIPELINE: usize = 24;
/// The most that can be set: their heads (~1 KiB each with a bearer token)
/// fit the sockets' buffers, so sending them never waits on the server's
/// reading.
pub const MAX_PIPELINE: usize = 32;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KubeError {
    /// Credentials or TLS settings unusable; names the field, never the value.
    #[error("configuration: {0}")]
    Config(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("invalid response: {0}")]
    Decode(String),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The collector itself panicked (contained, logged): a bug, not the
    /// cluster's answer.
    #[error("collector panicked")]
    Panicked,
}

impl KubeError {
    /// Short label for metric tags and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Unreachable(_) => "unreachable",
            KubeError::Timeout => "timeout",
            KubeError::Status(401 | 403) => "unauthorized",
            KubeError::Status(_) => "status",
            KubeError::Decode(_) => "decode",
            KubeError::TooLarge => "too_large",
            KubeError::Panicked => "panic",
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// DER of the server's leaf certificate (https only).
    pub peer_certificate: Option<Vec<u8>>,
}

/// What a check's connections are to: parsed once from the document's
/// `apiServer`.
struct Target {
    /// Host to connect to (an IPv6 address without brackets).
    host: Box<str>,
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: Box<str>,
    /// Path of the API server below the authority (no trailing `/`).
    prefix: Box<str>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// The verifier of the cluster's CA bundle, asked after the check what
    /// became of the chain it was given (`tls::ChainMemo`).
    memo: Option<Arc<MemoVerifier>>,
}

/// A check's connection: plain TCP or TLS (boxed: the rustls session is
/// large next to a socket).
type Stream = Either<TcpStream, Box<TlsIo>>;

fn peer_certificate(s: &Stream) -> Option<&[u8]> {
    match s {
        Either::Left(_) => None,
        Either::Right(t) => t.peer_certificate(),
    }
}

/// The server's certificate is read from the session when an answer
/// comes, not copied for the wait.
struct Conn {
    h1: h1::Conn<Stream>,
    /// The URLs of requests sent ahead ([`KubeClient::prefetch`]) and not
    /// yet answered, in the order the server answers them.
    pending: VecDeque<String>,
}

pub struct KubeClient {
    target: Target,
    auth: Option<HeaderValue>,
    deadline: Instant,
    connect_timeout: Duration,
    /// Most requests sent at once on a connection (1: one at a time).
    pipeline: usize,
    idle: Mutex<Vec<Conn>>,
}

/// The names of the Kubernetes answers' schema (the list envelope and the
/// decoders of `collect`): the only words of an answer a decode error may
/// show, through [`crate::decode`].
pub const KUBE_NAMES: &[&str] = &[
    "items",
    "metadata",
    "continue",
    "name",
    "namespace",
    "labels",
    "type",
    "status",
    "gitVersion",
    "conditions",
    "spec",
    "desiredUpdate",
    "version",
    "desired",
    "history",
    "state",
    "phase",
    "containerStatuses",
    "restartCount",
    "waiting",
    "reason",
];

/// Cuts a cause to a short reason for a report.
fn short(mut why: String) -> String {
    if why.len() > 120 {
        let mut cut = 120;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
        why.push('…');
    }
    why
}

/// A short reason for a failed request: what failed (connect, request,
/// body) and the innermost cause ("connection reset by peer"), never the
/// URL or the layers in between.
fn reason(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!("{what}: {}", short(crate::http::root_cause(e)))
}

/// Parses an `apiServer` URL: `http(s)://host[:port][/prefix]`.
fn target(
    api_server: &str,
    creds: &Credentials,
    known: VerifiedChain,
) -> Result<Target, KubeError> {
    let bad = |what: &str| KubeError::Config(format!("apiServer: {what}"));
    let uri: hyper::Uri = api_server.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information is not allowed"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if uri.query().is_some() {
        return Err(bad("a query is not allowed"));
    }
    let (tls, memo) = if https {
        let (config, memo) =
            tls::client_config_with_memo(creds, true, known).map_err(KubeError::Config)?;
        let name = ServerName::try_from(host.to_string()).map_err(|_| bad("invalid host name"))?;
        (Some((Arc::new(config), name)), memo)
    } else {
        (None, None)
    };
    Ok(Target {
        host: host.into(),
        port,
        authority: authority.as_str().into(),
        prefix: uri.path().trim_end_matches('/').into(),
        tls,
        memo,
    })
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    metadata: Option<ListMeta>,
}

impl KubeClient {
    pub fn new(
        api_server: &str,
        creds: &Credentials,
        deadline: Instant,
    ) -> Result<Self, KubeError> {
        Self::with_connect_timeout(api_server, creds, deadline, Duration::from_secs(5))
    }

    /// A client whose connections (TCP and the TLS handshake) must be up
    /// within `connect_timeout`; every request ends by `deadline`.
    pub fn with_connect_timeout(
        api_server: &str,
        creds: &Credentials,
        deadline: Instant,
        connect_timeout: Duration,
    ) -> Result<Self, KubeError> {
        Self::with_memo(
            api_server,
            creds,
            deadline,
            connect_timeout,
            VerifiedChain::default(),
        )
    }

    /// As [`Self::with_connect_timeout`], given the server certificate chain
    /// last verified for this cluster version (see `tls::ChainMemo`).
    pub fn with_memo(
        api_server: &str,
        creds: &Credentials,
        deadline: Instant,
        connect_timeout: Duration,
        known: VerifiedChain,
    ) -> Result<Self, KubeError> {
        let auth = match &creds.token {
            Some(t) => Some(bearer(t)?),
            None => None,
        };
        Ok(Self {
            target: target(api_server, creds, known)?,
            auth,
            deadline,
            connect_timeout,
            pipeline: PIPELINE,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// At most `n` requests sent at once on a connection (1..=[`MAX_PIPELINE`];
    /// 1: one at a time, nothing sent ahead).
    pub fn with_pipeline(mut self, n: usize) -> Self {
        self.pipeline = n.clamp(1, MAX_PIPELINE);
        self
    }

    async fn connect(&self) -> Result<Conn, KubeError> {
        let t = &self.target;
        let up = async {
            let tcp = TcpStream::connect((&*t.host, t.port))
                .await
                .map_err(|e| KubeError::Unreachable(reason("connect", &e)))?;
            let _ = tcp.set_nodelay(true);
            let stream = match &t.tls {
                None => Either::Left(tcp),
                Some((config, name)) => Either::Right(Box::new(
                    TlsIo::connect(config.clone(), name.clone(), tcp)
                        .await
                        .map_err(|e| KubeError::Unreachable(reason("tls", &e)))?,
                )),
            };
            Ok(Conn {
                h1: h1::Conn::new(stream),
                pending: VecDeque::new(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, up).await {
            Ok(r) => r,
            Err(_) => Err(KubeError::Unreachable(format!(
                "connect: not connected within {}",
                humantime::format_duration(self.connect_timeout)
            ))),
        }
    }

    /// What this client's handshakes made of the chain memo.
    pub fn memo_use(&self) -> MemoUse {
        self.target
            .memo
            .as_ref()
            .map_or(MemoUse::Unused, |m| m.used())
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// The request head of a GET of `path`.
    fn head(&self, path: &str) -> Result<Vec<u8>, KubeError> {
        // Paths are ours (continue tokens percent-encoded): a byte that
        // would end the request line or a header is refused, not sent.
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(KubeError::Config("invalid request path".into()));
        }
        let t = &self.target;
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"GET ");
        head.extend_from_slice(t.prefix.as_bytes());
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        head.extend_from_slice(t.authority.as_bytes());
        head.extend_from_slice(b"\r\nAccept: application/json\r\nUser-Agent: clustermon/");
        head.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        head.extend_from_slice(b"\r\n");
        if let Some(a) = &self.auth {
            head.extend_from_slice(b"Authorization: ");
            head.extend_from_slice(a.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        Ok(head)
    }

    /// The answer to `url` (request head `head`) on `conn`. Sent ahead and
    /// next in line, it is only read; otherwise the answers still awaited
    /// there are read and dropped, then it is sent.
    async fn exchange(
        conn: &mut Conn,
        url: &str,
        head: Vec<u8>,
    ) -> Result<(Response, bool), H1Error> {
        if conn.pending.front().is_some_and(|u| u == url) {
            conn.pending.pop_front();
        } else {
            if !conn.pending.is_empty() {
                // Boxed: rare, and inline it would size every waiting
                // check's future (24 bytes more).
                Box::pin(Self::drain(conn)).await?;
            }
            conn.h1.send(head).await?;
        }
        let a = conn.h1.answer(MAX_BODY).await?;
        Ok((
            Response {
                status: a.status,
                body: a.body,
                peer_certificate: peer_certificate(conn.h1.io()).map(<[u8]>::to_vec),
            },
            a.keep_alive,
        ))
    }

    /// Reads and drops the answers to the requests sent ahead on `conn`.
    /// Whatever went wrong with them, the connection cannot serve the next
    /// request: [`H1Error::Closed`], so that it is asked on a new one.
    async fn drain(conn: &mut Conn) -> Result<(), H1Error> {
        while conn.pending.pop_front().is_some() {
            match conn.h1.answer(MAX_BODY).await {
                Ok(a) if a.keep_alive => {}
                _ => return Err(H1Error::Closed),
            }
        }
        Ok(())
    }

    /// Sends the GETs of `urls` (up to the client's pipeline) ahead on the check's
    /// kept connection, so that the collectors that ask them next, in this
    /// order, find each answer coming without a round trip of its own
    /// (HTTP/1.1 pipelining, as in [`KubeClient::lists`]). Without a kept
    /// connection nothing is sent; a failed send drops the connection
    /// (the next request opens another). A URL asked out of this order
    /// still gets its answer: the answers ahead of it are read and dropped.
    pub async fn prefetch(&self, urls: &[String]) {
        // Nothing to send (a healthz-only check): not even the pool's lock.
        if self.pipeline < 2 || urls.is_empty() {
            return;
        }
        let Some(mut conn) = self.take_idle() else {
            return;
        };
        if !conn.pending.is_empty() {
            self.give_back(conn);
            return;
        }
        let mut heads = Vec::new();
        let mut sent = 0;
        // A path refused by `head` is left to its collector to report.
        for u in urls.iter().take(self.pipeline) {
            match self.head(u) {
                Ok(h) => heads.extend_from_slice(&h),
                Err(_) => break,
            }
            sent += 1;
        }
        if sent == 0 {
            self.give_back(conn);
            return;
        }
        if let Ok(Ok(())) = tokio::time::timeout_at(self.deadline, conn.h1.send(heads)).await {
            conn.pending.extend(urls[..sent].iter().cloned());
            self.give_back(conn);
        }
    }

    /// GET `path` (relative to the API server), body read up to [`MAX_BODY`].
    /// Redirects are never followed: the request carries the cluster's
    /// credentials (a bearer header, a client certificate) and a hostile or
    /// compromised API server could send them elsewhere. A 3xx is the answer.
    pub async fn get(&self, path: &str) -> Result<Response, KubeError> {
        let head = self.head(path)?;
        let fut = async move {
            // A kept connection the server closed meanwhile is replaced
            // once (a GET is safe to send again); a new connection's
            // failure is the answer.
            if let Some(mut conn) = self.take_idle() {
                match Self::exchange(&mut conn, path, head.clone()).await {
                    Ok((r, keep)) => {
                        if keep {
                            self.give_back(conn);
                        }
                        return Ok(r);
                    }
                    Err(H1Error::Closed | H1Error::Io(_)) => {}
                    Err(e) => return Err(h1_error(e)),
                }
            }
            // Boxed: a connect holds far more state than a wait for an
            // answer, and a check that hangs waits for its whole timeout.
            let mut conn = Box::pin(self.connect()).await?;
            let (r, keep) = Self::exchange(&mut conn, path, head)
                .await
                .map_err(h1_error)?;
            if keep {
                self.give_back(conn);
            }
            Ok(r)
        };
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| KubeError::Timeout)?
    }

    /// GET a 2xx answer: any other status is [`KubeError::Status`].
    pub async fn get_ok(&self, path: &str) -> Result<Response, KubeError> {
        let r = self.get(path).await?;
        if !(200..300).contains(&r.status) {
            return Err(KubeError::Status(r.status));
        }
        Ok(r)
    }

    /// GET and decode a 2xx JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, KubeError> {
        decode_json(&self.get_ok(path).await?.body)
    }

    /// GETs `path`'s pages in turn, each 2xx body handed to `page`, which
    /// answers the page's continue token. Only one page is in memory at a
    /// time. With [`decode_page`], items can
    /// borrow their strings from the body (`Cow<str>` with
    /// `#[serde(borrow)]`: no allocation for a string without escapes).
    pub async fn pages(
        &self,
        path: &str,
        page: impl FnMut(&[u8]) -> Result<Option<String>, KubeError>,
    ) -> Result<(), KubeError> {
        self.pages_from(path, None, page).await
    }

    /// [`KubeClient::pages`] from the page `cont` names (`None`: the first).
    async fn pages_from(
        &self,
        path: &str,
        mut cont: Option<String>,
        mut page: impl FnMut(&[u8]) -> Result<Option<String>, KubeError>,
    ) -> Result<(), KubeError> {
        for _ in 0..100_000 {
            let r = self.get_ok(&page_url(path, cont.as_deref())).await?;
            cont = page(&r.body)?.filter(|c| !c.is_empty());
            if cont.is_none() {
                return Ok(());
            }
        }
        Err(KubeError::Decode(
            "list did not end after 100000 pages".into(),
        ))
    }

    /// The lists of `paths`, every page handed to `page` as in
    /// [`KubeClient::pages`]; a list the server does not have (404: a
    /// namespace absent from this cluster) is skipped.
    ///
    /// Their first pages are asked at once on one connection, up to
    /// the client's pipeline ([`PIPELINE`] by default) in one write (HTTP/1.1 pipelining: the server
    /// answers in order), so that N lists cost one round trip rather than
    /// N; their further pages follow in turn. A server that stops
    /// answering part-way (it closes, or says `Connection: close`) is asked
    /// the rest again on a new connection: GETs are safe to repeat, and a
    /// list answered before is not asked twice. The first error ends it,
    /// as in turn.
    pub async fn lists(
        &self,
        paths: &[String],
        mut page: impl FnMut(&[u8]) -> Result<Option<String>, KubeError>,
    ) -> Result<(), KubeError> {
        let urls: Vec<String> = paths.iter().map(|p| page_url(p, None)).collect();
        // Lists with more pages: their index and continue token.
        let mut more: Vec<(usize, String)> = Vec::new();
        let mut next = 0;
        let fut = async {
            while next < urls.len() {
                let kept = self.take_idle();
                let reused = kept.is_some();
                let mut conn = match kept {
                    Some(c) => c,
                    None => Box::pin(self.connect()).await?,
                };
                // First pages sent ahead for these lists are next in line:
                // only read (what was sent after them stays awaited).
                // Answers awaited for anything else are read and dropped
                // before these lists are asked.
                let ahead = conn
                    .pending
                    .iter()
                    .zip(&urls[next..])
                    .take_while(|(p, u)| p == u)
                    .count();
                let batch = if ahead > 0 {
                    conn.pending.drain(..ahead);
                    &urls[next..next + ahead]
                } else {
                    if Self::drain(&mut conn).await.is_err() {
                        continue; // a kept connection: a new one
                    }
                    &urls[next..urls.len().min(next + self.pipeline)]
                };
                let mut heads = Vec::new();
                for u in &batch[ahead..] {
                    heads.extend_from_slice(&self.head(u)?);
                }
                let mut answered = 0;
                let mut keep = true;
                let sent = if heads.is_empty() {
                    Ok(())
                } else {
                    conn.h1.send(heads).await
                };
                while sent.is_ok() && answered < batch.len() && keep {
                    match conn.h1.answer(MAX_BODY).await {
                        Ok(a) => {
                            answered += 1;
                            keep = a.keep_alive;
                            let i = next;
                            next += 1;
                            match a.status {
                                404 => {}
                                200..=299 => {
                                    if let Some(c) = page(&a.body)?.filter(|c| !c.is_empty()) {
                                        more.push((i, c));
                                    }
                                }
                                s => return Err(KubeError::Status(s)),
                            }
                        }
                        // Closed before this answer: what was answered
                        // stands; the rest goes on a new connection. A
                        // new connection that answered nothing fails.
                        Err(H1Error::Closed | H1Error::Io(_)) if reused || answered > 0 => {
                            keep = false;
                        }
                        Err(e) => return Err(h1_error(e)),
                    }
                }
                match sent {
                    Err(H1Error::Closed | H1Error::Io(_)) if reused => continue,
                    Err(e) => return Err(h1_error(e)),
                    Ok(()) if keep => self.give_back(conn),
                    Ok(()) => {}
                }
            }
            Ok(())
        };
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| KubeError::Timeout)??;
        for (i, cont) in more {
            self.pages_from(&paths[i], Some(cont), &mut page).await?;
        }
        Ok(())
    }
}

/// The URL of a list's first page, as [`KubeClient::pages`] asks it
/// (for [`KubeClient::prefetch`]).
pub fn first_page(path: &str) -> String {
    page_url(path, None)
}

/// The URL of a list's page: the first (`cont` `None`) or the one a
/// continue token names.
fn page_url(path: &str, cont: Option<&str>) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{path}{sep}limit={PAGE}");
    if let Some(c) = cont {
        url.push_str("&continue=");
        url.push_str(&encode_query(c));
    }
    url
}

/// Decodes a JSON answer; `T` may borrow its strings from `body`.
pub fn decode_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, KubeError> {
    crate::decode::json_slice(body, KUBE_NAMES).map_err(|e| KubeError::Decode(e.into()))
}

/// Decodes one list page's body, handing each item to `each`; answers the
/// page's continue token.
pub fn decode_page<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    each: impl FnMut(T),
) -> Result<Option<String>, KubeError> {
    let page: List<T> = decode_json(body)?;
    page.items.into_iter().for_each(each);
    Ok(page.metadata.and_then(|m| m.cont))
}

fn h1_error(e: H1Error) -> KubeError {
    match e {
        H1Error::TooLarge => KubeError::TooLarge,
        H1Error::Io(why) => KubeError::Unreachable(format!("request: {}", short(why))),
        e => KubeError::Unreachable(format!("request: {e}")),
    }
}

fn bearer(t: &Secret) -> Result<HeaderValue, KubeError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose().trim()))
        .map_err(|_| KubeError::Config("token has characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Percent-encodes a query value (continue tokens are base64-ish): all
/// but RFC 3986's unreserved characters.
fn encode_query(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const QUERY_VALUE: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// A test server that shows whether requests were pipelined.
#[cfg(test)]
pub(crate) mod pipelining {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// On each connection, after `wait_after` answers, it answers nothing
    /// more until it holds `wait_for` request heads (requests sent one at
    /// a time never get there: the client's deadline ends them), then
    /// answers in order with `answer(request line)`; with
    /// `answers_per_conn`, it closes silently once it has given that many
    /// (`Some(0)`: it reads a request and closes). Its URL, the
    /// connections it accepted and the request lines it answered.
    pub async fn pipelining_server(
        wait_after: usize,
        wait_for: usize,
        answers_per_conn: Option<usize>,
        answer: fn(&str) -> (u16, String),
    ) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (c, a) = (conns.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = l.accept().await {
                c.fetch_add(1, SeqCst);
                let a = a.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    let mut served = 0;
                    let heads = |buf: &[u8]| buf.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    loop {
                        let want = if served == wait_after { wait_for } else { 1 };
                        while heads(&buf) < want.max(1) {
                            match tcp.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            if answers_per_conn == Some(served) {
                                return;
                            }
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let line = String::from_utf8_lossy(&head)
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .to_string();
                            let (status, body) = answer(&line);
                            a.lock().unwrap().push(line);
                            let reply = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if tcp.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                            served += 1;
                        }
                    }
                });
            }
        });
        (url, conns, answered)
    }
}

/// Test access to the list envelope.
#[cfg(test)]
pub(crate) mod tests_support {
    pub struct List<T> {
        pub items: Vec<T>,
        pub cont: Option<String>,
    }
    impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for List<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let l = super::List::<T>::deserialize(d)?;
            Ok(Self {
                items: l.items,
                cont: l.metadata.and_then(|m| m.cont),
            })
        }
    }
}

/// A TLS API server for tests: a CA, a serving certificate for 127.0.0.1
/// signed by it, and a listener answering every request `200 {}`.
#[cfg(test)]
pub(crate) mod tls_server {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub struct TlsServer {
        pub url: String,
        pub ca_pem: String,
        pub task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A TLS acceptor serving `cert` with `key` (ring, no client
    /// certificates).
    pub fn acceptor(
        cert: rustls::pki_types::CertificateDer<'static>,
        key: &rcgen::KeyPair,
    ) -> tokio_rustls::TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A new CA and a certificate for 127.0.0.1 it issued: (the CA's PEM,
    /// the certificate, its key).
    pub fn issued_for_loopback() -> (String, rcgen::Certificate, rcgen::KeyPair) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let cert = p.signed_by(&key, &issuer).unwrap();
        (ca_pem, cert, key)
    }

    pub async fn start() -> TlsServer {
        let (ca_pem, cert, key) = issued_for_loopback();
        let acceptor = acceptor(cert.der().clone(), &key);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut b = [0u8; 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                            if tls.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match tls.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                });
            }
        });
        TlsServer { url, ca_pem, task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain memo from the client's side: a first client verifies the
    /// server's chain and learns it, a second given what was learned takes
    /// it without verifying, and one given it under another CA bundle does
    /// not (its handshake fails).
    #[tokio::test]
    async fn a_chain_learned_by_one_check_is_taken_by_the_next() {
        let s = tls_server::start().await;
        let creds = Credentials {
            ca_bundle: Some(s.ca_pem.clone()),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = |known| {
            KubeClient::with_memo(&s.url, &creds, deadline, Duration::from_secs(5), known).unwrap()
        };
        let (remembered, verified) = tls::chain_counts();
        let first = client(VerifiedChain::default());
        assert_eq!(first.get("/healthz").await.unwrap().status, 200);
        // Process-wide counts (other tests add to them too).
        assert!(tls::chain_counts().1 > verified);
        let MemoUse::Learned(m) = first.memo_use() else {
            panic!("learned: {:?}", first.memo_use())
        };
        let second = client(m);
        assert_eq!(second.memo_use(), MemoUse::Unused, "nothing verified yet");
        assert_eq!(second.get("/healthz").await.unwrap().status, 200);
        assert_eq!(second.memo_use(), MemoUse::Hit);
        assert!(tls::chain_counts().0 > remembered);

        // The same memo with another CA bundle: verified, and refused.
        let other = tls_server::start().await;
        let creds = Credentials {
            ca_bundle: Some(other.ca_pem.clone()),
            ..Default::default()
        };
        let third =
            KubeClient::with_memo(&s.url, &creds, deadline, Duration::from_secs(5), m).unwrap();
        assert!(third.get("/healthz").await.is_err());
        assert_eq!(third.memo_use(), MemoUse::Unused);
    }

    #[test]
    fn query_encoding_and_error_kinds() {
        assert_eq!(encode_query("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
        assert_eq!(KubeError::Status(401).kind(), "unauthorized");
        assert_eq!(KubeError::Decode("x".into()).kind(), "decode");
    }

    mod answers_never_echo {
        use proptest::prelude::*;
        use serde::de::DeserializeOwned;
        use serde_json::{json, Value};

        use super::super::{List, KUBE_NAMES};
        use crate::check::collect::{ClusterOperator, ClusterVersionObj, Node, Pod, VersionInfo};
        use crate::decode::testing::{assert_clean, mutated, value};

        fn node_list() -> Value {
            json!({"kind": "NodeList", "metadata": {"continue": "abc"}, "items": [{
                "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/master": ""}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }]})
        }

        fn pod_list() -> Value {
            json!({"items": [{
                "metadata": {"name": "p", "namespace": "kube-system"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "c", "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
            }]})
        }

        fn operator_list() -> Value {
            json!({"items": [{"metadata": {"name": "dns"},
                "status": {"conditions": [{"type": "Degraded", "status": "False"}]}}]})
        }

        fn cluster_version() -> Value {
            json!({"spec": {"desiredUpdate": {"version": "4.15.2"}},
                "status": {"desired": {"version": "4.15.2"},
                    "history": [{"state": "Completed", "version": "4.15.1"}],
                    "conditions": [{"type": "Available", "status": "True"}]}})
        }

        /// Decodes as `get_json` does and checks the error as a check
        /// report would show it.
        fn check<T: DeserializeOwned>(v: &Value) -> Result<(), TestCaseError> {
            check_with(v, |raw| {
                crate::decode::json_slice::<T>(raw, KUBE_NAMES).map(drop)
            })
        }

        /// Same, for items that borrow from the body (pods: `decode_page`).
        fn check_with(
            v: &Value,
            decode: impl Fn(&[u8]) -> Result<(), crate::decode::DecodeError>,
        ) -> Result<(), TestCaseError> {
            let raw = v.to_string();
            if let Err(e) = decode(raw.as_bytes()) {
                let shown = super::KubeError::Decode(e.into()).to_string();
                assert_clean(&shown, v, KUBE_NAMES)?;
            }
            Ok(())
        }

        fn all(v: &Value) -> Result<(), TestCaseError> {
            check_with(v, |raw| {
                crate::decode::json_slice::<List<Node<'_>>>(raw, KUBE_NAMES).map(drop)
            })?;
            check_with(v, |raw| {
                crate::decode::json_slice::<List<Pod<'_>>>(raw, KUBE_NAMES).map(drop)
            })?;
            check_with(v, |raw| {
                crate::decode::json_slice::<List<ClusterOperator<'_>>>(raw, KUBE_NAMES).map(drop)
            })?;
            check_with(v, |raw| {
                crate::decode::json_slice::<ClusterVersionObj<'_>>(raw, KUBE_NAMES).map(drop)
            })?;
            check::<VersionInfo>(v)
        }

        #[test]
        fn a_canary_of_the_wrong_type_is_named_not_echoed() {
            let mut v = node_list();
            v["items"][0]["metadata"]["labels"] = json!({"cnry-key": {"cnry": 1}});
            let e = crate::decode::json_str::<List<Node<'_>>>(&v.to_string(), KUBE_NAMES)
                .err()
                .unwrap();
            assert_eq!(
                e.as_str(),
                "items[0].metadata.labels.<key>: invalid type map, expected a string"
            );
            let mut v = pod_list();
            v["items"][0]["status"]["containerStatuses"][0]["restartCount"] = json!("cnry-9");
            let e = crate::decode::json_str::<List<Pod<'_>>>(&v.to_string(), KUBE_NAMES)
                .err()
                .unwrap();
            assert_eq!(
                e.as_str(),
                "items[0].status.containerStatuses[0].restartCount: invalid type string, expected u64"
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_answers_never_echo(v in value(KUBE_NAMES)) {
                all(&v)?;
            }

            #[test]
            fn mutated_answers_never_echo(
                v in prop_oneof![
                    mutated(node_list(), KUBE_NAMES),
                    mutated(pod_list(), KUBE_NAMES),
                    mutated(operator_list(), KUBE_NAMES),
                    mutated(cluster_version(), KUBE_NAMES),
                ]
            ) {
                all(&v)?;
            }
        }
    }

    mod connections {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};
        use tokio::time::Instant;

        use super::super::pipelining::pipelining_server;
        use super::super::*;

        /// A server answering `{}` to each request; `close`: one answer per
        /// connection, then it closes. Its URL (with a path prefix), the
        /// connections it accepted and the request heads it read.
        async fn server(close: bool) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/clusters/c1/", l.local_addr().unwrap());
            let conns = Arc::new(AtomicUsize::new(0));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let (c, h) = (conns.clone(), heads.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = l.accept().await {
                    c.fetch_add(1, SeqCst);
                    tokio::spawn(serve(tcp, close, h.clone()));
                }
            });
            (url, conns, heads)
        }

        async fn serve(mut tcp: TcpStream, close: bool, heads: Arc<Mutex<Vec<String>>>) {
            let mut buf = Vec::new();
            let mut b = [0u8; 1024];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let answer: &[u8] = if close {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                    };
                    if tcp.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
                match tcp.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
        }

        fn creds() -> Credentials {
            Credentials {
                token: Some(Secret::new("t0ken")),
                insecure_skip_tls_verify: true,
                ..Default::default()
            }
        }

        fn client(url: &str) -> KubeClient {
            let deadline = Instant::now() + Duration::from_secs(10);
            KubeClient::new(url, &creds(), deadline).unwrap()
        }

        #[tokio::test]
        async fn one_connection_serves_a_checks_requests_in_turn() {
            let (url, conns, heads) = server(false).await;
            let k = client(&url);
            for path in ["/healthz", "/version", "/api/v1/nodes?limit=100"] {
                let r = k.get(path).await.unwrap();
                assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
            }
            assert_eq!(conns.load(SeqCst), 1, "kept alive between requests");
            let heads = heads.lock().unwrap();
            let host = url.trim_start_matches("http://").split('/').next().unwrap();
            assert!(
                heads[0].starts_with("GET /clusters/c1/healthz HTTP/1.1\r\n"),
                "{}",
                heads[0]
            );
            assert!(
                heads[2].starts_with("GET /clusters/c1/api/v1/nodes?limit=100 "),
                "{}",
                heads[2]
            );
            for h in heads.iter() {
                let h = h.to_ascii_lowercase();
                assert!(h.contains(&format!("host: {host}\r\n")), "{h}");
                assert!(h.contains("authorization: bearer t0ken\r\n"), "{h}");
            }
        }

        #[tokio::test]
        async fn a_connection_the_server_closes_is_replaced() {
            let (url, conns, _) = server(true).await;
            let k = client(&url);
            for _ in 0..3 {
                assert_eq!(k.get("/healthz").await.unwrap().status, 200);
            }
            assert_eq!(conns.load(SeqCst), 3);
        }

        /// A server that closes a kept-alive connection after one answer
        /// without saying so: the next request is sent again on a new one.
        #[tokio::test]
        async fn a_kept_connection_closed_silently_is_replaced_once() {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", l.local_addr().unwrap());
            let conns = Arc::new(AtomicUsize::new(0));
            let c = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut tcp, _)) = l.accept().await {
                    c.fetch_add(1, SeqCst);
                    tokio::spawn(async move {
                        let mut b = [0u8; 1024];
                        let _ = tcp.read(&mut b).await;
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                            .await;
                    });
                }
            });
            let k = client(&url);
            for _ in 0..3 {
                assert_eq!(k.get("/healthz").await.unwrap().status, 200);
            }
            assert_eq!(conns.load(SeqCst), 3);
        }

        /// `pipelining_server` answering by path: `absent` is 404,
        /// `broken` 500, `paged` has a second page (continue token
        /// `t/1`), anything else one page (which names the request line
        /// it answers).
        async fn list_server(
            wait_after: usize,
            wait_for: usize,
            answers_per_conn: Option<usize>,
        ) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
            pipelining_server(wait_after, wait_for, answers_per_conn, |line| {
                if line.contains("absent") {
                    (404, r#"{"kind":"Status"}"#.to_string())
                } else if line.contains("broken") {
                    (500, "{}".to_string())
                } else if line.contains("paged") && !line.contains("continue=") {
                    (
                        200,
                        r#"{"items":[],"metadata":{"continue":"t/1"}}"#.to_string(),
                    )
                } else {
                    (200, format!(r#"{{"items":[],"asked":"{line}"}}"#))
                }
            })
            .await
        }

        /// How many pages `lists` hands over for `paths`.
        async fn lists_of(k: &KubeClient, paths: &[&str]) -> Result<usize, KubeError> {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            let mut pages = 0;
            k.lists(&paths, |body| {
                pages += 1;
                decode_page(body, |_: serde_json::Value| {})
            })
            .await?;
            Ok(pages)
        }

        fn short_client(url: &str) -> KubeClient {
            let deadline = Instant::now() + Duration::from_secs(5);
            KubeClient::new(url, &creds(), deadline).unwrap()
        }

        #[tokio::test]
        async fn lists_ask_every_first_page_at_once_then_the_further_pages() {
            // The server answers only once it holds all three requests.
            let (url, conns, answered) = list_server(0, 3, None).await;
            let k = short_client(&url);
            let pages = lists_of(&k, &["/ns/a/pods", "/ns/absent/pods", "/ns/paged/pods"])
                .await
                .unwrap();
            assert_eq!(pages, 3, "a's page, paged's two; absent skipped");
            assert_eq!(
                *answered.lock().unwrap(),
                [
                    "GET /ns/a/pods?limit=100 HTTP/1.1",
                    "GET /ns/absent/pods?limit=100 HTTP/1.1",
                    "GET /ns/paged/pods?limit=100 HTTP/1.1",
                    "GET /ns/paged/pods?limit=100&continue=t%2F1 HTTP/1.1",
                ]
            );
            assert_eq!(
                conns.load(SeqCst),
                1,
                "one connection, kept for the next page"
            );
        }

        #[tokio::test]
        async fn more_lists_than_one_pipeline_go_in_batches_on_one_connection() {
            let n = PIPELINE + 4;
            let paths: Vec<String> = (0..n).map(|i| format!("/ns/n{i}/pods")).collect();
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let (url, conns, answered) = list_server(0, PIPELINE, None).await;
            let k = short_client(&url);
            assert_eq!(lists_of(&k, &refs).await.unwrap(), n);
            let answered = answered.lock().unwrap();
            assert_eq!(answered.len(), n);
            assert!(answered[n - 1].starts_with(&format!("GET /ns/n{}/pods", n - 1)));
            assert_eq!(conns.load(SeqCst), 1);
        }

        /// A server that answers one request per connection and then closes
        /// without a word: every list is still answered, each once.
        #[tokio::test]
        async fn a_server_that_stops_answering_part_way_is_asked_the_rest_on_a_new_connection() {
            let (url, conns, answered) = list_server(0, 1, Some(1)).await;
            let k = short_client(&url);
            let pages = lists_of(&k, &["/ns/a/pods", "/ns/paged/pods", "/ns/c/pods"])
                .await
                .unwrap();
            assert_eq!(pages, 4);
            let mut got = answered.lock().unwrap().clone();
            got.sort();
            assert_eq!(
                got,
                [
                    "GET /ns/a/pods?limit=100 HTTP/1.1",
                    "GET /ns/c/pods?limit=100 HTTP/1.1",
                    "GET /ns/paged/pods?limit=100 HTTP/1.1",
                    "GET /ns/paged/pods?limit=100&continue=t%2F1 HTTP/1.1",
                ]
            );
            assert_eq!(conns.load(SeqCst), 4);
        }

        #[tokio::test]
        async fn a_server_that_says_connection_close_is_asked_the_rest_on_a_new_connection() {
            let (url, conns, heads) = server(true).await;
            let k = client(&url);
            let paths: Vec<String> = ["/a", "/b", "/c"].map(String::from).to_vec();
            let mut pages = 0;
            k.lists(&paths, |_| {
                pages += 1;
                Ok(None)
            })
            .await
            .unwrap();
            assert_eq!(
                (pages, conns.load(SeqCst), heads.lock().unwrap().len()),
                (3, 3, 3)
            );
        }

        #[tokio::test]
        async fn the_first_error_of_a_list_ends_the_lists() {
            let (url, _, answered) = list_server(0, 3, None).await;
            let k = short_client(&url);
            let e = lists_of(&k, &["/ns/a/pods", "/ns/broken/pods", "/ns/paged/pods"])
                .await
                .unwrap_err();
            assert_eq!(e, KubeError::Status(500));
            assert_eq!(answered.lock().unwrap().len(), 3, "no further page asked");
        }

        /// The request line an answer of `list_server` names.
        fn asked(r: &Response) -> String {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["asked"].as_str().unwrap_or_default().to_string()
        }

        /// What a check does with its collectors in turn: healthz, then
        /// every first request sent ahead, then each asked in order. The
        /// server answers nothing after healthz until it holds all four:
        /// asked one at a time, the deadline would end it.
        #[tokio::test]
        async fn requests_sent_ahead_are_read_when_asked_and_not_sent_again() {
            let (url, conns, answered) = list_server(1, 4, None).await;
            let k = short_client(&url);
            assert_eq!(k.get("/healthz").await.unwrap().status, 200);
            let ahead: Vec<String> = [
                "/version",
                &first_page("/ns/a/pods"),
                &first_page("/ns/b/pods"),
                &first_page("/nodes"),
            ]
            .map(String::from)
            .to_vec();
            k.prefetch(&ahead).await;
            let v = k.get("/version").await.unwrap();
            assert_eq!(asked(&v), "GET /version HTTP/1.1");
            let paths = ["/ns/a/pods", "/ns/b/pods"].map(String::from).to_vec();
            let mut seen = Vec::new();
            k.lists(&paths, |body| {
                seen.push(String::from_utf8_lossy(body).into_owned());
                Ok(None)
            })
            .await
            .unwrap();
            assert!(
                seen[0].contains("/ns/a/pods?limit=100")
                    && seen[1].contains("/ns/b/pods?limit=100"),
                "{seen:?}"
            );
            let mut nodes = Vec::new();
            k.pages("/nodes", |body| {
                nodes.push(String::from_utf8_lossy(body).into_owned());
                Ok(None)
            })
            .await
            .unwrap();
            assert!(nodes[0].contains("GET /nodes?limit=100 "), "{nodes:?}");
            assert_eq!(answered.lock().unwrap().len(), 5, "each asked once");
            assert_eq!(conns.load(SeqCst), 1);
        }

        /// A collector that asks something else than what was sent ahead
        /// (a second page of a list, say) still gets its own answer: the
        /// awaited ones are read and dropped; a list dropped so is asked
        /// again when its turn comes.
        #[tokio::test]
        async fn a_request_out_of_the_order_sent_ahead_gets_its_own_answer() {
            let (url, conns, answered) = list_server(1, 2, None).await;
            let k = short_client(&url);
            assert_eq!(k.get("/healthz").await.unwrap().status, 200);
            let ahead = [first_page("/ns/a/pods"), "/version".to_string()];
            k.prefetch(&ahead).await;
            let z = k.get("/other").await.unwrap();
            assert_eq!(asked(&z), "GET /other HTTP/1.1");
            let pages = lists_of(&k, &["/ns/a/pods"]).await.unwrap();
            assert_eq!(pages, 1);
            let v = k.get("/version").await.unwrap();
            assert_eq!(asked(&v), "GET /version HTTP/1.1");
            assert_eq!(
                answered.lock().unwrap().len(),
                6,
                "healthz, 2 dropped, 3 asked"
            );
            assert_eq!(conns.load(SeqCst), 1);
        }

        /// A kept connection whose server went away since: what was sent
        /// ahead is lost with it, and asked again on a new connection.
        #[tokio::test]
        async fn requests_sent_ahead_on_a_connection_that_closed_are_asked_again() {
            let (url, conns, answered) = list_server(usize::MAX, 0, Some(1)).await;
            let k = short_client(&url);
            assert_eq!(k.get("/healthz").await.unwrap().status, 200);
            k.prefetch(&["/version".to_string(), first_page("/ns/a/pods")])
                .await;
            let v = k.get("/version").await.unwrap();
            assert_eq!(asked(&v), "GET /version HTTP/1.1");
            assert_eq!(lists_of(&k, &["/ns/a/pods"]).await.unwrap(), 1);
            assert_eq!(answered.lock().unwrap().len(), 3);
            assert_eq!(conns.load(SeqCst), 3, "one answer per connection");
        }

        /// `--pipelined-requests 1`: the lists asked one at a time. This server answers only once it holds two
        /// requests, so a client that sends one at a time reaches its
        /// deadline; the same client pipelining gets both lists.
        #[tokio::test]
        async fn a_pipeline_of_one_sends_one_request_at_a_time() {
            let paths = ["/ns/a/pods", "/ns/b/pods"];
            for (pipeline, pipelined) in [(1, false), (2, true)] {
                let (url, _, answered) = list_server(0, 2, None).await;
                let deadline = Instant::now() + Duration::from_millis(500);
                let k = KubeClient::new(&url, &creds(), deadline)
                    .unwrap()
                    .with_pipeline(pipeline);
                let r = lists_of(&k, &paths).await;
                if pipelined {
                    assert_eq!(r, Ok(2));
                } else {
                    assert_eq!(r, Err(KubeError::Timeout));
                    assert!(answered.lock().unwrap().is_empty());
                }
            }
        }

        #[tokio::test]
        async fn a_new_connection_closed_before_any_answer_is_an_error() {
            let (url, conns, _) = pipelining_server(0, 1, Some(0), |_| (200, String::new())).await;
            let k = short_client(&url);
            let e = lists_of(&k, &["/ns/a/pods", "/ns/b/pods"])
                .await
                .unwrap_err();
            assert!(matches!(e, KubeError::Unreachable(_)), "{e:?}");
            assert_eq!(conns.load(SeqCst), 1, "not retried on a new connection");
        }

        #[tokio::test]
        async fn collectors_side_by_side_open_one_connection_each_at_most() {
            let (url, conns, heads) = server(false).await;
            let k = client(&url);
            for _ in 0..3 {
                let all = futures::future::join_all((0..3).map(|_| k.get("/version"))).await;
                assert!(all
                    .iter()
                    .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
            }
            assert_eq!(heads.lock().unwrap().len(), 9);
            let n = conns.load(SeqCst);
            assert!((1..=3).contains(&n), "{n} connections for 3 side by side");
        }

        #[tokio::test]
        async fn a_handshake_that_never_ends_fails_at_the_connect_timeout() {
            // Accepts TCP and never answers the TLS hello: what a region
            // whose servers hang looks like from here.
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", l.local_addr().unwrap());
            let held = tokio::spawn(async move {
                let mut keep = Vec::new();
                while let Ok((tcp, _)) = l.accept().await {
                    keep.push(tcp);
                }
            });
            let t = Instant::now();
            let k = KubeClient::with_connect_timeout(
                &url,
                &creds(),
                t + Duration::from_secs(30),
                Duration::from_millis(300),
            )
            .unwrap();
            let e = k.get("/healthz").await.err().unwrap();
            assert_eq!(
                e,
                KubeError::Unreachable("connect: not connected within 300ms".into())
            );
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
            held.abort();
        }

        #[test]
        fn api_server_urls() {
            let c = Credentials::default();
            let t = target("http://[::1]:8080/a/b/", &c, VerifiedChain::default()).unwrap();
            assert_eq!((&*t.host, t.port, &*t.prefix), ("::1", 8080, "/a/b"));
            assert_eq!(&*t.authority, "[::1]:8080");
            let t = target("http://api.example", &c, VerifiedChain::default()).unwrap();
            assert_eq!((&*t.host, t.port, &*t.prefix), ("api.example", 80, ""));
            for (bad, why) in [
                ("ftp://x", "scheme must be http or https"),
                ("http://user:pw@x/", "user information is not allowed"),
                ("http://x/?a=b", "a query is not allowed"),
                ("not a url", "not a URL"),
            ] {
                let e = target(bad, &c, VerifiedChain::default())
                    .err()
                    .unwrap()
                    .to_string();
                assert_eq!(e, format!("configuration: apiServer: {why}"), "{bad}");
                assert!(!e.contains("pw"));
            }
            // https: the default port, and the CA rule of `tls`.
            assert!(target("https://x", &c, VerifiedChain::default()).is_err());
            let t = target("https://x", &creds(), VerifiedChain::default()).unwrap();
            assert_eq!(t.port, 443);
        }
    }

    #[test]
    fn token_header_is_sensitive() {
        let h = bearer(&Secret::new("abc\n")).unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(bearer(&Secret::new("a\u{7}b")).is_err());
    }
}
