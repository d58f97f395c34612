//! Hostile cluster documents: the RP's store holds
//! documents of every wrong shape, each carrying a canary where a secret
//! would be (a string `credentials`, as a base64 kubeconfig is stored by
//! some RPs; a string `insecureSkipTlsVerify`; canary map keys; unknown
//! enum variants; broken JSON). The guarantee: each is skipped and counted
//! (`monitor.changefeed.invalid`), the monitors stay up and keep checking
//! the healthy clusters (a cluster whose new version is hostile keeps its
//! last valid one), and the canary shows nowhere: not in the logs (debug),
//! `cluster list`, `explain`, the admin API's debug view and `/metrics`,
//! nor in any statsd line.

use super::super::*;
use serde_json::Value;
use std::collections::BTreeMap;

const CANARY: &str = "cnry-eyJhbGciOiJSUzI1NiJ9-e2e-Zq";

/// The hostile bodies: (what, a valid document edited by `edit`).
fn hostile(valid: &Value) -> Vec<(&'static str, String)> {
    use serde_json::json;
    let c = CANARY;
    let edit = |field: &str, v: Value| {
        let mut d = valid.clone();
        d[field] = v;
        d.to_string()
    };
    let mut with_creds = valid.clone();
    with_creds["credentials"] = json!({});
    let cred = |field: &str, v: Value| {
        let mut d = with_creds.clone();
        d["credentials"][field] = v;
        d.to_string()
    };
    vec![
        ("credentials: string", edit("credentials", json!(c))),
        ("credentials: sequence", edit("credentials", json!([7, c]))),
        (
            "insecureSkipTlsVerify: string",
            cred("insecureSkipTlsVerify", json!(c)),
        ),
        ("token: map", cred("token", json!({ c: c }))),
        ("token: sequence", cred("token", json!([c]))),
        ("caBundle: integer", cred("caBundle", json!(12345678))),
        (
            "clientCertificate: map",
            cred("clientCertificate", json!({ c: c })),
        ),
        ("clientKey: sequence", cred("clientKey", json!([c]))),
        (
            "provisioningState: unknown variant",
            edit("provisioningState", json!(c)),
        ),
        (
            "provisioningState: map",
            edit("provisioningState", json!({ c: c })),
        ),
        ("bucket: string", edit("bucket", json!(c))),
        ("bucket: out of range", edit("bucket", json!(300))),
        ("apiServer: sequence", edit("apiServer", json!([c]))),
        ("apiServer: map", edit("apiServer", json!({ c: c }))),
        (
            "apiServer: not a URL",
            edit("apiServer", json!(format!("ftp://{c}"))),
        ),
        ("id: sequence", edit("id", json!([c]))),
        ("id: not the key", edit("id", json!(c))),
        ("labels: string", edit("labels", json!(c))),
        ("labels: canary key", edit("labels", json!({ c: [c] }))),
        (
            "labels: value map",
            edit("labels", json!({ "env": { c: c } })),
        ),
        (
            "encryptedCredentials: map",
            edit("encryptedCredentials", json!({ c: c })),
        ),
        ("document: string", json!(c).to_string()),
        ("document: sequence", json!([c, { c: c }]).to_string()),
        ("document: broken JSON", format!("{{\"credentials\": \"{c}")),
        ("document: trailing text", format!("{valid} {c}")),
    ]
}

/// Writes `(id, body)` rows as the store does: seq taken inside the
/// writing transaction, so the feed carries them in order.
fn write_raw(db: &std::path::Path, rows: &[(String, String)]) {
    let py = r#"
import json, sqlite3, sys
db, rows = sys.argv[1], json.load(open(sys.argv[2]))
c = sqlite3.connect(db, timeout=30, isolation_level=None)
for id_, body in rows:
    c.execute("BEGIN IMMEDIATE")
    seq = c.execute("INSERT INTO meta(k, v) VALUES('seq', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1 RETURNING v").fetchone()[0]
    c.execute("INSERT INTO clusters(id, seq, doc) VALUES(?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, doc = excluded.doc", (id_, seq, body))
    c.execute("COMMIT")
"#;
    let file = db.with_file_name("hostile.json");
    std::fs::write(&file, serde_json::to_string(rows).unwrap()).unwrap();
    let st = std::process::Command::new("python3")
        .args([
            "-c",
            py,
            &db.display().to_string(),
            &file.display().to_string(),
        ])
        .status()
        .expect("python3");
    assert!(st.success(), "writing the hostile documents");
    std::fs::remove_file(&file).unwrap();
}

/// The first valid document in the store, as JSON.
fn a_valid_document(db: &std::path::Path, id: &str) -> Value {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT doc FROM clusters WHERE id = ?', (sys.argv[2],)).fetchone()[0])",
            &db.display().to_string(),
            id,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "reading a document");
    serde_json::from_slice(&out.stdout).expect("a valid document")
}

