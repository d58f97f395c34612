//! The Kubernetes/OpenShift check: the API server first (healthz, then
//! readyz when unhealthy), then the other collectors: one at a time on one
//! connection by default, every collector's first request sent at once
//! (pipelined) and each answer read when its collector asks it; up to
//! `--collector-concurrency` at once otherwise. Each
//! collector is timed, its errors counted, its panics contained; only
//! unexpected conditions are emitted, so a healthy cluster emits little.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;

use super::kube::{decode_json, decode_page, first_page, KubeClient, KubeError};
use super::tls::MemoUse;
use super::{CheckCtx, CheckReport, Checker, CollectorOutcome};
use crate::clock::Clock;
use crate::feed::{ClusterEntry, CredentialSource};
use crate::metrics::{names, Metrics};
use crate::model::Credentials;
use crate::reload::Live;
use crate::secrets::SecretsKey;

/// Emits per-cluster metrics: the cluster's tags plus extra ones.
pub struct Emit<'a> {
    pub metrics: &'a Metrics,
    pub cluster: &'a ClusterEntry,
    /// Failing conditions for alerts, returned in `CheckReport::conditions`.
    pub found: Mutex<Vec<super::Condition>>,
}

impl Emit<'_> {
    /// Notes a failing condition for alerts (at most `MAX_CONDITIONS`).
    pub fn alert(&self, name: &'static str, labels: &[(&'static str, &str)], summary: String) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if found.len() < super::MAX_CONDITIONS {
            found.push(super::Condition {
                name,
                labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
                summary,
            });
        }
    }
    pub fn gauge(&self, name: &str, value: u64, extra: &[(&str, &str)]) {
        self.metrics
            .gauge(name, value, &self.cluster.tags_with(extra));
    }
    /// One gauge of 1 per unexpected condition, tagged `extra`, `type`, `status`.
    pub fn conditions(
        &self,
        name: &str,
        conditions: &[Condition<'_>],
        unexpected: impl Fn(&Condition<'_>) -> bool,
        extra: &[(&str, &str)],
    ) {
        for c in conditions.iter().filter(|c| unexpected(c)) {
            let mut tags: Vec<(&str, &str)> = extra.to_vec();
            tags.extend([("type", &*c.type_), ("status", &*c.status)]);
            self.gauge(name, 1, &tags);
        }
    }
    pub fn gauge_clamped(&self, name: &str, value: i64, extra: &[(&str, &str)]) {
        // statsd gauges here are unsigned; negative values (expired) clamp to 0
        // and are reported by the tag `expired:true`.
        self.metrics
            .gauge(name, value.max(0) as u64, &self.cluster.tags_with(extra));
    }
}

/// What the API server step learned, for the collectors after it.
#[derive(Default)]
pub struct Probe {
    pub peer_certificate: Option<Vec<u8>>,
    pub now_unix: i64,
}

#[async_trait]
pub trait Collector: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The URLs this collector asks first, in order, if it asks any: sent
    /// ahead with the other collectors' ([`KubeClient::prefetch`]) when
    /// the collectors run in turn.
    fn asks_first(&self) -> Vec<String> {
        Vec::new()
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        probe: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError>;
}

/// The full check. `collectors` run after a healthy `/healthz`.
pub struct KubeChecker {
    /// Replaced when a key file changes (`crate::reload`).
    key: Live<Option<SecretsKey>>,
    collectors: Vec<Arc<dyn Collector>>,
    concurrency: usize,
    connect_timeout: std::time::Duration,
    /// Most requests a check sends at once on a connection.
    pipeline: usize,
    clock: Clock,
    /// Clusters whose `insecureSkipTLSVerify` was logged, by a hash of
    /// their id: not the id itself, which would keep its bucket's zone
    /// (`crate::zone`) after the cluster left.
    insecure_logged: Mutex<HashSet<u64>>,
}

impl KubeChecker {
    pub fn new(key: Option<SecretsKey>, collectors: Vec<Arc<dyn Collector>>, clock: Clock) -> Self {
        Self {
            key: Live::new(key),
            collectors,
            concurrency: 1,
            connect_timeout: crate::config::defaults::CONNECT_TIMEOUT,
            pipeline: super::kube::PIPELINE,
            clock,
            insecure_logged: Mutex::new(HashSet::new()),
        }
    }

    /// The standard set of collectors after the API server.
    pub fn standard(key: Option<SecretsKey>, namespaces: Vec<String>, clock: Clock) -> Self {
        // Nodes last: a cluster of more than a page of nodes asks its
        // further pages after every answer sent ahead has been read
        // (`KubeChecker::check`'s prefetch).
        let collectors: Vec<Arc<dyn Collector>> = vec![
            Arc::new(Certificate),
            Arc::new(Version),
            Arc::new(ClusterVersion),
            Arc::new(ClusterOperators),
            Arc::new(Pods {
                paths: namespaces
                    .iter()
                    .map(|ns| format!("/api/v1/namespaces/{ns}/pods"))
                    .collect(),
            }),
            Arc::new(Nodes),
        ];
        Self::new(key, collectors, clock)
    }

    /// How many collectors run at once inside one check (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most requests a check sends at once on one connection (HTTP/1.1
    /// pipelining; 1: one at a time). See [`KubeClient::with_pipeline`].
    pub fn with_pipeline(mut self, n: usize) -> Self {
        self.pipeline = n;
        self
    }

    /// How long a connection (TCP and the TLS handshake) may take, within
    /// the check's timeout: a server that drops packets fails the check
    /// after this, not after the whole timeout.
    pub fn with_connect_timeout(mut self, d: std::time::Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    pub fn healthz_only(key: Option<SecretsKey>, clock: Clock) -> Self {
        Self::new(key, Vec::new(), clock)
    }

    /// The credentials key ring, for a reload to replace.
    pub fn key(&self) -> Live<Option<SecretsKey>> {
        self.key.clone()
    }

    fn credentials(&self, e: &ClusterEntry) -> Result<Credentials, String> {
        match &e.credentials {
            CredentialSource::None => Ok(Credentials::default()),
            CredentialSource::Plain(c) => Ok(c.unpack()),
            CredentialSource::Sealed(s) => match &*self.key.get() {
                Some(k) => k.open(&e.id, s),
                None => Err("credentials are encrypted but no --secrets-key-file was given".into()),
            },
        }
    }
}

fn collector_error(emit: &Emit<'_>, collector: &str, e: &KubeError) {
    emit.metrics.count(
        names::COLLECTOR_ERROR,
        1,
        &emit
            .cluster
            .tags_with(&[("collector", collector), ("error", e.kind())]),
    );
}

#[async_trait]
impl Checker for KubeChecker {
    async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport {
        let started = Instant::now();
        let emit = Emit {
            metrics: ctx.metrics,
            cluster: ctx.cluster,
            found: Mutex::default(),
        };
        let report = self.run(&ctx, &emit).await;
        emit.metrics.timer_ms(
            names::CLUSTER_DURATION,
            started.elapsed().as_millis() as u64,
            &ctx.cluster.tags_with(&[]),
        );
        report
    }
}

impl KubeChecker {
    async fn run(&self, ctx: &CheckCtx<'_>, emit: &Emit<'_>) -> CheckReport {
        let e = ctx.cluster;
        // Credentials are opened here and dropped at the end of the check.
        let creds = match self.credentials(e) {
            Ok(c) => c,
            Err(reason) => {
                collector_error(emit, "credentials", &KubeError::Config(reason.clone()));
                return CheckReport::failed(reason);
            }
        };
        if creds.insecure_skip_tls_verify {
            emit.metrics
                .count(names::CLUSTER_INSECURE, 1, &e.tags_with(&[]));
            let mut seen = self
                .insecure_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                e.id.hash(&mut h);
                h.finish()
            };
            if seen.insert(key) {
                tracing::warn!(cluster = %e.id, "insecureSkipTLSVerify is set: the API server's certificate is not verified");
            }
        }
        let kube = match KubeClient::with_memo(
            &e.api_server,
            &creds,
            ctx.deadline,
            self.connect_timeout,
            e.verified.get(),
        ) {
            Ok(k) => k.with_pipeline(self.pipeline),
            Err(err) => {
                collector_error(emit, "credentials", &err);
                return CheckReport::failed(err.to_string());
            }
        };
        drop(creds);

        // The API server first: healthz always emitted.
        let t = Instant::now();
        let health = kube.get("/healthz").await;
        let apiserver_ms = timing(emit, "apiserver", t);
        // A chain verified in full is remembered for the next check of this
        // version (whatever the answer: the chain's verdict stands).
        if let MemoUse::Learned(v) = kube.memo_use() {
            e.verified.set(v);
        }
        let (code, peer) = match &health {
            Ok(r) => (r.status, r.peer_certificate.clone()),
            Err(_) => (0, None),
        };
        emit.gauge(names::HEALTHZ_CODE, code.into(), &[]);
        if code != 200 {
            // Redirects are never followed (they would carry the cluster's
            // credentials, see `KubeClient::new`): a 3xx fails the check and
            // readyz is not asked (it would redirect too).
            let redirect = (300..400).contains(&code);
            let why = match &health {
                Err(err) => err.to_string(),
                Ok(_) if redirect => format!("healthz {code}: redirect not followed"),
                Ok(_) => format!("healthz {code}"),
            };
            let mut outcomes = vec![CollectorOutcome {
                name: "apiserver",
                ok: false,
                duration_ms: apiserver_ms,
                error: Some(why.clone().into_boxed_str()),
            }];
            if code != 0 && !redirect {
                // Boxed: inline, its state would size every check's
                // future, a check waiting on healthz included.
                outcomes.push(Box::pin(readyz(&kube, emit)).await);
            }
            return CheckReport {
                ok: false,
                summary: why.into(),
                collectors: outcomes.into_boxed_slice(),
                conditions: Vec::new(),
            };
        }
        let probe = Probe {
            peer_certificate: peer,
            now_unix: self.clock.now_ms() / 1000,
        };

        if self.concurrency == 1 {
            // In turn on one connection: every collector's first request
            // goes at once, its answer read when the collector asks it.
            let first: Vec<String> = self
                .collectors
                .iter()
                .flat_map(|c| c.asks_first())
                .collect();
            kube.prefetch(&first).await;
        }
        let runs: Vec<_> = self
            .collectors
            .iter()
            .map(|c| run_collector(c.as_ref(), &kube, &probe, emit))
            .collect();
        let mut outcomes: Vec<CollectorOutcome> = futures::stream::iter(runs)
            .buffered(self.concurrency)
            .collect()
            .await;
        let failures: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.name)))
            .collect();
        outcomes.insert(
            0,
            CollectorOutcome {
                name: "apiserver",
                ok: true,
                duration_ms: apiserver_ms,
                error: None,
            },
        );
        CheckReport {
            ok: failures.is_empty(),
            summary: if failures.is_empty() {
                super::HEALTHY_SUMMARY.into()
            } else {
                format!("healthz 200; {}", failures.join("; ")).into()
            },
            collectors: outcomes.into_boxed_slice(),
            conditions: std::mem::take(&mut *emit.found.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

/// Runs one collector: timed, panics contained, errors counted.
async fn run_collector(
    c: &dyn Collector,
    kube: &KubeClient,
    probe: &Probe,
    emit: &Emit<'_>,
) -> CollectorOutcome {
    let t = Instant::now();
    let run = std::panic::AssertUnwindSafe(c.collect(kube, probe, emit)).catch_unwind();
    let res = match run.await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(cluster = %emit.cluster.id, collector = c.name(), "collector panicked");
            Err(KubeError::Panicked)
        }
    };
    let duration_ms = timing(emit, c.name(), t);
    let error = res.err().map(|err| {
        collector_error(emit, c.name(), &err);
        err.to_string().into_boxed_str()
    });
    CollectorOutcome {
        name: c.name(),
        ok: error.is_none(),
        duration_ms,
        error,
    }
}

