//! The PostgreSQL store: N monitors on several hosts share one database
//! (made highly available by Patroni or a managed service).
//!
//! Client: `tokio-postgres` alone — the async driver every Rust pool wraps,
//! with no pool (two lazily opened connections, each pipelining concurrent
//! calls, are all a monitor needs) and TLS through the workspace's rustls
//! (`tls.rs`), so the crate adds no TLS stack and no macro-heavy dependency.
//!
//! - Compare-and-swap on the master document is `UPDATE … WHERE etag = $2
//!   RETURNING etag`: row locks serialise the writers, so exactly one wins.
//! - The change feed is the `clusters` table ordered by `seq`, a number taken
//!   by `UPDATE meta SET v = v + 1` in the writing statement's transaction: the
//!   row lock on the counter is held until commit, so a second writer takes
//!   its number only after the first committed, `seq` order is commit order
//!   and a reader never skips a change (a plain `SERIAL` would not give that).
//!   A delete leaves a tombstone row (`doc IS NULL`), so the feed carries it.
//! - Each row keeps its document's bucket in an indexed column (`bucket`,
//!   NULL for a tombstone), so the documents of some buckets are one indexed
//!   query. A schema of version 1 (before the column) is migrated by
//!   [`PostgresStore::connect`] or [`PostgresStore::init`]: the column added
//!   and back-filled from the documents, in one transaction.
//! - Every cluster write `NOTIFY`s `clustermon_clusters` in its transaction;
//!   a monitor's feed `LISTEN`s on a third connection and reads at once
//!   ([`Store::feed_notifications`]). Polling at `--feed-interval` stays the
//!   fallback; the listener reconnects with back-off.
//! - Every call is bounded: a connection is opened within
//!   [`PostgresConfig::connect_timeout`], a point call finishes within
//!   [`PostgresConfig::call_timeout`], and a connection that failed, timed
//!   out or was abandoned mid-call is replaced on the next call.
//! - Time: callers pass `now_ms` as for every store (the engine no longer
//!   compares clocks across hosts for liveness or the lease).

mod tls;
mod url;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clustermon_core::model::{ClusterDoc, MasterDoc, MonitorDoc};
use clustermon_core::store::{
    bucket_of, Change, Etag, FeedPage, RawCluster, Store, StoreError, StoreResult, StoreStats,
    Versioned,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Statement};

pub use url::{PostgresConfig, PostgresUrl, SslMode};

/// The schema this build reads and writes (`meta` row `schema`).
/// Version 2 added the clusters' `bucket` column: a build of version 1 would
/// write documents without it, so it refuses this schema.
pub const SCHEMA_VERSION: i64 = 2;

