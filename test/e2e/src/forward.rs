//! A TCP forwarder the test owns, between one process and a server, to cut
//! that process off from the server while others still reach it.
//!
//! `cut` is a network partition: the connections stay open and nothing
//! passes either way (bytes are read and dropped), and new connections are
//! accepted and get nothing. `mend` ends it as a partition's end finds old
//! connections: the forwarder closes every connection from before, and new
//! ones relay again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both sockets of every relayed connection, to close them on `mend`.
    conns: Mutex<Vec<TcpStream>>,
    relays: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Forwarder {
    /// Where the process connects instead of the server.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards `127.0.0.1:0` (the `addr` field) to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("forwarder: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("forwarder: local address");
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let pair = (
                    down.try_clone().expect("forwarder: clone"),
                    up.try_clone().expect("forwarder: clone"),
                );
                {
                    let mut conns = sh.conns.lock().unwrap();
                    conns.push(down.try_clone().expect("forwarder: clone"));
                    conns.push(up.try_clone().expect("forwarder: clone"));
                }
                let mut relays = sh.relays.lock().unwrap();
                relays.retain(|h| !h.is_finished());
                let (s1, s2) = (sh.clone(), sh.clone());
                relays.push(std::thread::spawn(move || relay(down, up, &s1)));
                relays.push(std::thread::spawn(move || relay(pair.1, pair.0, &s2)));
            }
        });
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Starts the partition; when.
    pub fn cut(&self) -> Instant {
        self.shared.cut.store(true, Ordering::SeqCst);
        Instant::now()
    }

    /// Ends it: closes every connection from before; new ones relay. When.
    pub fn mend(&self) -> Instant {
        let old: Vec<TcpStream> = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        self.shared.cut.store(false, Ordering::SeqCst);
        for s in old {
            let _ = s.shutdown(Shutdown::Both);
        }
        Instant::now()
    }
}

/// Copies `from` to `to` until either side ends; drops what it reads while cut.
fn relay(mut from: TcpStream, mut to: TcpStream, sh: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sh.cut.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in std::mem::take(&mut *self.shared.conns.lock().unwrap()) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for h in std::mem::take(&mut *self.shared.relays.lock().unwrap()) {
            let _ = h.join();
        }
    }
}