/// Emits a collector's duration; returns it in milliseconds.
fn timing(emit: &Emit<'_>, collector: &str, since: Instant) -> u32 {
    let ms = since.elapsed().as_millis() as u64;
    emit.metrics.timer_ms(
        names::COLLECTOR_DURATION,
        ms,
        &emit.cluster.tags_with(&[("collector", collector)]),
    );
    ms.min(u64::from(u32::MAX)) as u32
}

/// One alert for an object whose conditions include unexpected ones, the
/// summary naming them (`node w1: Ready=False`).
fn alert_conditions(
    emit: &Emit<'_>,
    name: &'static str,
    labels: &[(&'static str, &str)],
    what: &str,
    conditions: &[Condition<'_>],
    unexpected: impl Fn(&Condition<'_>) -> bool,
) {
    let bad: Vec<String> = conditions
        .iter()
        .filter(|c| unexpected(c))
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    if !bad.is_empty() {
        emit.alert(name, labels, format!("{what}: {}", bad.join(", ")));
    }
}

/// `/readyz?verbose` lines look like `[-]etcd failed: reason withheld`.
pub fn failed_readyz_checks(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("[-]"))
        .map(|rest| rest.split([' ', ':']).next().unwrap_or(rest))
        .filter(|n| !n.is_empty())
        .collect()
}

async fn readyz(kube: &KubeClient, emit: &Emit<'_>) -> CollectorOutcome {
    let t = Instant::now();
    let error = match kube.get("/readyz?verbose").await {
        // An API server that refuses us (401, 403) or answers something
        // else than a health report is a collector error, not a health state.
        Ok(r) if !(200..300).contains(&r.status) && !(500..600).contains(&r.status) => {
            let err = KubeError::Status(r.status);
            collector_error(emit, "readyz", &err);
            Some(err.to_string())
        }
        Ok(r) => {
            let body = String::from_utf8_lossy(&r.body);
            let failed = failed_readyz_checks(&body);
            for check in &failed {
                emit.gauge(names::READYZ_FAILED, 1, &[("check", check)]);
            }
            (!failed.is_empty()).then(|| format!("failing: {}", failed.join(",")))
        }
        Err(err) => {
            collector_error(emit, "readyz", &err);
            Some(err.to_string())
        }
    };
    CollectorOutcome {
        name: "readyz",
        ok: error.is_none(),
        duration_ms: timing(emit, "readyz", t),
        error: error.map(String::into_boxed_str),
    }
}

// ---- decoders: only the fields used; everything else is ignored ----

/// An object's name and namespace. Like every type an answer decodes into
/// (except [`VersionInfo`]), its strings are borrowed from the answer's
/// body where they have no escapes: lists are the full check's largest
/// answers, and decoding them into owned strings (an allocation for each)
/// was a tenth of the monitor's CPU on the full profile.
#[derive(Deserialize, Default)]
pub struct ObjectMeta<'a> {
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
}

#[derive(Deserialize)]
pub struct Condition<'a> {
    #[serde(rename = "type", borrow)]
    pub type_: Cow<'a, str>,
    #[serde(borrow)]
    pub status: Cow<'a, str>,
}

/// A string borrowed from the body where it has no escapes, where serde's
/// own `Cow<str>` (inside a map or a sequence) would always own it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A node's label keys: all its role needs (values are checked to be
/// strings, then dropped).
#[derive(Default)]
pub struct LabelKeys<'a>(pub Vec<Text<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for LabelKeys<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LabelKeys<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut keys = Vec::new();
                while let Some((k, Text(_))) = m.next_entry::<Text<'de>, Text<'de>>()? {
                    keys.push(k);
                }
                Ok(LabelKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

impl LabelKeys<'_> {
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|k| &*k.0)
    }
}

