use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use clustermon_core::store::contract;

use super::*;

/// A store file in a scratch directory of its own, removed with the
/// directory when dropped (kept when the test panicked, for inspection).
struct TempDb {
    dir: PathBuf,
    db: PathBuf,
}

impl std::ops::Deref for TempDb {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.db
    }
}

impl AsRef<Path> for TempDb {
    fn as_ref(&self) -> &Path {
        &self.db
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn temp_db(name: &str) -> TempDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "clustermon-sqlite-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("store.db");
    TempDb { dir, db }
}

#[tokio::test]
async fn sqlite_store_passes_the_contract() {
    // Every fresh store's directory lives until the suite is done.
    let dbs = std::sync::Mutex::new(Vec::new());
    contract::run_all(|| async {
        let db = temp_db("contract");
        let store = Arc::new(SqliteStore::open(&db).unwrap()) as Arc<dyn Store>;
        dbs.lock().unwrap().push(db);
        store
    })
    .await;
}

#[tokio::test]
async fn unopenable_path_is_a_clear_error() {
    let err = SqliteStore::open("/nonexistent-dir/x/store.db")
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("/nonexistent-dir/x/store.db"),
        "{err}"
    );
}

#[tokio::test]
async fn two_handles_on_one_file_see_each_other() {
    let path = temp_db("two");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    a.put_cluster(&contract::cluster("x", 1)).await.unwrap();
    assert!(b.get_cluster("x").await.unwrap().is_some());
    let e = a.write_master(&MasterDoc::empty(), None).await.unwrap();
    assert_eq!(b.read_master().await.unwrap().unwrap().etag, e);
}

