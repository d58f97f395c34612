//! The embedded store: one SQLite file in WAL mode, shared by several
//! monitor processes on one machine.
//!
//! - Compare-and-swap on the master document is a conditional `UPDATE ...
//!   WHERE etag = ?`: SQLite serialises writers, so exactly one wins.
//! - The change feed is the `clusters` table ordered by `seq`, a counter
//!   taken inside the writing `BEGIN IMMEDIATE` transaction: writers hold the
//!   write lock from the moment they take a number until they commit, so
//!   `seq` order is commit order and a reader can never skip a change.
//!   A delete leaves a tombstone row (`doc IS NULL`) so the feed carries it.
//! - Each row keeps its document's bucket in an indexed column (`bucket`,
//!   NULL for a tombstone or a body without a valid bucket), so the
//!   documents of some buckets are one indexed query. Files made before the
//!   column existed get it at open, back-filled from the documents.
//! - rusqlite is blocking: every call runs on tokio's blocking pool, reads
//!   on their own connection, so a write that waits for another process's
//!   lock never holds up a read (in WAL mode readers are not blocked by a
//!   writer, even one holding `BEGIN EXCLUSIVE`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clustermon_core::model::{ClusterDoc, MasterDoc, MonitorDoc};
use clustermon_core::store::{
    bucket_of, Change, Etag, FeedPage, RawCluster, Store, StoreError, StoreResult, StoreStats,
    Versioned,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS monitors (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS master (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    etag INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    doc TEXT,
    bucket INTEGER
);
CREATE INDEX IF NOT EXISTS clusters_by_seq ON clusters(seq);
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v INTEGER NOT NULL
);
";

/// After [`SCHEMA`] and [`add_bucket_column`]: the column exists in every file.
/// The triggers keep it right for writers that do not know it (an older
/// binary on the same file, a script writing rows): a row inserted without
/// a bucket, or whose document changed while its bucket did not, gets the
/// document's `bucket` if it is an integer 0..=255 (what `bucket_of`
/// accepts), else NULL. `put_cluster` sets the column itself.
const BUCKET_INDEX: &str = "
CREATE INDEX IF NOT EXISTS clusters_by_bucket ON clusters(bucket);
CREATE TRIGGER IF NOT EXISTS clusters_bucket_on_insert AFTER INSERT ON clusters
WHEN NEW.doc IS NOT NULL AND NEW.bucket IS NULL
BEGIN
    UPDATE clusters SET bucket = CASE
        WHEN json_valid(NEW.doc) AND json_type(NEW.doc, '$.bucket') = 'integer'
             AND json_extract(NEW.doc, '$.bucket') BETWEEN 0 AND 255
        THEN json_extract(NEW.doc, '$.bucket') END
    WHERE id = NEW.id;
END;
CREATE TRIGGER IF NOT EXISTS clusters_bucket_on_update AFTER UPDATE OF doc ON clusters
WHEN NEW.doc IS NOT NULL AND NEW.bucket IS OLD.bucket AND NEW.doc IS NOT OLD.doc
BEGIN
    UPDATE clusters SET bucket = CASE
        WHEN json_valid(NEW.doc) AND json_type(NEW.doc, '$.bucket') = 'integer'
             AND json_extract(NEW.doc, '$.bucket') BETWEEN 0 AND 255
        THEN json_extract(NEW.doc, '$.bucket') END
    WHERE id = NEW.id;
END;
";

/// Expired heartbeat rows are kept this long (for post-mortems), then purged.
const MONITOR_ROW_RETENTION_MS: i64 = 3_600_000;

/// How long a call waits for another process's lock before it fails. Below
/// the engine's bound on a store call (one heartbeat interval, 2 s by
/// default), so a blocked call has given its connection back before the next
/// pass asks again: calls never pile up behind a lock.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long opening the store waits for other processes' locks.
const OPEN_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, and how far apart, an open that SQLite refused at once as
/// busy is tried again (~5 s in all).
const OPEN_RETRIES: u32 = 100;
const OPEN_RETRY_PAUSE: Duration = Duration::from_millis(50);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    invalid_monitor_docs: AtomicU64,
    /// Invalid heartbeat documents already logged (once per id).
    invalid_logged: Arc<Mutex<HashSet<String>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
        _ => unavailable(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file. Errors name the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let ctx = |e: rusqlite::Error| {
            StoreError::Invalid(format!("cannot open sqlite store {}: {e}", path.display()))
        };
        // Several processes may open one new file at once (monitors started
        // together, a `status` while a monitor starts). SQLite answers some
        // of the races at once with "database is locked", without waiting
        // out the busy timeout (a read that must become a write after
        // another process wrote): those are tried again, a bounded number
        // of times.
        let mut retries = 0;
        let (conn, mode) = loop {
            match Self::prepare(&path) {
                Ok(c) => break c,
                Err(e) if is_busy(&e) && retries < OPEN_RETRIES => {
                    retries += 1;
                    // The open runs in `spawn_blocking` (`clustermon::open_store_url`).
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(OPEN_RETRY_PAUSE);
                }
                Err(e) => return Err(ctx(e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Invalid(format!(
                "sqlite store {}: WAL mode refused (got {mode}); use a local file system",
                path.display()
            )));
        }
        let reader = Connection::open(&path).map_err(ctx)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(ctx)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            invalid_monitor_docs: AtomicU64::new(0),
            invalid_logged: Arc::default(),
        })
    }

    /// The writing connection: WAL mode (which it returns as SQLite named
    /// it), the schema made or migrated, each write in a transaction that
    /// takes the write lock first, so that it waits for other processes'
    /// locks rather than failing when one wrote meanwhile.
    fn prepare(path: &Path) -> rusqlite::Result<(Connection, String)> {
        let mut conn = Connection::open(path)?;
        // Opening may switch the file to WAL and create the schema while
        // other processes open it too: wait longer for their locks here
        // than a call of a running monitor does.
        conn.busy_timeout(OPEN_BUSY_TIMEOUT)?;
        // WAL: readers do not block the writer; several processes share the file.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok((conn, mode));
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        tx.commit()?;
        add_bucket_column(&mut conn)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(BUCKET_INDEX)?;
        tx.commit()?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok((conn, mode))
    }

    /// Runs `f` on the writing connection.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        Self::on(self.writer.clone(), f).await
    }

    /// Runs `f` on the reading connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        Self::on(self.reader.clone(), f).await
    }

    async fn on<T: Send + 'static>(
        conn: Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(unavailable)?
    }
}

