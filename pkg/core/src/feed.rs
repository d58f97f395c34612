//! Change feed → local cluster map, in the kube-runtime style: [`watch`] is a
//! `Stream` of feed events, [`Reflector`] is the single writer that applies
//! them to a [`ClusterMap`], whose clones are read-only views.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::check::tls::ChainMemo;
use crate::clock::Clock;
use crate::metrics::labels::{cluster_tags, LabelDrops, Tags};
use crate::metrics::{names, Metrics};
use crate::model::{ClusterDoc, Credentials, ProvisioningState, Secret};
use crate::schedule::Assignment;
use crate::store::{Change, FeedPage, RawCluster, Store, StoreError};
use crate::zone;

/// What a check needs of a cluster, and nothing else (no raw document).
pub struct ClusterEntry {
    pub id: Arc<str>,
    pub bucket: u8,
    pub state: ProvisioningState,
    pub api_server: Box<str>,
    /// `resourceId` first, then the document's labels, sanitised and
    /// bounded for statsd (`metrics::labels`), computed once per version.
    pub tags: Tags,
    /// The labels left out of `tags`, reported when the version is applied
    /// (`None`: none, the common case, kept without an allocation).
    pub label_drops: Option<Box<LabelDrops>>,
    pub credentials: CredentialSource,
    /// The server certificate chain last verified for this version
    /// (`check::tls::ChainMemo`): a later check that is shown the same chain
    /// does not verify it again. Empty in a new version.
    pub verified: ChainMemo,
}

/// A cluster's credentials as cached: sealed ones stay sealed until a check
/// opens them.
#[derive(Clone, Default)]
pub enum CredentialSource {
    #[default]
    None,
    Plain(PackedCredentials),
    Sealed(Box<str>),
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::None => f.write_str("None"),
            CredentialSource::Plain(c) => write!(f, "Plain({:?})", c.unpack()),
            CredentialSource::Sealed(_) => f.write_str("Sealed(<redacted>)"),
        }
    }
}

/// Plaintext [`Credentials`] in one block: a header (whether the TLS check
/// is skipped, then where each of the four texts ends), then the CA
/// bundle, token, client certificate and key end to end. One allocation a
/// cluster instead of five (the struct and each text): ~115 bytes less per
/// cached cluster (measured). A check unpacks them ([`PackedCredentials::unpack`]) as
/// it copied them before. No `Debug`: it would print the texts.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedCredentials(Box<[u8]>);

/// Header: a flag byte, then four little-endian `u32` ends.
const PACKED_HEADER: usize = 1 + 4 * 4;
/// The end of an absent text.
const ABSENT: u32 = u32::MAX;

impl PackedCredentials {
    /// `None` if a text is longer than 4 GiB together (not a document).
    pub fn new(c: &Credentials) -> Option<Self> {
        let texts = c.texts();
        let len: usize = texts.iter().map(|t| t.map_or(0, str::len)).sum();
        let mut b = Vec::with_capacity(PACKED_HEADER + len);
        b.push(u8::from(c.insecure_skip_tls_verify));
        let mut end = 0usize;
        for t in texts {
            let e = match t {
                Some(t) => {
                    end += t.len();
                    u32::try_from(end).ok().filter(|e| *e != ABSENT)?
                }
                None => ABSENT,
            };
            b.extend_from_slice(&e.to_le_bytes());
        }
        for t in texts.into_iter().flatten() {
            b.extend_from_slice(t.as_bytes());
        }
        Some(Self(b.into_boxed_slice()))
    }

    /// Text `i`, in `Credentials::texts`' order.
    fn text(&self, i: usize) -> Option<&str> {
        let end_at = |i: usize| {
            let at = 1 + 4 * i;
            u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
        };
        let end = end_at(i);
        if end == ABSENT {
            return None;
        }
        // The start: the end of the last text present before this one.
        let start = (0..i).rev().map(end_at).find(|e| *e != ABSENT).unwrap_or(0);
        let body = &self.0[PACKED_HEADER..];
        // Packed from strings, cut at their ends: always UTF-8.
        std::str::from_utf8(body.get(start as usize..end as usize)?).ok()
    }

    /// Credentials as the document gave them.
    pub fn unpack(&self) -> Credentials {
        Credentials {
            ca_bundle: self.text(0).map(str::to_string),
            token: self.text(1).map(Secret::new),
            client_certificate: self.text(2).map(str::to_string),
            client_key: self.text(3).map(Secret::new),
            insecure_skip_tls_verify: self.0[0] != 0,
        }
    }

    /// Whether these are `c`, without unpacking.
    pub fn is(&self, c: &Credentials) -> bool {
        (self.0[0] != 0) == c.insecure_skip_tls_verify
            && c.texts()
                .iter()
                .enumerate()
                .all(|(i, t)| self.text(i) == *t)
    }

    /// Bytes of credential text held (the header not counted).
    pub fn text_bytes(&self) -> usize {
        self.0.len() - PACKED_HEADER
    }
}

impl CredentialSource {
    /// Bytes of credential material this entry keeps in memory.
    pub fn cached_bytes(&self) -> usize {
        match self {
            CredentialSource::None => 0,
            CredentialSource::Sealed(s) => s.len(),
            CredentialSource::Plain(c) => c.text_bytes(),
        }
    }
}

impl std::fmt::Debug for ClusterEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEntry")
            .field("id", &self.id)
            .field("bucket", &self.bucket)
            .field("state", &self.state)
            .field("api_server", &self.api_server)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl ClusterEntry {
    pub fn from_doc(doc: ClusterDoc) -> Self {
        let id: Arc<str> = doc.id.as_str().into();
        Self::with_id(id, doc)
    }

    /// The entry of `doc`, whose id is `id` (the map's key, shared).
    pub fn with_id(id: Arc<str>, doc: ClusterDoc) -> Self {
        let (tags, label_drops) = cluster_tags(&doc.id, &doc.labels);
        let credentials = match doc.encrypted_credentials {
            // Copied rather than moved, here and for the API server: an
            // entry built in a bucket's zone (`zone::within`) must not keep
            // the document's allocations, which are the system's.
            Some(sealed) => CredentialSource::Sealed(Box::from(sealed.as_str())),
            None if doc.credentials.is_empty() => CredentialSource::None,
            None => match PackedCredentials::new(&doc.credentials) {
                Some(p) => CredentialSource::Plain(p),
                // Over 4 GiB of text: `ClusterDoc::validate` refuses it.
                None => CredentialSource::None,
            },
        };
        debug_assert_eq!(&*id, doc.id.as_str());
        Self {
            id,
            bucket: doc.bucket,
            state: doc.provisioning_state,
            api_server: Box::from(doc.api_server.as_str()),
            tags: Tags::new(&tags),
            label_drops: (!label_drops.is_empty()).then(|| Box::new(label_drops)),
            credentials,
            verified: ChainMemo::default(),
        }
    }

    /// Whether this entry was made from a document equal to `doc` (a feed
    /// replay of what a bucket read already delivered, or a write that
    /// changed nothing the monitor keeps).
    pub fn is_version(&self, doc: &ClusterDoc) -> bool {
        let same_credentials = match (&self.credentials, &doc.encrypted_credentials) {
            (CredentialSource::Sealed(s), Some(d)) => **s == **d,
            (CredentialSource::Plain(c), None) => c.is(&doc.credentials),
            (CredentialSource::None, None) => doc.credentials.is_empty(),
            _ => false,
        };
        same_credentials
            && *self.id == *doc.id
            && self.bucket == doc.bucket
            && self.state == doc.provisioning_state
            && *self.api_server == *doc.api_server
            && {
                let (tags, drops) = cluster_tags(&doc.id, &doc.labels);
                self.tags == Tags::new(&tags) && *self.label_drops() == drops
            }
    }

    /// The labels this version left out of its tags.
    pub fn label_drops(&self) -> &LabelDrops {
        self.label_drops.as_deref().unwrap_or(LabelDrops::none())
    }

    /// Tags as borrowed pairs, plus `extra`.
    pub fn tags_with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v: Vec<(&str, &str)> = Vec::with_capacity(self.tags.len() + extra.len());
        v.extend(self.tags.iter());
        v.extend_from_slice(extra);
        v
    }
}