/// Several processes opening one new file at once (monitors started
/// together, a `status` run while a monitor starts) all get the store: the
/// open waits for the others' schema creation, it does not fail with
/// "database is locked". Threads here, each with its own connections, as
/// processes would have.
#[test]
fn opening_a_new_file_from_many_handles_at_once_never_fails() {
    for round in 0..20 {
        let path = temp_db("open-race");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let opened: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (path.to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for h in opened {
            if let Err(e) = h.join().unwrap() {
                panic!("round {round}: {e}");
            }
        }
    }
}

const WORKERS: usize = 4;
const INCREMENTS: u64 = 40;
const CLUSTERS: usize = 40;

/// Child process body for `processes_race_the_master_and_the_feed`; does
/// nothing unless started by it.
#[tokio::test]
#[ignore = "child process of processes_race_the_master_and_the_feed"]
async fn race_child() {
    let (Ok(db), Ok(w)) = (
        std::env::var("CLUSTERMON_RACE_DB"),
        std::env::var("CLUSTERMON_RACE_WORKER"),
    ) else {
        return;
    };
    let s = SqliteStore::open(&db).unwrap();
    let mut done = 0;
    let mut j = 0;
    while done < INCREMENTS {
        // Read-modify-write of the master by compare-and-swap.
        let cur = s.read_master().await.unwrap();
        let res = match &cur {
            None => s
                .write_master(&MasterDoc::empty(), None)
                .await
                .map(|_| false),
            Some(v) => {
                let mut doc = v.value.clone();
                doc.generation += 1;
                doc.lease_owner = Some(format!("w{w}"));
                s.write_master(&doc, Some(&v.etag)).await.map(|_| true)
            }
        };
        match res {
            Ok(true) => done += 1,
            Ok(false) | Err(StoreError::PreconditionFailed) | Err(StoreError::Conflict) => {}
            Err(e) => panic!("worker {w}: unexpected {e}"),
        }
        if j < CLUSTERS {
            s.put_cluster(&contract::cluster(&format!("w{w}-{j:03}"), j as u8))
                .await
                .unwrap();
            j += 1;
        }
    }
    while j < CLUSTERS {
        s.put_cluster(&contract::cluster(&format!("w{w}-{j:03}"), j as u8))
            .await
            .unwrap();
        j += 1;
    }
}

/// Several processes race compare-and-swap on the master and write clusters
/// while this process follows the feed: no update is lost, no change missed.
#[tokio::test]
async fn processes_race_the_master_and_the_feed() {
    let db = temp_db("race");
    let reader = SqliteStore::open(&db).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "tests::race_child",
                    "--ignored",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env("CLUSTERMON_RACE_DB", &*db)
                .env("CLUSTERMON_RACE_WORKER", w.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();

    // Follow the feed while the children write.
    let mut map = BTreeMap::new();
    let mut cont: Option<String> = None;
    let mut last_seq = 0i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut finished = false;
    loop {
        let page = reader.read_feed(cont.as_deref(), 7).await.unwrap();
        let seq: i64 = page.continuation.parse().unwrap();
        assert!(seq >= last_seq, "continuation went backwards");
        last_seq = seq;
        for c in page.changes {
            match c {
                Change::Upsert(r) => map.insert(r.id, r.body),
                Change::Delete { id } => map.remove(&id),
            };
        }
        cont = Some(page.continuation);
        if finished && page.caught_up {
            break;
        }
        if !finished && children.iter_mut().all(|c| c.try_wait().unwrap().is_some()) {
            finished = true; // one more read to the end after every writer exited
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "race did not finish in time"
        );
        if page.caught_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    let master = reader.read_master().await.unwrap().unwrap();
    assert_eq!(
        master.value.generation,
        WORKERS as u64 * INCREMENTS,
        "lost update on the master document"
    );
    assert_eq!(
        map.len(),
        WORKERS * CLUSTERS,
        "the incremental feed missed changes"
    );
    let listed: BTreeMap<String, String> = reader
        .list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.body))
        .collect();
    assert_eq!(map, listed);
}

/// Another connection (as another process would) holding the write lock:
/// reads still answer at once, writes fail within the busy timeout rather
/// than piling up, and the store recovers when the lock is released.
#[tokio::test]
async fn a_held_write_lock_never_blocks_reads() {
    let path = temp_db("locked");
    let s = SqliteStore::open(&path).unwrap();
    s.put_cluster(&contract::cluster("x", 1)).await.unwrap();
    s.write_master(&MasterDoc::empty(), None).await.unwrap();
    let locker = Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(s.read_master().await.unwrap().is_some());
    assert_eq!(s.list_clusters().await.unwrap().len(), 1);
    assert!(s.read_feed(None, 10).await.unwrap().caught_up);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "reads waited {:?}",
        t0.elapsed()
    );
    let t1 = tokio::time::Instant::now();
    let err = s
        .upsert_monitor(&contract::monitor("m", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    // docs/monitoring.md: a write waits at most the busy timeout, less than
    // a pass's bound (one heartbeat interval, 2 s), so calls never pile up.
    let waited = t1.elapsed();
    assert!(
        waited >= BUSY_TIMEOUT && waited < Duration::from_secs(2),
        "a write under the lock failed after {waited:?} (busy timeout {BUSY_TIMEOUT:?}, bound 2 s)"
    );
    // Reads right after a failed write still answer.
    assert!(s.read_master().await.unwrap().is_some());
    locker.execute_batch("COMMIT").unwrap();
    s.upsert_monitor(&contract::monitor("m", i64::MAX / 2))
        .await
        .unwrap();
}

/// A master document that does not decode is reported with its etag (so a
/// repair can replace it by compare-and-swap), and its error echoes no value.
#[tokio::test]
async fn a_corrupt_master_is_reported_with_its_etag_and_replaced_by_cas() {
    let path = temp_db("corrupt");
    let s = SqliteStore::open(&path).unwrap();
    s.write_master(&MasterDoc::empty(), None).await.unwrap();
    let raw = Connection::open(&path).unwrap();
    for (body, what) in [
        ("garbage", "syntax"),
        (r#"{"buckets": "SECRET-CANARY"}"#, "wrong type"),
        (r#"{"buckets": [{"owner": "#, "truncated"),
        (r#"{"schemaVersion": 99, "buckets": []}"#, "future schema"),
    ] {
        raw.execute("UPDATE master SET doc = ?1, etag = etag + 1", [body])
            .unwrap();
        let err = s.read_master().await.unwrap_err();
        let StoreError::CorruptMaster { etag, reason } = err else {
            panic!("{what}: {err:?}");
        };
        assert!(!reason.contains("SECRET-CANARY"), "{what}: {reason}");
        assert!(reason.contains("master document"), "{what}: {reason}");
        let e2 = s
            .write_master(&MasterDoc::empty(), Some(&etag))
            .await
            .unwrap();
        assert_eq!(s.read_master().await.unwrap().unwrap().etag, e2, "{what}");
    }
}

/// Heartbeat documents that do not decode are skipped and counted.
#[tokio::test]
async fn invalid_heartbeats_are_skipped_and_counted() {
    let path = temp_db("badhb");
    let s = SqliteStore::open(&path).unwrap();
    s.upsert_monitor(&contract::monitor("good", 1_000))
        .await
        .unwrap();
    let raw = Connection::open(&path).unwrap();
    raw.execute(
        "INSERT INTO monitors(id, doc, expires_at_ms) VALUES('bad', 'garbage', 1000)",
        [],
    )
    .unwrap();
    let live = s.list_monitors(0).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, "good");
    assert_eq!(s.stats().invalid_monitor_docs, 1);
}

/// The schema of files made before the `bucket` column.
const SCHEMA_WITHOUT_BUCKET: &str = "
CREATE TABLE monitors (id TEXT PRIMARY KEY, doc TEXT NOT NULL, expires_at_ms INTEGER NOT NULL);
CREATE TABLE master (id TEXT PRIMARY KEY, doc TEXT NOT NULL, etag INTEGER NOT NULL);
CREATE TABLE clusters (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, doc TEXT);
CREATE INDEX clusters_by_seq ON clusters(seq);
CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// `(id, bucket column)` of every row, tombstones included.
fn bucket_column(path: &std::path::Path) -> BTreeMap<String, Option<i64>> {
    let c = Connection::open(path).unwrap();
    let mut st = c.prepare("SELECT id, bucket FROM clusters").unwrap();
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// `(id, seq, doc)` of every row, in seq order.
fn feed_rows(path: &std::path::Path) -> Vec<(String, i64, Option<String>)> {
    let c = Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT id, seq, doc FROM clusters ORDER BY seq")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Child process body for `an_old_file_migrates_once_when_processes_open_it_at_once`.
#[tokio::test]
#[ignore = "child process of an_old_file_migrates_once_when_processes_open_it_at_once"]
async fn migrate_child() {
    let Ok(db) = std::env::var("CLUSTERMON_MIGRATE_DB") else {
        return;
    };
    let s = SqliteStore::open(&db).unwrap();
    // Read through the migrated column at once.
    assert!(!s.list_cluster_ids(&[0]).await.unwrap().is_empty());
}

/// A file without the `bucket` column gets it at open, filled from the
/// documents, while several processes open it at once; the feed is untouched.
#[tokio::test]
async fn an_old_file_migrates_once_when_processes_open_it_at_once() {
    const N: usize = 3000;
    let path = temp_db("migrate");
    let mut want: BTreeMap<String, Option<i64>> = BTreeMap::new();
    {
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        c.execute_batch(SCHEMA_WITHOUT_BUCKET).unwrap();
        let tx = c.transaction().unwrap();
        let mut seq = 0i64;
        let mut row = |id: &str, doc: Option<String>, bucket: Option<i64>| {
            seq += 1;
            tx.execute(
                "INSERT INTO clusters(id, seq, doc) VALUES(?1, ?2, ?3)",
                params![id, seq, doc],
            )
            .unwrap();
            want.insert(id.to_string(), bucket);
        };
        for i in 0..N {
            let d = contract::cluster(&format!("c{i:05}"), (i % 256) as u8);
            row(
                &d.id,
                Some(serde_json::to_string(&d).unwrap()),
                Some((i % 256) as i64),
            );
        }
        row("tombstone", None, None);
        for (id, doc, bucket) in [
            ("garbage", "SECRET-CANARY not json", None),
            ("no-bucket", r#"{"id": "no-bucket"}"#, None),
            ("too-big", r#"{"id": "too-big", "bucket": 256}"#, None),
            ("negative", r#"{"id": "negative", "bucket": -1}"#, None),
            ("string", r#"{"id": "string", "bucket": "3"}"#, None),
            ("float", r#"{"id": "float", "bucket": 3.5}"#, None),
            // Not a valid cluster document, but its bucket is readable:
            // listed with it (the engine reports the invalid documents it reads).
            ("partial", r#"{"id": "partial", "bucket": 9}"#, Some(9)),
        ] {
            row(id, Some(doc.to_string()), bucket);
        }
        tx.execute("INSERT INTO meta(k, v) VALUES('seq', ?1)", [seq])
            .unwrap();
        tx.commit().unwrap();
    }
    let feed_before = feed_rows(&path);

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "tests::migrate_child",
                    "--ignored",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env("CLUSTERMON_MIGRATE_DB", &*path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let s = SqliteStore::open(&path).unwrap();
    for mut c in children {
        assert!(
            c.wait().unwrap().success(),
            "a process failed to open the old file"
        );
    }

    assert_eq!(bucket_column(&path), want, "the back-filled bucket column");
    assert_eq!(
        feed_rows(&path),
        feed_before,
        "the migration changes no document and no seq"
    );
    let mut ids = s.list_cluster_ids(&[0, 9]).await.unwrap();
    ids.sort();
    let mut expect: Vec<String> = (0..N)
        .filter(|i| i % 256 == 0 || i % 256 == 9)
        .map(|i| format!("c{i:05}"))
        .chain(["partial".to_string()])
        .collect();
    expect.sort();
    assert_eq!(ids, expect, "list_cluster_ids on a migrated file");
    let got = s.list_clusters_in(&[3]).await.unwrap();
    assert_eq!(
        got.len(),
        N.div_ceil(256),
        "list_clusters_in on a migrated file"
    );
    for r in &got {
        assert_eq!(
            ClusterDoc::decode(&r.body).unwrap(),
            contract::cluster(&r.id, 3)
        );
    }
    // Writes after the migration keep the column.
    s.put_cluster(&contract::cluster("c00003", 4))
        .await
        .unwrap();
    assert!(s
        .list_clusters_in(&[3])
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != "c00003"));
    // Opening again does not migrate again (the column is there).
    drop(s);
    SqliteStore::open(&path).unwrap();
    assert_eq!(bucket_column(&path)["c00003"], Some(4));
}

/// put_cluster sets the bucket column (and moves it), a delete clears it.
#[tokio::test]
async fn writes_keep_the_bucket_column() {
    let path = temp_db("column");
    let s = SqliteStore::open(&path).unwrap();
    s.put_cluster(&contract::cluster("a", 7)).await.unwrap();
    s.put_cluster(&contract::cluster("b", 255)).await.unwrap();
    assert_eq!(
        bucket_column(&path),
        BTreeMap::from([("a".into(), Some(7)), ("b".into(), Some(255))])
    );
    s.put_cluster(&contract::cluster("a", 0)).await.unwrap();
    s.delete_cluster("b").await.unwrap();
    assert_eq!(
        bucket_column(&path),
        BTreeMap::from([("a".into(), Some(0)), ("b".into(), None)]),
        "an update moves the column, a tombstone clears it"
    );
}

/// Rows written by something that does not know the column (a script, an
/// older binary) get their bucket from the document, so a monitor that
/// reads its buckets finds them; a body without a valid bucket gets NULL.
#[tokio::test]
async fn rows_written_without_the_column_get_their_bucket() {
    let path = temp_db("outside");
    let s = SqliteStore::open(&path).unwrap();
    s.put_cluster(&contract::cluster("moved", 3)).await.unwrap();
    let c = Connection::open(&path).unwrap();
    let body = |id: &str, b: &str| {
        let mut v = serde_json::to_value(contract::cluster(id, 0)).unwrap();
        v["bucket"] = serde_json::from_str(b).unwrap();
        v.to_string()
    };
    let put = "INSERT INTO clusters(id, seq, doc) VALUES(?1, 100, ?2)
               ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, doc = excluded.doc";
    c.execute(put, params!["new", body("new", "9")]).unwrap();
    c.execute(put, params!["moved", body("moved", "200")])
        .unwrap();
    for (id, b) in [
        ("str", "\"9\""),
        ("big", "256"),
        ("neg", "-1"),
        ("frac", "3.5"),
    ] {
        c.execute(put, params![id, body(id, b)]).unwrap();
    }
    c.execute(put, params!["garbage", "{not json"]).unwrap();
    let col = bucket_column(&path);
    assert_eq!(col["new"], Some(9));
    assert_eq!(
        col["moved"],
        Some(200),
        "a document moved by an outside update"
    );
    for id in ["str", "big", "neg", "frac", "garbage"] {
        assert_eq!(col[id], None, "{id}");
    }
    let mut ids: Vec<String> = s
        .list_clusters_in(&[9, 200])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["moved", "new"]);
    assert!(s.list_clusters_in(&[3]).await.unwrap().is_empty());
}

/// The documents of some buckets are read through the bucket index, not a
/// scan of every document.
#[test]
fn bucket_queries_use_the_index() {
    let path = temp_db("plan");
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    for cols in ["id", "id, doc"] {
        let sql = select_in(&[3, 1, 3, 200], cols);
        assert!(sql.contains("IN (1,3,200)"), "{sql}");
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("INDEX clusters_by_bucket")),
            "{sql}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.starts_with("SCAN")),
            "{sql}: {plan:?}"
        );
    }
}

/// docs/monitoring.md: opening a SQLite file waits up to 10 s for another
/// process's lock rather than failing at once. Another connection holds the
/// write lock for 2 s while the store opens: the open waits for it and
/// succeeds after the release, well within its 10 s.
#[test]
fn opening_waits_for_another_holders_write_lock() {
    let path = temp_db("open-locked");
    drop(SqliteStore::open(&path).unwrap());
    let locker = Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let hold = Duration::from_secs(2);
    let release = std::thread::spawn(move || {
        // The lock is held for a fixed time: sleeping is the fault.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(hold);
        locker.execute_batch("COMMIT").unwrap();
    });
    let t0 = tokio::time::Instant::now();
    let opened = SqliteStore::open(&path);
    let waited = t0.elapsed();
    release.join().unwrap();
    assert!(opened.is_ok(), "{:?}", opened.err());
    assert!(
        waited >= hold - Duration::from_millis(100) && waited < OPEN_BUSY_TIMEOUT,
        "the open waited {waited:?} for a lock held {hold:?} (bound {OPEN_BUSY_TIMEOUT:?})"
    );
}