#[derive(Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "gitVersion")]
    pub git_version: String,
}

#[derive(Deserialize)]
pub struct Node<'a> {
    #[serde(default, borrow)]
    pub metadata: NodeMeta<'a>,
    #[serde(default, borrow)]
    pub status: NodeStatus<'a>,
}

#[derive(Deserialize, Default)]
pub struct NodeMeta<'a> {
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub labels: LabelKeys<'a>,
}

#[derive(Deserialize, Default)]
pub struct NodeStatus<'a> {
    #[serde(default, borrow)]
    pub conditions: Vec<Condition<'a>>,
}

/// The node's role from its `node-role.kubernetes.io/<role>` label keys:
/// `master` before any, else the greatest other role by name (the last of
/// a sorted map's keys, as when labels were decoded into one), whatever
/// order the answer lists them in.
pub fn node_role<'k>(keys: impl IntoIterator<Item = &'k str>) -> &'k str {
    let mut role: Option<&str> = None;
    for k in keys {
        if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
            if r == "master" || r == "control-plane" {
                return "master";
            }
            if !r.is_empty() {
                role = role.max(Some(r));
            }
        }
    }
    role.unwrap_or("worker")
}

/// Whether a node condition is unexpected: Ready not True, or a pressure /
/// network condition True.
pub fn node_condition_unexpected(c: &Condition<'_>) -> bool {
    match &*c.type_ {
        "Ready" => c.status != "True",
        "MemoryPressure" | "DiskPressure" | "PIDPressure" | "NetworkUnavailable" => {
            c.status == "True"
        }
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct ClusterOperator<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default, borrow)]
    pub status: OperatorStatus<'a>,
}

#[derive(Deserialize, Default)]
pub struct OperatorStatus<'a> {
    #[serde(default, borrow)]
    pub conditions: Vec<Condition<'a>>,
}

pub fn operator_condition_unexpected(c: &Condition<'_>) -> bool {
    match &*c.type_ {
        "Available" => c.status != "True",
        "Degraded" => c.status == "True",
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct ClusterVersionObj<'a> {
    #[serde(default, borrow)]
    pub spec: CvSpec<'a>,
    #[serde(default, borrow)]
    pub status: CvStatus<'a>,
}

#[derive(Deserialize, Default)]
pub struct CvSpec<'a> {
    #[serde(default, rename = "desiredUpdate", borrow)]
    pub desired_update: Option<CvRelease<'a>>,
}

#[derive(Deserialize, Default)]
pub struct CvRelease<'a> {
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
pub struct CvStatus<'a> {
    #[serde(default, borrow)]
    pub conditions: Vec<Condition<'a>>,
    #[serde(default, borrow)]
    pub desired: CvRelease<'a>,
    #[serde(default, borrow)]
    pub history: Vec<CvHistory<'a>>,
}

#[derive(Deserialize)]
pub struct CvHistory<'a> {
    #[serde(default, borrow)]
    pub state: Cow<'a, str>,
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
}

impl ClusterVersionObj<'_> {
    /// The last completed version in the history (the running one).
    pub fn actual(&self) -> &str {
        self.status
            .history
            .iter()
            .find(|h| h.state == "Completed")
            .map_or("", |h| &*h.version)
    }
    pub fn desired(&self) -> &str {
        match &self.spec.desired_update {
            Some(d) if !d.version.is_empty() => &d.version,
            _ => &self.status.desired.version,
        }
    }
}

pub fn clusterversion_condition_unexpected(c: &Condition<'_>) -> bool {
    match &*c.type_ {
        "Available" => c.status != "True",
        "Degraded" | "Failing" => c.status == "True",
        _ => false,
    }
}

