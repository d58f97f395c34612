//! A closed stdout is the end of the output, not a panic:
//! `clustermon cluster list --output json | head` exits 0, quietly.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};

/// A pipe whose read end is already closed: every write to it fails with
/// EPIPE (Rust programs ignore SIGPIPE), whatever the timing.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new file descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is ours and closed once; fds[1] is owned by the File.
    unsafe { libc::close(fds[0]) };
    Stdio::from(unsafe { File::from_raw_fd(fds[1]) })
}

fn run(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clustermon"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("clustermon runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_listing_ends_quietly_when_its_reader_goes_away() {
    let dir = std::env::temp_dir().join(format!("cm-epipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let put = Command::new(env!("CARGO_BIN_EXE_clustermon"))
        .args(["cluster", "put", "--store", &store, "--id", "c1"])
        .args(["--api-server", "https://api.example:6443", "--bucket", "7"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    for args in [
        &["cluster", "list", "--output", "json"][..],
        &["cluster", "list"],
        &["status"],
        &["status", "--output", "json"],
        &["buckets"],
        &["explain", "c1"],
    ] {
        let mut argv = args.to_vec();
        argv.extend(["--store", &store]);
        let (status, stderr) = run(&argv);
        assert!(
            status.success() && !stderr.contains("panicked"),
            "clustermon {argv:?} with a closed stdout: {status}, stderr: {stderr}"
        );
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("stdout"),
            "a closed stdout is not an error: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
