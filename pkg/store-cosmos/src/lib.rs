//! The clustermon store on Azure Cosmos DB, through `azure_data_cosmos`.
//! This is the only crate that knows Cosmos DB.
//!
//! Three containers in one database, each partitioned by `/id`:
//! - `monitors`: one heartbeat document per monitor, with a per-item `ttl`
//!   (the container has `defaultTtl: -1`, TTL on without a default), so a
//!   dead monitor's document disappears by itself;
//! - `master`: the one `master` document, replaced under `If-Match`;
//! - `clusters`: one document per cluster, as the RP writes it.
//!
//! `/id` because every access is either a point operation by id (heartbeat,
//! master, a cluster) or a whole-container read (monitors list, change feed,
//! re-list), and ids spread writes evenly over physical partitions; a bucket
//! key would make the 256 logical partitions hot spots for nothing.
//!
//! The change feed is Cosmos DB's latest-version feed: it does not carry
//! deletes ([`Store::feed_reports_deletes`] is false), so the engine re-lists
//! its buckets periodically. 429 answers are retried here after their
//! `x-ms-retry-after-ms`, 5xx and transport failures with exponential
//! backoff; the SDK's own throttle retries are off so each retry is counted.

mod retry;
mod url;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::{ContainerProperties, PartitionKeyDefinition};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ChangeFeedOptions, ChangeFeedStartFrom, ConnectionPoolOptions,
    ItemWriteOptions, MaxItemCountHint, OperationOptionsBuilder, Precondition, Region,
    ServerCertificateValidation, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosError,
    CosmosRuntime, FeedScope, Query, RoutingStrategy,
};
use clustermon_core::model::{ClusterDoc, MasterDoc, MonitorDoc};
use clustermon_core::store::{
    Change, Etag, FeedPage, RawCluster, Store, StoreError, StoreResult, StoreStats, Versioned,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

pub use retry::RetryPolicy;
pub use url::CosmosUrl;

pub const MONITORS: &str = "monitors";
pub const MASTER: &str = "master";
pub const CLUSTERS: &str = "clusters";
const MASTER_ID: &str = "master";

/// How the store authenticates.
#[derive(Clone)]
pub enum CosmosAuth {
    /// An account key (primary or secondary).
    Key(String),
    /// Microsoft Entra ID: managed identity (system-assigned, or the
    /// user-assigned one with this client id).
    ManagedIdentity { client_id: Option<String> },
    /// Microsoft Entra ID: Kubernetes workload identity (AZURE_CLIENT_ID,
    /// AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE from the environment).
    WorkloadIdentity,
    /// Microsoft Entra ID: the Azure CLI's signed-in account (development).
    AzureCli,
}

impl std::fmt::Debug for CosmosAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CosmosAuth::Key(_) => f.write_str("Key(<redacted>)"),
            CosmosAuth::ManagedIdentity { client_id } => {
                write!(f, "ManagedIdentity({client_id:?})")
            }
            CosmosAuth::WorkloadIdentity => f.write_str("WorkloadIdentity"),
            CosmosAuth::AzureCli => f.write_str("AzureCli"),
        }
    }
}

impl CosmosAuth {
    pub fn is_key(&self) -> bool {
        matches!(self, CosmosAuth::Key(_))
    }
}

#[derive(Clone, Debug)]
pub struct CosmosConfig {
    pub url: CosmosUrl,
    pub auth: CosmosAuth,
    /// Preferred Azure region for routing (e.g. "East US").
    pub region: String,
    pub retry: RetryPolicy,
}

