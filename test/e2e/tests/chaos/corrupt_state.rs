//! Corrupt shared state: the master document or heartbeat rows
//! overwritten with garbage, a wrong type, truncated JSON or a future
//! schema, written straight into the SQLite file by another process. The
//! master document is repaired with the owners it had (sticky), the repair
//! is counted, readiness names the cause; bad heartbeats are skipped and
//! counted, and nothing panics.

use super::super::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn db(s: &Setup) -> PathBuf {
    s.dir.path().join("store.db")
}

/// The master document as stored, and its etag.
fn master_doc(db: &Path) -> (String, i64) {
    let rows = sqlite_exec(db, "SELECT doc, etag FROM master WHERE id = 'master'")
        .expect("read the master row");
    let row = &rows[0];
    (
        row[0].as_str().expect("doc is text").to_string(),
        row[1].as_i64().expect("etag"),
    )
}

/// Overwrites the master document as another writer would (the etag moves,
/// as it does on any write to Cosmos DB).
fn write_master_doc(db: &Path, doc: &str) {
    sqlite_exec_with(
        db,
        "UPDATE master SET doc = ?1, etag = etag + 1 WHERE id = 'master'",
        &[json!(doc)],
    )
    .expect("overwrite the master document");
}

/// Whether a stored master document is whole again: JSON with 256 owned
/// buckets and not the future schema the test wrote.
fn decodes(doc: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(doc) else {
        return false;
    };
    v.get("schemaVersion").and_then(Value::as_i64) != Some(99)
        && v["buckets"]
            .as_array()
            .is_some_and(|b| b.len() == 256 && b.iter().all(|e| e["owner"].is_string()))
}

/// How long each corruption is kept in place before the repair is timed.
const HOLD: Duration = Duration::from_secs(5);

fn repaired_count(s: &Setup) -> u64 {
    s.statsd.counter_sum("monitor.master.repaired", &[])
}

