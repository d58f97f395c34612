//! Every metric clustermon emits is defined here, in [`CATALOG`];
//! `docs/metrics.md` lists the same set (a test keeps them in step).
//!
//! Emitting never blocks: cadence formats each metric into a bounded queue
//! ([`QueueSink`]); when the queue is full the metric is dropped and counted.
//! A single writer task drains the queue into UDP datagrams.

pub mod labels;
pub mod mdm;
mod writer;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cadence::prelude::*;
use cadence::{MetricSink, StatsdClient};
use tokio::sync::mpsc;

use crate::clock::Clock;
pub use labels::MAX_LINE;
pub use writer::{Format, Output, Target, Writer};

pub mod names {
    // Per-cluster metrics: tags resourceId plus the cluster's labels.
    pub const HEALTHZ_CODE: &str = "apiserver.healthz.code";
    pub const CHECK_DURATION: &str = "monitor.check.duration";
    pub const READYZ_FAILED: &str = "apiserver.readyz.failed";
    pub const CLUSTER_VERSION: &str = "cluster.version";
    pub const NODE_COUNT: &str = "node.count";
    pub const NODE_CONDITIONS: &str = "node.conditions";
    pub const OPERATOR_COUNT: &str = "clusteroperator.count";
    pub const OPERATOR_CONDITIONS: &str = "clusteroperator.conditions";
    pub const CLUSTERVERSION_CONDITIONS: &str = "clusterversion.conditions";
    pub const CLUSTER_VERSIONS: &str = "cluster.versions";
    pub const POD_CONDITIONS: &str = "pod.conditions";
    pub const POD_CONTAINER_STATUSES: &str = "pod.containerstatuses";
    pub const POD_RESTARTS: &str = "pod.restartcounter";
    pub const CERT_EXPIRATION: &str = "certificate.expirationdate";
    pub const COLLECTOR_DURATION: &str = "monitor.cluster.collector.duration";
    pub const COLLECTOR_ERROR: &str = "monitor.cluster.collector.error";
    pub const CLUSTER_DURATION: &str = "monitor.cluster.duration";
    pub const CLUSTER_INSECURE: &str = "monitor.cluster.insecure";
    // Self metrics: tag monitor.
    pub const HEARTBEAT: &str = "monitor.heartbeat";
    pub const MASTER: &str = "monitor.master";
    pub const BUCKETS_OWNED: &str = "monitor.buckets.owned";
    pub const MONITORS_LIVE: &str = "monitor.monitors.live";
    pub const GENERATION: &str = "monitor.assignment.generation";
    pub const ASSIGNMENT_AGE: &str = "monitor.assignment.age";
    pub const CACHE_SIZE: &str = "monitor.cache.size";
    pub const CACHE_INVALID: &str = "monitor.cache.invalid";
    pub const CACHE_CREDENTIAL_BYTES: &str = "monitor.cache.credentialbytes";
    pub const CACHE_ZONE_BYTES: &str = "monitor.cache.zonebytes";
    pub const CACHE_ZONES: &str = "monitor.cache.zones";
    pub const TLS_CHAINS: &str = "monitor.tls.chains";
    pub const CHECKS_INFLIGHT: &str = "monitor.checks.inflight";
    pub const CHECKS_INFLIGHT_HANGING: &str = "monitor.checks.inflight.hanging";
    pub const CHECKS_HANGING: &str = "monitor.checks.hanging";
    pub const CHECKS_STARTED: &str = "monitor.checks.started";
    pub const CHECKS_SKIPPED: &str = "monitor.checks.skipped";
    pub const CHECKS_TIMEDOUT: &str = "monitor.checks.timedout";
    pub const CHECKS_SCHEDULED: &str = "monitor.checks.scheduled";
    pub const SCHEDULE_LAG: &str = "monitor.schedule.lag";
    pub const FEED_LAG: &str = "monitor.changefeed.lag";
    pub const FEED_CHANGES: &str = "monitor.changefeed.changes";
    pub const BUCKETS_READ: &str = "monitor.buckets.read";
    pub const BUCKETS_PENDING: &str = "monitor.buckets.pending";
    pub const FEED_INVALID: &str = "monitor.changefeed.invalid";
    pub const FEED_ERRORS: &str = "monitor.changefeed.errors";
    pub const FEED_RELIST_DROPPED: &str = "monitor.changefeed.relist.dropped";
    pub const STORE_ERRORS: &str = "monitor.store.errors";
    pub const STORE_RETRIES: &str = "monitor.store.retries";
    pub const STORE_REQUEST_CHARGE: &str = "monitor.store.requestcharge";
    pub const MASTER_CONFLICTS: &str = "monitor.master.conflicts";
    pub const MASTER_REPAIRED: &str = "monitor.master.repaired";
    pub const MASTER_INVALID: &str = "monitor.master.invalid";
    pub const HEARTBEATS_INVALID: &str = "monitor.heartbeats.invalid";
    pub const CLOCK_OFFSET: &str = "monitor.clock.offset_ms";
    pub const CLOCK_SKEWED: &str = "monitor.clock.skewed";
    pub const CLOCK_RESYNCED: &str = "monitor.clock.resynced";
    pub const STORE_HEALTHY: &str = "monitor.store.healthy";
    pub const PEER_PROBES: &str = "monitor.peer.probes";
    pub const SYNC_SENT: &str = "monitor.sync.sent";
    pub const SYNC_APPLIED: &str = "monitor.sync.applied";
    pub const CREDENTIALS_OLD_KEY: &str = "monitor.credentials.old_key";
    pub const SECRETS_RELOADED: &str = "monitor.secrets.reloaded";
    pub const SECRETS_REFUSED: &str = "monitor.secrets.refused";
    pub const METRICS_DROPPED: &str = "monitor.metrics.dropped";
    pub const LABELS_DROPPED: &str = "monitor.metrics.labels.dropped";
    pub const ALERTS_SENT: &str = "monitor.alerts.sent";
    pub const ALERTS_FAILED: &str = "monitor.alerts.failed";
    pub const ALERTS_DROPPED: &str = "monitor.alerts.dropped";
    pub const ALERTS_FIRING: &str = "monitor.alerts.firing";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    /// Milliseconds.
    Timer,
}

pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub tags: &'static str,
    pub help: &'static str,
}

const CLUSTER_TAGS: &str = "resourceId, labels";

/// The one list of metrics. docs/metrics.md must name each of them.
pub const CATALOG: &[MetricDef] = {
    use names::*;
    use Kind::*;
    &[
        MetricDef { name: HEALTHZ_CODE, kind: Gauge, tags: CLUSTER_TAGS, help: "HTTP status of GET /healthz on the cluster's API server; 0 when unreachable or timed out." },
        MetricDef { name: CHECK_DURATION, kind: Timer, tags: "resourceId, labels, result", help: "Wall time of one check of a cluster; result is ok, failed or timeout." },
        MetricDef { name: READYZ_FAILED, kind: Gauge, tags: "resourceId, labels, check", help: "1 per failing check of GET /readyz?verbose, read only when /healthz is not 200." },
        MetricDef { name: CLUSTER_VERSION, kind: Gauge, tags: "resourceId, labels, gitVersion", help: "1, tagged with the API server's version from /version." },
        MetricDef { name: NODE_COUNT, kind: Gauge, tags: "resourceId, labels, role", help: "Nodes per role (master, worker, or the node-role label)." },
        MetricDef { name: NODE_CONDITIONS, kind: Gauge, tags: "resourceId, labels, nodeName, type, status", help: "1 per unexpected node condition: Ready not True; MemoryPressure, DiskPressure, PIDPressure or NetworkUnavailable True." },
        MetricDef { name: OPERATOR_COUNT, kind: Gauge, tags: "resourceId, labels", help: "ClusterOperators (OpenShift only)." },
        MetricDef { name: OPERATOR_CONDITIONS, kind: Gauge, tags: "resourceId, labels, name, type, status", help: "1 per unexpected ClusterOperator condition: Available not True, Degraded True (OpenShift only)." },
        MetricDef { name: CLUSTERVERSION_CONDITIONS, kind: Gauge, tags: "resourceId, labels, type, status", help: "1 per unexpected ClusterVersion condition: Available not True, Degraded or Failing True (OpenShift only)." },
        MetricDef { name: CLUSTER_VERSIONS, kind: Gauge, tags: "resourceId, labels, actualVersion, desiredVersion", help: "1, tagged with the running (last completed) and desired OpenShift versions." },
        MetricDef { name: POD_CONDITIONS, kind: Gauge, tags: "resourceId, labels, name, namespace, type, status", help: "1 per unexpected pod condition in --monitored-namespaces: Ready/ContainersReady not True on a Running pod, PodScheduled not True." },
        MetricDef { name: POD_CONTAINER_STATUSES, kind: Gauge, tags: "resourceId, labels, name, namespace, containername, reason", help: "1 per container waiting for a bad reason (CrashLoopBackOff, ImagePullBackOff, ErrImagePull, Create/RunContainer errors)." },
        MetricDef { name: POD_RESTARTS, kind: Gauge, tags: "resourceId, labels, name, namespace, containername", help: "Restart count of a container that restarted 10 times or more." },
        MetricDef { name: CERT_EXPIRATION, kind: Gauge, tags: "resourceId, labels, subject, expired", help: "Days until the API server's serving certificate (from the TLS handshake) expires; 0 with expired:true once it has." },
        MetricDef { name: COLLECTOR_DURATION, kind: Timer, tags: "resourceId, labels, collector", help: "Wall time of one collector (apiserver, readyz, certificate, version, clusterversion, clusteroperators, pods, nodes: the order they run in). With the collectors in turn their first requests are sent together after healthz (pipelined), so a collector's time runs from when it starts to read its answer, not from when its request left: the first one's includes the round trip, the later ones' mostly their answers' transfer and decoding." },
        MetricDef { name: COLLECTOR_ERROR, kind: Counter, tags: "resourceId, labels, collector, error", help: "A collector failed; error is config, unreachable, timeout, unauthorized, status, decode, too_large or panic (the collector panicked). Collector credentials: the document's credentials could not be used." },
        MetricDef { name: CLUSTER_DURATION, kind: Timer, tags: "resourceId, labels", help: "Wall time of the full check of a cluster (all collectors)." },
        MetricDef { name: CLUSTER_INSECURE, kind: Counter, tags: "resourceId, labels", help: "A check ran with insecureSkipTLSVerify (certificate not verified); the first one per cluster is also logged." },
        MetricDef { name: HEARTBEAT, kind: Gauge, tags: "monitor", help: "1 on every pass whose heartbeat write succeeded." },
        MetricDef { name: MASTER, kind: Gauge, tags: "monitor", help: "1 while this monitor holds the master lease, else 0." },
        MetricDef { name: BUCKETS_OWNED, kind: Gauge, tags: "monitor", help: "Buckets assigned to this monitor in its current view." },
        MetricDef { name: MONITORS_LIVE, kind: Gauge, tags: "monitor", help: "Live monitors seen by the master (emitted by the master only)." },
        MetricDef { name: GENERATION, kind: Gauge, tags: "monitor", help: "Generation of the assignment this monitor follows." },
        MetricDef { name: ASSIGNMENT_AGE, kind: Gauge, tags: "monitor", help: "Milliseconds since this monitor last read the assignment from the store." },
        MetricDef { name: CACHE_SIZE, kind: Gauge, tags: "monitor", help: "Cluster documents in the local map (all buckets)." },
        MetricDef { name: CACHE_INVALID, kind: Gauge, tags: "monitor", help: "Cluster documents currently skipped as invalid." },
        MetricDef { name: CACHE_CREDENTIAL_BYTES, kind: Gauge, tags: "monitor", help: "Bytes of credential material the cluster cache holds (sealed or plain CA bundles, certificates, keys, tokens), summed over its clusters." },
        MetricDef { name: CACHE_ZONE_BYTES, kind: Gauge, tags: "monitor", help: "Bytes of the bucket zones the cluster cache's entries are allocated in (live entries and freed blocks kept for reuse in their zone); a zone whose last entry is freed goes back to the system. Near the cache's own size when the monitor holds its share; far above it after buckets were given away, something still holds their entries." },
        MetricDef { name: CACHE_ZONES, kind: Gauge, tags: "monitor", help: "Bucket zones holding at least one allocation: the buckets whose entries this monitor holds, plus any given away whose last entry is not freed yet." },
        MetricDef { name: TLS_CHAINS, kind: Counter, tags: "monitor, how", help: "API server certificate chains checked in TLS handshakes: how remembered (the very chain last verified for that cluster version, inside its validity window: not path-built again) or verified (in full by webpki, passed or not). The handshake signature is verified in both." },
        MetricDef { name: CHECKS_INFLIGHT, kind: Gauge, tags: "monitor", help: "Checks running now." },
        MetricDef { name: CHECKS_INFLIGHT_HANGING, kind: Gauge, tags: "monitor", help: "Checks running now of hanging clusters (within monitor.checks.inflight); at most --hanging-share of the pool." },
        MetricDef { name: CHECKS_HANGING, kind: Gauge, tags: "monitor", help: "Clusters whose last check used at least nine tenths of --check-timeout (hanging): their checks share --hanging-share of the pool." },
        MetricDef { name: CHECKS_SCHEDULED, kind: Gauge, tags: "monitor", help: "Clusters this monitor schedules (owned buckets, checkable state)." },
        MetricDef { name: CHECKS_STARTED, kind: Counter, tags: "monitor", help: "Checks started." },
        MetricDef { name: CHECKS_SKIPPED, kind: Counter, tags: "monitor, reason", help: "Due checks not started: reason pool_full (no worker free), hanging_share (a hanging cluster's check while hanging clusters hold their share of the pool), still_running (previous check of the cluster not finished) or late (due more than half an interval ago)." },
        MetricDef { name: CHECKS_TIMEDOUT, kind: Counter, tags: "monitor", help: "Checks cancelled at --check-timeout." },
        MetricDef { name: SCHEDULE_LAG, kind: Gauge, tags: "monitor", help: "Largest delay in milliseconds between a check's due time and its start, over the last heartbeat interval." },
        MetricDef { name: FEED_LAG, kind: Gauge, tags: "monitor", help: "Milliseconds since the change feed was last read to its end." },
        MetricDef { name: BUCKETS_READ, kind: Counter, tags: "monitor, result", help: "Reads of the documents of acquired buckets (one query per bucket): result ok or failed (retried every heartbeat interval)." },
        MetricDef { name: BUCKETS_PENDING, kind: Gauge, tags: "monitor", help: "Buckets this monitor checks or will check whose documents are not read yet." },
        MetricDef { name: FEED_CHANGES, kind: Counter, tags: "monitor", help: "Change-feed entries applied to the local map." },
        MetricDef { name: FEED_INVALID, kind: Counter, tags: "monitor", help: "Cluster documents skipped because they do not decode or validate." },
        MetricDef { name: FEED_ERRORS, kind: Counter, tags: "monitor", help: "Change-feed reads that failed (retried from the same continuation)." },
        MetricDef { name: FEED_RELIST_DROPPED, kind: Counter, tags: "monitor", help: "Clusters dropped because the periodic re-list (--relist-interval) no longer found their document: deletes a store's change feed does not carry (Cosmos DB)." },
        MetricDef { name: STORE_ERRORS, kind: Counter, tags: "monitor, op", help: "Failed store calls by operation (heartbeat, list_monitors, read_master, write_master, delete_monitor), after the backend's own retries." },
        MetricDef { name: STORE_RETRIES, kind: Counter, tags: "monitor, reason", help: "Store requests sent again by the backend; reason is throttled (429, after its retry-after) or unavailable (5xx, timeout, connection)." },
        MetricDef { name: STORE_REQUEST_CHARGE, kind: Counter, tags: "monitor", help: "Request units charged by the store (Cosmos DB), rounded to whole RU per pass." },
        MetricDef { name: MASTER_REPAIRED, kind: Counter, tags: "monitor", help: "The master document did not decode (garbage, a wrong type, truncated, a newer schema) and this monitor rewrote it by compare-and-swap from the last valid version it saw (owners kept)." },
        MetricDef { name: MASTER_INVALID, kind: Gauge, tags: "monitor", help: "1 while the master document read from the store does not decode, else 0." },
        MetricDef { name: HEARTBEATS_INVALID, kind: Counter, tags: "monitor", help: "Heartbeat documents skipped because they do not decode (each logged once per id); they never stop a pass." },
        MetricDef { name: CLOCK_OFFSET, kind: Gauge, tags: "monitor, direction", help: "Estimated distance in ms of this monitor's clock from the fleet's median clock (direction ahead or behind), measured from the peers' heartbeat writes as observed." },
        MetricDef { name: CLOCK_SKEWED, kind: Gauge, tags: "monitor", help: "1 while this monitor's clock is off by more than --max-clock-offset from more than half of the fleet: it takes no bucket and no lease." },
        MetricDef { name: CLOCK_RESYNCED, kind: Counter, tags: "monitor", help: "Times this monitor stepped its clock to the host's, re-read while the fleet found it skewed and it checked nothing (the host's time was fixed): it then observes its peers afresh and rejoins once its offset is within bounds." },
        MetricDef { name: PEER_PROBES, kind: Counter, tags: "monitor, outcome", help: "Probes of a quiet peer's admin endpoint (GET /healthz/live) by the lease holder, or of the lease holder by the others: outcome alive, refused (the process is gone: its buckets move at once), timeout or error (proves nothing: the heartbeat TTL decides)." },
        MetricDef { name: SYNC_SENT, kind: Counter, tags: "monitor, result", help: "Pushed assignments (POST /admin/sync) sent by the writer of a new bucket table to the monitors whose buckets changed: result ok, refused or failed (a lost notice only means the next pass reads the table)." },
        MetricDef { name: CREDENTIALS_OLD_KEY, kind: Counter, tags: "monitor", help: "Sealed credentials that opened only with a --secrets-old-key-file key (a key rotation): documents not yet sealed again with the current key. Once it stays 0 for an interval, the old key can go." },
        MetricDef { name: SECRETS_RELOADED, kind: Counter, tags: "monitor, file", help: "Secret files re-read with a new content that took effect without a restart (file: admin-token-file, secrets-key-file, secrets-old-key-file, alertmanager-token-file, admin-tls-cert-file, admin-tls-key-file, admin-ca-file; the keys are one ring and the certificate and its key one pair, counted under each flag given). Read every --secrets-reload-interval and on SIGHUP." },
        MetricDef { name: SECRETS_REFUSED, kind: Gauge, tags: "monitor, file", help: "Secret files whose content on disk was refused (unreadable, or not a token or key): the previous value stays in effect until the file changes again. 0 for each flag given when all are in effect." },
        MetricDef { name: SYNC_APPLIED, kind: Counter, tags: "monitor", help: "Bucket tables a peer wrote and pushed, applied by this monitor because its own read of the master document failed (the store does not answer it but answers the writer): it stops checking the buckets taken from it." },
        MetricDef { name: STORE_HEALTHY, kind: Gauge, tags: "monitor", help: "1 when every store call of the last pass succeeded, else 0 (the checks go on with the last assignment)." },
        MetricDef { name: MASTER_CONFLICTS, kind: Counter, tags: "monitor", help: "Master writes that lost a compare-and-swap race (HTTP 412 equivalent)." },
        MetricDef { name: METRICS_DROPPED, kind: Counter, tags: "monitor, reason", help: "Metrics lost: reason queue_full (emit queue full), send_failed (socket error), stale (older than one minute when it could be sent)." },
        MetricDef { name: LABELS_DROPPED, kind: Counter, tags: "monitor, reason", help: "Cluster labels left out of the metric tags, counted once per cluster document version (the cluster's metrics still go out): reason too_long (key over 64 or value over 128 bytes), too_many (beyond 16 labels or 400 bytes of label tags), invalid (empty key, a key clustermon's own tags use, or a key equal to another once sanitised)." },
        MetricDef { name: ALERTS_SENT, kind: Counter, tags: "monitor", help: "Alerts (firing or resolved) accepted by an Alertmanager (--alertmanager-url), counted once per Alertmanager." },
        MetricDef { name: ALERTS_FAILED, kind: Counter, tags: "monitor", help: "Alerts an Alertmanager did not accept after the last retry (error status, timeout, connection refused), or still queued when the shutdown flush ended; per Alertmanager." },
        MetricDef { name: ALERTS_DROPPED, kind: Counter, tags: "monitor, reason", help: "Alerts lost before sending: reason queue_full (an Alertmanager's outbox of 10,000 alerts was full) or input_full (the alert task was 4,096 checks behind; the check itself went on)." },
        MetricDef { name: ALERTS_FIRING, kind: Gauge, tags: "monitor", help: "Alerts this monitor holds firing (its own clusters, after --alert-after failing checks), every heartbeat interval; tracked with or without --alertmanager-url (the status page shows them)." },
    ]
};

