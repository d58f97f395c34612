//! Exit codes follow the error kind: 2 for bad input, 1 for a store that
//! does not answer (a network failure is worth retrying; a typo is not).

use std::process::{Command, Output};

fn clustermon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clustermon"))
        .args(args)
        .env_remove("CLUSTERMON_COSMOS_KEY")
        .output()
        .expect("clustermon runs")
}

#[test]
fn bad_input_exits_2_and_an_unreachable_store_exits_1() {
    // A store path that cannot exist: bad input.
    let out = clustermon(&["status", "--store", "sqlite:/nonexistent-dir/x/store.db"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A flag that does not parse: bad input.
    let out = clustermon(&["status", "--store", "mysql://x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // A Cosmos DB endpoint where nothing listens: a network failure.
    let dir = std::env::temp_dir().join(format!("cm-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "c2VjcmV0\n").unwrap();
    let out = clustermon(&[
        "status",
        "--store",
        "cosmos://127.0.0.1:1/db",
        "--cosmos-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A PostgreSQL server where nothing listens: a network failure too.
    let out = clustermon(&[
        "status",
        "--store",
        "postgres://clustermon@127.0.0.1:1/clustermon?sslmode=disable",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open postgres store"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// docs/monitoring.md: a non-loopback admin listener needs a token. Without
/// `--admin-token-file` the monitor does not start: bad input (2), and the
/// message names both flags.
#[test]
fn a_non_loopback_admin_listener_without_a_token_is_refused() {
    let dir = std::env::temp_dir().join(format!("cm-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let out = clustermon(&[
        "run",
        "--store",
        &store,
        "--statsd",
        "none",
        "--admin-listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin-listen 0.0.0.0:0 is not a loopback address")
            && err.contains("--admin-token-file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A missing required flag: exit 2 and one line that names the flag (the
/// name is on clap's second line, which a first-line-only message lost).
#[test]
fn a_missing_flag_is_named_on_one_line() {
    let out = clustermon(&["run", "--store", "sqlite:/nonexistent-dir/x/store.db"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("required arguments were not provided: --statsd <STATSD>"),
        "{err}"
    );
}