/// A pod as the pods collector reads it.
#[derive(Deserialize)]
pub struct Pod<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default, borrow)]
    pub status: PodStatus<'a>,
}

#[derive(Deserialize, Default)]
pub struct PodStatus<'a> {
    #[serde(default, borrow)]
    pub phase: Cow<'a, str>,
    #[serde(default, borrow)]
    pub conditions: Vec<Condition<'a>>,
    #[serde(default, rename = "containerStatuses", borrow)]
    pub container_statuses: Vec<ContainerStatus<'a>>,
}

#[derive(Deserialize)]
pub struct ContainerStatus<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, rename = "restartCount")]
    pub restart_count: u64,
    #[serde(default, borrow)]
    pub state: ContainerState<'a>,
}

#[derive(Deserialize, Default)]
pub struct ContainerState<'a> {
    #[serde(default, borrow)]
    pub waiting: Option<Waiting<'a>>,
}

#[derive(Deserialize)]
pub struct Waiting<'a> {
    #[serde(default, borrow)]
    pub reason: Cow<'a, str>,
}

/// Pod conditions worth reporting: Ready or ContainersReady not True on a
/// Running pod, PodScheduled not True on a Pending one. Completed pods are quiet.
pub fn pod_condition_unexpected(pod: &Pod<'_>, c: &Condition<'_>) -> bool {
    match (&*pod.status.phase, &*c.type_) {
        ("Succeeded", _) => false,
        ("Running", "Ready" | "ContainersReady") => c.status != "True",
        (_, "PodScheduled") => c.status != "True",
        _ => false,
    }
}

/// Waiting reasons that mean a container is stuck.
pub fn waiting_reason_unexpected(reason: &str) -> bool {
    matches!(
        reason,
        "CrashLoopBackOff"
            | "ImagePullBackOff"
            | "ErrImagePull"
            | "CreateContainerConfigError"
            | "CreateContainerError"
            | "InvalidImageName"
            | "RunContainerError"
    )
}

pub const RESTART_THRESHOLD: u64 = 10;

/// A serving certificate that expires in fewer days raises an alert.
pub const CERT_ALERT_DAYS: i64 = 14;

// ---- collectors ----

struct Certificate;

#[async_trait]
impl Collector for Certificate {
    fn name(&self) -> &'static str {
        "certificate"
    }
    async fn collect(
        &self,
        _kube: &KubeClient,
        probe: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let Some(der) = &probe.peer_certificate else {
            return Ok(());
        }; // plain http
        let (days, subject) = super::tls::expiry(der, probe.now_unix).map_err(KubeError::Decode)?;
        let expired = if days < 0 { "true" } else { "false" };
        if days < CERT_ALERT_DAYS {
            emit.alert(
                super::alertnames::CERTIFICATE_EXPIRING,
                &[],
                format!("API server certificate expires in {days} days"),
            );
        }
        emit.gauge_clamped(
            names::CERT_EXPIRATION,
            days,
            &[("subject", &subject), ("expired", expired)],
        );
        Ok(())
    }
}

struct Version;

#[async_trait]
impl Collector for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn asks_first(&self) -> Vec<String> {
        vec![VERSION.into()]
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let v: VersionInfo = kube.get_json(VERSION).await?;
        emit.gauge(names::CLUSTER_VERSION, 1, &[("gitVersion", &v.git_version)]);
        Ok(())
    }
}

const VERSION: &str = "/version";
const NODES: &str = "/api/v1/nodes";
const CLUSTER_OPERATORS: &str = "/apis/config.openshift.io/v1/clusteroperators";
const CLUSTER_VERSION: &str = "/apis/config.openshift.io/v1/clusterversions/version";

struct Nodes;

#[async_trait]
impl Collector for Nodes {
    fn name(&self) -> &'static str {
        "nodes"
    }
    fn asks_first(&self) -> Vec<String> {
        vec![first_page(NODES)]
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let mut roles: BTreeMap<String, u64> = BTreeMap::new();
        kube.pages(NODES, |body| {
            decode_page(body, |n: Node<'_>| {
                let role = node_role(n.metadata.labels.keys());
                match roles.get_mut(role) {
                    Some(c) => *c += 1,
                    None => {
                        roles.insert(role.to_string(), 1);
                    }
                }
                emit.conditions(
                    names::NODE_CONDITIONS,
                    &n.status.conditions,
                    node_condition_unexpected,
                    &[("nodeName", &n.metadata.name)],
                );
                alert_conditions(
                    emit,
                    super::alertnames::NODE_NOT_READY,
                    &[("node", &n.metadata.name)],
                    &format!("node {}", n.metadata.name),
                    &n.status.conditions,
                    node_condition_unexpected,
                );
            })
        })
        .await?;
        for (role, n) in roles {
            emit.gauge(names::NODE_COUNT, n, &[("role", &role)]);
        }
        Ok(())
    }
}

struct ClusterOperators;

#[async_trait]
impl Collector for ClusterOperators {
    fn name(&self) -> &'static str {
        "clusteroperators"
    }
    fn asks_first(&self) -> Vec<String> {
        vec![first_page(CLUSTER_OPERATORS)]
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let mut count = 0;
        let res = kube
            .pages(CLUSTER_OPERATORS, |body| {
                decode_page(body, |o: ClusterOperator<'_>| {
                    count += 1;
                    emit.conditions(
                        names::OPERATOR_CONDITIONS,
                        &o.status.conditions,
                        operator_condition_unexpected,
                        &[("name", &o.metadata.name)],
                    );
                    alert_conditions(
                        emit,
                        super::alertnames::OPERATOR_DEGRADED,
                        &[("operator", &o.metadata.name)],
                        &format!("ClusterOperator {}", o.metadata.name),
                        &o.status.conditions,
                        operator_condition_unexpected,
                    );
                })
            })
            .await;
        match res {
            Err(KubeError::Status(404)) => return Ok(()), // vanilla Kubernetes
            other => other?,
        }
        emit.gauge(names::OPERATOR_COUNT, count, &[]);
        Ok(())
    }
}

struct ClusterVersion;