/// Counters of the emit path itself, by reason of loss.
#[derive(Debug, Default)]
pub struct EmitStats {
    pub dropped_full: AtomicU64,
    pub dropped_send: AtomicU64,
    pub dropped_stale: AtomicU64,
    pub sent: AtomicU64,
}

/// A metric line as cadence formatted it (DogStatsD), with its emit time.
#[derive(Debug)]
pub struct Queued {
    pub line: String,
    pub at_ms: i64,
}

/// A cadence sink that queues formatted metrics without blocking.
pub struct QueueSink {
    tx: mpsc::Sender<Queued>,
    stats: Arc<EmitStats>,
    clock: Clock,
}

impl MetricSink for QueueSink {
    fn emit(&self, metric: &str) -> io::Result<usize> {
        let q = Queued {
            line: metric.to_owned(),
            at_ms: self.clock.now_ms(),
        };
        match self.tx.try_send(q) {
            Ok(()) => Ok(metric.len()),
            Err(_) => {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "metrics queue full",
                ))
            }
        }
    }
}

/// Cheap, cloneable handle used everywhere a metric is emitted.
#[derive(Clone)]
pub struct Metrics {
    client: Arc<StatsdClient>,
    monitor: Arc<str>,
    stats: Arc<EmitStats>,
    self_values: Arc<SelfValues>,
}