/// The channel cluster writes notify.
pub const CHANNEL: &str = "clustermon_clusters";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitors (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS master (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    etag BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    doc TEXT,
    bucket SMALLINT
);
CREATE INDEX IF NOT EXISTS clusters_by_seq ON clusters(seq);
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS bucket SMALLINT;
CREATE INDEX IF NOT EXISTS clusters_by_bucket ON clusters(bucket);
INSERT INTO meta(k, v) VALUES ('seq', 0) ON CONFLICT (k) DO NOTHING;
";

/// Expired heartbeat rows are kept this long (for post-mortems), then purged.
const MONITOR_ROW_RETENTION_MS: i64 = 3_600_000;

/// Every statement, prepared once per connection (one round trip per call).
/// Ids sort as bytes (`COLLATE "C"`), as the contract's other stores sort them.
const SQL: [&str; 15] = [
    // 0 upsert_monitor (with housekeeping)
    "WITH purge AS (DELETE FROM monitors WHERE expires_at_ms < $3::bigint - $4::bigint AND id <> $1)
     INSERT INTO monitors(id, doc, expires_at_ms) VALUES ($1, $2, $3)
     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, expires_at_ms = excluded.expires_at_ms",
    // 1 list_monitors
    "SELECT id, doc FROM monitors WHERE expires_at_ms > $1 ORDER BY id COLLATE \"C\"",
    // 2 delete_monitor
    "DELETE FROM monitors WHERE id = $1",
    // 3 read_master
    "SELECT doc, etag FROM master WHERE id = 'master'",
    // 4 create master
    "INSERT INTO master(id, doc, etag) VALUES ('master', $1, 1) ON CONFLICT (id) DO NOTHING RETURNING etag",
    // 5 replace master by compare-and-swap
    "UPDATE master SET doc = $1, etag = etag + 1 WHERE id = 'master' AND etag = $2 RETURNING etag",
    // 6 put_cluster: the number under the counter's row lock, the row, the notification
    "WITH s AS (UPDATE meta SET v = v + 1 WHERE k = 'seq' RETURNING v),
          w AS (INSERT INTO clusters(id, seq, doc, bucket) SELECT $1, v, $2, $3 FROM s
                ON CONFLICT (id) DO UPDATE
                SET seq = excluded.seq, doc = excluded.doc, bucket = excluded.bucket
                RETURNING seq)
     SELECT pg_notify('clustermon_clusters', seq::text) FROM w",
    // 7 delete_cluster: the counter first (the same lock order as a put), then the tombstone
    "WITH s AS (UPDATE meta SET v = v + 1 WHERE k = 'seq' RETURNING v),
          d AS (UPDATE clusters SET seq = s.v, doc = NULL, bucket = NULL FROM s
                WHERE clusters.id = $1 AND clusters.doc IS NOT NULL RETURNING clusters.seq)
     SELECT pg_notify('clustermon_clusters', seq::text) FROM d",
    // 8 get_cluster
    "SELECT doc FROM clusters WHERE id = $1 AND doc IS NOT NULL",
    // 9 list_clusters
    "SELECT id, doc FROM clusters WHERE doc IS NOT NULL ORDER BY id COLLATE \"C\"",
    // 10 count_clusters
    "SELECT COUNT(*) FROM clusters WHERE doc IS NOT NULL",
    // 11 read_feed: one statement, one snapshot; one row more than asked tells whether more follow
    "SELECT id, seq, doc FROM clusters WHERE seq > $1 ORDER BY seq LIMIT $2",
    // 12 schema version
    "SELECT v FROM meta WHERE k = 'schema'",
    // 13 list_cluster_ids (the bucket index)
    "SELECT id FROM clusters WHERE bucket = ANY($1) AND doc IS NOT NULL",
    // 14 list_clusters_in (the bucket index)
    "SELECT id, doc FROM clusters WHERE bucket = ANY($1) AND doc IS NOT NULL",
];

const UPSERT_MONITOR: usize = 0;
const LIST_MONITORS: usize = 1;
const DELETE_MONITOR: usize = 2;
const READ_MASTER: usize = 3;
const CREATE_MASTER: usize = 4;
const REPLACE_MASTER: usize = 5;
const PUT_CLUSTER: usize = 6;
const DELETE_CLUSTER: usize = 7;
const GET_CLUSTER: usize = 8;
const LIST_CLUSTERS: usize = 9;
const COUNT_CLUSTERS: usize = 10;
const READ_FEED: usize = 11;
const LIST_CLUSTER_IDS: usize = 13;
const LIST_CLUSTERS_IN: usize = 14;

/// One open connection and its prepared statements.
struct Conn {
    client: Client,
    stmts: Vec<Statement>,
}

/// A lazily (re)opened connection shared by concurrent calls (tokio-postgres
/// pipelines them).
struct Slot {
    cur: Mutex<Option<Arc<Conn>>>,
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn new() -> Self {
        Self {
            cur: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<Conn>> {
        let cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().filter(|c| !c.client.is_closed()).cloned()
    }

    /// Forgets `conn` if it is still the current one: the next call opens another.
    fn discard(&self, conn: &Arc<Conn>) {
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *cur = None;
        }
    }
}

/// Forgets the connection of a call that did not finish (timed out, or its
/// future was dropped by the caller's own bound): a connection with a stuck
/// request in its pipeline would hold up every later call.
struct CallGuard<'a> {
    slot: &'a Slot,
    conn: Arc<Conn>,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slot.discard(&self.conn);
        }
    }
}