fn has_bucket_column(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('clusters') WHERE name = 'bucket')",
        [],
        |r| r.get(0),
    )
}

/// Migrates a file made before the `bucket` column: adds it and fills it
/// from the documents (`bucket_of`; NULL for a body without a valid bucket),
/// in one write transaction. Several processes may open the file at once:
/// the first to take the write lock migrates, the others find the column
/// when they get the lock (they wait for it up to the open's busy timeout).
/// The back-fill changes no `seq`: no document changed.
fn add_bucket_column(c: &mut Connection) -> rusqlite::Result<()> {
    if has_bucket_column(c)? {
        return Ok(());
    }
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if has_bucket_column(&tx)? {
        return Ok(());
    }
    tx.execute_batch("ALTER TABLE clusters ADD COLUMN bucket INTEGER")?;
    let found: Vec<(String, u8)> = {
        let mut st = tx.prepare("SELECT id, doc FROM clusters WHERE doc IS NOT NULL")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut found = Vec::new();
        for row in rows {
            let (id, body) = row?;
            if let Some(b) = bucket_of(&body) {
                found.push((id, b));
            }
        }
        found
    };
    {
        let mut st = tx.prepare("UPDATE clusters SET bucket = ?2 WHERE id = ?1")?;
        for (id, b) in &found {
            st.execute(params![id, b])?;
        }
    }
    tx.commit()?;
    tracing::info!(
        documents = found.len(),
        "sqlite store: added the clusters' bucket column"
    );
    Ok(())
}

