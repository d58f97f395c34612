//! In-memory store: the reference implementation of the contract, used by the
//! engine's unit tests (with a paused clock) and by the contract suite itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

#[derive(Default)]
struct Inner {
    /// id -> (expires_at_ms, body): stored as text, like the real stores, so
    /// that tests can plant documents that do not decode.
    monitors: BTreeMap<String, (i64, String)>,
    master: Option<(String, u64)>,
    invalid_monitor_docs: u64,
    etag_seq: u64,
    clusters: BTreeMap<String, (String, u64)>,
    /// seq -> change; superseded entries for an id are removed, as a compacted log.
    log: BTreeMap<u64, Change>,
    seq: u64,
}

/// A [`Store`] in process memory. `set_available(false)` makes every call
/// fail with [`StoreError::Unavailable`], to test outages; `set_stalled(true)`
/// makes every call made meanwhile never answer, as over a black-holed
/// connection (calls made after `set_stalled(false)` answer).
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    down: AtomicBool,
    stalled: AtomicBool,
    bucket_reads_down: AtomicBool,
    /// Like Cosmos DB's latest-version feed: deletes are not in the feed.
    no_delete_feed: bool,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose change feed does not carry deletes (as Cosmos DB's),
    /// to test the re-list that finds them.
    pub fn without_delete_feed() -> Self {
        Self {
            no_delete_feed: true,
            ..Self::default()
        }
    }

    pub fn set_available(&self, up: bool) {
        self.down.store(!up, Ordering::SeqCst);
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Makes the reads of a bucket's documents (`list_clusters_in`) fail
    /// while every other call answers (an index or a query that fails).
    pub fn set_bucket_reads_available(&self, up: bool) {
        self.bucket_reads_down.store(!up, Ordering::SeqCst);
    }

    /// Replaces the master document's body with `body` as is (tests of a
    /// corrupt document); the etag changes as on any write.
    pub fn put_master_raw(&self, body: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.etag_seq += 1;
        let e = g.etag_seq;
        g.master = Some((body.to_string(), e));
    }

    /// Plants a heartbeat document with any body (tests of corrupt ones).
    pub fn put_monitor_raw(&self, id: &str, expires_at_ms: i64, body: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.monitors
            .insert(id.to_string(), (expires_at_ms, body.to_string()));
    }

    async fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("mem store set down".into()));
        }
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Inner {
    fn append(&mut self, change: Change) {
        if let Some((_, old_seq)) = self.clusters.get(change.id()) {
            self.log.remove(old_seq);
        }
        self.seq += 1;
        let seq = self.seq;
        match &change {
            Change::Upsert(c) => {
                self.clusters.insert(c.id.clone(), (c.body.clone(), seq));
            }
            Change::Delete { id } => {
                self.clusters.remove(id);
            }
        }
        self.log.insert(seq, change);
    }
}

#[async_trait]
impl Store for MemStore {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn feed_reports_deletes(&self) -> bool {
        !self.no_delete_feed
    }

    fn stats(&self) -> StoreStats {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        StoreStats {
            invalid_monitor_docs: g.invalid_monitor_docs,
            ..StoreStats::default()
        }
    }

    async fn upsert_monitor(&self, doc: &MonitorDoc) -> StoreResult<()> {
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.lock()
            .await?
            .monitors
            .insert(doc.id.clone(), (doc.expires_at_ms, body));
        Ok(())
    }

    async fn list_monitors(&self, now_ms: i64) -> StoreResult<Vec<MonitorDoc>> {
        let mut g = self.lock().await?;
        g.monitors.retain(|_, (exp, _)| *exp > now_ms);
        let mut out = Vec::new();
        let mut invalid = 0;
        for (_, body) in g.monitors.values() {
            match MonitorDoc::decode(body) {
                Ok(m) => out.push(m),
                Err(_) => invalid += 1,
            }
        }
        g.invalid_monitor_docs += invalid;
        Ok(out)
    }

    async fn delete_monitor(&self, id: &str) -> StoreResult<bool> {
        Ok(self.lock().await?.monitors.remove(id).is_some())
    }