pub struct PostgresStore {
    cfg: PostgresConfig,
    tls: tls::Tls,
    /// Monitors' calls: heartbeats, lists, the master, the feed.
    main: Slot,
    /// Cluster writes (the RP, tools): they may wait for the sequence lock,
    /// and must not hold up a heartbeat pipelined behind them.
    writes: Slot,
    listener: Mutex<Option<(watch::Receiver<u64>, tokio::task::AbortHandle)>>,
    /// The connections' driver tasks: each ends when its connection's last
    /// client goes (finished ones are reaped at the next open); those left
    /// when the store is dropped are aborted with it.
    drivers: Mutex<tokio::task::JoinSet<()>>,
    invalid_monitor_docs: AtomicU64,
    /// Invalid heartbeat documents already logged (once per id).
    invalid_logged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some((_, h)) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict,
        Some(c) if *c == SqlState::UNDEFINED_TABLE => StoreError::Invalid(
            "postgres store has no clustermon schema: run `clustermon store init`".into(),
        ),
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            unavailable(format!(
                "{} (check the user and --postgres-password-file)",
                describe(&e)
            ))
        }
        _ => unavailable(describe(&e)),
    }
}

/// The error with the server's message (tokio-postgres prints only "db
/// error"); server messages name objects and codes, never parameter values.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            // "error connecting to server: Connection refused (os error 111)"
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tls::Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Opens one connection within the connect timeout; the caller drives it.
async fn open_raw(
    cfg: &PostgresConfig,
    tls: &tls::Tls,
    app: &str,
) -> StoreResult<(Client, Connection)> {
    let u = &cfg.url;
    let mut pg = tokio_postgres::Config::new();
    pg.user(&u.user)
        .host(&u.host)
        .port(u.port)
        .dbname(&u.database)
        .application_name(app)
        .connect_timeout(cfg.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        // A write waiting for another writer's lock gives up before the
        // engine's bound on the call: calls never pile up behind a lock.
        .options("-c lock_timeout=1500 -c idle_in_transaction_session_timeout=10000")
        .ssl_mode(match u.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &cfg.password {
        pg.password(p);
    }
    // The whole handshake (TCP, TLS, authentication) within the bound, not only TCP.
    match tokio::time::timeout(cfg.connect_timeout, pg.connect(tls.clone())).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(map_err(e)),
        Err(_) => Err(unavailable(format!(
            "connecting to {} timed out after {:?}",
            cfg.url, cfg.connect_timeout
        ))),
    }
}

/// Reads the schema version; a clear error if missing or newer.
async fn check_schema(client: &Client, url: &PostgresUrl) -> StoreResult<()> {
    let missing = || {
        StoreError::Invalid(format!(
            "postgres store {url} has no clustermon schema: run `clustermon store init --store {url}`"
        ))
    };
    let row = match client.query_opt(SQL[12], &[]).await {
        Ok(r) => r,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Err(missing()),
        Err(e) => return Err(map_err(e)),
    };
    let v: i64 = row.ok_or_else(missing)?.get(0);
    if v > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "postgres store {url} has schema version {v}, newer than this build's {SCHEMA_VERSION}: upgrade clustermon"
        )));
    }
    if v < SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "postgres store {url} has schema version {v}, older than this build's {SCHEMA_VERSION}: run `clustermon store init --store {url}`"
        )));
    }
    Ok(())
}

/// The init lock: concurrent inits and migrations run one at a time.
const INIT_LOCK: &str = "SELECT pg_advisory_xact_lock(7276863)";

/// Waits in a migration: for the init lock (another process may be
/// migrating), and for the table lock `ALTER TABLE` takes. The connection's
/// own `lock_timeout` (1.5 s) is for a running monitor's calls.
const MIGRATION_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '60s'";