/// The self metrics' current values (gauges: last, counters: running sum),
/// for the admin API's Prometheus page: the same set statsd receives.
#[derive(Default)]
struct SelfValues {
    /// By metric name: each tag set's value, in the tag sets' order.
    values: std::sync::Mutex<std::collections::BTreeMap<String, Vec<SeriesValue>>>,
}

/// A series' tags and its value.
type SeriesValue = (Vec<(String, String)>, f64);

/// Orders a stored tag set against a borrowed one as `Vec<(String,
/// String)>` orders: pair by pair, then the shorter first.
fn cmp_tags(stored: &[(String, String)], tags: &[(&str, &str)]) -> std::cmp::Ordering {
    stored
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .cmp(tags.iter().copied())
}

impl SelfValues {
    /// Sets a gauge or adds to a counter. A series seen before costs a
    /// lookup and no allocation (the scheduler counts every check start
    /// here).
    fn update(&self, name: &str, tags: &[(&str, &str)], value: f64, add: bool) {
        let mut g = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if !g.contains_key(name) {
            g.insert(name.to_string(), Vec::new());
        }
        let Some(rows) = g.get_mut(name) else {
            return;
        };
        let e = match rows.binary_search_by(|(stored, _)| cmp_tags(stored, tags)) {
            Ok(i) => &mut rows[i].1,
            Err(i) => {
                let owned = tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                rows.insert(i, (owned, 0.0));
                &mut rows[i].1
            }
        };
        if add {
            *e += value;
        } else {
            *e = value;
        }
    }
}