#[derive(Default)]
struct MapInner {
    clusters: DashMap<Arc<str>, Arc<ClusterEntry>>,
    /// Documents that failed to decode or validate, with the reason. A
    /// cluster whose update was invalid keeps its last valid entry above.
    invalid: DashMap<Arc<str>, Box<str>>,
    replay_done: AtomicBool,
    caught_up_at_ms: AtomicI64,
    /// Buckets this monitor checks or will check whose documents have not
    /// been read yet (`Share`).
    pending_buckets: AtomicUsize,
    /// When the oldest of those became wanted (0: none pending).
    pending_since_ms: AtomicI64,
    /// Whether a read of acquired buckets has completed.
    buckets_read_once: AtomicBool,
}

/// Read-only view of the cluster map; cheap to clone.
#[derive(Clone, Default)]
pub struct ClusterMap {
    inner: Arc<MapInner>,
}

impl ClusterMap {
    pub fn get(&self, id: &str) -> Option<Arc<ClusterEntry>> {
        self.inner.clusters.get(id).map(|e| e.value().clone())
    }
    pub fn len(&self) -> usize {
        self.inner.clusters.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inner.clusters.is_empty()
    }
    pub fn invalid_len(&self) -> usize {
        self.inner.invalid.len()
    }
    pub fn invalid_reason(&self, id: &str) -> Option<String> {
        self.inner.invalid.get(id).map(|r| r.to_string())
    }
    /// Whether the initial replay of the feed has reached its end.
    pub fn replay_done(&self) -> bool {
        self.inner.replay_done.load(Ordering::Acquire)
    }
    /// Buckets acquired whose documents are not read yet, since when, and
    /// whether any read of acquired buckets has completed.
    pub fn pending_buckets(&self) -> (usize, i64, bool) {
        (
            self.inner.pending_buckets.load(Ordering::Acquire),
            self.inner.pending_since_ms.load(Ordering::Acquire),
            self.inner.buckets_read_once.load(Ordering::Acquire),
        )
    }
    /// Clock time of the last read that reached the end of the feed (0: never).
    pub fn caught_up_at_ms(&self) -> i64 {
        self.inner.caught_up_at_ms.load(Ordering::Acquire)
    }
    /// Visits every entry (a consistent view per shard, not a snapshot).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<ClusterEntry>)) {
        for e in self.inner.clusters.iter() {
            f(e.value());
        }
    }
}

/// Tells the scheduler that a cluster's entry changed or went away.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterEvent {
    /// `fresh`: the cluster just became checkable after the initial replay
    /// (created, or out of Creating): check it now rather than at its phase.
    Changed {
        id: Arc<str>,
        fresh: bool,
    },
    Removed {
        id: Arc<str>,
    },
}

/// Items of the feed stream.
#[derive(Debug)]
pub enum FeedEvent {
    Page(FeedPage),
    /// A read failed; the next read retries from the same continuation.
    Error(StoreError),
    /// The continuation expired: the stream restarts from the beginning and
    /// the reflector must drop what the new replay does not contain.
    Restarted,
    /// A re-list of `buckets` found exactly `present`: clusters of those
    /// buckets that the map holds and the store no longer has were deleted
    /// (for stores whose feed does not carry deletes).
    Relisted {
        buckets: Vec<u8>,
        present: HashSet<String>,
    },
}

/// `call`'s result, or an unavailable store when it does not answer
/// within `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

/// The periodic re-list of this monitor's buckets, for stores whose change
/// feed does not carry deletes (Cosmos DB's latest-version feed).
#[derive(Clone)]
pub struct Relist {
    pub interval: Duration,
    /// The buckets to re-list, asked at each re-list (those this monitor checks).
    pub buckets: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
}

