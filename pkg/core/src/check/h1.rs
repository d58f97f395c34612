//! The HTTP/1.1 of a check: GETs on one connection, one at a time or
//! several sent at once (pipelined) and answered in order, each answer
//! framed by `Content-Length`, `chunked` or the end of the connection.
//!
//! Why not hyper's client connection: a check that hangs (a region whose
//! API servers accept and never answer) holds its connection for the whole
//! timeout, and thousands do at once. hyper's connection keeps an 8 KiB
//! write buffer, an 8 KiB read buffer and a dispatch channel (~8 KiB) per
//! connection, 24 KiB before TLS; here a waiting connection holds what it
//! has read (a read reserves 512 bytes at first) and nothing else. The head is
//! parsed by `httparse` (hyper's own parser); everything here is bounded:
//! the head ([`MAX_HEAD`]), the header count, the body (the caller's cap),
//! chunk sizes and trailers.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest response head (status line and headers).
pub const MAX_HEAD: usize = 64 << 10;
/// Most headers in a response head.
const MAX_HEADERS: usize = 100;
/// Smallest read into a buffer that holds part of an answer.
const FIRST_READ: usize = 512;
/// A read into an empty buffer goes through the stack, this much at once
/// (an API server's healthz answer is ~400 bytes).
const STACK_READ: usize = 4096;
/// Largest read into the buffer at once.
const MAX_READ: usize = 16 << 10;

/// How one exchange failed. Display texts are short and never quote the
/// answer (it is the server's, possibly hostile).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum H1Error {
    #[error("{0}")]
    Io(String),
    /// The connection ended before the answer was complete.
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("invalid response head")]
    BadHead,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid chunked body")]
    BadChunk,
    #[error("invalid Content-Length")]
    BadLength,
    /// The body went past the caller's cap.
    #[error("body too large")]
    TooLarge,
}

impl From<std::io::Error> for H1Error {
    fn from(e: std::io::Error) -> Self {
        H1Error::Io(crate::http::root_cause(&e))
    }
}

/// One answer: status, body and whether the connection can take the next
/// request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

/// A connection and the bytes read past the last answer.
pub struct Conn<T> {
    io: T,
    buf: Vec<u8>,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    pub fn io(&self) -> &T {
        &self.io
    }

    /// Writes `head` (a complete request head) and reads the answer, its
    /// body up to `max_body` bytes (the tests' one-request exchange; the
    /// client sends and answers apart, see `kube::KubeClient`).
    #[cfg(test)]
    pub async fn exchange(
        &mut self,
        head: impl AsRef<[u8]>,
        max_body: usize,
    ) -> Result<Answer, H1Error> {
        self.send(head).await?;
        self.answer(max_body).await
    }

    /// Writes `heads` (one or more complete request heads, back to back)
    /// and frees them. Several heads are HTTP/1.1 pipelining: the server
    /// answers them in order, each read by one [`Conn::answer`].
    pub async fn send(&mut self, heads: impl AsRef<[u8]>) -> Result<(), H1Error> {
        self.io.write_all(heads.as_ref()).await?;
        self.io.flush().await?;
        drop(heads);
        Ok(())
    }

    /// Reads the next answer, its body up to `max_body` bytes; bytes read
    /// past it stay for the next. A 1xx answer is skipped.
    pub async fn answer(&mut self, max_body: usize) -> Result<Answer, H1Error> {
        loop {
            let (status, framing, keep_alive) = self.read_head().await?;
            if (100..200).contains(&status) {
                continue;
            }
            let (body, clean) = match framing {
                Framing::None => (Vec::new(), true),
                Framing::Length(n) => {
                    if n > max_body as u64 {
                        return Err(H1Error::TooLarge);
                    }
                    (self.read_exact_body(n as usize).await?, true)
                }
                Framing::Chunked => (self.read_chunked(max_body).await?, true),
                Framing::UntilClose => (self.read_to_close(max_body).await?, false),
            };
            return Ok(Answer {
                status,
                body,
                keep_alive: keep_alive && clean,
            });
        }
    }

