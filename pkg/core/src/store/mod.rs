//! The store contract. Every backend (SQLite, Cosmos DB, the in-memory one
//! used by unit tests) implements [`Store`] and passes [`contract`].
//!
//! Time is passed in (`now_ms`) rather than read by the store, so the
//! decisions built on it stay testable with a paused clock.

pub mod contract;
pub mod mem;

use async_trait::async_trait;

use crate::model::{ClusterDoc, MasterDoc, MonitorDoc};

/// Opaque version of a document; compare-and-swap writes name the one they read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Etag(pub String);

#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: Etag,
}

/// A cluster document as stored: undecoded, so that a malformed document is
/// reported and skipped by the engine instead of failing a whole page.
#[derive(Clone, PartialEq)]
pub struct RawCluster {
    pub id: String,
    pub body: String,
}

impl std::fmt::Debug for RawCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may hold credentials.
        write!(f, "RawCluster({}, {} bytes)", self.id, self.body.len())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Upsert(RawCluster),
    Delete { id: String },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::Upsert(c) => &c.id,
            Change::Delete { id } => id,
        }
    }
}

/// One page of the change feed. `continuation` resumes after the last change
/// of this page (or where the request started, for an empty page).
#[derive(Clone, Debug)]
pub struct FeedPage {
    pub changes: Vec<Change>,
    pub continuation: String,
    /// Whether this page reached the end of the feed as of the read.
    pub caught_up: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    /// Compare-and-swap lost: the document changed (or vanished) since it was read.
    #[error("precondition failed: the document changed since it was read")]
    PreconditionFailed,
    #[error("conflict: the document already exists")]
    Conflict,
    /// The store is unreachable, overloaded or failed; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request or stored data is invalid; retrying will not help.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The continuation token is unknown or too old: re-list from scratch.
    #[error("change feed continuation is no longer valid: {0}")]
    ContinuationExpired(String),
    /// The master document exists but does not decode (garbage, a wrong
    /// type, a schema this build does not know). `etag` names the stored
    /// version so that a repair can replace it by compare-and-swap; `reason`
    /// names the field and the problem, never a value.
    #[error("{reason}")]
    CorruptMaster { etag: Etag, reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Cumulative counters a backend keeps about its own requests; the engine
/// emits their growth as `monitor.store.*` metrics. Backends without retries
/// or request units leave them at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Requests sent again after a throttle (429) answer.
    pub retries_throttled: u64,
    /// Requests sent again after a transient failure (5xx, timeout, connection).
    pub retries_unavailable: u64,
    /// Request units charged, in thousandths (Cosmos DB's `x-ms-request-charge`).
    pub request_charge_milli: u64,
    /// Heartbeat documents skipped by `list_monitors` because they did not
    /// decode (each also logged once per document id).
    pub invalid_monitor_docs: u64,
}

/// The documents of `all` whose bucket is one of `buckets`.
pub fn in_buckets(all: Vec<RawCluster>, buckets: &[u8]) -> Vec<RawCluster> {
    all.into_iter()
        .filter(|c| bucket_of(&c.body).is_some_and(|b| buckets.contains(&b)))
        .collect()
}

/// The bucket of a stored cluster body, read without decoding the rest; for
/// backends that keep the body as text.
pub fn bucket_of(body: &str) -> Option<u8> {
    #[derive(serde::Deserialize)]
    struct B {
        bucket: u8,
    }
    serde_json::from_str::<B>(body).ok().map(|b| b.bucket)
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics ("sqlite", "cosmos", "mem").
    fn kind(&self) -> &'static str;

    /// Whether the change feed carries deletes. When it does not (Cosmos DB's
    /// latest-version feed), the engine re-lists periodically to find them.
    fn feed_reports_deletes(&self) -> bool {
        true
    }

    /// Counters of this backend's own requests (retries, errors, request units).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// A wake-up for the change feed: a counter that grows when the store
    /// learns of new changes (PostgreSQL's `LISTEN`/`NOTIFY`). The feed reads
    /// at once when it moves, and still polls at its interval (the fallback
    /// while the push channel is down). `None` (the default): polling only.
    fn feed_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    // --- monitors (heartbeats) ---

    /// Creates or replaces a monitor's heartbeat document.
    async fn upsert_monitor(&self, doc: &MonitorDoc) -> StoreResult<()>;
    /// Monitors whose `expires_at_ms` is after `now_ms`, sorted by id.
    /// Documents that do not decode are skipped and counted
    /// ([`StoreStats::invalid_monitor_docs`]), never an error of the call.
    async fn list_monitors(&self, now_ms: i64) -> StoreResult<Vec<MonitorDoc>>;
    /// Returns whether a document was deleted.
    async fn delete_monitor(&self, id: &str) -> StoreResult<bool>;

    // --- master document ---

    /// The master document; one that does not decode (see
    /// [`MasterDoc::decode`]) is [`StoreError::CorruptMaster`] with its etag.
    async fn read_master(&self) -> StoreResult<Option<Versioned<MasterDoc>>>;
    /// `expected: None` creates the document ([`StoreError::Conflict`] if it
    /// exists); `Some(etag)` replaces it only if its etag still matches
    /// ([`StoreError::PreconditionFailed`] otherwise, or if it is gone).
    async fn write_master(&self, doc: &MasterDoc, expected: Option<&Etag>) -> StoreResult<Etag>;

    // --- clusters ---

    /// Creates or replaces a cluster document; it appears in the change feed.
    async fn put_cluster(&self, doc: &ClusterDoc) -> StoreResult<()>;
    /// Deletes a cluster document; returns whether it existed. Backends whose
    /// native feed cannot carry deletes document how the engine learns of them.
    async fn delete_cluster(&self, id: &str) -> StoreResult<bool>;
    async fn get_cluster(&self, id: &str) -> StoreResult<Option<RawCluster>>;
    /// All cluster documents, sorted by id.
    async fn list_clusters(&self) -> StoreResult<Vec<RawCluster>>;
    async fn count_clusters(&self) -> StoreResult<u64>;
    /// Ids of the cluster documents in `buckets`, in any order. The re-list
    /// uses it to find deletes that the change feed does not carry.
    async fn list_cluster_ids(&self, buckets: &[u8]) -> StoreResult<Vec<String>> {
        Ok(self
            .list_clusters()
            .await?
            .into_iter()
            .filter(|c| bucket_of(&c.body).is_some_and(|b| buckets.contains(&b)))
            .map(|c| c.id)
            .collect())
    }
    /// The cluster documents of `buckets`, in any order: what a monitor
    /// reads when it acquires buckets (it keeps no other cluster's
    /// document). Backends answer it with a query by bucket.
    async fn list_clusters_in(&self, buckets: &[u8]) -> StoreResult<Vec<RawCluster>> {
        Ok(in_buckets(self.list_clusters().await?, buckets))
    }
    /// Changes after `continuation` (from the beginning when `None`), in
    /// commit order, at most `max` of them.
    async fn read_feed(&self, continuation: Option<&str>, max: usize) -> StoreResult<FeedPage>;
}