#[test]
fn hostile_cluster_documents_are_skipped_counted_and_never_echoed() {
    let dir = TempDir::new("hostile-documents");
    let db = dir.path().join("store.db");
    let store = format!("sqlite:{}", db.display());
    let statsd = Statsd::start();
    let fleet = Fleet::start(dir.path(), &store, &["--clusters", "20"]);
    let ids: Vec<String> = fleet
        .clusters()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 20);
    let mut mons = Monitors::new(dir.path(), &store, &statsd, &["--interval", "5s"]);
    // Debug logging: the widest log surface for the leak search.
    mons.log = "debug".into();
    mons.start("m1");
    mons.start("m2");
    wait_until(
        "all 256 buckets owned by m1, m2",
        Duration::from_secs(20),
        || buckets(&store).filter(|o| balanced(o, &["m1", "m2"])),
    );

    // A valid document to edit: one field wrong per hostile document; and
    // one healthy cluster whose new version is hostile (kept at its last
    // valid version).
    let valid = a_valid_document(&db, &ids[0]);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut what_of = BTreeMap::new();
    for (i, (what, body)) in hostile(&valid).into_iter().enumerate() {
        let id = format!("hostile-{i:02}");
        let body = body.replace(
            &format!("\"id\":\"{}\"", ids[0]),
            &format!("\"id\":\"{id}\""),
        );
        what_of.insert(id.clone(), what);
        rows.push((id, body));
    }
    let mut overwritten = valid.clone();
    overwritten["credentials"] = Value::from(CANARY);
    rows.push((ids[0].clone(), overwritten.to_string()));
    let n = rows.len() as u64;
    let before = statsd.counter_sum("monitor.changefeed.invalid", &[]);
    write_raw(&db, &rows);
    let written = Instant::now();

    // Every monitor follows the whole feed: each counts each hostile one.
    wait_until(
        "every hostile document counted invalid by both monitors",
        Duration::from_secs(15),
        || (statsd.counter_sum("monitor.changefeed.invalid", &[]) - before >= 2 * n).then_some(()),
    );
    eprintln!(
        "hostile: {n} documents counted invalid by 2 monitors after {:?}",
        written.elapsed()
    );

    // Still up, and every healthy cluster (ids[0] at its last valid
    // version) checked after the hostile writes.
    wait_until(
        "every healthy cluster checked after the hostile writes",
        Duration::from_secs(15),
        || {
            let t = statsd.check_times();
            ids.iter()
                .all(|id| t.get(id).is_some_and(|v| v.iter().any(|x| *x > written)))
                .then_some(())
        },
    );
    for m in ["m1", "m2"] {
        assert!(
            mons.get(m).child.try_wait().unwrap().is_none(),
            "{m} is still running: {}",
            mons.get(m).log_text()
        );
    }
    let checked = statsd.check_times();
    for id in what_of.keys() {
        assert!(
            !checked.contains_key(id),
            "{id} ({}) was checked",
            what_of[id]
        );
    }

    // Every surface that could show a document or its error.
    let mut surfaces: Vec<(String, String)> = Vec::new();
    let (code, out, err) = clustermon(&["cluster", "list", "--store", &store]);
    assert_eq!(code, 0, "cluster list: {err}");
    surfaces.push(("cluster list".into(), format!("{out}{err}")));
    let list = clustermon_json(&["cluster", "list", "--store", &store]).expect("cluster list json");
    surfaces.push(("cluster list --output json".into(), list.to_string()));
    for (id, what) in &what_of {
        let row = list
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("{id} ({what}) listed: {list}"));
        assert!(
            row["invalid"].as_str().is_some_and(|r| !r.is_empty()),
            "{id} ({what}) listed as invalid: {row}"
        );
    }
    let urls = admin_urls(&store);
    assert_eq!(urls.len(), 2, "two admin URLs: {urls:?}");
    for (id, what) in &what_of {
        for json in [false, true] {
            let mut args = vec!["explain", id.as_str(), "--store", &store];
            if json {
                args.extend(["--output", "json"]);
            }
            let (_, out, err) = clustermon(&args);
            surfaces.push((
                format!("explain {id} ({what}) json={json}"),
                format!("{out}{err}"),
            ));
        }
        for (m, url) in &urls {
            let (code, body) = http_get(&format!("{url}/debug/clusters/{id}"))
                .unwrap_or_else(|e| panic!("GET {m} /debug/clusters/{id}: {e}"));
            assert_eq!(code, 200, "{m} /debug/clusters/{id} ({what}): {body}");
            let v: Value = serde_json::from_str(&body).expect("debug view json");
            assert!(
                v["invalid_reason"].as_str().is_some(),
                "{m} shows why {id} ({what}) is invalid: {body}"
            );
            surfaces.push((format!("{m} /debug/clusters/{id} ({what})"), body));
        }
    }
    for (m, url) in &urls {
        let id = &ids[0];
        let (_, body) = http_get(&format!("{url}/debug/clusters/{id}")).expect("debug view");
        surfaces.push((format!("{m} /debug/clusters/{id} (kept last valid)"), body));
        let (code, body) = http_get(&format!("{url}/metrics")).expect("GET /metrics");
        assert_eq!(code, 200);
        surfaces.push((format!("{m} /metrics"), body));
    }
    for m in ["m1", "m2"] {
        surfaces.push((format!("{m} log"), mons.get(m).log_text()));
    }
    surfaces.push(("statsd".into(), statsd.raw()));
    // A reason per document reaches the log, by field name.
    let log = mons.get("m1").log_text();
    assert!(
        log.contains("credentials: invalid type string, expected struct Credentials"),
        "the log names the field and the expected type"
    );
    assert!(
        log.contains("credentials.insecureSkipTlsVerify: invalid type string, expected a boolean")
    );
    for needle in [CANARY, "cnry", "eyJhbGciOiJSUzI1NiJ9"] {
        for (surface, text) in &surfaces {
            if let Some(i) = text.find(needle) {
                let from = text[..i].char_indices().rev().nth(200).map_or(0, |c| c.0);
                panic!(
                    "{needle:?} leaked in {surface}: …{}…",
                    &text[from..(i + needle.len()).min(text.len())]
                );
            }
        }
    }
    eprintln!(
        "hostile: searched {} surfaces, no canary; took {:?}",
        surfaces.len(),
        written.elapsed()
    );
}
