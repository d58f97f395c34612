//! The store contract and PostgreSQL's own guarantees, on a real server:
//! a private one started by `hack/postgres/start.sh` in a temp dir (stopped
//! by a drop guard, even on failure), or the one `CLUSTERMON_TEST_POSTGRES`
//! names (`postgres://USER@HOST:PORT/DB`, a user allowed to create
//! databases; the stop/start test always uses a private server).

// This test times a real PostgreSQL server (start, stop, lock waits):
// std's clock is the right one here (clippy.toml bans it elsewhere).
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clustermon_core::model::MasterDoc;
use clustermon_core::store::{contract, Change, Store, StoreError};
use clustermon_store_postgres::{InitOutcome, PostgresConfig, PostgresStore, PostgresUrl};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../hack/postgres")
        .join(name)
}

/// A private server; stopped on drop.
struct Server {
    dir: Option<PathBuf>,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    url: String,
}

impl Server {
    fn private(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clustermon-pg-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Server {
            dir: Some(dir),
            url: String::new(),
        };
        s.url = s.start();
        s
    }

    fn get(name: &str) -> Self {
        match std::env::var("CLUSTERMON_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Server { dir: None, url },
            _ => Self::private(name),
        }
    }

    fn start(&self) -> String {
        let dir = self.dir.as_ref().expect("a private server");
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .arg(dir)
            .output()
            .expect("run hack/postgres/start.sh");
        assert!(
            out.status.success(),
            "start.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn stop(&self) {
        let dir = self.dir.as_ref().expect("a private server");
        let st = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(dir)
            .status()
            .expect("run hack/postgres/stop.sh");
        assert!(st.success(), "stop.sh failed");
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig::new(PostgresUrl::parse(&self.url).unwrap(), None)
    }

    /// A config for a new, empty database with the clustermon schema.
    async fn fresh_db(&self) -> PostgresConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "cm_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.sql(&format!("CREATE DATABASE {db}")).await;
        let mut cfg = self.config();
        cfg.url.database = db;
        assert_eq!(
            PostgresStore::init(&cfg).await.unwrap(),
            InitOutcome::Created,
            "init creates"
        );
        assert_eq!(
            PostgresStore::init(&cfg).await.unwrap(),
            InitOutcome::Current,
            "init is idempotent"
        );
        cfg
    }

    async fn sql_on(&self, cfg: &PostgresConfig, sql: &str) {
        let u = &cfg.url;
        let conn = format!(
            "host={} port={} user={} dbname={}",
            u.host, u.port, u.user, u.database
        );
        let (client, c) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        let h = tokio::spawn(c);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = h.await;
    }

