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

/// A token or key file that is a device, or too large to be one, is bad
/// input at start (exit 2, the file named, its content never read whole).
#[test]
fn a_secret_file_that_is_a_device_or_too_large_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("cm-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let big = dir.join("big.token");
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let big = big.to_str().unwrap();
    for (flag, file, want) in [
        ("--admin-token-file", "/dev/zero", "not a regular file"),
        ("--secrets-key-file", "/dev/zero", "not a regular file"),
        ("--admin-token-file", big, "larger than 65536 bytes"),
    ] {
        let out = clustermon(&["run", "--store", &store, "--statsd", "none", flag, file]);
        assert_eq!(out.status.code(), Some(2), "{flag} {file}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file) && err.contains(want),
            "{flag} {file}: {err}"
        );
    }
    // The admin API's certificate: its key is required with it, and a file
    // that is no certificate is named.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["run", "--store", &store, "--statsd", "none"];
        a.extend_from_slice(extra);
        clustermon(&a)
    };
    let out = run(&["--admin-tls-cert-file", junk]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin-tls-key-file"),
        "{out:?}"
    );
    let out = run(&["--admin-tls-cert-file", junk, "--admin-tls-key-file", junk]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no certificate") && !err.contains("not a certificate"),
        "{err}"
    );
    let out = run(&["--admin-ca-file", junk]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
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

/// A key rotation (docs/runbook.md): a document sealed with the old key
/// is listed as opening only with an older key once the new key is current
/// and the old one given as `--secrets-old-key-file`; without the old key
/// it does not open; a document put with the new key opens with it. An
/// older key without a current one is bad input (2), naming both flags;
/// an unreadable old key file is named by its flag.
#[test]
fn a_key_rotation_opens_the_old_seals_and_lists_them() {
    let dir = std::env::temp_dir().join(format!("cm-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let (old, new, token) = (dir.join("old.key"), dir.join("new.key"), dir.join("token"));
    std::fs::write(&old, [1u8; 32]).unwrap();
    std::fs::write(&new, [2u8; 32]).unwrap();
    std::fs::write(&token, "rotate-me-token\n").unwrap();
    let (old, new, token) = (
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        token.to_str().unwrap(),
    );
    for (id, key) in [("by-old", old), ("by-new", new)] {
        let out = clustermon(&[
            "cluster",
            "put",
            "--store",
            &store,
            "--id",
            id,
            "--api-server",
            "http://127.0.0.1:1",
            "--token-file",
            token,
            "--secrets-key-file",
            key,
        ]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    let list = |args: &[&str]| {
        let mut a = vec!["cluster", "list", "--store", &store, "--output", "json"];
        a.extend_from_slice(args);
        let out = clustermon(&a);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["credentials"].to_string(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let rotated = list(&["--secrets-key-file", new, "--secrets-old-key-file", old]);
    assert!(rotated["by-old"].contains("older key"), "{rotated:?}");
    assert_eq!(rotated["by-new"], r#"["sealed"]"#, "{rotated:?}");
    let new_only = list(&["--secrets-key-file", new]);
    assert!(new_only["by-old"].contains("does not open"), "{new_only:?}");
    let text = String::from_utf8_lossy(&clustermon(&["cluster", "list", "--store", &store]).stdout)
        .to_string();
    assert!(!text.contains("rotate-me-token"), "{text}");

    let out = clustermon(&[
        "cluster",
        "list",
        "--store",
        &store,
        "--secrets-old-key-file",
        old,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--secrets-key-file"), "{err}");
    let out = clustermon(&[
        "cluster",
        "list",
        "--store",
        &store,
        "--secrets-key-file",
        new,
        "--secrets-old-key-file",
        "/nonexistent-dir/old.key",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--secrets-old-key-file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