/// The self counters `/metrics` shows at 0 from the start, each with its
/// extra tags: a counter that only appeared at its first increment would
/// show no increase to Prometheus (`rate`, `increase` need a sample before
/// it), so an alert on a single burst of it would never fire. Every self
/// counter with no tag but `monitor`, plus these label sets.
const ZERO_AT_START: &[(&str, &[(&str, &str)])] = &[
    (names::CHECKS_SKIPPED, &[("reason", "pool_full")]),
    (names::CHECKS_SKIPPED, &[("reason", "hanging_share")]),
    (names::CHECKS_SKIPPED, &[("reason", "still_running")]),
    (names::CHECKS_SKIPPED, &[("reason", "late")]),
    (names::METRICS_DROPPED, &[("reason", "queue_full")]),
    (names::METRICS_DROPPED, &[("reason", "send_failed")]),
    (names::METRICS_DROPPED, &[("reason", "stale")]),
    (names::ALERTS_DROPPED, &[("reason", "queue_full")]),
    (names::ALERTS_DROPPED, &[("reason", "input_full")]),
];

impl SelfValues {
    fn zero_at_start(monitor: &str) -> Self {
        let v = Self::default();
        let plain = CATALOG
            .iter()
            .filter(|d| d.kind == Kind::Counter && d.tags == "monitor")
            .map(|d| (d.name, &[][..]));
        for (name, extra) in plain.chain(ZERO_AT_START.iter().copied()) {
            let mut tags = vec![("monitor", monitor)];
            tags.extend_from_slice(extra);
            v.update(name, &tags, 0.0, true);
        }
        v
    }
}

