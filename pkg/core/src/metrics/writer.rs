//! The metric writer: one task drains the bounded queue into the statsd
//! socket. UDP packs lines into datagrams; a Unix stream socket (Geneva's
//! `mdm_statsd.socket`) gets newline-terminated lines and is re-dialled
//! lazily after an error. Lines older than a minute are dropped and counted.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UdpSocket, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mdm::{self, MdmConfig};
use super::{EmitStats, Queued};
use crate::clock::Clock;

/// Where metrics go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Udp(String),
    /// A Unix stream socket.
    Unix(PathBuf),
    /// Discard (commands that emit nothing, tests).
    None,
}

impl Target {
    /// Parses `udp:HOST:PORT`, `unix:PATH` or `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Target::None);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix statsd address needs a path: unix:PATH".into());
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        match s.strip_prefix("udp:") {
            Some(addr)
                if addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Target::Udp(addr.to_string()))
            }
            _ => Err(format!(
                "invalid statsd address {s:?}: expected udp:HOST:PORT or unix:PATH"
            )),
        }
    }
}

/// Wire dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    DogStatsd,
    Mdm(MdmConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub target: Target,
    pub format: Format,
}

impl Output {
    pub fn discard() -> Self {
        Self {
            target: Target::None,
            format: Format::DogStatsd,
        }
    }
    pub fn dogstatsd(target: Target) -> Self {
        Self {
            target,
            format: Format::DogStatsd,
        }
    }
}

const MAX_DATAGRAM: usize = super::MAX_LINE;
/// Lines older than this are not worth sending (dashboards aggregate per minute).
const MAX_AGE_MS: i64 = 60_000;
/// Batch size for stream writes.
const MAX_BATCH: usize = 64 * 1024;
/// How long the first line after a quiet queue waits for more (`run`).
const LINGER: Duration = Duration::from_millis(20);

pub struct Writer {
    rx: mpsc::Receiver<Queued>,
    out: Output,
    stats: Arc<EmitStats>,
    clock: Clock,
}

enum Conn {
    Udp(UdpSocket),
    Unix(Option<UnixStream>, Option<Instant>),
    None,
}

impl Writer {
    pub(super) fn new(
        rx: mpsc::Receiver<Queued>,
        out: Output,
        stats: Arc<EmitStats>,
        clock: Clock,
    ) -> Self {
        Self {
            rx,
            out,
            stats,
            clock,
        }
    }

    pub(super) fn into_receiver(self) -> mpsc::Receiver<Queued> {
        self.rx
    }