/// One corruption of the master document, with two or more monitors
/// running: repaired within lease TTL + one pass, owners unchanged, the
/// repair counted, readiness naming the cause while it lasts.
/// `before` is the table before the first corruption; `good` the last valid
/// document, written back by hand when the engine did not repair it, so
/// that each corruption is tried on its own. Answers the valid document.
fn corrupt_and_repair(
    s: &Setup,
    v: &mut Verdict,
    kind: &str,
    bad: &str,
    before: &[Option<String>],
    good: &str,
) -> String {
    let what = format!("master document {kind}");
    let db = db(s);
    let urls = admin_urls(&s.store);
    let rep0 = repaired_count(s);
    // Keep it corrupt for two passes (writing it again as the engine
    // repairs it), so that every monitor reads it and readiness must name
    // the cause; the repair is timed from the last write.
    let mut bodies: Vec<(String, String)> = Vec::new();
    let hold_until = Instant::now() + HOLD;
    while Instant::now() < hold_until {
        write_master_doc(&db, bad);
        for (id, u) in &urls {
            if let Ok((503, b)) = http_get(&format!("{u}/healthz/ready")) {
                bodies.push((id.clone(), b.trim().to_string()));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    write_master_doc(&db, bad);
    let t_bad = Instant::now();
    let bound = LEASE_TTL + HEARTBEAT + SLACK;
    let repaired = wait_for(bound, || {
        for (id, u) in &urls {
            if let Ok((503, b)) = http_get(&format!("{u}/healthz/ready")) {
                bodies.push((id.clone(), b.trim().to_string()));
            }
        }
        decodes(&master_doc(&db).0)
    });
    let took = t_bad.elapsed();
    eprintln!("{what}: repaired after {took:?} (bound {bound:?})");
    v.check(
        repaired && took <= bound,
        format!("{what}: the document decodes again after {took:?} (repaired: {repaired}; bound {bound:?})"),
    );
    let invalid = bodies
        .iter()
        .filter(|(_, b)| b.contains("master document invalid"))
        .count();
    let unreachable: Vec<_> = bodies
        .iter()
        .filter(|(_, b)| b.contains("store has not answered") || b.contains("unreachable"))
        .collect();
    eprintln!(
        "{what}: {} not-ready answers while corrupt, {invalid} saying 'master document invalid'; first: {:?}",
        bodies.len(),
        bodies.first()
    );
    v.check(
        invalid > 0,
        format!("{what}: /healthz/ready said 'master document invalid' while kept corrupt for {HOLD:?} ({} 503 answers, {invalid} naming it; first: {:?})", bodies.len(), bodies.first()),
    );
    v.check(
        unreachable.is_empty(),
        format!(
            "{what}: readiness did not blame the store: {:?}",
            unreachable.first()
        ),
    );
    match buckets(&s.store) {
        Some(after) => {
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            v.check(
                moved == 0,
                format!(
                    "{what}: owners sticky: {moved} buckets changed owner (bound 0), loads {:?}",
                    loads(&after)
                ),
            );
        }
        None => v.check(
            false,
            format!("{what}: `clustermon buckets` cannot read the table after the repair"),
        ),
    }
    let counted = wait_for(SLACK, || repaired_count(s) > rep0);
    v.check(
        counted,
        format!(
            "{what}: monitor.master.repaired counted {} (bound >= 1)",
            repaired_count(s) - rep0
        ),
    );
    let ready = poll_ready(&urls, 200, Instant::now(), HEARTBEAT + SLACK);
    v.check(
        ready.is_ok(),
        format!(
            "{what}: every monitor ready again within {:?} of the repair: {:?}",
            HEARTBEAT + SLACK,
            ready.err()
        ),
    );
    if !repaired {
        eprintln!("{what}: not repaired: the test writes the last valid document back");
        write_master_doc(&db, good);
        let back = poll_ready(&urls, 200, Instant::now(), LEASE_TTL + SLACK);
        eprintln!("{what}: after the manual restore: {back:?}");
    }
    master_doc(&db).0
}

#[test]
fn a_corrupt_master_document_is_repaired() {
    let mut s = setup("chaos-corrupt-master", &["--plain-http"]);
    let mut v = Verdict::default();
    let t0 = Instant::now();
    s.mons.start("m1");
    s.mons.start("m2");
    let store = s.store.clone();
    wait_until("m1, m2 balanced", Duration::from_secs(15), || {
        buckets(&store).filter(|o| balanced(o, &["m1", "m2"]))
    });
    eprintln!("corrupt master: m1, m2 balanced after {:?}", t0.elapsed());
    let db = db(&s);
    let settled = Instant::now();
    wait_checked(&s, &s.ids, settled, 1, INTERVAL + SLACK, "warm-up");

    let before = buckets(&store).expect("bucket table");
    let (valid, _) = master_doc(&db);
    assert!(decodes(&valid), "the engine's own document: {valid}");
    let t_first = Instant::now();
    let valid = corrupt_and_repair(&s, &mut v, "garbage", "garbage", &before, &valid);
    let wrong = r#"{"buckets": "x"}"#;
    let valid = corrupt_and_repair(&s, &mut v, "of the wrong type", wrong, &before, &valid);
    let half = valid[..valid.len() / 2].to_string();
    let valid = corrupt_and_repair(&s, &mut v, "truncated", &half, &before, &valid);
    let mut future: Value = serde_json::from_str(&valid).expect("valid JSON");
    future["schemaVersion"] = json!(99);
    let future = future.to_string();
    corrupt_and_repair(&s, &mut v, "of a future schema", &future, &before, &valid);

    // The guarantees table: no gap and no duplicate through the four
    // corruptions (monitors keep checking with the last valid table);
    // `monitor.master.invalid` was 1 while it lasted and is 0 again.
    let to = Instant::now();
    let limit = (to + INTERVAL + SLACK).saturating_duration_since(Instant::now());
    wait_checked(&s, &s.ids, to, 1, limit, "checks after the corruptions");
    let times = s.statsd.check_times();
    let (gap, id) = worst_gap(&times, &s.ids, t_first, to);
    let bound_gap = INTERVAL + Duration::from_secs(1);
    eprintln!("corrupt master: worst gap through the corruptions {gap:?} ({id})");
    v.check(
        gap <= bound_gap,
        format!("corrupt master: worst gap through the four corruptions {gap:?} ({id}), bound {bound_gap:?}"),
    );
    let bound_dup = INTERVAL - Duration::from_secs(1);
    match closest_pair(&times, t_first, to) {
        Some((d, id)) => v.check(
            d >= bound_dup,
            format!("corrupt master: closest two checks of one cluster {d:?} ({id}), bound >= {bound_dup:?}"),
        ),
        None => v.check(false, "corrupt master: no cluster checked twice through the corruptions"),
    }
    // 1 on a monitor that read the document invalid (the lease holder
    // repairs it in the pass that reads it; the other may only ever read
    // the repaired one), 0 again on every monitor.
    let invalid = metric_values(&s.statsd, "monitor.master.invalid");
    v.check(
        invalid.values().any(|vals| vals.contains(&1.0)),
        format!("corrupt master: monitor.master.invalid went to 1: {invalid:?}"),
    );
    let back = wait_for(2 * HEARTBEAT, || {
        let now = metric_values(&s.statsd, "monitor.master.invalid");
        ["m1", "m2"]
            .iter()
            .all(|m| now.get(*m).and_then(|v| v.last().copied()) == Some(0.0))
    });
    v.check(
        back,
        format!(
            "corrupt master: monitor.master.invalid back to 0 on m1 and m2: {:?}",
            metric_values(&s.statsd, "monitor.master.invalid")
        ),
    );

    // A third monitor joins the repaired fleet.
    let t_join = Instant::now();
    s.mons.start("m3");
    let joined = wait_for(Duration::from_secs(15), || {
        buckets(&store).is_some_and(|o| balanced(&o, &["m1", "m2", "m3"]))
    });
    let took = t_join.elapsed();
    v.check(
        joined,
        format!(
            "corrupt master: m3 joined, balanced over 3 after {took:?} (bound 15s): {:?}",
            buckets(&store).map(|o| loads(&o))
        ),
    );

    // The lease holder dies while the document is garbage: nobody can read
    // the lease; its buckets are re-owned once both its heartbeat and the
    // lease have expired.
    let victim = master(&store).expect("a master");
    let survivors: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != victim)
        .collect();
    let rep0 = repaired_count(&s);
    write_master_doc(&db, "garbage");
    let t_kill = Instant::now();
    s.mons.get(&victim).crash();
    let bound = HEARTBEAT_TTL + LEASE_TTL + 2 * HEARTBEAT + SLACK;
    let reowned = wait_for(bound + SLACK, || {
        buckets(&store).is_some_and(|o| balanced(&o, &survivors))
    });
    let took = t_kill.elapsed();
    v.check(
        reowned && took <= bound,
        format!("corrupt master: master {victim} killed while the document was garbage, its buckets re-owned by {survivors:?} after {took:?} (re-owned: {reowned}; bound {bound:?}): {:?}", buckets(&store).map(|o| loads(&o))),
    );
    let counted = wait_for(SLACK, || repaired_count(&s) > rep0);
    v.check(
        counted,
        format!(
            "corrupt master with a dead master: monitor.master.repaired counted {} (bound >= 1)",
            repaired_count(&s) - rep0
        ),
    );
    for (id, p) in &s.mons.procs {
        v.check(
            !p.log_text().contains("panicked"),
            format!("{id} did not panic"),
        );
    }
    v.finish("a_corrupt_master_document_is_repaired");
    drop(s.dir);
}

#[test]
fn corrupt_heartbeat_documents_are_skipped_and_counted() {
    let mut s = setup("chaos-corrupt-heartbeats", &["--plain-http"]);
    let mut v = Verdict::default();
    s.mons.start("m1");
    s.mons.start("m2");
    let store = s.store.clone();
    wait_until("m1, m2 balanced", Duration::from_secs(15), || {
        buckets(&store).filter(|o| balanced(o, &["m1", "m2"]))
    });
    let settled = Instant::now();
    wait_checked(
        &s,
        &s.ids,
        settled - INTERVAL,
        1,
        INTERVAL + SLACK,
        "warm-up",
    );
    let before = buckets(&store).expect("bucket table");
    let db = db(&s);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires = now_ms + 3_600_000;
    let bad = [
        ("bad-garbage", "garbage".to_string()),
        (
            "bad-type",
            r#"{"id": 7, "expiresAtMs": "soon", "draining": "yes"}"#.to_string(),
        ),
        ("bad-array", "[1, 2, 3]".to_string()),
        ("bad-null", "null".to_string()),
        ("bad-missing", r#"{"id": "bad-missing"}"#.to_string()),
        (
            "bad-truncated",
            format!(
                r#"{{"id": "bad-truncated", "hostname": "h", "version": "1", "expiresAtMs": {expires}, "sta"#
            ),
        ),
    ];
    let inv0 = s.statsd.counter_sum("monitor.heartbeats.invalid", &[]);
    for (id, doc) in &bad {
        sqlite_exec_with(
            &db,
            "INSERT OR REPLACE INTO monitors(id, doc, expires_at_ms) VALUES(?1, ?2, ?3)",
            &[json!(id), json!(doc), json!(expires)],
        )
        .expect("insert a bad heartbeat");
    }
    let t_bad = Instant::now();
    eprintln!("corrupt heartbeats: {} bad rows inserted", bad.len());

    // Two intervals: the table never changes, every process stays up.
    let end = t_bad + 2 * INTERVAL;
    let mut samples = 0;
    let mut changed: Option<String> = None;
    let mut dead: Option<String> = None;
    while Instant::now() < end {
        match buckets(&store) {
            Some(o) if o == before => {}
            Some(o) => {
                changed.get_or_insert(format!(
                    "after {:?}: loads {:?}",
                    t_bad.elapsed(),
                    loads(&o)
                ));
            }
            None => {
                changed.get_or_insert(format!("after {:?}: table unreadable", t_bad.elapsed()));
            }
        }
        samples += 1;
        for id in ["m1", "m2"] {
            if let Ok(Some(st)) = s.mons.get(id).child.try_wait() {
                dead.get_or_insert(format!("{id} exited ({st}) after {:?}", t_bad.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    v.check(
        changed.is_none(),
        format!("corrupt heartbeats: bucket table unchanged over {samples} samples in 2 intervals: {changed:?}"),
    );
    v.check(
        dead.is_none(),
        format!("corrupt heartbeats: both monitors alive: {dead:?}"),
    );
    let counted = wait_for(SLACK, || {
        s.statsd.counter_sum("monitor.heartbeats.invalid", &[]) > inv0
    });
    let inv = s.statsd.counter_sum("monitor.heartbeats.invalid", &[]) - inv0;
    v.check(
        counted,
        format!("corrupt heartbeats: monitor.heartbeats.invalid counted {inv} (bound >= 1)"),
    );
    let all = wait_for(INTERVAL + SLACK, || {
        let t = s.statsd.check_times();
        s.ids
            .iter()
            .all(|id| t.get(id).and_then(|v| v.last()).is_some_and(|x| *x >= end))
    });
    v.check(
        all,
        "corrupt heartbeats: every cluster checked after the window",
    );
    let (gap, id) = worst_gap(&s.statsd.check_times(), &s.ids, t_bad, end);
    let bound = INTERVAL + Duration::from_secs(1);
    v.check(
        gap <= bound,
        format!("corrupt heartbeats: worst gap {gap:?} ({id}), bound {bound:?}"),
    );
    let status = clustermon(&["status", "--store", &store]);
    eprintln!(
        "corrupt heartbeats: `clustermon status` exit {} ({})",
        status.0,
        status.2.lines().last().unwrap_or("")
    );
    for (id, p) in &s.mons.procs {
        v.check(
            !p.log_text().contains("panicked"),
            format!("corrupt heartbeats: {id} did not panic"),
        );
    }
    v.finish("corrupt_heartbeat_documents_are_skipped_and_counted");
    drop(s.dir);
}

/// Monitors that start on a store whose master document is garbage have
/// never seen a valid version: docs/monitoring.md, *Corrupt shared state*:
/// they wait one lease TTL (someone may hold a lease they cannot read)
/// before they repair it from an empty table. Not rewritten before the
/// lease TTL from the first monitor's start; rewritten within lease TTL +
/// one pass (+ slack); then the two share the buckets.
#[test]
fn monitors_that_never_saw_a_valid_master_wait_one_lease_ttl_before_the_repair() {
    let mut s = setup("chaos-garbage-master-at-start", &["--plain-http"]);
    let db = db(&s);
    sqlite_exec_with(
        &db,
        "INSERT OR REPLACE INTO master (id, doc, etag) VALUES ('master', 'garbage', 1)",
        &[],
    )
    .expect("plant a garbage master document");
    let t0 = Instant::now();
    s.mons.start("m1");
    s.mons.start("m2");
    let bound = LEASE_TTL + HEARTBEAT + SLACK;
    let mut rewritten = None;
    while t0.elapsed() < bound + SLACK {
        let (doc, _) = master_doc(&db);
        if doc != "garbage" {
            rewritten = Some((t0.elapsed(), decodes(&doc)));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("garbage master at start: rewritten {rewritten:?} after the monitors started (bounds {LEASE_TTL:?}..{bound:?})");
    let (took, valid) = rewritten.expect("the master document is rewritten");
    assert!(
        took >= LEASE_TTL,
        "rewritten {took:?} after the start, before one lease TTL: a lease nobody could read was overridden"
    );
    assert!(
        took <= bound,
        "rewritten {took:?} after the start (bound {bound:?})"
    );
    assert!(valid, "the rewritten document decodes");
    let store = s.store.clone();
    wait_until(
        "m1, m2 balanced after the repair",
        Duration::from_secs(15),
        || buckets(&store).filter(|o| balanced(o, &["m1", "m2"])),
    );
    let repaired = wait_for(SLACK, || repaired_count(&s) >= 1);
    assert!(repaired, "monitor.master.repaired counted");
    drop(s.dir);
}
