use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use clustermon_core::store::contract;

use super::*;

fn temp_db(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "clustermon-sqlite-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.db")
}

#[tokio::test]
async fn sqlite_store_passes_the_contract() {
    contract::run_all(|| async {
        Arc::new(SqliteStore::open(temp_db("contract")).unwrap()) as Arc<dyn Store>
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
                .env("CLUSTERMON_RACE_DB", &db)
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
    assert!(t1.elapsed() < BUSY_TIMEOUT + Duration::from_secs(1));
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