/// Brings a schema of version `from` up to [`SCHEMA_VERSION`], in the
/// caller's transaction (which holds the init lock and has run [`SCHEMA`],
/// so every column exists).
async fn migrate(tx: &tokio_postgres::Transaction<'_>, from: i64) -> StoreResult<()> {
    if from < 2 {
        let n = backfill_buckets(tx).await?;
        tracing::info!(
            documents = n,
            "postgres store: back-filled the clusters' bucket column"
        );
    }
    tx.execute(
        "UPDATE meta SET v = $1 WHERE k = 'schema'",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Rows read per round trip while back-filling, and updated per statement.
const BACKFILL_BATCH: usize = 2000;

/// Sets `bucket` from each stored document (`bucket_of`; NULL when the body
/// has no valid bucket). `ALTER TABLE` in the same transaction holds the
/// table's exclusive lock, so no document changes meanwhile. Returns the
/// number of documents with a bucket.
async fn backfill_buckets(tx: &tokio_postgres::Transaction<'_>) -> StoreResult<usize> {
    let select = tx
        .prepare("SELECT id, doc FROM clusters WHERE doc IS NOT NULL")
        .await
        .map_err(map_err)?;
    let portal = tx
        .bind(
            &select,
            &[] as &[&(dyn tokio_postgres::types::ToSql + Sync)],
        )
        .await
        .map_err(map_err)?;
    let mut found: Vec<(String, i16)> = Vec::new();
    loop {
        let rows = tx
            .query_portal(&portal, BACKFILL_BATCH as i32)
            .await
            .map_err(map_err)?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let (id, doc): (String, String) = (
                r.try_get(0).map_err(map_err)?,
                r.try_get(1).map_err(map_err)?,
            );
            if let Some(b) = bucket_of(&doc) {
                found.push((id, i16::from(b)));
            }
        }
    }
    let update = tx
        .prepare(
            "UPDATE clusters SET bucket = v.b
             FROM unnest($1::text[], $2::smallint[]) AS v(id, b) WHERE clusters.id = v.id",
        )
        .await
        .map_err(map_err)?;
    for chunk in found.chunks(BACKFILL_BATCH) {
        let (ids, buckets): (Vec<&str>, Vec<i16>) =
            chunk.iter().map(|(id, b)| (id.as_str(), *b)).unzip();
        tx.execute(&update, &[&ids, &buckets])
            .await
            .map_err(map_err)?;
    }
    Ok(found.len())
}

/// What [`PostgresStore::init`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// The schema did not exist: created at [`SCHEMA_VERSION`].
    Created,
    /// An older schema, migrated to [`SCHEMA_VERSION`].
    Migrated { from: i64 },
    /// Already at [`SCHEMA_VERSION`]: nothing to do.
    Current,
}

impl PostgresStore {
    /// The rows of prepared statement `stmt` for `buckets` (`bucket = ANY($1)`).
    async fn by_buckets(
        &self,
        stmt: usize,
        buckets: &[u8],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let buckets: Vec<i16> = buckets.iter().map(|b| i16::from(*b)).collect();
        let buckets = &buckets;
        self.call(&self.main, self.cfg.bulk_timeout, |c| async move {
            c.client.query(&c.stmts[stmt], &[buckets]).await
        })
        .await
    }