    /// Runs until `stop` is cancelled and the queue is drained, or every
    /// sender is gone. Socket errors are counted as drops, never fatal.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut conn = match &self.out.target {
            Target::None => Conn::None,
            Target::Unix(_) => Conn::Unix(None, None),
            Target::Udp(addr) => match udp_socket(addr).await {
                Ok(s) => Conn::Udp(s),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "statsd: cannot open UDP socket; metrics are dropped");
                    Conn::None
                }
            },
        };
        let mut batch: Vec<String> = Vec::new();
        // Whether the last send left lines in the queue (then the next batch
        // goes at once).
        let mut behind = false;
        loop {
            let first = tokio::select! {
                m = self.rx.recv() => m,
                _ = stop.cancelled() => { self.rx.close(); self.rx.recv().await }
            };
            let Some(first) = first else { break };
            if !behind && !stop.is_cancelled() {
                // The first line after a quiet queue waits LINGER for the
                // lines that follow it (the rest of its check, and other
                // checks'), so that datagrams go full and the writer wakes
                // once per LINGER rather than once per check.
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = stop.cancelled() => {}
                }
            }
            batch.clear();
            let mut size = 0;
            let mut next = Some(first);
            while let Some(q) = next {
                if let Some(line) = self.render(q) {
                    size += line.len() + 1;
                    batch.push(line);
                }
                if size >= MAX_BATCH {
                    break;
                }
                next = self.rx.try_recv().ok();
            }
            // A full batch may have left lines queued: no wait for them.
            behind = size >= MAX_BATCH;
            self.send(&mut conn, &batch).await;
        }
    }

    fn render(&self, q: Queued) -> Option<String> {
        if self.clock.now_ms() - q.at_ms > MAX_AGE_MS {
            self.stats.dropped_stale.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match &self.out.format {
            Format::DogStatsd => Some(q.line),
            Format::Mdm(cfg) => {
                let l = mdm::from_dogstatsd(&q.line, cfg, q.at_ms);
                if l.is_none() {
                    self.stats.dropped_send.fetch_add(1, Ordering::Relaxed);
                }
                l.map(|l| l.trim_end_matches('\n').to_string())
            }
        }
    }

    async fn send(&self, conn: &mut Conn, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let n = lines.len() as u64;
        match conn {
            Conn::None => {}
            Conn::Udp(sock) => {
                let mut buf = String::with_capacity(MAX_DATAGRAM);
                for l in lines {
                    if !buf.is_empty() && buf.len() + 1 + l.len() > MAX_DATAGRAM {
                        self.send_datagram(sock, &buf).await;
                        buf.clear();
                    }
                    if !buf.is_empty() {
                        buf.push('\n');
                    }
                    buf.push_str(l);
                }
                self.send_datagram(sock, &buf).await;
            }
            Conn::Unix(stream, retry_at) => {
                let Target::Unix(path) = &self.out.target else {
                    return;
                };
                if stream.is_none() && retry_at.is_none_or(|t| Instant::now() >= t) {
                    match UnixStream::connect(path).await {
                        Ok(s) => *stream = Some(s),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "statsd: cannot connect; retrying in 1s");
                            *retry_at = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                let Some(s) = stream.as_mut() else {
                    self.stats.dropped_send.fetch_add(n, Ordering::Relaxed);
                    return;
                };
                let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
                for l in lines {
                    buf.push_str(l);
                    buf.push('\n');
                }
                match s.write_all(buf.as_bytes()).await {
                    Ok(()) => {
                        self.stats.sent.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "statsd: write failed; will re-dial");
                        *stream = None;
                        self.stats.dropped_send.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn send_datagram(&self, sock: &UdpSocket, payload: &str) {
        let n = payload.split('\n').count() as u64;
        match sock.send(payload.as_bytes()).await {
            Ok(_) => {
                self.stats.sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped_send.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

async fn udp_socket(addr: &str) -> io::Result<UdpSocket> {
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(target).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn target_parsing() {
        assert_eq!(
            Target::parse("udp:127.0.0.1:8125").unwrap(),
            Target::Udp("127.0.0.1:8125".into())
        );
        assert_eq!(
            Target::parse("unix:/var/etw/mdm_statsd.socket").unwrap(),
            Target::Unix("/var/etw/mdm_statsd.socket".into())
        );
        assert!(Target::parse("udp:127.0.0.1").is_err());
        assert!(Target::parse("unix:").is_err());
        assert!(Target::parse("tcp:x:1").is_err());
        assert_eq!(Target::parse("none").unwrap(), Target::None);
    }

    #[tokio::test]
    async fn udp_packs_datagrams_and_drains_on_stop() {
        let recv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        recv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = Target::parse(&format!("udp:{}", recv.local_addr().unwrap())).unwrap();
        let (m, w) = Metrics::new("m1", Output::dogstatsd(target), 1000, Clock::system());
        for i in 0..100 {
            m.gauge("x", i, &[]);
        }
        let stop = CancellationToken::new();
        stop.cancel();
        w.run(stop).await; // drains everything queued, then returns
        let mut lines = 0;
        let mut buf = [0u8; 2048];
        while lines < 100 {
            let n = recv.recv(&mut buf).expect("datagram");
            assert!(n <= MAX_DATAGRAM);
            lines += std::str::from_utf8(&buf[..n]).unwrap().lines().count();
        }
        assert_eq!(lines, 100);
        assert_eq!(m.stats().sent.load(Ordering::Relaxed), 100);
    }

    /// Lines that come a little apart (checks finishing one after another)
    /// share datagrams: the first after a quiet queue waits `LINGER`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_close_together_share_datagrams() {
        let recv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        recv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = Target::parse(&format!("udp:{}", recv.local_addr().unwrap())).unwrap();
        let (m, w) = Metrics::new("m1", Output::dogstatsd(target), 1000, Clock::system());
        let stop = CancellationToken::new();
        let writer = tokio::spawn(w.run(stop.clone()));
        // Ten checks of three lines, 1 ms apart: within one LINGER.
        for check in 0..10 {
            for line in 0..3 {
                m.gauge("x", check * 3 + line, &[]);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (mut lines, mut datagrams) = (0, 0);
        let mut buf = [0u8; 2048];
        while lines < 30 {
            let n = recv.recv(&mut buf).expect("datagram");
            datagrams += 1;
            lines += std::str::from_utf8(&buf[..n]).unwrap().lines().count();
        }
        assert_eq!(lines, 30);
        // One per check (15 measured) without the wait; 1 with it, a few if
        // the sleeps stretch on a loaded machine.
        assert!(datagrams <= 5, "{datagrams} datagrams for 30 short lines");
        stop.cancel();
        writer.await.unwrap();
    }

    /// MDM over a Unix stream socket: byte-exact lines, lazy re-dial after
    /// the listener goes away and comes back, stale lines dropped.
    #[tokio::test]
    async fn mdm_over_unix_stream_redials_and_drops_stale() {
        let dir = std::env::temp_dir().join(format!("clustermon-mdm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mdm.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let clock = Clock::at(1_787_248_416_000);
        let out = Output {
            target: Target::Unix(path.clone()),
            format: Format::Mdm(MdmConfig {
                account: "acct".into(),
                namespace: "BBM".into(),
            }),
        };
        let (m, w) = Metrics::new("m1", out, 100, clock.clone());
        let stop = CancellationToken::new();
        let writer = tokio::spawn(w.run(stop.clone()));

        m.gauge(
            "monitor.heartbeat",
            1,
            &[("hostname", "vm1"), ("location", "eastus")],
        );
        let (conn, _) = listener.accept().await.unwrap();
        let mut lines = tokio::io::BufReader::new(conn).lines();
        let got = lines.next_line().await.unwrap().unwrap();
        let ts = super::mdm::timestamp(clock.now_ms());
        assert!(got.starts_with("{\"Metric\":\"monitor.heartbeat\",\"Account\":\"acct\",\"Namespace\":\"BBM\",\"Dims\":{\"hostname\":\"vm1\",\"location\":\"eastus\"},\"TS\":\"2026-08-20T17:53:3"), "{got}");
        assert!(got.ends_with("}:1|g"), "{got}");
        assert!(ts.starts_with("2026-08-20T17:53:3"));

        // The peer goes away: writes fail, the writer re-dials when it is back.
        drop(lines);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            m.gauge("probe", 2, &[]);
            if let Ok(Ok((c, _))) =
                tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
            {
                break c;
            }
            assert!(Instant::now() < deadline, "writer never re-dialled");
        };
        let mut lines = tokio::io::BufReader::new(conn).lines();
        let l = lines.next_line().await.unwrap().unwrap();
        assert!(
            l.contains("\"Metric\":\"probe\"") && l.ends_with(":2|g"),
            "{l}"
        );
        assert!(
            m.stats().dropped_send.load(Ordering::Relaxed) >= 1,
            "lines lost while the peer was away are counted"
        );

        stop.cancel();
        writer.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn lines_older_than_a_minute_are_dropped_and_counted() {
        let clock = Clock::at(0);
        let (m, w) = Metrics::new("m1", Output::discard(), 100, clock);
        m.gauge("old", 1, &[]);
        tokio::time::advance(Duration::from_secs(61)).await;
        m.gauge("new", 1, &[]);
        let stop = CancellationToken::new();
        stop.cancel();
        w.run(stop).await;
        assert_eq!(m.stats().dropped_stale.load(Ordering::Relaxed), 1);
    }
}