    /// Reads more bytes into the buffer; errs at the end of the connection.
    /// An empty buffer (a check waiting for its answer) is not allocated
    /// for the wait: the first bytes are read through the stack when they
    /// come, and the buffer takes just those.
    async fn fill(&mut self, want: usize) -> Result<(), H1Error> {
        let n = if self.buf.is_empty() {
            let (io, buf) = (&mut self.io, &mut self.buf);
            std::future::poll_fn(|cx| {
                let mut first = [0u8; STACK_READ];
                let mut rb = ReadBuf::new(&mut first);
                std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb))?;
                buf.extend_from_slice(rb.filled());
                std::task::Poll::Ready(Ok::<_, std::io::Error>(rb.filled().len()))
            })
            .await?
        } else {
            self.buf.reserve(want.clamp(FIRST_READ, MAX_READ));
            self.io.read_buf(&mut self.buf).await?
        };
        if n == 0 {
            return Err(H1Error::Closed);
        }
        Ok(())
    }

    async fn read_head(&mut self) -> Result<(u16, Framing, bool), H1Error> {
        loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                let (len, status, framing, keep_alive) = parsed;
                self.buf.drain(..len);
                let framing = match framing {
                    _ if (100..200).contains(&status) || status == 204 || status == 304 => {
                        Framing::None
                    }
                    f => f,
                };
                return Ok((status, framing, keep_alive));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            self.fill(self.buf.len().max(FIRST_READ)).await?;
        }
    }

    async fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, H1Error> {
        while self.buf.len() < n {
            self.fill(n - self.buf.len()).await?;
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    async fn read_to_close(&mut self, max: usize) -> Result<Vec<u8>, H1Error> {
        loop {
            if self.buf.len() > max {
                return Err(H1Error::TooLarge);
            }
            match self.fill(MAX_READ).await {
                Ok(()) => {}
                Err(H1Error::Closed) => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(e),
            }
        }
    }

    /// A line ending in CRLF at the start of the buffer (without it), read
    /// up to `max` bytes.
    async fn line(&mut self, max: usize) -> Result<Vec<u8>, H1Error> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(H1Error::BadChunk);
            }
            self.fill(FIRST_READ).await?;
        }
    }

    async fn read_chunked(&mut self, max: usize) -> Result<Vec<u8>, H1Error> {
        let mut body = Vec::new();
        loop {
            let line = self.line(1024).await?;
            let size = chunk_size(&line)?;
            if size == 0 {
                // Trailers, up to an empty line.
                let mut trailers = 0;
                loop {
                    let t = self.line(MAX_HEAD).await?;
                    if t.is_empty() {
                        return Ok(body);
                    }
                    trailers += t.len();
                    if trailers > MAX_HEAD {
                        return Err(H1Error::HeadTooLarge);
                    }
                }
            }
            if body.len() as u64 + size > max as u64 {
                return Err(H1Error::TooLarge);
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.fill(size + 2 - self.buf.len()).await?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(H1Error::BadChunk);
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// `hex[;extensions]`.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex)
        .map_err(|_| H1Error::BadChunk)?
        .trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(H1Error::BadChunk);
    }
    u64::from_str_radix(hex, 16).map_err(|_| H1Error::BadChunk)
}

type Head = (usize, u16, Framing, bool);

/// The head at the start of `buf`, if complete: its length, status, body
/// framing and whether the connection stays open.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
        Err(_) => return Err(H1Error::BadHead),
    };
    let status = r.code.ok_or(H1Error::BadHead)?;
    let mut keep_alive = r.version == Some(1);
    let (mut chunked, mut length) = (false, None);
    for h in r.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| H1Error::BadHead)?;
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything but chunked is read to close.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.trim().parse().map_err(|_| H1Error::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::BadLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(',') {
                let t = t.trim();
                if t.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") && r.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    Ok(Some((len, status, framing, keep_alive)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Sends `answer` in pieces of `piece` bytes to an exchange; its result.
    async fn answer(answer: &[u8], piece: usize, max: usize) -> (Result<Answer, H1Error>, Vec<u8>) {
        let (client, mut server) = duplex(1 << 20);
        let mut conn = Conn::new(client);
        let data = answer.to_vec();
        let srv = tokio::spawn(async move {
            let mut req = vec![0u8; 64];
            let n = server.read(&mut req).await.unwrap();
            req.truncate(n);
            for c in data.chunks(piece.max(1)) {
                if server.write_all(c).await.is_err() {
                    break;
                }
            }
            drop(server);
            req
        });
        let r = conn.exchange(b"GET / HTTP/1.1\r\n\r\n", max).await;
        let req = srv.await.unwrap();
        (r, req)
    }

    #[tokio::test]
    async fn framings() {
        for piece in [1, 7, 4096] {
            let (r, req) = answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                piece,
                100,
            )
            .await;
            assert_eq!(req, b"GET / HTTP/1.1\r\n\r\n");
            let a = r.unwrap();
            assert_eq!(
                (a.status, a.body.as_slice(), a.keep_alive),
                (200, &b"hello"[..], true)
            );

            let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: t\r\n\r\n";
            let a = answer(chunked, piece, 100).await.0.unwrap();
            assert_eq!((a.body.as_slice(), a.keep_alive), (&b"hello!"[..], true));

            let a = answer(b"HTTP/1.1 200 OK\r\n\r\nuntil close", piece, 100)
                .await
                .0
                .unwrap();
            assert_eq!(
                (a.body.as_slice(), a.keep_alive),
                (&b"until close"[..], false)
            );

            let a = answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                piece,
                100,
            )
            .await
            .0
            .unwrap();
            assert_eq!((a.status, a.body.len(), a.keep_alive), (204, 0, true));

            let a = answer(b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", piece, 100)
                .await
                .0
                .unwrap();
            assert_eq!((a.status, a.keep_alive), (302, false));

            let a = answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", piece, 100)
                .await
                .0
                .unwrap();
            assert!(!a.keep_alive, "HTTP/1.0 closes by default");
        }
    }

    #[tokio::test]
    async fn bad_and_oversize_answers_fail_with_a_short_reason() {
        let cases: [(&[u8], H1Error); 8] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
                H1Error::Closed,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                H1Error::TooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                H1Error::BadLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                H1Error::BadLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                H1Error::BadChunk,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
                H1Error::TooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
                H1Error::BadChunk,
            ),
            (b"NOT HTTP\r\n\r\n", H1Error::BadHead),
        ];
        for (raw, want) in cases {
            let got = answer(raw, 3, 100).await.0.err();
            assert_eq!(
                got.as_ref(),
                Some(&want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < 2 * MAX_HEAD {
            endless.extend_from_slice(b"X-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let e = answer(&endless, 4096, 100).await.0.err().unwrap();
        assert_eq!(e, H1Error::HeadTooLarge);
        let until_close = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 300]].concat();
        assert_eq!(
            answer(&until_close, 50, 100).await.0.err(),
            Some(H1Error::TooLarge)
        );
    }

    #[tokio::test]
    async fn two_answers_on_one_connection_and_bytes_read_ahead_kept() {
        let (client, mut server) = duplex(1 << 16);
        let mut conn = Conn::new(client);
        // Both answers written at once: the second is read ahead with the first.
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n")
            .await
            .unwrap();
        let a = conn.exchange(b"GET /a HTTP/1.1\r\n\r\n", 10).await.unwrap();
        let b = conn.exchange(b"GET /b HTTP/1.1\r\n\r\n", 10).await.unwrap();
        assert_eq!((a.body, b.body), (b"a".to_vec(), b"b".to_vec()));
        assert!(a.keep_alive && b.keep_alive);
    }

    #[test]
    fn a_waiting_connection_holds_no_buffer() {
        let (client, _server) = duplex(64);
        let conn = Conn::new(client);
        assert_eq!(conn.buf.capacity(), 0);
    }
}