/// Follows the change feed from `from`: reads pages back to back until the
/// end, then every `interval`. The continuation lives in the stream state
/// and only advances past a page that was delivered.
///
/// With `relist`, once the feed has caught up, every `relist.interval` the
/// stream lists the ids of its buckets instead of a feed read. The list is
/// taken between two feed reads, so every entry the map holds when the
/// reflector applies it came from a document committed before the list
/// started: an entry missing from the list was deleted.
///
/// Each read and list is bounded by `read_timeout`: one the store does not
/// answer in time (a black-holed connection, a frozen server) is a failed
/// read, retried as any other from the same continuation.
pub fn watch(
    store: Arc<dyn Store>,
    from: Option<String>,
    interval: Duration,
    page_size: usize,
    relist: Option<Relist>,
    read_timeout: Duration,
) -> impl Stream<Item = FeedEvent> {
    struct WatchState {
        store: Arc<dyn Store>,
        cont: Option<String>,
        wait: bool,
        failures: u32,
        /// When the next feed read is due while waiting.
        read_at: Option<Instant>,
        relist: Option<Relist>,
        relist_at: Option<Instant>,
        /// The store's push wake-up, if it has one.
        notify: Option<tokio::sync::watch::Receiver<u64>>,
    }
    let notify = store.feed_notifications();
    let st = WatchState {
        notify,
        store,
        cont: from,
        wait: false,
        failures: 0,
        read_at: None,
        relist,
        relist_at: None,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if st.wait {
            // Back off on repeated failures, up to 8 intervals, plus up to a
            // quarter interval of jitter, so monitors that failed together
            // (a store outage) do not retry together.
            let factor = 1u32 << st.failures.min(3);
            let jitter = if st.failures == 0 {
                Duration::ZERO
            } else {
                interval.mul_f64(rand::random::<f64>() * 0.25)
            };
            let read_at = *st
                .read_at
                .get_or_insert_with(|| Instant::now() + interval * factor + jitter);
            if let (Some(r), Some(at)) = (&st.relist, st.relist_at) {
                if at < read_at {
                    tokio::time::sleep_until(at).await;
                    let buckets = (r.buckets)();
                    let listed =
                        bounded(read_timeout, "re-list", st.store.list_cluster_ids(&buckets)).await;
                    let ev = match listed {
                        Ok(ids) => {
                            st.relist_at = Some(Instant::now() + r.interval);
                            FeedEvent::Relisted {
                                buckets,
                                present: ids.into_iter().collect(),
                            }
                        }
                        Err(e) => {
                            // Try again at the next feed read.
                            st.relist_at = Some(read_at);
                            FeedEvent::Error(e)
                        }
                    };
                    return Some((ev, st));
                }
            }
            match st.notify.as_mut() {
                // A push wakes the read early, but never during a failure back-off.
                Some(rx) if st.failures == 0 => tokio::select! {
                    _ = tokio::time::sleep_until(read_at) => {}
                    r = rx.changed() => if r.is_err() { st.notify = None },
                },
                _ => tokio::time::sleep_until(read_at).await,
            }
            st.read_at = None;
        }
        let read = st.store.read_feed(st.cont.as_deref(), page_size);
        let ev = match bounded(read_timeout, "change feed read", read).await {
            Ok(page) => {
                st.failures = 0;
                st.wait = page.caught_up;
                st.cont = Some(page.continuation.clone());
                if let (true, Some(r), None) = (page.caught_up, &st.relist, st.relist_at) {
                    st.relist_at = Some(Instant::now() + r.interval);
                }
                FeedEvent::Page(page)
            }
            Err(StoreError::ContinuationExpired(_)) => {
                st.cont = None;
                st.wait = false;
                FeedEvent::Restarted
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                st.wait = true;
                FeedEvent::Error(e)
            }
        };
        Some((ev, st))
    })
}

/// Which clusters a monitor keeps: those of the buckets it checks or will
/// check (`BucketAssignment::involves`: owned, incoming with a handoff
/// notice, or outgoing until the handoff), as the published assignment
/// says. When a bucket becomes wanted its documents are read by one query
/// (`Store::list_clusters_in`); when it stops being wanted they are
/// dropped. Memory grows with the monitor's share, not with the fleet.
pub struct Share {
    pub me: Arc<str>,
    pub view: watch::Receiver<Arc<Assignment>>,
    pub store: Arc<dyn Store>,
    /// How often ended handoffs are looked for and failed reads retried.
    pub tick: Duration,
    /// Bound on one read of acquired buckets.
    pub read_timeout: Duration,
    /// Called after documents were dropped (`EngineConfig::release_memory`).
    pub release_memory: Option<fn()>,
    /// The scheduler's progress: a bucket handed over is dropped only once
    /// every check due before its handoff time was handled
    /// (`SchedStats::pending_from_ms`).
    pub sched: Arc<crate::schedule::SchedStats>,
}

struct ShareState {
    share: Share,
    /// The buckets whose documents the map keeps (feed changes of other
    /// buckets are dropped).
    want: [bool; 256],
    /// Wanted buckets whose documents are not read yet.
    pending: BTreeSet<u8>,
    /// No read before this (after a failed one).
    retry_at: Option<Instant>,
}

/// Buckets read per query when a monitor acquires several at once (a
/// start, a crash take-over): one, so each query's answer (documents with
/// their credentials, ~1,200 per bucket at 300,000 clusters) stays small.
/// Where the entries go does not depend on it: each is built in its
/// bucket's zone (`crate::zone`). Before zones, with four buckets a query
/// (in id order, so interleaved) a monitor that gave away half its buckets
/// kept nearly all their pages (measured: 159-164 MB for a share that
/// costs 91 MB, `share_memory`).
const READ_CHUNK: usize = 1;

/// The single writer of a [`ClusterMap`].
pub struct Reflector {
    map: ClusterMap,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Metrics,
    clock: Clock,
    /// During a restarted replay: ids seen so far.
    resync: Option<HashSet<Arc<str>>>,
    /// `None`: keeps every cluster (tools, tests).
    share: Option<ShareState>,
}

impl Reflector {
    /// A reflector, the map it writes, and the events for the scheduler.
    pub fn new(
        metrics: Metrics,
        clock: Clock,
        queue: usize,
    ) -> (Self, ClusterMap, mpsc::Receiver<ClusterEvent>) {
        let (tx, rx) = mpsc::channel(queue);
        let map = ClusterMap::default();
        (
            Self {
                map: map.clone(),
                events: tx,
                metrics,
                clock,
                resync: None,
                share: None,
            },
            map,
            rx,
        )
    }

    /// Keeps only the clusters of this monitor's share (see [`Share`]).
    pub fn with_share(mut self, share: Share) -> Self {
        self.share = Some(ShareState {
            share,
            want: [false; 256],
            pending: BTreeSet::new(),
            retry_at: None,
        });
        self
    }