/// A row of `SELECT id, doc`.
fn raw_cluster(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawCluster> {
    Ok(RawCluster {
        id: r.get(0)?,
        body: r.get(1)?,
    })
}

/// `SELECT id, doc` of the documents in `buckets`: the bucket numbers are
/// written into the statement (they are integers, nothing to escape), so
/// the planner sees an `IN` list over the `bucket` index.
fn select_in(buckets: &[u8], cols: &str) -> String {
    let mut b = buckets.to_vec();
    b.sort_unstable();
    b.dedup();
    let list: Vec<String> = b.iter().map(u8::to_string).collect();
    format!(
        "SELECT {cols} FROM clusters WHERE bucket IN ({}) AND doc IS NOT NULL",
        list.join(",")
    )
}

fn next_seq(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(
        "INSERT INTO meta(k, v) VALUES('seq', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1 RETURNING v",
        [],
        |r| r.get(0),
    )
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            invalid_monitor_docs: self.invalid_monitor_docs.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    async fn upsert_monitor(&self, doc: &MonitorDoc) -> StoreResult<()> {
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id, exp) = (doc.id.clone(), doc.expires_at_ms);
        self.with(move |c| {
            c.execute(
                "INSERT INTO monitors(id, doc, expires_at_ms) VALUES(?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, expires_at_ms = excluded.expires_at_ms",
                params![id, body, exp],
            )
            .map_err(map_err)?;
            // Housekeeping; harmless if it races with another process.
            let _ = c.execute(
                "DELETE FROM monitors WHERE expires_at_ms < ?1",
                [exp - MONITOR_ROW_RETENTION_MS],
            );
            Ok(())
        })
        .await
    }

    async fn list_monitors(&self, now_ms: i64) -> StoreResult<Vec<MonitorDoc>> {
        let logged = self.invalid_logged.clone();
        let (out, invalid) = self
            .read(move |c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT id, doc FROM monitors WHERE expires_at_ms > ?1 ORDER BY id",
                    )
                    .map_err(map_err)?;
                let rows = st
                    .query_map([now_ms], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(map_err)?;
                let (mut out, mut invalid) = (Vec::new(), 0u64);
                for row in rows {
                    let (id, body) = row.map_err(map_err)?;
                    match MonitorDoc::decode(&body) {
                        Ok(m) => out.push(m),
                        Err(e) => {
                            invalid += 1;
                            let mut seen = logged.lock().unwrap_or_else(|p| p.into_inner());
                            if seen.len() < 1024 && seen.insert(id.clone()) {
                                tracing::warn!(monitor = %id, error = %e, "skipping an invalid monitor document (logged once per id)");
                            }
                        }
                    }
                }
                Ok((out, invalid))
            })
            .await?;
        self.invalid_monitor_docs
            .fetch_add(invalid, Ordering::Relaxed);
        Ok(out)
    }

    async fn delete_monitor(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(c.execute("DELETE FROM monitors WHERE id = ?1", [id])
                .map_err(map_err)?
                > 0)
        })
        .await
    }

    async fn read_master(&self) -> StoreResult<Option<Versioned<MasterDoc>>> {
        self.read(|c| {
            let row: Option<(String, i64)> = c
                .query_row(
                    "SELECT doc, etag FROM master WHERE id = 'master'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(map_err)?;
            let Some((body, etag)) = row else {
                return Ok(None);
            };
            let etag = Etag(etag.to_string());
            match MasterDoc::decode(&body) {
                Ok(value) => Ok(Some(Versioned { value, etag })),
                Err(reason) => Err(StoreError::CorruptMaster { etag, reason }),
            }
        })
        .await
    }

    async fn write_master(&self, doc: &MasterDoc, expected: Option<&Etag>) -> StoreResult<Etag> {
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let expected: Option<i64> = match expected {
            None => None,
            Some(e) => Some(e.0.parse().map_err(|_| StoreError::PreconditionFailed)?),
        };
        self.with(move |c| {
            let etag: i64 = match expected {
                None => c
                    .query_row(
                        "INSERT INTO master(id, doc, etag) VALUES('master', ?1, 1) RETURNING etag",
                        [body],
                        |r| r.get(0),
                    )
                    .map_err(map_err)?,
                Some(want) => c
                    .query_row(
                        "UPDATE master SET doc = ?1, etag = etag + 1 WHERE id = 'master' AND etag = ?2 RETURNING etag",
                        params![body, want],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?
                    .ok_or(StoreError::PreconditionFailed)?,
            };
            Ok(Etag(etag.to_string()))
        })
        .await
    }

    async fn put_cluster(&self, doc: &ClusterDoc) -> StoreResult<()> {
        doc.validate().map_err(StoreError::Invalid)?;
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id, bucket) = (doc.id.clone(), doc.bucket);
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let seq = next_seq(&tx).map_err(map_err)?;
            tx.execute(
                "INSERT INTO clusters(id, seq, doc, bucket) VALUES(?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE
                 SET seq = excluded.seq, doc = excluded.doc, bucket = excluded.bucket",
                params![id, seq, body, bucket],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn delete_cluster(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM clusters WHERE id = ?1 AND doc IS NOT NULL)",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            if exists {
                let seq = next_seq(&tx).map_err(map_err)?;
                tx.execute(
                    "UPDATE clusters SET seq = ?2, doc = NULL, bucket = NULL WHERE id = ?1",
                    params![id, seq],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(exists)
        })
        .await
    }

    async fn get_cluster(&self, id: &str) -> StoreResult<Option<RawCluster>> {
        let id = id.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT doc FROM clusters WHERE id = ?1 AND doc IS NOT NULL",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            Ok(body.map(|body| RawCluster { id, body }))
        })
        .await
    }

    async fn list_clusters(&self) -> StoreResult<Vec<RawCluster>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT id, doc FROM clusters WHERE doc IS NOT NULL ORDER BY id")
                .map_err(map_err)?;
            let rows = st.query_map([], raw_cluster).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn count_clusters(&self) -> StoreResult<u64> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM clusters WHERE doc IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }

    async fn list_cluster_ids(&self, buckets: &[u8]) -> StoreResult<Vec<String>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let sql = select_in(buckets, "id");
        self.read(move |c| {
            let mut st = c.prepare(&sql).map_err(map_err)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn list_clusters_in(&self, buckets: &[u8]) -> StoreResult<Vec<RawCluster>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let sql = select_in(buckets, "id, doc");
        self.read(move |c| {
            let mut st = c.prepare(&sql).map_err(map_err)?;
            let rows = st.query_map([], raw_cluster).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn read_feed(&self, continuation: Option<&str>, max: usize) -> StoreResult<FeedPage> {
        let from: i64 = match continuation {
            None => 0,
            Some(t) => t.parse().ok().filter(|v: &i64| *v >= 0).ok_or_else(|| {
                StoreError::ContinuationExpired(format!("not a sqlite continuation: {t:?}"))
            })?,
        };
        let max = max.clamp(1, 10_000) as i64;
        self.read(move |c| {
            // One read transaction: the page and the caught-up probe see the same snapshot.
            let tx = c.transaction().map_err(map_err)?;
            let mut changes = Vec::new();
            let mut last = from;
            {
                let mut st = tx
                    .prepare_cached(
                        "SELECT id, seq, doc FROM clusters WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(map_err)?;
                let rows = st
                    .query_map(params![from, max], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    })
                    .map_err(map_err)?;
                for row in rows {
                    let (id, seq, doc) = row.map_err(map_err)?;
                    last = seq;
                    changes.push(match doc {
                        Some(body) => Change::Upsert(RawCluster { id, body }),
                        None => Change::Delete { id },
                    });
                }
            }
            let more: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM clusters WHERE seq > ?1)",
                    [last],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(FeedPage {
                changes,
                continuation: last.to_string(),
                caught_up: !more,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