/// `monitor.buckets.owned` -> `clustermon_monitor_buckets_owned`.
fn prom_name(name: &str) -> String {
    let mut n = String::from("clustermon_");
    n.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    n
}

fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A handle and the writer that must be run (see [`Writer::run`]).
    pub fn new(monitor: &str, out: Output, queue: usize, clock: Clock) -> (Self, Writer) {
        let (tx, rx) = mpsc::channel(queue);
        let stats = Arc::new(EmitStats::default());
        let sink = QueueSink {
            tx,
            stats: stats.clone(),
            clock: clock.clone(),
        };
        let client = StatsdClient::builder("", sink)
            .with_error_handler(|_| {})
            .build();
        (
            Self {
                client: Arc::new(client),
                monitor: monitor.into(),
                stats: stats.clone(),
                self_values: Arc::new(SelfValues::zero_at_start(monitor)),
            },
            Writer::new(rx, out, stats, clock),
        )
    }

    /// A handle whose metrics (DogStatsD lines) go to the returned receiver (tests).
    pub fn capture(monitor: &str, queue: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (m, w) = Self::new(monitor, Output::discard(), queue, Clock::system());
        (m, w.into_receiver())
    }

    pub fn disabled() -> Self {
        Self::new("none", Output::discard(), 1, Clock::system()).0
    }

    pub fn stats(&self) -> &EmitStats {
        &self.stats
    }

    pub fn gauge(&self, name: &str, value: u64, tags: &[(&str, &str)]) {
        let mut b = self.client.gauge_with_tags(name, value);
        for (k, v) in tags {
            b = b.with_tag(k, v);
        }
        let _ = b.try_send();
    }

    pub fn count(&self, name: &str, value: u64, tags: &[(&str, &str)]) {
        let mut b = self.client.count_with_tags(name, value);
        for (k, v) in tags {
            b = b.with_tag(k, v);
        }
        let _ = b.try_send();
    }

    pub fn timer_ms(&self, name: &str, ms: u64, tags: &[(&str, &str)]) {
        let mut b = self.client.time_with_tags(name, ms);
        for (k, v) in tags {
            b = b.with_tag(k, v);
        }
        let _ = b.try_send();
    }

    /// Self metric with the `monitor` tag.
    pub fn self_gauge(&self, name: &str, value: u64) {
        let tags = [("monitor", &*self.monitor)];
        self.self_values.update(name, &tags, value as f64, false);
        self.gauge(name, value, &tags);
    }

    /// Self gauge with the `monitor` tag and `extra` tags.
    pub fn self_gauge_tagged(&self, name: &str, value: u64, extra: &[(&str, &str)]) {
        let mut tags = Vec::with_capacity(extra.len() + 1);
        tags.push(("monitor", &*self.monitor));
        tags.extend_from_slice(extra);
        self.self_values.update(name, &tags, value as f64, false);
        self.gauge(name, value, &tags);
    }

    /// Self counter with the `monitor` tag and `extra` tags.
    pub fn self_count(&self, name: &str, value: u64, extra: &[(&str, &str)]) {
        let mut tags = Vec::with_capacity(extra.len() + 1);
        tags.push(("monitor", &*self.monitor));
        tags.extend_from_slice(extra);
        self.self_values.update(name, &tags, value as f64, true);
        self.count(name, value, &tags);
    }

    /// The self metrics in the Prometheus text exposition format (0.0.4):
    /// each with its HELP and TYPE from [`CATALOG`], counters as `_total`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let values = self
            .self_values
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for def in CATALOG {
            let rows = match values.get(def.name) {
                Some(rows) if !rows.is_empty() => rows,
                _ => continue,
            };
            let (ty, suffix) = match def.kind {
                Kind::Counter => ("counter", "_total"),
                Kind::Gauge | Kind::Timer => ("gauge", ""),
            };
            let name = format!("{}{suffix}", prom_name(def.name));
            let _ = writeln!(out, "# HELP {name} {}", def.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {name} {ty}");
            for (tags, v) in rows {
                let labels: Vec<String> = tags
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}=\"{}\"",
                            prom_name(k).trim_start_matches("clustermon_"),
                            prom_escape(v)
                        )
                    })
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
            }
        }
        out
    }
}

