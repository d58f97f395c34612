//! The Kubernetes/OpenShift check: the API server first (healthz, then
//! readyz when unhealthy), then the other collectors concurrently. Each
//! collector is timed, its errors counted, its panics contained; only
//! unexpected conditions are emitted, so a healthy cluster emits little.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;

use super::kube::{KubeClient, KubeError};
use super::{CheckCtx, CheckReport, Checker, CollectorOutcome};
use crate::clock::Clock;
use crate::feed::{ClusterEntry, CredentialSource};
use crate::metrics::{names, Metrics};
use crate::model::Credentials;
use crate::secrets::SecretsKey;

/// Emits per-cluster metrics: the cluster's tags plus extra ones.
pub struct Emit<'a> {
    pub metrics: &'a Metrics,
    pub cluster: &'a ClusterEntry,
}

impl Emit<'_> {
    pub fn gauge(&self, name: &str, value: u64, extra: &[(&str, &str)]) {
        self.metrics
            .gauge(name, value, &self.cluster.tags_with(extra));
    }
    /// One gauge of 1 per unexpected condition, tagged `extra`, `type`, `status`.
    pub fn conditions(
        &self,
        name: &str,
        conditions: &[Condition],
        unexpected: impl Fn(&Condition) -> bool,
        extra: &[(&str, &str)],
    ) {
        for c in conditions.iter().filter(|c| unexpected(c)) {
            let mut tags: Vec<(&str, &str)> = extra.to_vec();
            tags.extend([("type", c.type_.as_str()), ("status", c.status.as_str())]);
            self.gauge(name, 1, &tags);
        }
    }
    pub fn gauge_i(&self, name: &str, value: i64, extra: &[(&str, &str)]) {
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
    async fn collect(
        &self,
        kube: &KubeClient,
        probe: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError>;
}

/// The full check. `collectors` run after a healthy `/healthz`.
pub struct KubeChecker {
    key: Option<SecretsKey>,
    collectors: Vec<Arc<dyn Collector>>,
    concurrency: usize,
    clock: Clock,
    insecure_logged: Mutex<HashSet<Arc<str>>>,
}

impl KubeChecker {
    pub fn new(key: Option<SecretsKey>, collectors: Vec<Arc<dyn Collector>>, clock: Clock) -> Self {
        Self {
            key,
            collectors,
            concurrency: 1,
            clock,
            insecure_logged: Mutex::new(HashSet::new()),
        }
    }

    /// The standard set of collectors after the API server.
    pub fn standard(key: Option<SecretsKey>, namespaces: Vec<String>, clock: Clock) -> Self {
        let collectors: Vec<Arc<dyn Collector>> = vec![
            Arc::new(Certificate),
            Arc::new(Version),
            Arc::new(Nodes),
            Arc::new(ClusterOperators),
            Arc::new(ClusterVersion),
            Arc::new(Pods { namespaces }),
        ];
        Self::new(key, collectors, clock)
    }

    /// How many collectors run at once inside one check (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn healthz_only(key: Option<SecretsKey>, clock: Clock) -> Self {
        Self::new(key, Vec::new(), clock)
    }

    fn credentials(&self, e: &ClusterEntry) -> Result<Credentials, String> {
        match &e.credentials {
            CredentialSource::None => Ok(Credentials::default()),
            CredentialSource::Plain(c) => Ok((**c).clone()),
            CredentialSource::Sealed(s) => match &self.key {
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
            if seen.insert(e.id.clone()) {
                tracing::warn!(cluster = %e.id, "insecureSkipTLSVerify is set: the API server's certificate is not verified");
            }
        }
        let kube = match KubeClient::new(&e.api_server, &creds, ctx.deadline) {
            Ok(k) => k,
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
        let (code, peer) = match &health {
            Ok(r) => (r.status, r.peer_certificate.clone()),
            Err(_) => (0, None),
        };
        emit.gauge(names::HEALTHZ_CODE, code.into(), &[]);
        if code != 200 {
            let why = match &health {
                Err(err) => err.to_string(),
                Ok(_) => format!("healthz {code}"),
            };
            let mut outcomes = vec![CollectorOutcome {
                name: "apiserver",
                ok: false,
                duration_ms: apiserver_ms,
                error: Some(why.clone().into_boxed_str()),
            }];
            if code != 0 {
                outcomes.push(readyz(&kube, emit).await);
            }
            return CheckReport {
                ok: false,
                summary: why,
                collectors: outcomes.into_boxed_slice(),
            };
        }
        let probe = Probe {
            peer_certificate: peer,
            now_unix: self.clock.now_ms() / 1000,
        };

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
                "healthz 200".into()
            } else {
                format!("healthz 200; {}", failures.join("; "))
            },
            collectors: outcomes.into_boxed_slice(),
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
            Err(KubeError::Decode("collector panicked".into()))
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

#[derive(Deserialize, Default)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

#[derive(Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "gitVersion")]
    pub git_version: String,
}

#[derive(Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Deserialize, Default)]
pub struct NodeStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The node's role from its `node-role.kubernetes.io/<role>` labels.
pub fn node_role(labels: &BTreeMap<String, String>) -> &str {
    let mut role = "worker";
    for k in labels.keys() {
        if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
            if r == "master" || r == "control-plane" {
                return "master";
            }
            if !r.is_empty() {
                role = r;
            }
        }
    }
    role
}

/// Whether a node condition is unexpected: Ready not True, or a pressure /
/// network condition True.
pub fn node_condition_unexpected(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Ready" => c.status != "True",
        "MemoryPressure" | "DiskPressure" | "PIDPressure" | "NetworkUnavailable" => {
            c.status == "True"
        }
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct ClusterOperator {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: OperatorStatus,
}

#[derive(Deserialize, Default)]
pub struct OperatorStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

pub fn operator_condition_unexpected(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Available" => c.status != "True",
        "Degraded" => c.status == "True",
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct ClusterVersionObj {
    #[serde(default)]
    pub spec: CvSpec,
    #[serde(default)]
    pub status: CvStatus,
}

#[derive(Deserialize, Default)]
pub struct CvSpec {
    #[serde(default, rename = "desiredUpdate")]
    pub desired_update: Option<CvRelease>,
}

#[derive(Deserialize, Default)]
pub struct CvRelease {
    #[serde(default)]
    pub version: String,
}

#[derive(Deserialize, Default)]
pub struct CvStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub desired: CvRelease,
    #[serde(default)]
    pub history: Vec<CvHistory>,
}

#[derive(Deserialize)]
pub struct CvHistory {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub version: String,
}

impl ClusterVersionObj {
    /// The last completed version in the history (the running one).
    pub fn actual(&self) -> &str {
        self.status
            .history
            .iter()
            .find(|h| h.state == "Completed")
            .map_or("", |h| h.version.as_str())
    }
    pub fn desired(&self) -> &str {
        match &self.spec.desired_update {
            Some(d) if !d.version.is_empty() => &d.version,
            _ => &self.status.desired.version,
        }
    }
}

pub fn clusterversion_condition_unexpected(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Available" => c.status != "True",
        "Degraded" | "Failing" => c.status == "True",
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Deserialize, Default)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, rename = "containerStatuses")]
    pub container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default, rename = "restartCount")]
    pub restart_count: u64,
    #[serde(default)]
    pub state: ContainerState,
}

