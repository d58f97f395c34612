//! A TLS client connection that holds no buffer while it waits.
//!
//! tokio-rustls drives rustls' buffered connection, whose record buffer
//! keeps 4 KiB from the first read to the end of the connection. A check
//! that hangs on an API server that never answers holds its connection for
//! the whole timeout, and a regional outage holds thousands at once. This
//! drives rustls' unbuffered API instead: bytes read from the socket are
//! kept only until their records are decrypted, a read waits on the
//! socket's readiness and reads through the stack, and the plaintext is
//! handed out as soon as it is read. A connection waiting for its answer
//! holds the rustls session and the socket, nothing else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A read from the socket: one full TLS record and its header fit.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// What the handshake does next.
enum Step {
    Go,
    Read,
    Done,
}

pub struct TlsIo {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    /// TLS bytes read and not yet decrypted (a partial record).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet handed to the reader.
    plain: Vec<u8>,
    /// Encrypted bytes not yet written to the socket.
    outgoing: Vec<u8>,
    /// The server ended the TLS session (close_notify).
    eof: bool,
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Frees a buffer that is empty, so that a waiting connection holds none.
fn release(v: &mut Vec<u8>) {
    if v.is_empty() && v.capacity() > 0 {
        *v = Vec::new();
    }
}

/// Appends what `put` writes to `out`, growing it to the size rustls asks
/// for (`put` answers `Err(Ok(size))` when the room is too small).
fn append(
    out: &mut Vec<u8>,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, String>>,
) -> io::Result<()> {
    let at = out.len();
    loop {
        match put(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(Ok(required_size)) => out.resize(at + required_size, 0),
            Err(Err(e)) => return Err(invalid(e)),
        }
    }
}

fn encode<D>(e: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    append(out, |room| {
        e.encode(room).map_err(|e| match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Ok(required_size)
            }
            e => Err(e.to_string()),
        })
    })
}

fn encrypt<D>(w: &mut WriteTraffic<'_, D>, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    append(out, |room| {
        w.encrypt(data, room).map_err(|e| match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Ok(required_size)
            }
            e => Err(e.to_string()),
        })
    })
}