/// Replaces the characters that would break a DogStatsD tag (and control
/// characters). Label keys and values have stricter rules, see [`labels`].
pub fn sanitize_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, ',' | '|' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_page_has_the_self_metrics_with_help_and_type() {
        let m = Metrics::disabled();
        m.self_gauge(names::BUCKETS_OWNED, 86);
        m.self_gauge(names::BUCKETS_OWNED, 85);
        m.self_count(names::STORE_RETRIES, 2, &[("reason", "throttled")]);
        m.self_count(names::STORE_RETRIES, 3, &[("reason", "throttled")]);
        m.self_count(names::STORE_RETRIES, 1, &[("reason", "a\"b")]);
        let page = m.prometheus();
        assert!(page.contains("# TYPE clustermon_monitor_buckets_owned gauge\n"));
        assert!(
            page.contains("clustermon_monitor_buckets_owned{monitor=\"none\"} 85\n"),
            "{page}"
        );
        assert!(page.contains("# TYPE clustermon_monitor_store_retries_total counter\n"));
        assert!(
            page.contains(
                "clustermon_monitor_store_retries_total{monitor=\"none\",reason=\"throttled\"} 5\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("reason=\"a\\\"b\""),
            "label values are escaped: {page}"
        );
        assert!(page.contains("# HELP clustermon_monitor_buckets_owned "));
        assert!(
            !page.contains("apiserver"),
            "per-cluster metrics stay in statsd"
        );
    }

    /// Tag sets are kept in the order `Vec<(String, String)>` sorts them,
    /// whatever order they were first seen in, and each is found again.
    #[test]
    fn self_values_keep_each_tag_set_once_and_in_order() {
        let owned = |t: &[(&str, &str)]| -> Vec<(String, String)> {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sets: [&[(&str, &str)]; 5] = [
            &[("monitor", "m"), ("reason", "z")],
            &[("monitor", "m")],
            &[("monitor", "m"), ("reason", "a")],
            &[("monitor", "l"), ("reason", "z")],
            &[("monitor", "m"), ("reason", "a"), ("x", "1")],
        ];
        for a in sets {
            for b in sets {
                assert_eq!(
                    cmp_tags(&owned(a), b),
                    owned(a).cmp(&owned(b)),
                    "{a:?} {b:?}"
                );
            }
        }
        let v = SelfValues::default();
        for (i, t) in sets.iter().enumerate() {
            v.update("n", t, i as f64, true);
            v.update("n", t, 10.0, true);
        }
        let g = v.values.lock().unwrap();
        let rows = &g["n"];
        assert_eq!(rows.len(), 5, "each set once");
        assert!(
            rows.windows(2).all(|w| w[0].0 < w[1].0),
            "in order: {rows:?}"
        );
        for (i, t) in sets.iter().enumerate() {
            let (_, value) = rows.iter().find(|(s, _)| *s == owned(t)).unwrap();
            assert_eq!(*value, i as f64 + 10.0);
        }
    }

    #[test]
    fn catalog_has_unique_names_and_docs_list_them_all() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "duplicate {}", m.name);
        }
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/metrics.md"
        ))
        .expect("docs/metrics.md exists");
        for m in CATALOG {
            assert!(
                doc.contains(&format!("`{}`", m.name)),
                "docs/metrics.md does not list {}",
                m.name
            );
        }
    }

    /// deploy/prometheus/clustermon-rules.yaml names only metrics that
    /// `/metrics` exports (the self metrics, counters with `_total`) and
    /// every label it groups by is one they carry: a renamed metric fails
    /// here rather than leaving an alert that can never fire.
    #[test]
    fn the_alerting_rules_name_only_exported_metrics() {
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/prometheus/clustermon-rules.yaml"
        ))
        .expect("the rules file exists");
        let exported: std::collections::BTreeMap<String, &MetricDef> = CATALOG
            .iter()
            .filter(|d| d.tags.split(", ").any(|t| t == "monitor"))
            .map(|d| {
                let suffix = if d.kind == Kind::Counter {
                    "_total"
                } else {
                    ""
                };
                (format!("{}{suffix}", prom_name(d.name)), d)
            })
            .collect();
        let words = rules
            .lines()
            .filter(|l| l.trim_start().starts_with("expr:"))
            .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|w| w.starts_with("clustermon_"))
            .collect::<std::collections::BTreeSet<_>>();
        assert!(words.len() >= 10, "metrics named by the rules: {words:?}");
        // Counters are at 0 from the start, with the label sets the rules
        // group by, so that a first burst is an increase.
        let (m, _rx) = Metrics::capture("m1", 8);
        let text = m.prometheus();
        for w in words.iter().filter(|w| w.ends_with("_total")) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{w}{{")) && l.ends_with(" 0")),
                "{w} is not at 0 from the start:\n{text}"
            );
        }
        for reason in ["pool_full", "hanging_share", "still_running", "late"] {
            assert!(
                text.contains(&format!("clustermon_monitor_checks_skipped_total{{monitor=\"m1\",reason=\"{reason}\"}} 0")),
                "{text}"
            );
        }
        for w in &words {
            let def = exported
                .get(*w)
                .unwrap_or_else(|| panic!("the rules name {w}, which /metrics does not export"));
            // `reason` and `result` groupings must be tags of that metric.
            for l in rules.lines().filter(|l| l.contains(*w)) {
                for tag in ["reason", "result", "outcome", "how", "op", "file"] {
                    if l.contains(&format!("by (instance, {tag})")) {
                        assert!(
                            def.tags.split(", ").any(|t| t == tag),
                            "{w} has no tag {tag}: {l}"
                        );
                    }
                }
            }
        }
        // Each alert's runbook link names a section of docs/runbook.md (its
        // heading's anchor as GitHub makes it).
        let runbook = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/runbook.md"
        ))
        .expect("the runbook exists");
        let anchors: std::collections::BTreeSet<String> = runbook
            .lines()
            .filter_map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(' ')
                    .filter(|_| l.starts_with('#'))
            })
            .map(|h| {
                h.to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect();
        let links: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.split("docs/runbook.md#").nth(1))
            .map(|a| a.trim_end_matches('"'))
            .collect();
        assert!(links.len() >= 10, "runbook links: {links:?}");
        for a in links {
            assert!(
                anchors.contains(a),
                "the rules link docs/runbook.md#{a}, which has no such section"
            );
        }
    }

    #[tokio::test]
    async fn dogstatsd_format_and_drops_when_full() {
        let (m, mut rx) = Metrics::capture("m1", 2);
        m.gauge(
            names::HEALTHZ_CODE,
            200,
            &[("resourceId", "c1"), ("env", "prod")],
        );
        m.self_count(names::CHECKS_SKIPPED, 1, &[("reason", "late")]);
        m.self_gauge(names::MASTER, 1); // queue of 2 is full: dropped
        assert_eq!(
            rx.recv().await.unwrap().line,
            "apiserver.healthz.code:200|g|#resourceId:c1,env:prod"
        );
        assert_eq!(
            rx.recv().await.unwrap().line,
            "monitor.checks.skipped:1|c|#monitor:m1,reason:late"
        );
        assert_eq!(m.stats().dropped_full.load(Ordering::Relaxed), 1);
    }
}