    /// Connects and checks the schema (created by [`PostgresStore::init`]).
    pub async fn connect(cfg: &PostgresConfig) -> StoreResult<Self> {
        let tls = tls::Tls::for_url(&cfg.url).map_err(StoreError::Invalid)?;
        let store = Self {
            cfg: cfg.clone(),
            tls,
            main: Slot::new(),
            writes: Slot::new(),
            listener: Mutex::new(None),
            drivers: Mutex::new(tokio::task::JoinSet::new()),
            invalid_monitor_docs: AtomicU64::new(0),
            invalid_logged: Mutex::new(HashSet::new()),
        };
        // A server that is down or refuses is unavailable (exit 1: try
        // again), not bad input (exit 2): the URL may be right.
        let opening = |e| match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot open postgres store {}: {m}", cfg.url))
            }
            other => other,
        };
        Self::upgrade(cfg, &store.tls).await.map_err(opening)?;
        let conn = store.conn(&store.main).await.map_err(opening)?;
        drop(conn);
        Ok(store)
    }

    /// Creates the schema if missing, or migrates an older one (idempotent,
    /// safe to race); says which. Refuses a newer schema.
    pub async fn init(cfg: &PostgresConfig) -> StoreResult<InitOutcome> {
        let tls = tls::Tls::for_url(&cfg.url).map_err(StoreError::Invalid)?;
        let (mut client, conn) = open_raw(cfg, &tls, "clustermon-init").await?;
        let driver = tokio::spawn(conn);
        let res = async {
            let tx = client.transaction().await.map_err(map_err)?;
            // Serialise concurrent inits and migrations.
            tx.batch_execute(MIGRATION_LOCK_TIMEOUT)
                .await
                .map_err(map_err)?;
            tx.batch_execute(INIT_LOCK).await.map_err(map_err)?;
            tx.batch_execute(SCHEMA).await.map_err(map_err)?;
            let row = tx
                .query_opt(SQL[12], &[])
                .await
                .map_err(map_err)?;
            let created = match row {
                Some(r) => {
                    let v: i64 = r.get(0);
                    if v > SCHEMA_VERSION {
                        return Err(StoreError::Invalid(format!(
                            "postgres store {} has schema version {v}, newer than this build's {SCHEMA_VERSION}: upgrade clustermon",
                            cfg.url
                        )));
                    }
                    if v < SCHEMA_VERSION {
                        migrate(&tx, v).await?;
                        InitOutcome::Migrated { from: v }
                    } else {
                        InitOutcome::Current
                    }
                }
                None => {
                    tx.execute(
                        "INSERT INTO meta(k, v) VALUES ('schema', $1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await
                    .map_err(map_err)?;
                    InitOutcome::Created
                }
            };
            tx.commit().await.map_err(map_err)?;
            Ok(created)
        }
        .await;
        drop(client);
        let _ = driver.await;
        res
    }

    /// Migrates a schema older than this build's (several processes may
    /// connect at once: the init lock serialises them, and each re-reads the
    /// version under it). A missing or newer schema is left to
    /// [`check_schema`] to report.
    async fn upgrade(cfg: &PostgresConfig, tls: &tls::Tls) -> StoreResult<()> {
        let (mut client, conn) = open_raw(cfg, tls, "clustermon-migrate").await?;
        let driver = tokio::spawn(conn);
        let res = async {
            let version = |row: Option<tokio_postgres::Row>| -> StoreResult<Option<i64>> {
                row.map(|r| r.try_get::<_, i64>(0).map_err(map_err))
                    .transpose()
            };
            let current = match client.query_opt(SQL[12], &[]).await {
                Ok(row) => version(row)?,
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
                Err(e) => return Err(map_err(e)),
            };
            if current.is_none_or(|v| v >= SCHEMA_VERSION) {
                return Ok(());
            }
            let tx = client.transaction().await.map_err(map_err)?;
            tx.batch_execute(MIGRATION_LOCK_TIMEOUT)
                .await
                .map_err(map_err)?;
            tx.batch_execute(INIT_LOCK).await.map_err(map_err)?;
            // Another process may have migrated while this one waited.
            let Some(v) = version(tx.query_opt(SQL[12], &[]).await.map_err(map_err)?)? else {
                return Ok(());
            };
            if v < SCHEMA_VERSION {
                tx.batch_execute(SCHEMA).await.map_err(map_err)?;
                migrate(&tx, v).await?;
                tracing::info!(
                    from = v,
                    to = SCHEMA_VERSION,
                    "postgres store: schema migrated"
                );
            }
            tx.commit().await.map_err(map_err)
        }
        .await;
        drop(client);
        let _ = driver.await;
        res
    }

    pub fn url(&self) -> &PostgresUrl {
        &self.cfg.url
    }

    /// The slot's connection, opened (schema checked, statements prepared) if needed.
    async fn conn(&self, slot: &Slot) -> StoreResult<Arc<Conn>> {
        if let Some(c) = slot.current() {
            return Ok(c);
        }
        let _opening = slot.opening.lock().await;
        if let Some(c) = slot.current() {
            return Ok(c);
        }
        let (client, connection) = open_raw(&self.cfg, &self.tls, "clustermon").await?;
        {
            let mut drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
            while drivers.try_join_next().is_some() {}
            drivers.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection closed");
                }
            });
        }
        check_schema(&client, &self.cfg.url).await?;
        let stmts = futures::future::try_join_all(SQL.iter().map(|q| client.prepare(q)))
            .await
            .map_err(map_err)?;
        let conn = Arc::new(Conn { client, stmts });
        *slot.cur.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on the slot's connection within `limit` (opening included).
    async fn call<T, F, Fut>(&self, slot: &Slot, limit: Duration, f: F) -> StoreResult<T>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let run = async {
            let conn = self.conn(slot).await?;
            let mut guard = CallGuard {
                slot,
                conn: conn.clone(),
                done: false,
            };
            let res = f(conn).await;
            // A failed request on a connection that is still open is the
            // server's answer; a closed connection is replaced next call.
            guard.done = true;
            if guard.conn.client.is_closed() {
                slot.discard(&guard.conn);
            }
            res.map_err(map_err)
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "no answer from {} within {limit:?}",
                self.cfg.url
            ))),
        }
    }

    fn point(&self) -> Duration {
        self.cfg.call_timeout
    }
}