impl TlsIo {
    /// The TLS handshake over `tcp`, errors in rustls' words. A flight is
    /// written when the handshake must wait for the server's answer to it;
    /// the client's last flight (its Finished) is not: it stays in
    /// `outgoing` and goes out with the first request, in one write, or
    /// before the first read.
    pub async fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        mut tcp: TcpStream,
    ) -> io::Result<Self> {
        let mut conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
        let mut incoming: Vec<u8> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming);
            let next = match state.map_err(invalid)? {
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut out)?;
                    Step::Go
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    Step::Go
                }
                ConnectionState::BlockedHandshake => {
                    if !out.is_empty() {
                        tcp.write_all(&out).await?;
                        out.clear();
                    }
                    Step::Read
                }
                ConnectionState::WriteTraffic(_) => Step::Done,
                _ => return Err(invalid("unexpected TLS state during the handshake")),
            };
            incoming.drain(..discard);
            match next {
                Step::Go => {}
                Step::Done => break,
                Step::Read => {
                    incoming.reserve(4096);
                    if tcp.read_buf(&mut incoming).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        ));
                    }
                }
            }
        }
        incoming.shrink_to_fit();
        let mut io = Self {
            tcp,
            conn,
            incoming,
            plain: Vec::new(),
            outgoing: out,
            eof: false,
        };
        // Records that came with the end of the handshake (session tickets).
        io.drive(None)?;
        Ok(io)
    }

    /// The server's end-entity certificate (DER).
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }

    /// Processes the bytes read so far: application data to `plain`,
    /// post-handshake messages answered into `outgoing`, the end of the
    /// session noted; then encrypts `write`, if given, into `outgoing`.
    fn drive(&mut self, mut write: Option<&[u8]>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let again = match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(invalid)?;
                        discard += rec.discard;
                        self.plain.extend_from_slice(rec.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    true
                }
                // Sent before anything encrypted after it (same buffer).
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    true
                }
                ConnectionState::WriteTraffic(mut w) => {
                    if let Some(data) = write.take() {
                        encrypt(&mut w, data, &mut self.outgoing)?;
                    }
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.eof = true;
                    false
                }
                _ => false,
            };
            self.incoming.drain(..discard);
            if !again {
                break;
            }
        }
        release(&mut self.incoming);
        if write.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the server ended the TLS session",
            ));
        }
        Ok(())
    }

    /// Writes what is encrypted and not sent yet.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.drain(..n);
        }
        release(&mut self.outgoing);
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.drain(..n);
                release(&mut this.plain);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Answers to post-handshake messages go out before the wait.
            ready!(this.poll_send(cx))?;
            ready!(this.tcp.poll_read_ready(cx))?;
            let mut chunk = [0u8; READ_CHUNK];
            match this.tcp.try_read(&mut chunk) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )))
                }
                Ok(n) => {
                    this.incoming.extend_from_slice(&chunk[..n]);
                    this.drive(None)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What is waiting (the handshake's last flight, a small earlier
        // write) goes out with this data; a backlog goes first.
        if this.outgoing.len() >= READ_CHUNK {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.drive(Some(data))?;
        // Accepted: what the socket does not take now goes with the flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use tokio::net::TcpListener;

    struct Server {
        addr: std::net::SocketAddr,
        cert: CertificateDer<'static>,
        acceptor: tokio_rustls::TlsAcceptor,
        listener: TcpListener,
    }

    async fn server() -> Server {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server {
            addr: listener.local_addr().unwrap(),
            cert: der.clone(),
            acceptor: super::super::kube::tls_server::acceptor(der, &key),
            listener,
        }
    }

    fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    async fn dial(s: &Server, ca: &CertificateDer<'static>) -> io::Result<TlsIo> {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        TlsIo::connect(client_config(ca), name, tcp).await
    }

    #[tokio::test]
    async fn a_request_and_a_large_answer_over_several_records() {
        let s = server().await;
        let answer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (acceptor, listener, sent) = (s.acceptor.clone(), &s.listener, answer.clone());
        let srv = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut req = [0u8; 5];
            tls.read_exact(&mut req).await.unwrap();
            assert_eq!(&req, b"hello");
            tls.write_all(&sent).await.unwrap();
            tls.shutdown().await.unwrap();
        };
        let cli = async {
            let mut io = dial(&s, &s.cert).await.unwrap();
            assert_eq!(io.peer_certificate(), Some(s.cert.as_ref()));
            io.write_all(b"hello").await.unwrap();
            io.flush().await.unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(srv, cli);
        assert_eq!(got.len(), answer.len());
        assert!(got == answer, "the answer came back changed");
    }

    /// The client's Finished is held back after the handshake and leaves
    /// with the first request (one write instead of two); a client that
    /// reads first sends it before it waits, so a server that speaks first
    /// completes its handshake too.
    #[tokio::test]
    async fn the_last_flight_leaves_with_the_first_request_or_before_a_read() {
        let s = server().await;
        for read_first in [false, true] {
            let (acceptor, listener) = (s.acceptor.clone(), &s.listener);
            let srv = async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                if read_first {
                    tls.write_all(b"hi").await.unwrap();
                } else {
                    let mut req = [0u8; 3];
                    tls.read_exact(&mut req).await.unwrap();
                    assert_eq!(&req, b"get");
                    tls.write_all(b"ok").await.unwrap();
                }
                tls.shutdown().await.unwrap();
            };
            let cli = async {
                let mut io = dial(&s, &s.cert).await.unwrap();
                assert!(
                    !io.outgoing.is_empty(),
                    "the Finished waits for the first write"
                );
                if !read_first {
                    io.write_all(b"get").await.unwrap();
                    io.flush().await.unwrap();
                }
                let mut got = Vec::new();
                io.read_to_end(&mut got).await.unwrap();
                got
            };
            let bounded = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                tokio::join!(srv, cli)
            });
            let ((), got) = bounded.await.expect("no deadlock on the held flight");
            assert_eq!(
                got,
                if read_first {
                    b"hi".to_vec()
                } else {
                    b"ok".to_vec()
                }
            );
        }
    }

    #[tokio::test]
    async fn a_waiting_connection_holds_no_buffer() {
        let s = server().await;
        let (acceptor, listener) = (s.acceptor.clone(), &s.listener);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let srv = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut req = [0u8; 3];
            tls.read_exact(&mut req).await.unwrap();
            // Never answers until the client has looked at its buffers.
            let _ = rx.await;
            tls.write_all(b"late").await.unwrap();
            tls.shutdown().await.unwrap();
        };
        let cli = async {
            let mut io = dial(&s, &s.cert).await.unwrap();
            io.write_all(b"get").await.unwrap();
            io.flush().await.unwrap();
            let mut byte = [0u8; 1];
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(200), io.read(&mut byte))
                    .await;
            assert!(waited.is_err(), "the server has not answered yet");
            let held = (
                io.incoming.capacity(),
                io.plain.capacity(),
                io.outgoing.capacity(),
            );
            assert_eq!(held, (0, 0, 0), "buffers held while waiting");
            tx.send(()).unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"late");
        };
        tokio::join!(srv, cli);
    }

    #[tokio::test]
    async fn an_unclean_close_is_an_error_that_says_so() {
        let s = server().await;
        let (acceptor, listener) = (s.acceptor.clone(), &s.listener);
        let srv = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            drop(tls); // no close_notify
        };
        let cli = async {
            let mut io = dial(&s, &s.cert).await.unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await
        };
        let ((), r) = tokio::join!(srv, cli);
        let e = r.expect_err("an unclean close");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("close_notify"), "{e}");
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_fails_the_handshake_in_rustls_words() {
        let s = server().await;
        let other = server().await;
        let (acceptor, listener) = (s.acceptor.clone(), &s.listener);
        let srv = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        };
        let (_, r) = tokio::join!(srv, dial(&s, &other.cert));
        let e = r.err().expect("a certificate of another CA is refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Both self-signed with rcgen's default name: the issuer matches
        // by name, the signature does not.
        assert!(
            e.to_string().starts_with("invalid peer certificate: "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_server_that_closes_during_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(tcp);
        };
        let cli = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let ca = server().await.cert;
            TlsIo::connect(client_config(&ca), name, tcp).await
        };
        let ((), r) = tokio::join!(srv, cli);
        let e = r.err().expect("no handshake");
        assert!(
            e.kind() == io::ErrorKind::UnexpectedEof
                || e.kind() == io::ErrorKind::ConnectionReset
                || e.kind() == io::ErrorKind::BrokenPipe,
            "{e:?}"
        );
    }
}