#[async_trait]
impl Collector for ClusterVersion {
    fn name(&self) -> &'static str {
        "clusterversion"
    }
    fn asks_first(&self) -> Vec<String> {
        vec![CLUSTER_VERSION.into()]
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let body = match kube.get_ok(CLUSTER_VERSION).await {
            Err(KubeError::Status(404)) => return Ok(()), // vanilla Kubernetes
            other => other?.body,
        };
        let cv: ClusterVersionObj<'_> = decode_json(&body)?;
        emit.gauge(
            names::CLUSTER_VERSIONS,
            1,
            &[
                ("actualVersion", cv.actual()),
                ("desiredVersion", cv.desired()),
            ],
        );
        emit.conditions(
            names::CLUSTERVERSION_CONDITIONS,
            &cv.status.conditions,
            clusterversion_condition_unexpected,
            &[],
        );
        Ok(())
    }
}

/// The pods of the monitored namespaces: their lists asked at once
/// ([`KubeClient::lists`]), a namespace absent from the cluster skipped.
struct Pods {
    /// `/api/v1/namespaces/{ns}/pods` of each namespace.
    paths: Vec<String>,
}

#[async_trait]
impl Collector for Pods {
    fn name(&self) -> &'static str {
        "pods"
    }
    fn asks_first(&self) -> Vec<String> {
        self.paths.iter().map(|p| first_page(p)).collect()
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        kube.lists(&self.paths, |body| {
            decode_page(body, |p: Pod<'_>| {
                let (name, namespace) = (&*p.metadata.name, &*p.metadata.namespace);
                emit.conditions(
                    names::POD_CONDITIONS,
                    &p.status.conditions,
                    |c| pod_condition_unexpected(&p, c),
                    &[("name", name), ("namespace", namespace)],
                );
                for cs in &p.status.container_statuses {
                    if let Some(w) = cs
                        .state
                        .waiting
                        .as_ref()
                        .filter(|w| waiting_reason_unexpected(&w.reason))
                    {
                        emit.gauge(
                            names::POD_CONTAINER_STATUSES,
                            1,
                            &[
                                ("name", name),
                                ("namespace", namespace),
                                ("containername", &*cs.name),
                                ("reason", &*w.reason),
                            ],
                        );
                    }
                    if cs.state.waiting.as_ref().is_some_and(|w| w.reason == "CrashLoopBackOff") {
                        emit.alert(
                            super::alertnames::POD_CRASHLOOPING,
                            &[("namespace", namespace), ("pod", name)],
                            format!(
                                "pod {namespace}/{name}: container {} in CrashLoopBackOff ({} restarts)",
                                cs.name, cs.restart_count
                            ),
                        );
                    }
                    if cs.restart_count >= RESTART_THRESHOLD {
                        emit.gauge(
                            names::POD_RESTARTS,
                            cs.restart_count,
                            &[
                                ("name", name),
                                ("namespace", namespace),
                                ("containername", &*cs.name),
                            ],
                        );
                    }
                }
            })
        })
        .await
    }
}