    async fn read_master(&self) -> StoreResult<Option<Versioned<MasterDoc>>> {
        let g = self.lock().await?;
        let Some((body, e)) = g.master.as_ref() else {
            return Ok(None);
        };
        let etag = Etag(e.to_string());
        match MasterDoc::decode(body) {
            Ok(value) => Ok(Some(Versioned { value, etag })),
            Err(reason) => Err(StoreError::CorruptMaster { etag, reason }),
        }
    }

    async fn write_master(&self, doc: &MasterDoc, expected: Option<&Etag>) -> StoreResult<Etag> {
        let mut g = self.lock().await?;
        match (expected, &g.master) {
            (None, Some(_)) => return Err(StoreError::Conflict),
            (Some(_), None) => return Err(StoreError::PreconditionFailed),
            (Some(want), Some((_, have))) if want.0 != have.to_string() => {
                return Err(StoreError::PreconditionFailed)
            }
            _ => {}
        }
        g.etag_seq += 1;
        let e = g.etag_seq;
        g.master = Some((
            serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?,
            e,
        ));
        Ok(Etag(e.to_string()))
    }

    async fn put_cluster(&self, doc: &ClusterDoc) -> StoreResult<()> {
        doc.validate().map_err(StoreError::Invalid)?;
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.lock().await?.append(Change::Upsert(RawCluster {
            id: doc.id.clone(),
            body,
        }));
        Ok(())
    }

    async fn delete_cluster(&self, id: &str) -> StoreResult<bool> {
        let mut g = self.lock().await?;
        if !g.clusters.contains_key(id) {
            return Ok(false);
        }
        if self.no_delete_feed {
            if let Some((_, seq)) = g.clusters.remove(id) {
                g.log.remove(&seq);
            }
            return Ok(true);
        }
        g.append(Change::Delete { id: id.to_string() });
        Ok(true)
    }

    async fn get_cluster(&self, id: &str) -> StoreResult<Option<RawCluster>> {
        Ok(self
            .lock()
            .await?
            .clusters
            .get(id)
            .map(|(body, _)| RawCluster {
                id: id.to_string(),
                body: body.clone(),
            }))
    }

    async fn list_clusters(&self) -> StoreResult<Vec<RawCluster>> {
        Ok(self
            .lock()
            .await?
            .clusters
            .iter()
            .map(|(id, (body, _))| RawCluster {
                id: id.clone(),
                body: body.clone(),
            })
            .collect())
    }

    async fn count_clusters(&self) -> StoreResult<u64> {
        Ok(self.lock().await?.clusters.len() as u64)
    }

    async fn list_clusters_in(&self, buckets: &[u8]) -> StoreResult<Vec<RawCluster>> {
        if self.bucket_reads_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "mem store bucket reads set down".into(),
            ));
        }
        Ok(crate::store::in_buckets(
            self.list_clusters().await?,
            buckets,
        ))
    }

    async fn read_feed(&self, continuation: Option<&str>, max: usize) -> StoreResult<FeedPage> {
        let from: u64 = match continuation {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| StoreError::ContinuationExpired(format!("bad token {c:?}")))?,
        };
        let g = self.lock().await?;
        let changes: Vec<(u64, Change)> = g
            .log
            .range(from + 1..)
            .take(max)
            .map(|(s, c)| (*s, c.clone()))
            .collect();
        let last = changes.last().map(|(s, _)| *s).unwrap_or(from);
        let caught_up = g.log.range(last + 1..).next().is_none();
        Ok(FeedPage {
            changes: changes.into_iter().map(|(_, c)| c).collect(),
            continuation: last.to_string(),
            caught_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mem_store_passes_the_contract() {
        contract::run_all(|| async {
            std::sync::Arc::new(MemStore::new()) as std::sync::Arc<dyn Store>
        })
        .await;
    }

    #[tokio::test]
    async fn mem_store_without_delete_feed_passes_the_contract() {
        contract::run_all(|| async {
            std::sync::Arc::new(MemStore::without_delete_feed()) as std::sync::Arc<dyn Store>
        })
        .await;
    }
}