/// Request counters, shared with [`Store::stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub retries_throttled: AtomicU64,
    pub retries_unavailable: AtomicU64,
    pub charge_milli: AtomicU64,
    pub invalid_monitor_docs: AtomicU64,
    /// Ids of invalid heartbeat documents already logged (once each).
    pub invalid_logged: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Counters {
    /// Adds the request charge an answer's headers report.
    pub(crate) fn charged(&self, h: &azure_data_cosmos::models::ResponseHeaders) {
        self.charge(h.request_charge().map(|r| f64::from(*r)));
    }

    pub(crate) fn charge(&self, ru: Option<f64>) {
        if let Some(ru) = ru.filter(|r| r.is_finite() && *r > 0.0) {
            self.charge_milli
                .fetch_add((ru * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }
}

pub struct CosmosStore {
    monitors: ContainerClient,
    master: ContainerClient,
    clusters: ContainerClient,
    counters: Arc<Counters>,
    retry: RetryPolicy,
    /// Physical partitions of `clusters`: the feed is caught up once this
    /// many pages in a row came back empty.
    feed_ranges: usize,
}

async fn client(cfg: &CosmosConfig) -> Result<CosmosClient, StoreError> {
    // The SDK's reqwest is built without a crypto provider of its own (no
    // aws-lc-rs, see Cargo.toml): rustls's process default is `ring`. An
    // error means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint: AccountEndpoint = cfg
        .url
        .endpoint()
        .parse()
        .map_err(|e| StoreError::Invalid(format!("cosmos endpoint: {e}")))?;
    let account = match &cfg.auth {
        CosmosAuth::Key(k) => {
            AccountReference::with_authentication_key(endpoint, Secret::new(k.clone()))
        }
        other => AccountReference::with_credential(endpoint, credential(other)?),
    };
    // 429s come back to us (counted retries, bounded by the caller's deadline).
    let throttling = ThrottlingRetryOptionsBuilder::new()
        .with_max_retry_count(0)
        .build();
    let ops = OperationOptionsBuilder::new()
        .with_throttling_retry_options(throttling)
        .build();
    let mut pool = ConnectionPoolOptions::builder();
    if cfg.url.is_loopback() {
        // The local test endpoint speaks HTTP/1.1, JSON, and maybe plain http.
        pool = pool
            .with_is_http2_allowed(false)
            .with_gateway_v2_disabled(true)
            .with_server_certificate_validation(
                ServerCertificateValidation::RequiredUnlessEmulator,
            );
    }
    let pool = pool
        .build()
        .map_err(|e| unavailable("cosmos connection pool", &e))?;
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .with_default_operation_options(ops)
        .build()
        .await
        .map_err(|e| unavailable("cosmos runtime", &e))?;
    let mut b = CosmosClientBuilder::new().with_runtime(runtime);
    if cfg.url.is_loopback() {
        b = b.with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
    }
    let routing = RoutingStrategy::ProximityTo(Region::new(cfg.region.clone()));
    b.build(account, routing)
        .await
        .map_err(|e| map_err("connect", e))
}

fn credential(auth: &CosmosAuth) -> Result<Arc<dyn TokenCredential>, StoreError> {
    use azure_identity::{
        AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
        UserAssignedId, WorkloadIdentityCredential,
    };
    let e = |e: azure_core::Error| StoreError::Invalid(format!("Entra ID credential: {e}"));
    Ok(match auth {
        CosmosAuth::Key(_) => unreachable!("key auth has no token credential"),
        CosmosAuth::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(e)?
        }
        CosmosAuth::WorkloadIdentity => WorkloadIdentityCredential::new(None).map_err(e)?,
        CosmosAuth::AzureCli => AzureCliCredential::new(None).map_err(e)?,
    })
}

/// Only what a query filters on is indexed: `bucket` of clusters (the
/// re-list). Everything else is read by id or whole, so indexing it would
/// only add request units to every write (the RP's included).
fn indexing_policy(container: &str) -> azure_data_cosmos::models::IndexingPolicy {
    use azure_data_cosmos::models::{IndexingMode, IndexingPolicy};
    let mut p = IndexingPolicy::default()
        .with_indexing_mode(IndexingMode::Consistent)
        .with_excluded_path("/*");
    p.automatic = true;
    if container == CLUSTERS {
        p = p.with_included_path("/bucket/?");
    }
    p
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// One line for an error: status and the SDK's message, never a body.
pub(crate) fn map_err(op: &str, e: CosmosError) -> StoreError {
    let st = e.status();
    let code = u16::from(st.status_code());
    if st.is_precondition_failed() {
        return StoreError::PreconditionFailed;
    }
    if st.is_conflict() {
        return StoreError::Conflict;
    }
    let msg = format!("cosmos {op}: {e}");
    match code {
        400 | 413 => StoreError::Invalid(msg),
        401 | 403 => StoreError::Unavailable(format!(
            "{msg} (check the account key, or the identity's data-plane role assignment)"
        )),
        404 => StoreError::Invalid(format!(
            "{msg} (does the database and its containers exist? run `clustermon store init`)"
        )),
        _ => StoreError::Unavailable(msg),
    }
}

fn is_not_found(e: &CosmosError) -> bool {
    e.status().is_not_found()
}

/// A stored document without Cosmos DB's system properties and our `ttl`.
fn strip_system(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|k, _| !k.starts_with('_') && k != "ttl");
    }
    v
}

fn to_raw(v: Value) -> Option<RawCluster> {
    let v = strip_system(v);
    let id = v.get("id")?.as_str()?.to_string();
    Some(RawCluster {
        id,
        body: v.to_string(),
    })
}

impl CosmosStore {
    /// Connects to an existing database and its three containers.
    pub async fn connect(cfg: &CosmosConfig) -> Result<Self, StoreError> {
        let client = client(cfg).await?;
        let db = client.database_client(cfg.url.database.as_str());
        let counters = Arc::new(Counters::default());
        let container = |name: &'static str| {
            let db = &db;
            let counters = &counters;
            async move {
                // Opening reads the container's metadata: retried like any request.
                retry::run(&cfg.retry, counters, "open container", || {
                    db.container_client(name, None)
                })
                .await
                .map_err(|e| {
                    let not_found = is_not_found(&e);
                    let mut err = map_err(&format!("open container {name}"), e);
                    if not_found {
                        err = StoreError::Invalid(format!(
                            "cosmos container {}/{name} does not exist: run `clustermon store init --store {}`",
                            cfg.url.database, cfg.url
                        ));
                    }
                    err
                })
            }
        };
        let monitors = container(MONITORS).await?;
        let master = container(MASTER).await?;
        let clusters = container(CLUSTERS).await?;
        let ranges = retry::run(&cfg.retry, &counters, "read feed ranges", || {
            clusters.read_feed_ranges(None)
        })
        .await
        .map_err(|e| map_err("read feed ranges", e))?;
        let feed_ranges = ranges.len().max(1);
        Ok(Self {
            monitors,
            master,
            clusters,
            counters,
            retry: cfg.retry.clone(),
            feed_ranges,
        })
    }

    /// Creates the database and the three containers where missing (key
    /// auth: Entra ID cannot create them). Returns what it created.
    pub async fn init(cfg: &CosmosConfig) -> Result<Vec<String>, StoreError> {
        if !cfg.auth.is_key() {
            return Err(StoreError::Invalid(
                "store init needs key auth (--cosmos-key-file): Entra ID identities cannot create databases or containers; create them with the Azure CLI or a template (docs/cosmos.md)".into(),
            ));
        }
        let client = client(cfg).await?;
        let mut created = Vec::new();
        let dbname = cfg.url.database.as_str();
        match client.create_database(dbname, None).await {
            Ok(_) => created.push(format!("database {dbname}")),
            Err(e) if e.status().is_conflict() => {}
            Err(e) => return Err(map_err("create database", e)),
        }
        let db = client.database_client(dbname);
        for name in [MONITORS, MASTER, CLUSTERS] {
            let mut props = ContainerProperties::new(name, PartitionKeyDefinition::from("/id"))
                .with_indexing_policy(indexing_policy(name));
            if name == MONITORS {
                // TTL on, no default: each heartbeat carries its own `ttl`.
                props = props.with_default_ttl(azure_data_cosmos::models::TimeToLive::NoDefault);
            }
            match db.create_container(props, None).await {
                Ok(_) => created.push(format!("container {dbname}/{name}")),
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(map_err(&format!("create container {name}"), e)),
            }
        }
        Ok(created)
    }

    async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T, CosmosError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CosmosError>>,
    {
        retry::run(&self.retry, &self.counters, op, f).await
    }

    /// Runs a query over a whole container, every page, counting charges.
    async fn query(&self, c: &ContainerClient, op: &str, q: Query) -> StoreResult<Vec<Value>> {
        self.call(op, || {
            let q = q.clone();
            async move {
                let pages = c
                    .query_items::<Value>(q, FeedScope::full_container(), None)
                    .await?
                    .into_pages();
                let mut out = Vec::new();
                let mut pages = std::pin::pin!(pages);
                while let Some(page) = pages.try_next().await? {
                    self.counters.charged(page.headers());
                    out.extend(page.into_items());
                }
                Ok(out)
            }
        })
        .await
        .map_err(|e| map_err(op, e))
    }

    /// Creates or replaces a document partitioned by its id.
    async fn upsert_doc(
        &self,
        c: &ContainerClient,
        op: &str,
        id: &str,
        v: Value,
    ) -> StoreResult<()> {
        self.call(op, || {
            let v = v.clone();
            async move {
                let r = c.upsert_item(id.to_string(), id, v, None).await?;
                self.counters.charged(r.headers());
                Ok(())
            }
        })
        .await
        .map_err(|e| map_err(op, e))
    }

    /// Deletes a document partitioned by its id; whether it existed.
    async fn delete_doc(&self, c: &ContainerClient, op: &str, id: &str) -> StoreResult<bool> {
        self.call(op, || async move {
            match c.delete_item(id.to_string(), id, None).await {
                Ok(r) => {
                    self.counters.charged(r.headers());
                    Ok(true)
                }
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| map_err(op, e))
    }

    fn write_options(&self, precondition: Option<Precondition>) -> Option<ItemWriteOptions> {
        precondition.map(|p| ItemWriteOptions::default().with_precondition(p))
    }
}

#[async_trait]
impl Store for CosmosStore {
    fn kind(&self) -> &'static str {
        "cosmos"
    }

    fn feed_reports_deletes(&self) -> bool {
        false
    }

    fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            retries_throttled: c.retries_throttled.load(Ordering::Relaxed),
            retries_unavailable: c.retries_unavailable.load(Ordering::Relaxed),
            request_charge_milli: c.charge_milli.load(Ordering::Relaxed),
            invalid_monitor_docs: c.invalid_monitor_docs.load(Ordering::Relaxed),
        }
    }

    async fn upsert_monitor(&self, doc: &MonitorDoc) -> StoreResult<()> {
        let mut v = serde_json::to_value(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // Cosmos deletes the document this long after the write: the time it
        // stays live, rounded up, plus a minute to read it in a post-mortem.
        let live_ms = (doc.expires_at_ms - doc.heartbeat_at_ms).max(0);
        let ttl = (live_ms + 999) / 1000 + 60;
        v["ttl"] = Value::from(ttl.clamp(1, i64::from(i32::MAX)));
        self.upsert_doc(&self.monitors, "upsert_monitor", &doc.id, v)
            .await
    }

    async fn list_monitors(&self, now_ms: i64) -> StoreResult<Vec<MonitorDoc>> {
        let docs = self
            .query(
                &self.monitors,
                "list_monitors",
                Query::from("SELECT * FROM c"),
            )
            .await?;
        let mut out: Vec<MonitorDoc> = docs
            .into_iter()
            .filter_map(|v| {
                let id = v.get("id").and_then(Value::as_str).unwrap_or("").to_string();
                match MonitorDoc::decode_value(strip_system(v)) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        let c = &self.counters;
                        c.invalid_monitor_docs.fetch_add(1, Ordering::Relaxed);
                        let mut seen = c.invalid_logged.lock().unwrap_or_else(|p| p.into_inner());
                        if seen.len() < 1024 && seen.insert(id.clone()) {
                            tracing::warn!(monitor = %id, error = %e, "skipping an invalid monitor document (logged once per id)");
                        }
                        None
                    }
                }
            })
            .filter(|m| m.expires_at_ms > now_ms)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn delete_monitor(&self, id: &str) -> StoreResult<bool> {
        self.delete_doc(&self.monitors, "delete_monitor", id).await
    }

    async fn read_master(&self) -> StoreResult<Option<Versioned<MasterDoc>>> {
        let r = self
            .call("read_master", || async move {
                match self.master.read_item(MASTER_ID, MASTER_ID, None).await {
                    Ok(r) => {
                        self.counters.charged(r.headers());
                        let etag = r.headers().etag().map(|e| e.to_string());
                        let v: Value = r.into_model()?;
                        Ok(Some((v, etag)))
                    }
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| map_err("read_master", e))?;
        let Some((v, etag)) = r else { return Ok(None) };
        let etag = etag
            .or_else(|| v.get("_etag").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| StoreError::Invalid("master document without an etag".into()))?;
        match MasterDoc::decode_value(strip_system(v)) {
            Ok(value) => Ok(Some(Versioned {
                value,
                etag: Etag(etag),
            })),
            Err(reason) => Err(StoreError::CorruptMaster {
                etag: Etag(etag),
                reason,
            }),
        }
    }

    async fn write_master(&self, doc: &MasterDoc, expected: Option<&Etag>) -> StoreResult<Etag> {
        let mut v = serde_json::to_value(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        v["id"] = Value::from(MASTER_ID);
        let r = self
            .call("write_master", || {
                let v = v.clone();
                async move {
                    let r = match expected {
                        None => self.master.create_item(MASTER_ID, MASTER_ID, v, None).await,
                        Some(etag) => {
                            let opts = self.write_options(Some(Precondition::if_match(
                                azure_core::http::Etag::from(etag.0.clone()),
                            )));
                            self.master
                                .replace_item(MASTER_ID, MASTER_ID, v, opts)
                                .await
                        }
                    };
                    // A replace of a vanished document lost the race too.
                    let r = match r {
                        Err(e) if expected.is_some() && is_not_found(&e) => {
                            return Ok(None);
                        }
                        r => r?,
                    };
                    self.counters.charged(r.headers());
                    Ok(Some(r.headers().etag().map(|e| e.to_string())))
                }
            })
            .await
            .map_err(|e| map_err("write_master", e))?;
        match r {
            None => Err(StoreError::PreconditionFailed),
            Some(Some(etag)) => Ok(Etag(etag)),
            Some(None) => Err(StoreError::Invalid("master write answered no etag".into())),
        }
    }

    async fn put_cluster(&self, doc: &ClusterDoc) -> StoreResult<()> {
        doc.validate().map_err(StoreError::Invalid)?;
        let v = serde_json::to_value(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.upsert_doc(&self.clusters, "put_cluster", &doc.id, v)
            .await
    }

    async fn delete_cluster(&self, id: &str) -> StoreResult<bool> {
        self.delete_doc(&self.clusters, "delete_cluster", id).await
    }

    async fn get_cluster(&self, id: &str) -> StoreResult<Option<RawCluster>> {
        let v = self
            .call("get_cluster", || async move {
                match self.clusters.read_item(id.to_string(), id, None).await {
                    Ok(r) => {
                        self.counters.charged(r.headers());
                        Ok(Some(r.into_model::<Value>()?))
                    }
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| map_err("get_cluster", e))?;
        Ok(v.and_then(to_raw))
    }

    async fn list_clusters(&self) -> StoreResult<Vec<RawCluster>> {
        // Cross-partition ORDER BY is refused client side: sort here.
        let docs = self
            .query(
                &self.clusters,
                "list_clusters",
                Query::from("SELECT * FROM c"),
            )
            .await?;
        let mut out: Vec<RawCluster> = docs.into_iter().filter_map(to_raw).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn count_clusters(&self) -> StoreResult<u64> {
        // Cross-partition aggregates are refused client side: count ids.
        let ids = self
            .query(
                &self.clusters,
                "count_clusters",
                Query::from("SELECT c.id FROM c"),
            )
            .await?;
        Ok(ids.len() as u64)
    }

    async fn list_cluster_ids(&self, buckets: &[u8]) -> StoreResult<Vec<String>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let q = Query::from("SELECT c.id FROM c WHERE ARRAY_CONTAINS(@buckets, c.bucket)")
            .with_parameter("@buckets", buckets.to_vec())
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let rows = self.query(&self.clusters, "list_cluster_ids", q).await?;
        Ok(rows
            .into_iter()
            .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    async fn list_clusters_in(&self, buckets: &[u8]) -> StoreResult<Vec<RawCluster>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        // The clusters container indexes `/bucket/?` (`indexing_policy`).
        let q = Query::from("SELECT * FROM c WHERE ARRAY_CONTAINS(@buckets, c.bucket)")
            .with_parameter("@buckets", buckets.to_vec())
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let docs = self.query(&self.clusters, "list_clusters_in", q).await?;
        Ok(docs.into_iter().filter_map(to_raw).collect())
    }

    async fn read_feed(&self, continuation: Option<&str>, max: usize) -> StoreResult<FeedPage> {
        let max = max.clamp(1, u32::MAX as usize);
        let r = self
            .call("read_feed", || async move {
                let mut opts =
                    ChangeFeedOptions::default().with_max_item_count(MaxItemCountHint::Limit(
                        std::num::NonZeroU32::new(max as u32).expect("max >= 1"),
                    ));
                if let Some(c) = continuation {
                    opts = opts.with_continuation_token(
                        azure_data_cosmos::feed::ContinuationToken::from_string(c.to_string()),
                    );
                }
                let mut it = self
                    .clusters
                    .query_change_feed::<Value>(
                        FeedScope::full_container(),
                        ChangeFeedStartFrom::Beginning,
                        Some(opts),
                    )
                    .await?;
                let mut changes = Vec::new();
                let mut empty_in_a_row = 0;
                // The iterator visits the physical partitions in turn: the
                // feed is caught up once each answered "nothing new" in a
                // row. A page with changes ends the read (pages are whole,
                // and one holds at most `max`).
                while empty_in_a_row < self.feed_ranges {
                    let Some(page) = it.next().await else { break };
                    let page = page?;
                    self.counters.charged(page.headers());
                    if page.items().is_empty() {
                        empty_in_a_row += 1;
                        continue;
                    }
                    for item in page.into_items() {
                        if let Some(raw) = item.current().cloned().and_then(to_raw) {
                            changes.push(Change::Upsert(raw));
                        }
                    }
                    break;
                }
                let token = it.to_continuation_token()?;
                Ok((
                    changes,
                    token.as_str().to_string(),
                    empty_in_a_row >= self.feed_ranges,
                ))
            })
            .await;
        match r {
            Ok((changes, continuation, caught_up)) => Ok(FeedPage {
                changes,
                continuation,
                caught_up,
            }),
            Err(e) if continuation.is_some() && e.status().is_bad_request() => Err(
                StoreError::ContinuationExpired(format!("cosmos change feed: {e}")),
            ),
            Err(e) => Err(map_err("read_feed", e)),
        }
    }
}

#[cfg(test)]
mod tests;