/// Namespaces whose pods are checked by default: the control plane of
/// vanilla Kubernetes and of OpenShift.
pub const DEFAULT_NAMESPACES: &[&str] = &[
    "kube-system",
    "openshift-apiserver",
    "openshift-etcd",
    "openshift-kube-apiserver",
    "openshift-kube-controller-manager",
    "openshift-kube-scheduler",
    "openshift-ingress",
    "openshift-dns",
    "openshift-sdn",
    "openshift-ovn-kubernetes",
    "openshift-machine-api",
    "openshift-machine-config-operator",
    "openshift-monitoring",
];

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped as a real API server returns them (abridged from the API
    // reference), fields we ignore included.
    const NODE_LIST: &str = r#"{
      "kind": "NodeList", "apiVersion": "v1",
      "metadata": {"resourceVersion": "123456", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTIzLCJzdGFydCI6Im5vZGUtMiJ9"},
      "items": [
        {"metadata": {"name": "master-0", "uid": "5d1c...", "resourceVersion": "99",
                      "labels": {"kubernetes.io/hostname": "master-0", "node-role.kubernetes.io/master": ""},
                      "annotations": {"machine.openshift.io/machine": "openshift-machine-api/m0"}},
         "spec": {"podCIDR": "10.128.0.0/24", "taints": [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]},
         "status": {"capacity": {"cpu": "8", "memory": "32Gi"},
                    "conditions": [
                      {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-11-22T10:00:00Z", "reason": "KubeletHasSufficientMemory"},
                      {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "message": "disk"},
                      {"type": "PIDPressure", "status": "False"},
                      {"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "nodeInfo": {"kubeletVersion": "v1.30.4", "osImage": "RHCOS"}}},
        {"metadata": {"name": "worker-a", "labels": {"node-role.kubernetes.io/worker": ""}},
         "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}}
      ]}"#;

    #[test]
    fn node_list_decodes_and_flags_only_unexpected_conditions() {
        let l: super::super::kube::tests_support::List<Node> =
            serde_json::from_str(NODE_LIST).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.cont.as_deref().map(|c| c.starts_with("eyJ")), Some(true));
        let n0 = &l.items[0];
        assert_eq!(node_role(n0.metadata.labels.keys()), "master");
        assert_eq!(node_role(l.items[1].metadata.labels.keys()), "worker");
        let bad: Vec<(&str, &str)> = n0
            .status
            .conditions
            .iter()
            .filter(|c| node_condition_unexpected(c))
            .map(|c| (&*c.type_, &*c.status))
            .collect();
        assert_eq!(bad, vec![("DiskPressure", "True")]);
        assert!(
            node_condition_unexpected(&l.items[1].status.conditions[0]),
            "Ready Unknown is unexpected"
        );
    }

    #[test]
    fn roles_from_labels() {
        assert_eq!(
            node_role(["node-role.kubernetes.io/control-plane"]),
            "master"
        );
        assert_eq!(node_role(["node-role.kubernetes.io/infra"]), "infra");
        assert_eq!(
            node_role([
                "node-role.kubernetes.io/infra",
                "node-role.kubernetes.io/master"
            ]),
            "master"
        );
        assert_eq!(node_role(["node-role.kubernetes.io/"]), "worker");
        // Several roles: the same one whatever the answer's order.
        for keys in [
            [
                "node-role.kubernetes.io/worker",
                "node-role.kubernetes.io/infra",
            ],
            [
                "node-role.kubernetes.io/infra",
                "node-role.kubernetes.io/worker",
            ],
        ] {
            assert_eq!(node_role(keys), "worker");
        }
        assert_eq!(node_role([]), "worker");
    }

    #[test]
    fn cluster_operator_and_version_decode() {
        let co: ClusterOperator = serde_json::from_str(
            r#"{"apiVersion":"config.openshift.io/v1","kind":"ClusterOperator",
                "metadata":{"name":"authentication","generation":1},
                "spec":{},
                "status":{"conditions":[
                  {"type":"Degraded","status":"True","reason":"OAuthServerDeployment_Unavailable","lastTransitionTime":"2026-11-22T10:00:00Z"},
                  {"type":"Progressing","status":"False"},
                  {"type":"Available","status":"True"},
                  {"type":"Upgradeable","status":"True"}],
                  "versions":[{"name":"operator","version":"4.16.3"}],
                  "relatedObjects":[{"group":"","resource":"namespaces","name":"openshift-authentication"}]}}"#,
        )
        .unwrap();
        let bad: Vec<&str> = co
            .status
            .conditions
            .iter()
            .filter(|c| operator_condition_unexpected(c))
            .map(|c| &*c.type_)
            .collect();
        assert_eq!(bad, vec!["Degraded"]);

        let cv: ClusterVersionObj = serde_json::from_str(
            r#"{"apiVersion":"config.openshift.io/v1","kind":"ClusterVersion","metadata":{"name":"version"},
                "spec":{"channel":"stable-4.16","clusterID":"abc","desiredUpdate":{"version":"4.16.4","image":"quay.io/x"}},
                "status":{"availableUpdates":null,
                  "conditions":[{"type":"Available","status":"True"},{"type":"Failing","status":"True","message":"m"},{"type":"Progressing","status":"True"}],
                  "desired":{"version":"4.16.4","image":"quay.io/x"},
                  "history":[{"state":"Partial","version":"4.16.4","startedTime":"2026-11-22T09:00:00Z"},
                             {"state":"Completed","version":"4.16.3","completionTime":"2026-11-01T09:00:00Z"}],
                  "observedGeneration":3,"versionHash":"h"}}"#,
        )
        .unwrap();
        assert_eq!(cv.actual(), "4.16.3");
        assert_eq!(cv.desired(), "4.16.4");
        let bad: Vec<&str> = cv
            .status
            .conditions
            .iter()
            .filter(|c| clusterversion_condition_unexpected(c))
            .map(|c| &*c.type_)
            .collect();
        assert_eq!(bad, vec!["Failing"]);
    }

    #[test]
    fn pods_crashloop_restarts_and_quiet_completed() {
        let p: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"etcd-0","namespace":"openshift-etcd","uid":"u","ownerReferences":[{"kind":"StatefulSet","name":"etcd"}]},
                "spec":{"containers":[{"name":"etcd","image":"quay.io/etcd"}],"nodeName":"master-0"},
                "status":{"phase":"Running","podIP":"10.0.0.1",
                  "conditions":[{"type":"Initialized","status":"True"},{"type":"Ready","status":"False","reason":"ContainersNotReady"},
                                {"type":"ContainersReady","status":"False"},{"type":"PodScheduled","status":"True"}],
                  "containerStatuses":[
                    {"name":"etcd","ready":false,"restartCount":12,"image":"quay.io/etcd","imageID":"sha256:x",
                     "state":{"waiting":{"reason":"CrashLoopBackOff","message":"back-off 5m0s restarting failed container"}},
                     "lastState":{"terminated":{"exitCode":1,"reason":"Error"}}},
                    {"name":"sidecar","ready":true,"restartCount":0,"state":{"running":{"startedAt":"2026-11-22T10:00:00Z"}}}]}}"#,
        )
        .unwrap();
        let bad: Vec<&str> = p
            .status
            .conditions
            .iter()
            .filter(|c| pod_condition_unexpected(&p, c))
            .map(|c| &*c.type_)
            .collect();
        assert_eq!(bad, vec!["Ready", "ContainersReady"]);
        let cs = &p.status.container_statuses;
        assert!(waiting_reason_unexpected(
            &cs[0].state.waiting.as_ref().unwrap().reason
        ));
        assert!(cs[0].restart_count >= RESTART_THRESHOLD);
        assert!(cs[1].state.waiting.is_none());
        assert!(!waiting_reason_unexpected("ContainerCreating"));

        let done: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"installer-3","namespace":"openshift-etcd"},
                "status":{"phase":"Succeeded","conditions":[{"type":"Ready","status":"False","reason":"PodCompleted"}]}}"#,
        )
        .unwrap();
        assert!(
            !pod_condition_unexpected(&done, &done.status.conditions[0]),
            "completed pods are quiet"
        );
    }

    /// A pod page's strings are borrowed from the body (no allocation),
    /// except those with escapes, which decode right all the same.
    #[test]
    fn pod_pages_borrow_their_strings() {
        let body = br#"{"metadata":{"continue":"next"},"items":[
            {"metadata":{"name":"etcd-0","namespace":"openshift-etcd"},
             "status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"}]}},
            {"metadata":{"name":"esc\u0061ped","namespace":"ns"}}]}"#;
        let mut seen = Vec::new();
        let cont = decode_page(body, |p: Pod<'_>| {
            seen.push((
                matches!(p.metadata.name, Cow::Borrowed(_)),
                p.metadata.name.to_string(),
                p.status
                    .conditions
                    .iter()
                    .all(|c| matches!((&c.type_, &c.status), (Cow::Borrowed(_), Cow::Borrowed(_)))),
            ))
        })
        .unwrap();
        assert_eq!(cont.as_deref(), Some("next"));
        assert_eq!(
            seen,
            vec![
                (true, "etcd-0".to_string(), true),
                (false, "escaped".to_string(), true)
            ]
        );
    }

    #[test]
    fn node_operator_and_version_answers_borrow_their_strings() {
        let body = br#"{"items":[
            {"metadata":{"name":"m0","labels":{"node-role.kubernetes.io/master":"","zone":"a"}},
             "status":{"conditions":[{"type":"Ready","status":"True"}]}},
            {"metadata":{"name":"w1","labels":{"node-role.kubernetes.io\/infra":""}}}]}"#;
        let mut seen = Vec::new();
        decode_page(body, |n: Node<'_>| {
            seen.push((
                n.metadata.name.to_string(),
                node_role(n.metadata.labels.keys()).to_string(),
                n.metadata
                    .labels
                    .0
                    .iter()
                    .map(|k| matches!(k.0, Cow::Borrowed(_)))
                    .collect::<Vec<_>>(),
                n.status
                    .conditions
                    .iter()
                    .all(|c| matches!((&c.type_, &c.status), (Cow::Borrowed(_), Cow::Borrowed(_)))),
            ))
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("m0".into(), "master".into(), vec![true, true], true),
                // An escaped key is owned, and decoded right.
                ("w1".into(), "infra".into(), vec![false], true),
            ]
        );
        let body = br#"{"items":[{"metadata":{"name":"dns"},
            "status":{"conditions":[{"type":"Degraded","status":"True"}]}}]}"#;
        let mut names = Vec::new();
        decode_page(body, |o: ClusterOperator<'_>| {
            names.push(matches!(o.metadata.name, Cow::Borrowed("dns")))
        })
        .unwrap();
        assert_eq!(names, vec![true]);
        let body = br#"{"status":{"history":[{"state":"Completed","version":"4.16.3"}],
            "desired":{"version":"4.16.4"}}}"#;
        let cv: ClusterVersionObj<'_> = super::super::kube::decode_json(body).unwrap();
        assert_eq!((cv.actual(), cv.desired()), ("4.16.3", "4.16.4"));
        assert!(matches!(cv.status.desired.version, Cow::Borrowed(_)));
    }

    #[test]
    fn readyz_verbose_failures() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start-apiextensions-informers ok\n[-]informer-sync failed: reason withheld\nreadyz check failed\n";
        assert_eq!(failed_readyz_checks(body), vec!["etcd", "informer-sync"]);
        assert!(failed_readyz_checks("ok").is_empty());
    }

    #[test]
    fn version_decodes() {
        let v: VersionInfo = serde_json::from_str(
            r#"{"major":"1","minor":"30","gitVersion":"v1.30.4","gitCommit":"abc","gitTreeState":"clean","buildDate":"2026-08-01T00:00:00Z","goVersion":"go1.22.5","compiler":"gc","platform":"linux/amd64"}"#,
        )
        .unwrap();
        assert_eq!(v.git_version, "v1.30.4");
    }
}

