//! The loopback's own cost of one plain-HTTP probe, client side against
//! server side, with nothing else in either: a blocking client thread that
//! connects, sends a healthz request, reads the answer and closes, paced at
//! a rate; a blocking server thread that accepts, reads, answers and waits
//! for the close. Each thread's CPU time (CLOCK_THREAD_CPUTIME_ID) over the
//! run, per connection, printed as one JSON object:
//!
//!   tcp-floor --rate 1000 --seconds 10
//!   {"rate":1000.0,"connections":10000,"client_us":61.2,"server_us":44.9}
//!
//! Why it exists: on the loopback the kernel runs the receiving socket's
//! work in the sender's context, so the connecting side of a TCP
//! connection pays part of the accepting side's (the listener's SYN and
//! the new socket made at the final ACK). `hack/bench/vs_blackbox.py`
//! runs this beside its comparison of clustermon's CPU per probe with
//! fleetsim's, so the share of that ratio that no client can avoid is
//! measured in the same run.

// A blocking benchmark without a runtime: it paces itself on the
// monotonic clock, so `std::time::Instant` is the right type here, and it
// sleeps its own thread between probes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const REQUEST: &[u8] =
    b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: clustermon\r\naccept: */*\r\n\r\n";
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 2\r\n\r\nok";

/// CPU time of the calling thread, in microseconds.
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn flag(args: &[String], name: &str, default: f64) -> Result<f64, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("{name} takes a positive number")),
    }
}

fn serve(l: TcpListener, n: u64) -> std::io::Result<u64> {
    let t0 = thread_cpu_us();
    let mut buf = [0u8; 1024];
    for _ in 0..n {
        let (mut s, _) = l.accept()?;
        let mut got = 0;
        while !buf[..got].ends_with(b"\r\n\r\n") {
            match s.read(&mut buf[got..])? {
                0 => break,
                k => got += k,
            }
        }
        s.write_all(ANSWER)?;
        // Wait for the client's close, as an HTTP/1.1 server keeping the
        // connection open for a next request does.
        while s.read(&mut buf)? > 0 {}
    }
    Ok(thread_cpu_us() - t0)
}

fn probe(addr: std::net::SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(REQUEST)?;
    let mut got = 0;
    while got < ANSWER.len() {
        match s.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    s.shutdown(Shutdown::Both).ok();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: tcp-floor [--rate PER_SECOND] [--seconds S]");
        return ExitCode::SUCCESS;
    }
    let (rate, seconds) = match (
        flag(&args, "--rate", 1000.0),
        flag(&args, "--seconds", 10.0),
    ) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tcp-floor: {e}");
            return ExitCode::from(2);
        }
    };
    let n = ((rate * seconds).round() as u64).max(1);
    let l = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcp-floor: cannot listen on 127.0.0.1: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match l.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcp-floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = std::thread::spawn(move || serve(l, n));
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let t0 = thread_cpu_us();
    let mut buf = [0u8; 1024];
    for i in 0..n {
        // Paced as a monitor's checks are: the thread sleeps between two.
        let due = start + every.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Err(e) = probe(addr, &mut buf) {
            eprintln!("tcp-floor: probe {i}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let client = thread_cpu_us() - t0;
    let server = match server.join() {
        Ok(Ok(us)) => us,
        Ok(Err(e)) => {
            eprintln!("tcp-floor: server: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("tcp-floor: server thread panicked");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{{\"rate\":{rate:.1},\"connections\":{n},\"client_us\":{:.1},\"server_us\":{:.1}}}",
        client as f64 / n as f64,
        server as f64 / n as f64
    );
    ExitCode::SUCCESS
}