#[derive(Deserialize, Default)]
pub struct ContainerState {
    #[serde(default)]
    pub waiting: Option<Waiting>,
}

#[derive(Deserialize)]
pub struct Waiting {
    #[serde(default)]
    pub reason: String,
}

/// Pod conditions worth reporting: Ready or ContainersReady not True on a
/// Running pod, PodScheduled not True on a Pending one. Completed pods are quiet.
pub fn pod_condition_unexpected(pod: &Pod, c: &Condition) -> bool {
    match (pod.status.phase.as_str(), c.type_.as_str()) {
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
        emit.gauge_i(
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
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let v: VersionInfo = kube.get_json("/version").await?;
        emit.gauge(names::CLUSTER_VERSION, 1, &[("gitVersion", &v.git_version)]);
        Ok(())
    }
}

struct Nodes;

#[async_trait]
impl Collector for Nodes {
    fn name(&self) -> &'static str {
        "nodes"
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let mut roles: BTreeMap<String, u64> = BTreeMap::new();
        kube.list("/api/v1/nodes", |n: Node| {
            *roles
                .entry(node_role(&n.metadata.labels).to_string())
                .or_default() += 1;
            emit.conditions(
                names::NODE_CONDITIONS,
                &n.status.conditions,
                node_condition_unexpected,
                &[("nodeName", &n.metadata.name)],
            );
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
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let mut count = 0;
        let res = kube
            .list(
                "/apis/config.openshift.io/v1/clusteroperators",
                |o: ClusterOperator| {
                    count += 1;
                    emit.conditions(
                        names::OPERATOR_CONDITIONS,
                        &o.status.conditions,
                        operator_condition_unexpected,
                        &[("name", &o.metadata.name)],
                    );
                },
            )
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
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        let cv: ClusterVersionObj = match kube
            .get_json("/apis/config.openshift.io/v1/clusterversions/version")
            .await
        {
            Err(KubeError::Status(404)) => return Ok(()), // vanilla Kubernetes
            other => other?,
        };
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

struct Pods {
    namespaces: Vec<String>,
}

#[async_trait]
impl Collector for Pods {
    fn name(&self) -> &'static str {
        "pods"
    }
    async fn collect(
        &self,
        kube: &KubeClient,
        _: &Probe,
        emit: &Emit<'_>,
    ) -> Result<(), KubeError> {
        for ns in &self.namespaces {
            let path = format!("/api/v1/namespaces/{ns}/pods");
            let res = kube
                .list(&path, |p: Pod| {
                    let (name, namespace) = (&p.metadata.name, &p.metadata.namespace);
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
                                    ("containername", &cs.name),
                                    ("reason", &w.reason),
                                ],
                            );
                        }
                        if cs.restart_count >= RESTART_THRESHOLD {
                            emit.gauge(
                                names::POD_RESTARTS,
                                cs.restart_count,
                                &[
                                    ("name", name),
                                    ("namespace", namespace),
                                    ("containername", &cs.name),
                                ],
                            );
                        }
                    }
                })
                .await;
            match res {
                Err(KubeError::Status(404)) => {} // namespace absent on this cluster
                other => other?,
            }
        }
        Ok(())
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
        assert_eq!(node_role(&n0.metadata.labels), "master");
        assert_eq!(node_role(&l.items[1].metadata.labels), "worker");
        let bad: Vec<(&str, &str)> = n0
            .status
            .conditions
            .iter()
            .filter(|c| node_condition_unexpected(c))
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(bad, vec![("DiskPressure", "True")]);
        assert!(
            node_condition_unexpected(&l.items[1].status.conditions[0]),
            "Ready Unknown is unexpected"
        );
    }

    #[test]
    fn roles_from_labels() {
        let l = |k: &str| BTreeMap::from([(k.to_string(), String::new())]);
        assert_eq!(
            node_role(&l("node-role.kubernetes.io/control-plane")),
            "master"
        );
        assert_eq!(node_role(&l("node-role.kubernetes.io/infra")), "infra");
        assert_eq!(node_role(&BTreeMap::new()), "worker");
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
            .map(|c| c.type_.as_str())
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
            .map(|c| c.type_.as_str())
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
            .map(|c| c.type_.as_str())
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