/// Hostile API servers on 127.0.0.1:0 (raw TCP, so they can misbehave at
/// any byte): every check ends by its deadline, as a failure with a short
/// reason; the body cap holds for a chunked endless body; no redirect is
/// followed, so credentials never reach another host.
#[cfg(test)]
mod hostile_tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    use super::super::kube::pipelining::pipelining_server;
    use super::super::kube::MAX_BODY;
    use super::*;
    use crate::model::{ClusterDoc, ProvisioningState, Secret};

    /// A server calling `f` for each connection; returns its URL and the
    /// number of connections it accepted.
    async fn server<F, Fut>(f: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                c.fetch_add(1, SeqCst);
                tokio::spawn(f(tcp));
            }
        });
        (url, conns)
    }

    /// Reads up to the end of a request head.
    async fn read_head(tcp: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Writes `bytes` one at a time, `every` apart (slowloris).
    async fn trickle(tcp: &mut TcpStream, bytes: &[u8], every: Duration) {
        for b in bytes {
            if tcp.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    fn entry(url: &str) -> ClusterEntry {
        ClusterEntry::from_doc(ClusterDoc {
            id: "c-hostile".into(),
            bucket: 0,
            provisioning_state: ProvisioningState::Succeeded,
            api_server: url.into(),
            credentials: Credentials {
                token: Some(Secret::new("hostile-test-token")),
                insecure_skip_tls_verify: url.starts_with("https://"),
                ..Default::default()
            },
            encrypted_credentials: None,
            labels: BTreeMap::new(),
        })
    }

    /// A check that verified the server's chain leaves it in the entry; the
    /// next check of that entry takes it (`tls::ChainMemo`).
    #[tokio::test]
    async fn a_check_leaves_the_verified_chain_in_its_entry() {
        let s = super::super::kube::tls_server::start().await;
        let e = ClusterEntry::from_doc(ClusterDoc {
            id: "c-tls".into(),
            bucket: 0,
            provisioning_state: ProvisioningState::Succeeded,
            api_server: s.url.clone(),
            credentials: Credentials {
                ca_bundle: Some(s.ca_pem.clone()),
                ..Default::default()
            },
            encrypted_credentials: None,
            labels: BTreeMap::new(),
        });
        assert_eq!(
            e.verified.get(),
            super::super::tls::VerifiedChain::default()
        );
        let (metrics, _rx) = Metrics::capture("m", 10_000);
        let checker = KubeChecker::healthz_only(None, Clock::system());
        for _ in 0..2 {
            let report = checker
                .check(CheckCtx {
                    cluster: &e,
                    metrics: &metrics,
                    deadline: Instant::now() + Duration::from_secs(10),
                })
                .await;
            assert!(report.ok, "{}", report.summary);
            assert_ne!(
                e.verified.get(),
                super::super::tls::VerifiedChain::default()
            );
        }
    }

    /// Runs a full check (healthz, then the standard collectors) against
    /// `url` with `timeout`; the report, the metric lines, the time taken.
    async fn check(url: &str, timeout: Duration) -> (CheckReport, Vec<String>, Duration) {
        let e = entry(url);
        let (metrics, mut rx) = Metrics::capture("m", 10_000);
        let checker = KubeChecker::standard(None, vec!["kube-system".into()], Clock::system());
        let t = Instant::now();
        let report = checker
            .check(CheckCtx {
                cluster: &e,
                metrics: &metrics,
                deadline: t + timeout,
            })
            .await;
        let took = t.elapsed();
        let mut lines = Vec::new();
        while let Ok(q) = rx.try_recv() {
            lines.push(q.line);
        }
        eprintln!("{url}: {took:?}: {}", report.summary);
        (report, lines, took)
    }

    fn healthz_code(lines: &[String]) -> Option<&str> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("apiserver.healthz.code:"))
            .and_then(|v| v.split('|').next())
    }

    /// With the collectors in turn, a full check sends every collector's
    /// first request at once after healthz: this server answers nothing
    /// after healthz until it holds all six (version, ClusterVersion,
    /// ClusterOperators, two namespaces' pods, nodes). Asked one at a
    /// time, the check would reach its deadline.
    #[tokio::test]
    async fn a_full_check_sends_every_collectors_first_request_at_once() {
        let (url, conns, answered) = pipelining_server(1, 6, None, |line| {
            if line.contains("/healthz") {
                (200, "ok".into())
            } else if line.contains("/version ") {
                (200, r#"{"gitVersion":"v1.30.0"}"#.into())
            } else if line.contains("config.openshift.io") {
                (404, "{}".into())
            } else {
                (200, r#"{"items":[]}"#.into())
            }
        })
        .await;
        let e = entry(&url);
        let (metrics, _rx) = Metrics::capture("m", 10_000);
        let checker = KubeChecker::standard(
            None,
            vec!["kube-system".into(), "openshift-etcd".into()],
            Clock::system(),
        );
        let report = checker
            .check(CheckCtx {
                cluster: &e,
                metrics: &metrics,
                deadline: Instant::now() + Duration::from_secs(5),
            })
            .await;
        assert!(report.ok, "{}", report.summary);
        let answered = answered.lock().unwrap();
        let paths: Vec<&str> = answered
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            paths,
            [
                "/healthz",
                "/version",
                "/apis/config.openshift.io/v1/clusterversions/version",
                "/apis/config.openshift.io/v1/clusteroperators?limit=100",
                "/api/v1/namespaces/kube-system/pods?limit=100",
                "/api/v1/namespaces/openshift-etcd/pods?limit=100",
                "/api/v1/nodes?limit=100",
            ]
        );
        assert_eq!(conns.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn an_endless_chunked_body_stops_at_the_cap() {
        let sent = Arc::new(AtomicUsize::new(0));
        let s = sent.clone();
        let (url, _) = server(move |mut tcp| {
            let sent = s.clone();
            async move {
                read_head(&mut tcp).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                while tcp.write_all(chunk.as_bytes()).await.is_ok() {
                    sent.fetch_add(0x10000, SeqCst);
                }
            }
        })
        .await;
        let (report, lines, took) = check(&url, Duration::from_secs(20)).await;
        assert!(!report.ok);
        assert!(report.summary.contains("larger than"), "{}", report.summary);
        assert_eq!(healthz_code(&lines), Some("0"), "{lines:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = sent.load(SeqCst);
        // The client read past the cap, then stopped (the rest is socket buffers).
        assert!(
            (MAX_BODY..3 * MAX_BODY).contains(&n),
            "server wrote {n} bytes"
        );
    }

    #[tokio::test]
    async fn endless_headers_fail_without_waiting_for_the_deadline() {
        let (url, _) = server(|mut tcp| async move {
            read_head(&mut tcp).await;
            if tcp.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
                return;
            }
            let line = format!("X-Hostile: {}\r\n", "a".repeat(1000));
            while tcp.write_all(line.as_bytes()).await.is_ok() {}
        })
        .await;
        let (report, lines, took) = check(&url, Duration::from_secs(20)).await;
        assert!(!report.ok);
        assert!(
            report.summary.starts_with("unreachable: "),
            "{}",
            report.summary
        );
        assert!(report.summary.len() < 160, "{}", report.summary);
        assert_eq!(healthz_code(&lines), Some("0"), "{lines:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let (url, _) = server(|mut tcp| async move {
            read_head(&mut tcp).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\nxxxx";
            let _ = tcp.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let (report, _, took) = check(&url, Duration::from_secs(20)).await;
        assert!(report.summary.contains("larger than"), "{}", report.summary);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn slowloris_headers_or_body_end_at_the_deadline() {
        let every = Duration::from_millis(100);
        let (headers, _) = server(move |mut tcp| async move {
            read_head(&mut tcp).await;
            trickle(
                &mut tcp,
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
                every,
            )
            .await;
        })
        .await;
        let (body, _) = server(move |mut tcp| async move {
            read_head(&mut tcp).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_ok() {
                trickle(&mut tcp, &[b'o'; 1000], every).await;
            }
        })
        .await;
        let timeout = Duration::from_millis(1500);
        for url in [headers, body] {
            let (report, lines, took) = check(&url, timeout).await;
            assert!(!report.ok);
            assert_eq!(report.summary, "timed out", "{url}");
            assert_eq!(healthz_code(&lines), Some("0"), "{lines:?}");
            assert!(
                took >= timeout && took < timeout + Duration::from_millis(500),
                "{url}: {took:?}"
            );
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed_to_another_host_or_in_a_loop() {
        // The other host: any connection would carry the cluster's token.
        let (elsewhere, elsewhere_conns) = server(|mut tcp| async move {
            read_head(&mut tcp).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        })
        .await;
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        let (url, _) = server(move |mut tcp| {
            let (r, elsewhere) = (r.clone(), elsewhere.clone());
            async move {
                loop {
                    let head = read_head(&mut tcp).await;
                    if head.is_empty() {
                        return;
                    }
                    let n = r.fetch_add(1, SeqCst);
                    // First to the other host, then to itself (a loop).
                    let to = if n == 0 {
                        format!("{elsewhere}/healthz")
                    } else {
                        "/healthz".into()
                    };
                    let resp = format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if tcp.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        for _ in 0..2 {
            let before = requests.load(SeqCst);
            let (report, lines, took) = check(&url, Duration::from_secs(5)).await;
            assert!(!report.ok);
            assert_eq!(report.summary, "healthz 302: redirect not followed");
            assert_eq!(healthz_code(&lines), Some("302"), "{lines:?}");
            let names: Vec<&str> = report.collectors.iter().map(|c| c.name).collect();
            assert_eq!(names, ["apiserver"], "readyz is not asked either");
            assert_eq!(requests.load(SeqCst) - before, 1, "one request per check");
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
        assert_eq!(
            elsewhere_conns.load(SeqCst),
            0,
            "credentials went elsewhere"
        );
    }

    #[tokio::test]
    async fn a_tls_reset_mid_handshake_fails_fast_with_a_short_reason() {
        let (url, conns) = server(|mut tcp| async move {
            // Read (part of) the ClientHello, then close with SO_LINGER 0:
            // the kernel answers with a RST instead of a FIN.
            let mut b = [0u8; 64];
            let _ = tcp.read(&mut b).await;
            let _ = tcp.set_zero_linger();
            drop(tcp);
        })
        .await;
        let url = url.replace("http://", "https://");
        let (report, lines, took) = check(&url, Duration::from_secs(5)).await;
        assert!(!report.ok);
        assert_eq!(healthz_code(&lines), Some("0"), "{lines:?}");
        assert!(conns.load(SeqCst) >= 1);
        assert!(took < Duration::from_secs(2), "{took:?}");
        let s = &report.summary;
        assert!(s.starts_with("unreachable: "), "{s}");
        assert!(s.contains("reset"), "{s}");
        assert!(
            s.len() < 160 && !s.contains("127.0.0.1"),
            "short, no URL: {s}"
        );
    }
}