    async fn sql(&self, sql: &str) {
        self.sql_on(&self.config(), sql).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new("bash")
                .arg(script("stop.sh"))
                .arg(dir)
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
async fn postgres_store_passes_the_contract() {
    let server = Server::get("contract");
    let t0 = Instant::now();
    let server = &server;
    contract::run_all(|| async move {
        let cfg = server.fresh_db().await;
        Arc::new(PostgresStore::connect(&cfg).await.unwrap()) as Arc<dyn Store>
    })
    .await;
    eprintln!("contract suite on postgres: {:?}", t0.elapsed());
}

#[tokio::test]
async fn schema_missing_or_newer_is_a_clear_error_and_passwords_are_checked() {
    let server = Server::get("schema");
    server.sql("CREATE DATABASE cm_empty").await;
    let mut cfg = server.config();
    cfg.url.database = "cm_empty".into();
    let err = PostgresStore::connect(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("clustermon store init"), "{err}");

    let cfg = server.fresh_db().await;
    server
        .sql_on(&cfg, "UPDATE meta SET v = 99 WHERE k = 'schema'")
        .await;
    let err = PostgresStore::connect(&cfg).await.unwrap_err().to_string();
    assert!(
        err.contains("schema version 99") && err.contains("newer"),
        "{err}"
    );
    let err = PostgresStore::init(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");

    // The password user of start.sh (private servers only).
    if let Some(dir) = &server.dir {
        let pw = std::fs::read_to_string(dir.join("password")).unwrap();
        let mut cfg = server.fresh_db().await;
        cfg.url.user = "clustermon_pw".into();
        cfg.password = Some("WRONG-CANARY".into());
        let err = PostgresStore::connect(&cfg).await.unwrap_err().to_string();
        assert!(!err.contains("WRONG-CANARY"), "{err}");
        assert!(err.contains("password"), "{err}");
        cfg.password = Some(pw.trim().to_string());
        let s = PostgresStore::connect(&cfg).await.unwrap();
        s.put_cluster(&contract::cluster("x", 1)).await.unwrap();
        assert!(!format!("{s:?}").contains(pw.trim()));
    }
}

/// A master document that does not decode is reported with its etag and
/// replaced by compare-and-swap; its error echoes no value.
#[tokio::test]
async fn a_corrupt_master_is_reported_with_its_etag_and_replaced_by_cas() {
    let server = Server::get("corrupt");
    let cfg = server.fresh_db().await;
    let s = PostgresStore::connect(&cfg).await.unwrap();
    s.write_master(&MasterDoc::empty(), None).await.unwrap();
    for (body, what) in [
        ("garbage", "syntax"),
        (r#"{"buckets": "SECRET-CANARY"}"#, "wrong type"),
        (r#"{"buckets": [{"owner": "#, "truncated"),
        (r#"{"schemaVersion": 99, "buckets": []}"#, "future schema"),
    ] {
        let lit = body.replace('\'', "''");
        server
            .sql_on(
                &cfg,
                &format!("UPDATE master SET doc = '{lit}', etag = etag + 1"),
            )
            .await;
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
    // Invalid heartbeat documents are skipped and counted, never an error.
    s.upsert_monitor(&contract::monitor("good", i64::MAX / 2))
        .await
        .unwrap();
    server
        .sql_on(
            &cfg,
            "INSERT INTO monitors VALUES ('bad', '{\"id\": 7, \"x\": \"SECRET\"}', 9000000000000000)",
        )
        .await;
    let live = s.list_monitors(0).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(s.stats().invalid_monitor_docs, 1);
}

const WORKERS: usize = 4;
const INCREMENTS: u64 = 40;
const CLUSTERS: usize = 40;

/// Child process body for `processes_race_the_master_and_the_feed`.
#[tokio::test]
#[ignore = "child process of processes_race_the_master_and_the_feed"]
async fn race_child() {
    let (Ok(url), Ok(w)) = (
        std::env::var("CLUSTERMON_RACE_PG"),
        std::env::var("CLUSTERMON_RACE_WORKER"),
    ) else {
        return;
    };
    let cfg = PostgresConfig::new(PostgresUrl::parse(&url).unwrap(), None);
    let s = PostgresStore::connect(&cfg).await.unwrap();
    let (mut done, mut j) = (0, 0);
    let put = |j: usize| contract::cluster(&format!("w{w}-{j:03}"), j as u8);
    while done < INCREMENTS {
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
            s.put_cluster(&put(j)).await.unwrap();
            // Deletes and re-puts race too: the tombstone must be ordered.
            if j % 5 == 0 {
                assert!(s.delete_cluster(&put(j).id).await.unwrap());
                s.put_cluster(&put(j)).await.unwrap();
            }
            j += 1;
        }
    }
    while j < CLUSTERS {
        s.put_cluster(&put(j)).await.unwrap();
        j += 1;
    }
}

/// Several processes race compare-and-swap on the master and write clusters
/// while this process follows the feed: no update is lost, no change missed
/// (the sequence number is taken under the counter's lock, in commit order).
#[tokio::test]
async fn processes_race_the_master_and_the_feed() {
    let server = Server::get("race");
    let cfg = server.fresh_db().await;
    let reader = PostgresStore::connect(&cfg).await.unwrap();
    let url = format!("{}", cfg.url);
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "race_child",
                    "--ignored",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env("CLUSTERMON_RACE_PG", &url)
                .env("CLUSTERMON_RACE_WORKER", w.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut map = BTreeMap::new();
    let mut cont: Option<String> = None;
    let mut last_seq = 0i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished = false;
    let mut pages = 0;
    loop {
        let page = reader.read_feed(cont.as_deref(), 7).await.unwrap();
        pages += 1;
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
            finished = true;
        }
        assert!(Instant::now() < deadline, "race did not finish in time");
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
    eprintln!("race: {WORKERS} writers, {pages} feed pages, last seq {last_seq}");
}

/// A write notifies the feed's listener within milliseconds.
#[tokio::test]
async fn a_cluster_write_wakes_the_listener() {
    let server = Server::get("notify");
    let cfg = server.fresh_db().await;
    let s = PostgresStore::connect(&cfg).await.unwrap();
    let mut rx = s.feed_notifications().expect("postgres pushes");
    // The first value after LISTEN is established.
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("LISTEN established")
        .unwrap();
    let mut delays = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        s.put_cluster(&contract::cluster(&format!("n{i}"), 1))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .expect("notified")
            .unwrap();
        delays.push(t0.elapsed());
    }
    delays.sort();
    eprintln!(
        "put to notification: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(delays[delays.len() / 2] < Duration::from_millis(200));
    let mut off = cfg.clone();
    off.url.listen = false;
    assert!(PostgresStore::connect(&off)
        .await
        .unwrap()
        .feed_notifications()
        .is_none());
}

/// The server stopped: calls fail fast (connect timeout, not a hang) while
/// it is down, and succeed once it is back, without reopening the store;
/// the listener comes back too.
#[tokio::test]
async fn a_stopped_server_fails_calls_fast_and_the_store_recovers_without_reopening() {
    let server = Server::private("stop-start");
    let cfg = server.fresh_db().await;
    let s = PostgresStore::connect(&cfg).await.unwrap();
    let mut rx = s.feed_notifications().unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("LISTEN")
        .unwrap();
    s.upsert_monitor(&contract::monitor("m", i64::MAX / 2))
        .await
        .unwrap();
    server.stop();
    let mut worst = Duration::ZERO;
    for i in 0..3 {
        let t0 = Instant::now();
        let hb = contract::monitor("m", i64::MAX / 2);
        let (a, b, c) = tokio::join!(s.upsert_monitor(&hb), s.list_monitors(0), s.read_master(),);
        let took = t0.elapsed();
        worst = worst.max(took);
        for e in [a.err(), b.err(), c.err()] {
            let e = e.unwrap_or_else(|| panic!("call {i} succeeded with the server down"));
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        }
        assert!(took < Duration::from_millis(2000), "calls took {took:?}");
    }
    eprintln!("server down: heartbeat/list/read_master fail within {worst:?}");
    let t_up = Instant::now();
    server.start();
    let restarted = t_up.elapsed();
    let t1 = Instant::now();
    s.upsert_monitor(&contract::monitor("m", i64::MAX / 2))
        .await
        .unwrap();
    assert_eq!(s.list_monitors(0).await.unwrap().len(), 1);
    eprintln!(
        "server back (start took {restarted:?}): first call answered in {:?}",
        t1.elapsed()
    );
    // The listener re-LISTENs (its back-off is at most 5 s) and signals once.
    let t2 = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("re-LISTEN")
        .unwrap();
    eprintln!("LISTEN back {:?} after the server answered", t2.elapsed());
    s.put_cluster(&contract::cluster("after", 2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .expect("notified after the restart")
        .unwrap();
}

/// A server that accepts TCP but never answers (a hung host, a black-holed
/// route): opening the store fails within the connect bound, not never.
#[tokio::test]
async fn a_silent_server_fails_within_the_connect_timeout() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let cfg = PostgresConfig::new(
        PostgresUrl::parse(&format!("postgres://mon@127.0.0.1:{port}/cm")).unwrap(),
        None,
    );
    let t0 = Instant::now();
    let err = PostgresStore::connect(&cfg).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("silent server: connect failed after {took:?}: {err}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    drop(l);
}

/// Every process of the server frozen (SIGSTOP: a hung host with open
/// connections): calls give up within the call bound instead of hanging,
/// the stuck connection is dropped, and calls succeed once it thaws.
#[tokio::test]
async fn a_frozen_server_times_calls_out_and_the_connection_is_replaced() {
    let server = Server::private("frozen");
    let cfg = server.fresh_db().await;
    let s = PostgresStore::connect(&cfg).await.unwrap();
    s.upsert_monitor(&contract::monitor("m", i64::MAX / 2))
        .await
        .unwrap();
    let dir = server.dir.clone().unwrap();
    let pm = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    let pm = pm.lines().next().unwrap().trim().to_string();
    let kids = Command::new("ps")
        .args(["-o", "pid=", "--ppid", &pm])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&kids.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    pids.push(pm);
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .args(&pids)
            .status()
            .unwrap();
        assert!(st.success());
    };
    signal("STOP");
    let t0 = Instant::now();
    let hb = contract::monitor("m", i64::MAX / 2);
    let (a, b) = tokio::join!(s.upsert_monitor(&hb), s.read_master());
    let took = t0.elapsed();
    signal("CONT");
    eprintln!("frozen server: calls failed after {took:?}");
    assert!(matches!(a, Err(StoreError::Unavailable(_))), "{a:?}");
    assert!(matches!(b, Err(StoreError::Unavailable(_))), "{b:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let t1 = Instant::now();
    s.upsert_monitor(&hb).await.unwrap();
    assert!(s.read_master().await.unwrap().is_none());
    eprintln!("thawed: next call answered in {:?}", t1.elapsed());
}

/// A plain client on `cfg`'s database (the test's own, not the store's).
async fn client_on(cfg: &PostgresConfig) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let u = &cfg.url;
    let conn = format!(
        "host={} port={} user={} dbname={}",
        u.host, u.port, u.user, u.database
    );
    let (client, c) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(async move {
        let _ = c.await;
    });
    (client, h)
}

/// `(id, bucket column)` of every row, tombstones included.
async fn bucket_column(cfg: &PostgresConfig) -> BTreeMap<String, Option<i16>> {
    let (client, _h) = client_on(cfg).await;
    client
        .query("SELECT id, bucket FROM clusters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The schema of version 1, before the `bucket` column.
const SCHEMA_V1: &str = "
CREATE TABLE meta (k TEXT PRIMARY KEY, v BIGINT NOT NULL);
CREATE TABLE monitors (id TEXT PRIMARY KEY, doc TEXT NOT NULL, expires_at_ms BIGINT NOT NULL);
CREATE TABLE master (id TEXT PRIMARY KEY, doc TEXT NOT NULL, etag BIGINT NOT NULL);
CREATE TABLE clusters (id TEXT PRIMARY KEY, seq BIGINT NOT NULL, doc TEXT);
CREATE INDEX clusters_by_seq ON clusters(seq);
INSERT INTO meta(k, v) VALUES ('seq', 0), ('schema', 1);
";

/// A new database with the version 1 schema and documents: valid ones in
/// every bucket, a tombstone, and bodies without a valid bucket. Returns
/// its config and the bucket column the migration must produce.
async fn v1_database(
    server: &Server,
    name: &str,
    n: usize,
) -> (PostgresConfig, BTreeMap<String, Option<i16>>) {
    let db = format!("cm_{name}_{}", std::process::id());
    server.sql(&format!("CREATE DATABASE {db}")).await;
    let mut cfg = server.config();
    cfg.url.database = db;
    server.sql_on(&cfg, SCHEMA_V1).await;
    let mut rows: Vec<(String, Option<String>, Option<i16>)> = (0..n)
        .map(|i| {
            let d = contract::cluster(&format!("c{i:05}"), (i % 256) as u8);
            let body = serde_json::to_string(&d).unwrap();
            (d.id, Some(body), Some((i % 256) as i16))
        })
        .collect();
    rows.push(("tombstone".into(), None, None));
    for (id, body, bucket) in [
        ("garbage", "SECRET-CANARY not json", None),
        ("too-big", r#"{"id": "too-big", "bucket": 256}"#, None),
        ("negative", r#"{"id": "negative", "bucket": -1}"#, None),
        ("string", r#"{"id": "string", "bucket": "3"}"#, None),
        ("partial", r#"{"id": "partial", "bucket": 9}"#, Some(9)),
    ] {
        rows.push((id.into(), Some(body.into()), bucket));
    }
    let (client, _h) = client_on(&cfg).await;
    for (seq, (id, body, _)) in rows.iter().enumerate() {
        client
            .execute(
                "INSERT INTO clusters(id, seq, doc) VALUES ($1, $2, $3)",
                &[id, &(seq as i64 + 1), body],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "UPDATE meta SET v = $1 WHERE k = 'seq'",
            &[&(rows.len() as i64)],
        )
        .await
        .unwrap();
    let want = rows.into_iter().map(|(id, _, b)| (id, b)).collect();
    (cfg, want)
}

async fn schema_version(cfg: &PostgresConfig) -> i64 {
    let (client, _h) = client_on(cfg).await;
    client
        .query_one("SELECT v FROM meta WHERE k = 'schema'", &[])
        .await
        .unwrap()
        .get(0)
}

/// A version 1 schema is migrated when stores connect to it, several at
/// once, and by `init`: the bucket column added and back-filled, the feed
/// untouched.
#[tokio::test]
async fn a_version_1_schema_migrates_on_connect_and_init() {
    const N: usize = 3000;
    let server = Server::get("migrate");
    let (cfg, want) = v1_database(&server, "v1connect", N).await;
    let feed = |s: Arc<PostgresStore>| async move {
        let p = s.read_feed(None, 10_000).await.unwrap();
        (p.changes, p.continuation)
    };
    let stores = futures::future::join_all((0..4).map(|_| PostgresStore::connect(&cfg))).await;
    let stores: Vec<Arc<PostgresStore>> = stores
        .into_iter()
        .map(|s| Arc::new(s.expect("connect migrates a version 1 schema")))
        .collect();
    assert_eq!(schema_version(&cfg).await, 2);
    assert_eq!(bucket_column(&cfg).await, want, "the back-filled column");
    let s = stores[0].clone();
    let (changes, cont) = feed(s.clone()).await;
    assert_eq!(changes.len(), N + 6, "the migration changes no seq");
    assert_eq!(cont, (N + 6).to_string());
    let mut ids = s.list_cluster_ids(&[0, 9]).await.unwrap();
    ids.sort();
    let mut expect: Vec<String> = (0..N)
        .filter(|i| i % 256 == 0 || i % 256 == 9)
        .map(|i| format!("c{i:05}"))
        .chain(["partial".to_string()])
        .collect();
    expect.sort();
    assert_eq!(ids, expect, "list_cluster_ids on a migrated schema");
    let got = s.list_clusters_in(&[3]).await.unwrap();
    assert_eq!(got.len(), N.div_ceil(256));
    for r in &got {
        assert_eq!(
            clustermon_core::model::ClusterDoc::decode(&r.body).unwrap(),
            contract::cluster(&r.id, 3)
        );
    }
    s.put_cluster(&contract::cluster("c00003", 4))
        .await
        .unwrap();
    assert!(s
        .list_clusters_in(&[3])
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != "c00003"));
    assert_eq!(
        PostgresStore::init(&cfg).await.unwrap(),
        InitOutcome::Current,
        "init after a migration"
    );
    assert_eq!(bucket_column(&cfg).await["c00003"], Some(4));

    let (cfg, want) = v1_database(&server, "v1init", 300).await;
    assert_eq!(
        PostgresStore::init(&cfg).await.unwrap(),
        InitOutcome::Migrated { from: 1 },
        "init migrates"
    );
    assert_eq!(schema_version(&cfg).await, 2);
    assert_eq!(
        bucket_column(&cfg).await,
        want,
        "the column back-filled by init"
    );
}

/// put_cluster sets the bucket column (and moves it), a delete clears it,
/// and the bucket queries can use its index.
#[tokio::test]
async fn writes_keep_the_bucket_column_and_queries_use_its_index() {
    let server = Server::get("column");
    let cfg = server.fresh_db().await;
    let s = PostgresStore::connect(&cfg).await.unwrap();
    s.put_cluster(&contract::cluster("a", 7)).await.unwrap();
    s.put_cluster(&contract::cluster("b", 255)).await.unwrap();
    assert_eq!(
        bucket_column(&cfg).await,
        BTreeMap::from([("a".into(), Some(7)), ("b".into(), Some(255))])
    );
    s.put_cluster(&contract::cluster("a", 0)).await.unwrap();
    s.delete_cluster("b").await.unwrap();
    assert_eq!(
        bucket_column(&cfg).await,
        BTreeMap::from([("a".into(), Some(0)), ("b".into(), None)]),
        "an update moves the column, a tombstone clears it"
    );
    let (client, _h) = client_on(&cfg).await;
    // A table this small is scanned; forbid that to see the index is usable.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    for cols in ["id", "id, doc"] {
        let plan: Vec<String> = client
            .query(
                &format!(
                    "EXPLAIN SELECT {cols} FROM clusters WHERE bucket = ANY($1) AND doc IS NOT NULL"
                ),
                &[&vec![1i16, 200]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("clusters_by_bucket")),
            "{plan:?}"
        );
    }
}