/// Follows `LISTEN clustermon_clusters` on its own connection, bumping `tx`
/// for each notification and once after every (re)connect (changes may have
/// been missed while it was down). Reconnects with back-off; ends when
/// nobody listens any more.
async fn listen(cfg: PostgresConfig, tls: tls::Tls, tx: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match open_raw(&cfg, &tls, "clustermon-listen").await {
            Ok((client, mut connection)) => {
                let tx2 = tx.clone();
                let drive = async move {
                    let mut msgs = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(m) = msgs.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(_)) => tx2.send_modify(|v| *v += 1),
                            Ok(_) => {}
                            Err(e) => return e.to_string(),
                        }
                    }
                    "connection closed".to_string()
                };
                let subscribe = async {
                    client
                        .batch_execute(&format!("LISTEN {CHANNEL}"))
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(channel = CHANNEL, "postgres: listening for cluster changes");
                    tx.send_modify(|v| *v += 1);
                    std::future::pending::<Result<(), String>>().await
                };
                let why = tokio::select! {
                    why = drive => why,
                    r = subscribe => r.err().unwrap_or_default(),
                };
                tracing::warn!(error = %why, "postgres: LISTEN connection lost; polling the feed until it is back");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::debug!(error = %e, "postgres: LISTEN connection failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            invalid_monitor_docs: self.invalid_monitor_docs.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    fn feed_notifications(&self) -> Option<watch::Receiver<u64>> {
        if !self.cfg.url.listen {
            return None;
        }
        let mut l = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rx, _)) = l.as_ref() {
            return Some(rx.clone());
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(0u64);
        let task = rt.spawn(listen(self.cfg.clone(), self.tls.clone(), tx));
        *l = Some((rx.clone(), task.abort_handle()));
        Some(rx)
    }

    async fn upsert_monitor(&self, doc: &MonitorDoc) -> StoreResult<()> {
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id, exp) = (doc.id.as_str(), doc.expires_at_ms);
        self.call(&self.main, self.point(), |c| async move {
            c.client
                .execute(
                    &c.stmts[UPSERT_MONITOR],
                    &[&id, &body, &exp, &MONITOR_ROW_RETENTION_MS],
                )
                .await
        })
        .await
        .map(|_| ())
    }

    async fn list_monitors(&self, now_ms: i64) -> StoreResult<Vec<MonitorDoc>> {
        let rows = self
            .call(&self.main, self.point(), |c| async move {
                c.client.query(&c.stmts[LIST_MONITORS], &[&now_ms]).await
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, body): (String, String) = (row.get(0), row.get(1));
            match MonitorDoc::decode(&body) {
                Ok(m) => out.push(m),
                Err(e) => {
                    self.invalid_monitor_docs.fetch_add(1, Ordering::Relaxed);
                    let mut seen = self
                        .invalid_logged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if seen.len() < 1024 && seen.insert(id.clone()) {
                        tracing::warn!(monitor = %id, error = %e, "skipping an invalid monitor document (logged once per id)");
                    }
                }
            }
        }
        Ok(out)
    }

    async fn delete_monitor(&self, id: &str) -> StoreResult<bool> {
        self.call(&self.main, self.point(), |c| async move {
            c.client.execute(&c.stmts[DELETE_MONITOR], &[&id]).await
        })
        .await
        .map(|n| n > 0)
    }

    async fn read_master(&self) -> StoreResult<Option<Versioned<MasterDoc>>> {
        let row = self
            .call(&self.main, self.point(), |c| async move {
                c.client.query_opt(&c.stmts[READ_MASTER], &[]).await
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (body, etag): (String, i64) = (row.get(0), row.get(1));
        let etag = Etag(etag.to_string());
        match MasterDoc::decode(&body) {
            Ok(value) => Ok(Some(Versioned { value, etag })),
            Err(reason) => Err(StoreError::CorruptMaster { etag, reason }),
        }
    }

    async fn write_master(&self, doc: &MasterDoc, expected: Option<&Etag>) -> StoreResult<Etag> {
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let expected: Option<i64> = match expected {
            None => None,
            Some(e) => Some(e.0.parse().map_err(|_| StoreError::PreconditionFailed)?),
        };
        let body = body.as_str();
        let row = self
            .call(&self.main, self.point(), |c| async move {
                match expected {
                    None => c.client.query_opt(&c.stmts[CREATE_MASTER], &[&body]).await,
                    Some(want) => {
                        c.client
                            .query_opt(&c.stmts[REPLACE_MASTER], &[&body, &want])
                            .await
                    }
                }
            })
            .await?;
        match row {
            Some(r) => Ok(Etag(r.get::<_, i64>(0).to_string())),
            None if expected.is_none() => Err(StoreError::Conflict),
            None => Err(StoreError::PreconditionFailed),
        }
    }

    async fn put_cluster(&self, doc: &ClusterDoc) -> StoreResult<()> {
        doc.validate().map_err(StoreError::Invalid)?;
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id, body, bucket) = (doc.id.as_str(), body.as_str(), i16::from(doc.bucket));
        self.call(&self.writes, self.point(), |c| async move {
            c.client
                .query(&c.stmts[PUT_CLUSTER], &[&id, &body, &bucket])
                .await
        })
        .await
        .map(|_| ())
    }

    async fn delete_cluster(&self, id: &str) -> StoreResult<bool> {
        self.call(&self.writes, self.point(), |c| async move {
            c.client.query(&c.stmts[DELETE_CLUSTER], &[&id]).await
        })
        .await
        .map(|rows| !rows.is_empty())
    }

    async fn get_cluster(&self, id: &str) -> StoreResult<Option<RawCluster>> {
        let row = self
            .call(&self.main, self.point(), |c| async move {
                c.client.query_opt(&c.stmts[GET_CLUSTER], &[&id]).await
            })
            .await?;
        Ok(row.map(|r| RawCluster {
            id: id.to_string(),
            body: r.get(0),
        }))
    }

    async fn list_clusters(&self) -> StoreResult<Vec<RawCluster>> {
        let rows = self
            .call(&self.main, self.cfg.bulk_timeout, |c| async move {
                c.client.query(&c.stmts[LIST_CLUSTERS], &[]).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| RawCluster {
                id: r.get(0),
                body: r.get(1),
            })
            .collect())
    }

    async fn count_clusters(&self) -> StoreResult<u64> {
        let row = self
            .call(&self.main, self.cfg.bulk_timeout, |c| async move {
                c.client.query_one(&c.stmts[COUNT_CLUSTERS], &[]).await
            })
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn list_cluster_ids(&self, buckets: &[u8]) -> StoreResult<Vec<String>> {
        let rows = self.by_buckets(LIST_CLUSTER_IDS, buckets).await?;
        rows.iter().map(|r| r.try_get(0).map_err(map_err)).collect()
    }

    async fn list_clusters_in(&self, buckets: &[u8]) -> StoreResult<Vec<RawCluster>> {
        let rows = self.by_buckets(LIST_CLUSTERS_IN, buckets).await?;
        rows.iter()
            .map(|r| {
                Ok(RawCluster {
                    id: r.try_get(0).map_err(map_err)?,
                    body: r.try_get(1).map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn read_feed(&self, continuation: Option<&str>, max: usize) -> StoreResult<FeedPage> {
        let from: i64 = match continuation {
            None => 0,
            Some(t) => t.parse().ok().filter(|v: &i64| *v >= 0).ok_or_else(|| {
                StoreError::ContinuationExpired(format!("not a postgres continuation: {t:?}"))
            })?,
        };
        let max = max.clamp(1, 10_000) as i64;
        let ask = max + 1;
        let rows = self
            .call(&self.main, self.cfg.bulk_timeout, |c| async move {
                c.client.query(&c.stmts[READ_FEED], &[&from, &ask]).await
            })
            .await?;
        let more = rows.len() as i64 > max;
        let mut last = from;
        let mut changes = Vec::with_capacity(rows.len().min(max as usize));
        for row in rows.into_iter().take(max as usize) {
            let (id, seq, doc): (String, i64, Option<String>) =
                (row.get(0), row.get(1), row.get(2));
            last = seq;
            changes.push(match doc {
                Some(body) => Change::Upsert(RawCluster { id, body }),
                None => Change::Delete { id },
            });
        }
        Ok(FeedPage {
            changes,
            continuation: last.to_string(),
            caught_up: !more,
        })
    }
}
