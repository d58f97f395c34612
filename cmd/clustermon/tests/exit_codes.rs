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