    /// Applies the stream until it ends or `stop` is cancelled.
    pub async fn run(mut self, feed: impl Stream<Item = FeedEvent>, stop: CancellationToken) {
        let mut feed = std::pin::pin!(feed);
        let (mut view, tick) = match &self.share {
            Some(s) => (Some(s.share.view.clone()), s.share.tick),
            None => (None, Duration::from_secs(3600)),
        };
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = feed.next() => ev,
                r = async { view.as_mut().expect("guarded").changed().await }, if view.is_some() => {
                    if r.is_err() {
                        view = None;
                    }
                    if self.reconcile().await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = ticks.tick(), if self.share.is_some() => {
                    if self.reconcile().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(ev) = ev else { return };
            if self.apply(ev).await.is_err() {
                return; // the scheduler is gone: shutting down
            }
        }
    }

    /// Whether the map keeps the clusters of `bucket`.
    fn keeps(&self, bucket: u8) -> bool {
        self.share
            .as_ref()
            .is_none_or(|s| s.want[usize::from(bucket)])
    }

    /// Brings the kept buckets in line with the assignment: drops the
    /// documents of buckets no longer wanted, reads those of new ones.
    /// Errs only when the event receiver is gone.
    pub async fn reconcile(&mut self) -> Result<(), ()> {
        let Some(st) = self.share.as_mut() else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let view = st.share.view.borrow().clone();
        // A check due just before a handoff time may fire a little after it
        // (timers round up, a busy thread) and must still find its
        // cluster: a bucket handed over is kept until the scheduler has
        // handled every due time before its handoff time. (0: the scheduler
        // has not run yet, and holds nothing of an earlier process's.)
        let handled = st.share.sched.pending_from().unwrap_or(i64::MAX);
        let mut dropped = Vec::new();
        for b in 0..=u8::MAX {
            let i = usize::from(b);
            let want = view.buckets[i].involves(&st.share.me, now.min(handled));
            if want && !st.want[i] {
                st.pending.insert(b);
            } else if !want && st.want[i] {
                st.pending.remove(&b);
                dropped.push(b);
            }
            st.want[i] = want;
        }
        if !dropped.is_empty() {
            let gone = self.ids_where(|e| dropped.contains(&e.bucket));
            tracing::debug!(
                buckets = dropped.len(),
                clusters = gone.len(),
                "buckets no longer this monitor's: their documents dropped"
            );
            for id in gone {
                self.remove(id).await?;
            }
            // The map's tables keep the capacity of the largest share held
            // (a first master that held the whole fleet): sized down.
            self.map.inner.clusters.shrink_to_fit();
            self.map.inner.invalid.shrink_to_fit();
            self.release_memory();
            let z = zone::stats();
            tracing::debug!(
                zones = z.zones,
                blocks = z.live,
                zone_bytes = z.carved,
                "bucket zones after the drop"
            );
        }
        self.read_pending(now).await
    }

    /// Gives freed pages back (`Share::release_memory`), after a drop or a read.
    fn release_memory(&self) {
        if let Some(release) = self.share.as_ref().and_then(|s| s.share.release_memory) {
            release();
        }
    }

    /// Reads the documents of the wanted buckets not read yet, in one query.
    async fn read_pending(&mut self, now: i64) -> Result<(), ()> {
        let Some(st) = self.share.as_mut() else {
            return Ok(());
        };
        let inner = self.map.inner.clone();
        if st.pending.is_empty() {
            inner.pending_buckets.store(0, Ordering::Release);
            inner.pending_since_ms.store(0, Ordering::Release);
            return Ok(());
        }
        if inner.pending_since_ms.load(Ordering::Acquire) == 0 {
            inner.pending_since_ms.store(now, Ordering::Release);
        }
        inner
            .pending_buckets
            .store(st.pending.len(), Ordering::Release);
        if st.retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let started = Instant::now();
        let (mut read, mut clusters) = (0usize, 0usize);
        loop {
            let Some(st) = self.share.as_mut() else {
                return Ok(());
            };
            let chunk: Vec<u8> = st.pending.iter().take(READ_CHUNK).copied().collect();
            if chunk.is_empty() {
                break;
            }
            let call = st.share.store.list_clusters_in(&chunk);
            let docs: Vec<RawCluster> = match bounded(st.share.read_timeout, "bucket read", call)
                .await
            {
                Ok(docs) => docs,
                Err(why) => {
                    st.retry_at = Some(Instant::now() + st.share.tick);
                    inner
                        .pending_buckets
                        .store(st.pending.len(), Ordering::Release);
                    self.metrics
                        .self_count(names::BUCKETS_READ, 1, &[("result", "failed")]);
                    tracing::warn!(buckets = chunk.len(), error = %why, "reading the documents of acquired buckets failed; retrying");
                    return Ok(());
                }
            };
            st.retry_at = None;
            for b in &chunk {
                st.pending.remove(b);
            }
            inner
                .pending_buckets
                .store(st.pending.len(), Ordering::Release);
            read += chunk.len();
            clusters += docs.len();
            for raw in docs {
                self.apply_change(Change::Upsert(raw), false).await?;
            }
            self.metrics
                .self_count(names::BUCKETS_READ, 1, &[("result", "ok")]);
        }
        tracing::info!(
            buckets = read,
            clusters,
            took_ms = started.elapsed().as_millis() as u64,
            "documents of acquired buckets read"
        );
        inner.pending_since_ms.store(0, Ordering::Release);
        inner.buckets_read_once.store(true, Ordering::Release);
        // The answers were freed as they were applied: give their pages back.
        self.release_memory();
        Ok(())
    }

    /// Applies one event. Errs only when the event receiver is gone.
    pub async fn apply(&mut self, ev: FeedEvent) -> Result<(), ()> {
        match ev {
            FeedEvent::Error(e) => {
                self.metrics.self_count(names::FEED_ERRORS, 1, &[]);
                tracing::warn!(error = %e, "change feed read failed; retrying from the same continuation");
            }
            FeedEvent::Relisted { buckets, present } => {
                self.drop_deleted(&buckets, &present).await?;
            }
            FeedEvent::Restarted => {
                tracing::warn!(
                    "change feed continuation expired; replaying the feed from the beginning"
                );
                self.resync = Some(HashSet::new());
            }
            FeedEvent::Page(page) => {
                let n = page.changes.len() as u64;
                for change in page.changes {
                    self.apply_change(change, true).await?;
                }
                if n > 0 {
                    self.metrics.self_count(names::FEED_CHANGES, n, &[]);
                }
                if page.caught_up {
                    if let Some(seen) = self.resync.take() {
                        self.drop_unseen(&seen).await?;
                    }
                    let first = !self.map.inner.replay_done.swap(true, Ordering::AcqRel);
                    if first {
                        tracing::info!(
                            clusters = self.map.len(),
                            "initial change feed replay done"
                        );
                    }
                    self.map
                        .inner
                        .caught_up_at_ms
                        .store(self.clock.now_ms(), Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// `from_feed`: a change the feed delivered (else a read of acquired
    /// buckets, whose clusters are not new: never fresh).
    async fn apply_change(&mut self, change: Change, from_feed: bool) -> Result<(), ()> {
        let inner = &self.map.inner;
        match change {
            Change::Upsert(raw) => {
                let id: Arc<str> = raw.id.as_str().into();
                if let Some(seen) = &mut self.resync {
                    seen.insert(id.clone());
                }
                match ClusterDoc::decode(&raw.body) {
                    // Not this monitor's share (any more: moved to a
                    // bucket it does not check).
                    Ok(doc) if doc.id == raw.id && !self.keeps(doc.bucket) => {
                        self.forget(id).await?
                    }
                    // The version held already: its entry stays where it
                    // was allocated. A feed replay after bucket reads would
                    // otherwise re-allocate every entry in feed order,
                    // interleaving buckets, so a bucket given away later
                    // would free no whole page (`share_memory`).
                    Ok(doc)
                        if doc.id == raw.id
                            && inner.clusters.get(&id).is_some_and(|e| e.is_version(&doc)) =>
                    {
                        inner.invalid.remove(&id);
                    }
                    Ok(doc) if doc.id == raw.id => {
                        inner.invalid.remove(&id);
                        // The entry and its id (which the scheduler shares)
                        // live in their bucket's zone: a bucket given away
                        // frees its zone whole (`zone`).
                        let entry = zone::within(doc.bucket, || {
                            let id: Arc<str> = Arc::from(&*id);
                            Arc::new(ClusterEntry::with_id(id, doc))
                        });
                        let id = entry.id.clone();
                        let checkable = entry.state.is_checkable();
                        let prev = inner.clusters.insert(id.clone(), entry.clone());
                        let prev_drops = prev.as_deref().map(ClusterEntry::label_drops);
                        entry.label_drops().report(&id, prev_drops, &self.metrics);
                        let was_checkable = prev.is_some_and(|p| p.state.is_checkable());
                        // A cluster of a bucket whose documents are not
                        // read yet is not new either.
                        let unread = self
                            .share
                            .as_ref()
                            .is_some_and(|s| s.pending.contains(&entry.bucket));
                        let fresh = checkable
                            && !was_checkable
                            && self.map.replay_done()
                            && from_feed
                            && !unread;
                        self.events
                            .send(ClusterEvent::Changed { id, fresh })
                            .await
                            .map_err(|_| ())?;
                    }
                    // The id in the document is a value: not quoted.
                    Ok(_) => self.invalid(id, "document id does not match its key".into()),
                    Err(reason) => self.invalid(id, reason),
                }
            }
            Change::Delete { id } => self.forget(id.into()).await?,
        }
        Ok(())
    }

    /// Drops a cluster (deleted, or not this monitor's): its entry, its
    /// invalid reason, and tells the scheduler if it was held.
    async fn forget(&self, id: Arc<str>) -> Result<(), ()> {
        self.map.inner.invalid.remove(&id);
        self.remove(id).await
    }

    /// Removes a cluster's entry and tells the scheduler, if it was held.
    async fn remove(&self, id: Arc<str>) -> Result<(), ()> {
        if self.map.inner.clusters.remove(&id).is_some() {
            self.events
                .send(ClusterEvent::Removed { id })
                .await
                .map_err(|_| ())?;
        }
        Ok(())
    }

    /// The ids of the held clusters that `f` selects.
    fn ids_where(&self, f: impl Fn(&ClusterEntry) -> bool) -> Vec<Arc<str>> {
        self.map
            .inner
            .clusters
            .iter()
            .filter(|e| f(e.value()))
            .map(|e| e.key().clone())
            .collect()
    }

    fn invalid(&self, id: Arc<str>, reason: String) {
        self.metrics.self_count(names::FEED_INVALID, 1, &[]);
        let kept = self.map.inner.clusters.contains_key(&id);
        let changed = self.map.invalid_reason(&id).as_deref() != Some(reason.as_str());
        if changed {
            // The reason names fields, never values: safe to log.
            tracing::warn!(cluster = %id, %reason, kept_last_valid = kept, "skipping invalid cluster document");
        }
        self.map.inner.invalid.insert(id, reason.into_boxed_str());
    }

    /// Drops the entries of `buckets` that a re-list did not find.
    async fn drop_deleted(&self, buckets: &[u8], present: &HashSet<String>) -> Result<(), ()> {
        let gone = self.ids_where(|e| buckets.contains(&e.bucket) && !present.contains(&*e.id));
        for id in gone {
            tracing::info!(cluster = %id, "cluster document no longer in the store (found by the re-list); dropped");
            self.metrics.self_count(names::FEED_RELIST_DROPPED, 1, &[]);
            self.remove(id).await?;
        }
        Ok(())
    }

    async fn drop_unseen(&self, seen: &HashSet<Arc<str>>) -> Result<(), ()> {
        for id in self.ids_where(|e| !seen.contains(&e.id)) {
            self.remove(id).await?;
        }
        self.map.inner.invalid.retain(|id, _| seen.contains(id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::cluster;
    use crate::store::mem::MemStore;

    fn reflector() -> (Reflector, ClusterMap, mpsc::Receiver<ClusterEvent>) {
        Reflector::new(Metrics::disabled(), Clock::at(0), 1024)
    }

    /// The engine's bound on a feed read: the heartbeat TTL.
    const READ_TIMEOUT: Duration = Duration::from_secs(10);

    /// The feed as the engine follows it (every 2 s, no re-list), in pages
    /// of `page`.
    fn follow<S: Store + 'static>(
        store: &Arc<S>,
        page: usize,
    ) -> std::pin::Pin<Box<impl Stream<Item = FeedEvent>>> {
        let store: Arc<dyn Store> = store.clone();
        Box::pin(watch(
            store,
            None,
            Duration::from_secs(2),
            page,
            None,
            READ_TIMEOUT,
        ))
    }

    /// A feed read the store never answers (made while its connection was
    /// black-holed) is a failed read at the bound, not a feed stopped for
    /// good: the next read, once the store answers, goes on from the same
    /// continuation and loses no change. The same for a re-list.
    #[tokio::test(start_paused = true)]
    async fn a_read_the_store_never_answers_fails_at_the_bound_and_the_feed_goes_on() {
        let store = Arc::new(MemStore::without_delete_feed());
        store.put_cluster(&cluster("a", 1)).await.unwrap();
        let (mut r, map, _rx) = reflector();
        let relist = Relist {
            interval: Duration::from_secs(3),
            buckets: Arc::new(|| vec![1]),
        };
        let interval = Duration::from_secs(2);
        let mut feed = Box::pin(watch(
            store.clone(),
            None,
            interval,
            10,
            Some(relist),
            READ_TIMEOUT,
        ));
        drain(&mut feed, &mut r).await;
        assert!(map.get("a").is_some());

        // Written while the store stalls: the feed read and then the
        // re-list hang, each until its bound.
        store.put_cluster(&cluster("b", 1)).await.unwrap();
        store.set_stalled(true);
        let t0 = Instant::now();
        let mut failed = Vec::new();
        while failed.len() < 2 {
            let next = tokio::time::timeout(Duration::from_secs(60), feed.next());
            match next
                .await
                .expect("the feed waits on a read forever")
                .unwrap()
            {
                FeedEvent::Error(e) => failed.push((e.to_string(), t0.elapsed())),
                other => panic!("no answer while stalled, got {other:?}"),
            }
        }
        // The feed read due at the feed interval, cut at 12 s; the re-list,
        // due since 3 s, comes before the next feed read and is cut 10 s later.
        assert_eq!(
            failed,
            vec![
                (
                    "store unavailable: change feed read: no answer within 10s".to_string(),
                    Duration::from_secs(12)
                ),
                (
                    "store unavailable: re-list: no answer within 10s".to_string(),
                    Duration::from_secs(22)
                ),
            ]
        );
        assert!(map.get("b").is_none());

        store.set_stalled(false);
        let deadline = Instant::now() + Duration::from_secs(120);
        while map.get("b").is_none() {
            assert!(Instant::now() < deadline, "the feed never went on");
            let ev = feed.next().await.unwrap();
            r.apply(ev).await.unwrap();
        }
        assert!(map.get("a").is_some(), "nothing lost");
    }

    async fn drain(feed: &mut (impl Stream<Item = FeedEvent> + Unpin), r: &mut Reflector) {
        loop {
            let ev = feed.next().await.unwrap();
            let done = matches!(&ev, FeedEvent::Page(p) if p.caught_up);
            r.apply(ev).await.unwrap();
            if done {
                return;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replay_then_incremental_with_fresh_and_removed_events() {
        let store = Arc::new(MemStore::new());
        for i in 0..5 {
            store
                .put_cluster(&cluster(&format!("c{i}"), i))
                .await
                .unwrap();
        }
        let mut creating = cluster("creating", 9);
        creating.provisioning_state = ProvisioningState::Creating;
        store.put_cluster(&creating).await.unwrap();

        let (mut r, map, mut rx) = reflector();
        let mut feed = follow(&store, 2);
        drain(&mut feed, &mut r).await;
        assert!(map.replay_done());
        assert_eq!(map.len(), 6);
        let mut replayed = 0;
        while let Ok(ev) = rx.try_recv() {
            assert!(
                matches!(ev, ClusterEvent::Changed { fresh: false, .. }),
                "replay events are not fresh"
            );
            replayed += 1;
        }
        assert_eq!(replayed, 6);

        // Creating -> Succeeded after the replay is fresh; a new doc too; delete is Removed.
        store.put_cluster(&cluster("creating", 9)).await.unwrap();
        store.put_cluster(&cluster("new", 1)).await.unwrap();
        store.delete_cluster("c0").await.unwrap();
        drain(&mut feed, &mut r).await;
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            evs,
            vec![
                ClusterEvent::Changed {
                    id: "creating".into(),
                    fresh: true
                },
                ClusterEvent::Changed {
                    id: "new".into(),
                    fresh: true
                },
                ClusterEvent::Removed { id: "c0".into() },
            ]
        );
        assert!(map.get("c0").is_none());
        assert_eq!(
            map.get("creating").unwrap().state,
            ProvisioningState::Succeeded
        );
    }

    proptest::proptest! {
        /// Packed credentials give back what was packed, whichever texts
        /// are present, and compare equal only to those.
        #[test]
        fn packed_credentials_give_back_what_was_packed(
            texts in proptest::collection::vec(proptest::option::of(".{0,40}"), 4),
            insecure: bool,
            other in ".{1,8}",
        ) {
            let c = Credentials {
                ca_bundle: texts[0].clone(),
                token: texts[1].clone().map(Secret::new),
                client_certificate: texts[2].clone(),
                client_key: texts[3].clone().map(Secret::new),
                insecure_skip_tls_verify: insecure,
            };
            let p = PackedCredentials::new(&c).unwrap();
            proptest::prop_assert!(p.unpack() == c);
            proptest::prop_assert!(p.is(&c));
            let held: usize = texts.iter().flatten().map(String::len).sum();
            proptest::prop_assert_eq!(p.text_bytes(), held);
            let mut changed = c.clone();
            changed.client_certificate = Some(format!("{}{other}", texts[2].clone().unwrap_or_default()));
            proptest::prop_assert!(!p.is(&changed));
            let mut flipped = c.clone();
            flipped.insecure_skip_tls_verify = !insecure;
            proptest::prop_assert!(!p.is(&flipped));
        }
    }

    #[test]
    fn packed_credentials_never_print_their_texts() {
        let c = Credentials {
            ca_bundle: Some("-----BEGIN CERTIFICATE-----ca".into()),
            token: Some(Secret::new("tok-3f9a")),
            client_certificate: Some("-----BEGIN CERTIFICATE-----cc".into()),
            client_key: Some(Secret::new("-----BEGIN KEY-----k")),
            insecure_skip_tls_verify: false,
        };
        let shown = format!(
            "{:?}",
            CredentialSource::Plain(PackedCredentials::new(&c).unwrap())
        );
        for secret in ["tok-3f9a", "BEGIN KEY", "BEGIN CERTIFICATE"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    /// A replay of versions already held keeps their entries (the same
    /// allocation, no event); a changed document replaces its entry.
    /// Every allocation an entry keeps (the entry, its id, API server, tags
    /// and credentials) is in its bucket's zone (`crate::zone`; the
    /// library's tests run on that allocator), so a bucket given away frees
    /// its zone whole; what a document owned is not kept.
    #[tokio::test(start_paused = true)]
    async fn an_entry_is_built_in_its_buckets_zone() {
        let store = Arc::new(MemStore::new());
        let mut doc = cluster("zoned", 233);
        doc.credentials.token = Some(crate::model::Secret::new("a token"));
        doc.credentials.ca_bundle = Some("a CA bundle".into());
        store.put_cluster(&doc).await.unwrap();
        let mut sealed = cluster("sealed", 234);
        sealed.encrypted_credentials = Some("sealed text".into());
        store.put_cluster(&sealed).await.unwrap();
        let (mut r, map, _rx) = reflector();
        let mut feed = follow(&store, 10);
        drain(&mut feed, &mut r).await;
        for (id, bucket) in [("zoned", 233), ("sealed", 234)] {
            let e = map.get(id).unwrap();
            let credentials = match &e.credentials {
                CredentialSource::Plain(p) => p.0.as_ptr(),
                CredentialSource::Sealed(s) => s.as_ptr(),
                CredentialSource::None => panic!("{id}: credentials kept"),
            };
            for (what, p) in [
                ("entry", Arc::as_ptr(&e).cast::<u8>()),
                ("id", e.id.as_ptr()),
                ("api server", e.api_server.as_ptr()),
                ("tags", e.tags.iter().next().unwrap().0.as_ptr()),
                ("credentials", credentials),
            ] {
                assert_eq!(zone::bucket_of(p), Some(bucket), "{id}: {what}");
            }
        }
        // Outside a zone (a tool's map, `from_doc`): the system's.
        let e = ClusterEntry::from_doc(doc);
        assert_eq!(zone::bucket_of(e.api_server.as_ptr()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_already_held_keeps_its_entry() {
        let store = Arc::new(MemStore::new());
        let mut labelled = cluster("b", 2);
        labelled.labels.insert("team".into(), "x".into());
        store.put_cluster(&cluster("a", 1)).await.unwrap();
        store.put_cluster(&labelled).await.unwrap();
        let (mut r, map, mut rx) = reflector();
        let mut feed = follow(&store, 10);
        drain(&mut feed, &mut r).await;
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
        let (a, b) = (map.get("a").unwrap(), map.get("b").unwrap());

        // The whole feed again, from its beginning: nothing changes.
        let mut again = follow(&store, 10);
        drain(&mut again, &mut r).await;
        assert!(Arc::ptr_eq(&a, &map.get("a").unwrap()));
        assert!(Arc::ptr_eq(&b, &map.get("b").unwrap()));
        assert_eq!(rx.try_recv().ok(), None, "no event for a version held");

        // A label changed, a credential changed: new entries, one event each.
        labelled.labels.insert("team".into(), "y".into());
        store.put_cluster(&labelled).await.unwrap();
        let mut a2 = cluster("a", 1);
        a2.credentials.token = Some(crate::model::Secret::new("another"));
        store.put_cluster(&a2).await.unwrap();
        drain(&mut feed, &mut r).await;
        assert!(!Arc::ptr_eq(&a, &map.get("a").unwrap()));
        assert!(!Arc::ptr_eq(&b, &map.get("b").unwrap()));
        assert_eq!(
            map.get("b").unwrap().tags.iter().last(),
            Some(("team", "y"))
        );
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(evs.len(), 2, "{evs:?}");
        for (field, doc) in [
            (
                "bucket",
                ClusterDoc {
                    bucket: 3,
                    ..cluster("a", 1)
                },
            ),
            (
                "state",
                ClusterDoc {
                    provisioning_state: ProvisioningState::Deleting,
                    ..cluster("a", 1)
                },
            ),
            (
                "api server",
                ClusterDoc {
                    api_server: "https://elsewhere:6443".into(),
                    ..cluster("a", 1)
                },
            ),
            (
                "sealed",
                ClusterDoc {
                    encrypted_credentials: Some("v1.x".into()),
                    ..cluster("a", 1)
                },
            ),
        ] {
            let e = ClusterEntry::with_id("a".into(), cluster("a", 1));
            assert!(e.is_version(&cluster("a", 1)));
            assert!(!e.is_version(&doc), "{field} differs");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_documents_are_skipped_and_keep_the_last_valid_entry() {
        use crate::store::{FeedPage, RawCluster};
        let (mut r, map, _rx) = reflector();
        let good = serde_json::to_string(&cluster("a", 1)).unwrap();
        let page = |changes| {
            FeedEvent::Page(FeedPage {
                changes,
                continuation: "x".into(),
                caught_up: true,
            })
        };
        r.apply(page(vec![
            Change::Upsert(RawCluster {
                id: "a".into(),
                body: good,
            }),
            Change::Upsert(RawCluster {
                id: "b".into(),
                body: "{broken".into(),
            }),
        ]))
        .await
        .unwrap();
        assert!(map.get("a").is_some());
        assert!(map.get("b").is_none());
        assert!(map
            .invalid_reason("b")
            .unwrap()
            .contains("invalid cluster document"));
        r.apply(page(vec![Change::Upsert(RawCluster {
            id: "a".into(),
            body: "{\"id\":\"a\"}".into(),
        })]))
        .await
        .unwrap();
        assert!(
            map.get("a").is_some(),
            "an invalid update keeps the last valid entry"
        );
        assert!(map.invalid_reason("a").is_some());
        assert_eq!(map.invalid_len(), 2);
    }

    /// A monitor keeps the clusters of its share only: read by bucket when
    /// acquired (also when the read first fails), kept through an outgoing
    /// handoff, dropped after it, and feed changes of other buckets dropped.
    #[tokio::test(start_paused = true)]
    async fn the_map_keeps_this_monitors_share_only() {
        use crate::model::BucketAssignment;
        let store = Arc::new(MemStore::new());
        for (id, b) in [("a1", 1), ("b1", 1), ("a2", 2), ("a3", 3)] {
            store.put_cluster(&cluster(id, b)).await.unwrap();
        }
        let clock = Clock::at(0);
        let view = |owned: &[(u8, BucketAssignment)]| {
            let mut a = Assignment::empty();
            let mut buckets = vec![BucketAssignment::owned_by("other"); 256];
            for (b, x) in owned {
                buckets[usize::from(*b)] = x.clone();
            }
            a.buckets = Arc::new(buckets);
            Arc::new(a)
        };
        let (tx, rx_view) = watch::channel(Arc::new(Assignment::empty()));
        let (r, map, mut rx) = Reflector::new(Metrics::disabled(), clock.clone(), 1024);
        // An idle scheduler: nothing due.
        let sched = Arc::new(crate::schedule::SchedStats::default());
        sched.pending_from_ms.store(i64::MAX, Ordering::Release);
        let mut r = r.with_share(Share {
            me: "me".into(),
            view: rx_view,
            store: store.clone(),
            tick: Duration::from_secs(2),
            read_timeout: Duration::from_secs(10),
            release_memory: None,
            sched: sched.clone(),
        });
        let mut feed = follow(&store, 10);
        drain(&mut feed, &mut r).await;
        assert_eq!(map.len(), 0, "no bucket yet: nothing kept");
        let ids = |map: &ClusterMap| {
            let mut v = Vec::new();
            map.for_each(|e| v.push(e.id.to_string()));
            v.sort();
            v
        };

        // Bucket 1 acquired, the store down at first: pending, retried.
        store.set_available(false);
        tx.send(view(&[(1, BucketAssignment::owned_by("me"))]))
            .unwrap();
        r.reconcile().await.unwrap();
        assert_eq!(map.pending_buckets().0, 1);
        assert!(map.is_empty());
        store.set_available(true);
        r.reconcile().await.unwrap();
        assert_eq!(map.pending_buckets().0, 1, "no read before the retry time");
        tokio::time::advance(Duration::from_secs(2)).await;
        r.reconcile().await.unwrap();
        assert_eq!(map.pending_buckets(), (0, 0, true));
        assert_eq!(ids(&map), ["a1", "b1"]);
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(evs.len(), 2);
        assert!(evs
            .iter()
            .all(|e| matches!(e, ClusterEvent::Changed { fresh: false, .. })));

        // Feed changes: another bucket's new cluster is not kept; one of
        // mine moved to another bucket is dropped.
        store.put_cluster(&cluster("n3", 3)).await.unwrap();
        store.put_cluster(&cluster("b1", 3)).await.unwrap();
        drain(&mut feed, &mut r).await;
        assert_eq!(ids(&map), ["a1"]);
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(evs, vec![ClusterEvent::Removed { id: "b1".into() }]);

        // Bucket 1 handed to "other" in 4 s, bucket 2 acquired: both kept
        // until the handoff; then bucket 1 is dropped.
        let handoff_at = clock.now_ms() + 4_000;
        let outgoing = BucketAssignment {
            owner: Some("other".into()),
            prev: Some("me".into()),
            handoff_at_ms: handoff_at,
            ..Default::default()
        };
        tx.send(view(&[
            (1, outgoing),
            (2, BucketAssignment::owned_by("me")),
        ]))
        .unwrap();
        r.reconcile().await.unwrap();
        assert_eq!(ids(&map), ["a1", "a2"]);
        // Past the handoff time, the scheduler has not yet handled a check
        // due just before it (its timer is late): still kept.
        sched
            .pending_from_ms
            .store(handoff_at - 1, Ordering::Release);
        tokio::time::advance(Duration::from_secs(4)).await;
        r.reconcile().await.unwrap();
        assert_eq!(ids(&map), ["a1", "a2"]);
        // Handled (the next due time is past the handoff): dropped.
        sched
            .pending_from_ms
            .store(handoff_at + 10, Ordering::Release);
        r.reconcile().await.unwrap();
        assert_eq!(ids(&map), ["a2"]);
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(evs.last(), Some(&ClusterEvent::Removed { id: "a1".into() }));
    }

    #[tokio::test(start_paused = true)]
    async fn feed_errors_keep_the_continuation_and_restart_drops_unseen() {
        let store = Arc::new(MemStore::new());
        store.put_cluster(&cluster("a", 1)).await.unwrap();
        store.put_cluster(&cluster("b", 2)).await.unwrap();
        let (mut r, map, _rx) = reflector();
        let mut feed = follow(&store, 10);
        drain(&mut feed, &mut r).await;

        store.set_available(false);
        let ev = feed.next().await.unwrap();
        assert!(matches!(ev, FeedEvent::Error(_)));
        r.apply(ev).await.unwrap();
        store.set_available(true);
        store.put_cluster(&cluster("c", 3)).await.unwrap();
        drain(&mut feed, &mut r).await;
        assert!(map.get("c").is_some(), "no change lost across a feed error");
        assert_eq!(map.len(), 3);

        // A restart replays everything; what it does not contain is dropped.
        r.apply(FeedEvent::Restarted).await.unwrap();
        let raw = store.get_cluster("a").await.unwrap().unwrap();
        r.apply(FeedEvent::Page(FeedPage {
            changes: vec![Change::Upsert(raw)],
            continuation: "1".into(),
            caught_up: true,
        }))
        .await
        .unwrap();
        assert_eq!(map.len(), 1);
        assert!(map.get("a").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn relist_drops_deleted_clusters_of_the_listed_buckets_only() {
        let store = Arc::new(MemStore::without_delete_feed());
        for (id, b) in [("a", 1), ("b", 1), ("c", 2), ("d", 3)] {
            store.put_cluster(&cluster(id, b)).await.unwrap();
        }
        let (mut r, map, mut rx) = reflector();
        let relist = Relist {
            interval: Duration::from_secs(60),
            buckets: Arc::new(|| vec![1, 2]),
        };
        let mut feed = Box::pin(watch(
            store.clone(),
            None,
            Duration::from_secs(2),
            10,
            Some(relist),
            READ_TIMEOUT,
        ));
        drain(&mut feed, &mut r).await;
        while rx.try_recv().is_ok() {}
        assert_eq!(map.len(), 4);

        // Deletes the feed does not report: b (listed bucket), d (not listed).
        store.delete_cluster("b").await.unwrap();
        store.delete_cluster("d").await.unwrap();
        let start = Instant::now();
        let mut feed_reads = 0;
        loop {
            let ev = feed.next().await.unwrap();
            match &ev {
                FeedEvent::Page(p) => {
                    assert!(p.changes.is_empty(), "the feed carries no delete");
                    feed_reads += 1;
                }
                FeedEvent::Relisted { buckets, present } => {
                    assert_eq!(buckets, &vec![1, 2]);
                    assert!(present.contains("a") && present.contains("c"));
                    assert!(!present.contains("b"));
                    r.apply(ev).await.unwrap();
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            r.apply(ev).await.unwrap();
        }
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_secs(63),
            "re-list one interval after catching up, took {waited:?}"
        );
        assert!(
            feed_reads >= 25,
            "feed reads go on between re-lists: {feed_reads}"
        );
        assert!(
            map.get("b").is_none(),
            "deleted cluster of a listed bucket dropped"
        );
        assert!(map.get("a").is_some() && map.get("c").is_some());
        assert!(
            map.get("d").is_some(),
            "a bucket that was not listed is not judged"
        );
        let evs: Vec<ClusterEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(evs, vec![ClusterEvent::Removed { id: "b".into() }]);
    }

    #[test]
    fn entry_keeps_only_what_checks_need_and_sanitises_tags() {
        let mut d = cluster("x", 3);
        d.labels.insert("team".into(), "a,b|c".into());
        let e = ClusterEntry::from_doc(d);
        assert_eq!(e.tags.iter().next(), Some(("resourceId", "x")));
        assert!(e.tags.iter().any(|(k, v)| k == "team" && v == "a_b_c"));
        assert!(matches!(e.credentials, CredentialSource::None));
    }

    /// A store with a push wake-up (as PostgreSQL's NOTIFY): the MemStore
    /// plus a counter the test moves by hand.
    use crate::store::StoreResult;
    struct Pushing(MemStore, tokio::sync::watch::Sender<u64>);

    #[async_trait::async_trait]
    impl Store for Pushing {
        fn kind(&self) -> &'static str {
            "pushing"
        }
        fn feed_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            Some(self.1.subscribe())
        }
        async fn upsert_monitor(&self, d: &crate::model::MonitorDoc) -> StoreResult<()> {
            self.0.upsert_monitor(d).await
        }
        async fn list_monitors(&self, now: i64) -> StoreResult<Vec<crate::model::MonitorDoc>> {
            self.0.list_monitors(now).await
        }
        async fn delete_monitor(&self, id: &str) -> StoreResult<bool> {
            self.0.delete_monitor(id).await
        }
        async fn read_master(
            &self,
        ) -> StoreResult<Option<crate::store::Versioned<crate::model::MasterDoc>>> {
            self.0.read_master().await
        }
        async fn write_master(
            &self,
            d: &crate::model::MasterDoc,
            e: Option<&crate::store::Etag>,
        ) -> StoreResult<crate::store::Etag> {
            self.0.write_master(d, e).await
        }
        async fn put_cluster(&self, d: &ClusterDoc) -> StoreResult<()> {
            self.0.put_cluster(d).await
        }
        async fn delete_cluster(&self, id: &str) -> StoreResult<bool> {
            self.0.delete_cluster(id).await
        }
        async fn get_cluster(&self, id: &str) -> StoreResult<Option<crate::store::RawCluster>> {
            self.0.get_cluster(id).await
        }
        async fn list_clusters(&self) -> StoreResult<Vec<crate::store::RawCluster>> {
            self.0.list_clusters().await
        }
        async fn count_clusters(&self) -> StoreResult<u64> {
            self.0.count_clusters().await
        }
        async fn read_feed(&self, c: Option<&str>, max: usize) -> StoreResult<FeedPage> {
            self.0.read_feed(c, max).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_wakes_the_feed_before_its_interval_and_polling_stays() {
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let store = Arc::new(Pushing(MemStore::new(), tx));
        let (mut r, map, _rx) = reflector();
        let interval = Duration::from_secs(60);
        let mut feed = Box::pin(watch(store.clone(), None, interval, 10, None, READ_TIMEOUT));
        drain(&mut feed, &mut r).await;

        let t0 = Instant::now();
        store.0.put_cluster(&cluster("a", 1)).await.unwrap();
        store.1.send_modify(|v| *v += 1);
        drain(&mut feed, &mut r).await;
        assert!(map.get("a").is_some());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "woken by the push, took {:?}",
            t0.elapsed()
        );

        // Without a push (the channel is down), the interval still reads.
        let t1 = Instant::now();
        store.0.put_cluster(&cluster("b", 2)).await.unwrap();
        drain(&mut feed, &mut r).await;
        assert!(map.get("b").is_some());
        assert_eq!(t1.elapsed(), interval, "polling is the fallback");
    }
}
