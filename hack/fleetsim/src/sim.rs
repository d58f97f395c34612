//! The simulated fleet: clusters, their faults, and the Kubernetes/OpenShift
//! answers they give. Everything here is pure (no sockets) so the answers are
//! unit tested; `server.rs` puts them on the wire.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// A fault a cluster can be given, at start-up or at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The connection is closed without an answer.
    Down,
    /// `/healthz` answers 500; `/readyz?verbose` names a failing check.
    Healthz500,
    /// Every answer is delayed by `--slow-delay`.
    Slow,
    /// One worker node is NotReady.
    DegradedNode,
    /// One control-plane pod's container is in CrashLoopBackOff (12 restarts).
    Crashloop,
    /// The `authentication` ClusterOperator is Degraded (OpenShift only; a
    /// cluster given this fault serves the OpenShift API).
    OperatorDegraded,
    /// The serving certificate expires in 5 days.
    CertExpiring,
    /// JSON endpoints answer 200 with invalid JSON.
    Malformed,
    /// Every request is answered 401.
    Unauthorized,
    /// Every answer is 200 with a chunked body that never ends.
    EndlessBody,
    /// Every answer (status line, headers, body) is written one byte at a
    /// time, `--slowloris-every` apart.
    Slowloris,
    /// Every request is redirected (302) to itself.
    RedirectLoop,
    /// The TCP connection is reset in the middle of the TLS handshake (after
    /// the ClientHello). Chosen at start-up, like `cert-expiring`: the
    /// cluster's URL names a listener that does only that.
    TlsReset,
}

pub const ALL_FAULTS: &[Fault] = &[
    Fault::Down,
    Fault::Healthz500,
    Fault::Slow,
    Fault::DegradedNode,
    Fault::Crashloop,
    Fault::OperatorDegraded,
    Fault::CertExpiring,
    Fault::Malformed,
    Fault::Unauthorized,
    Fault::EndlessBody,
    Fault::Slowloris,
    Fault::RedirectLoop,
    Fault::TlsReset,
];

/// Faults that decide a cluster's URL (its listener), so they are given at
/// start-up only and cannot be set or cleared through the control endpoint.
pub const LISTENER_FAULTS: &[Fault] = &[Fault::CertExpiring, Fault::TlsReset];

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Down => "down",
            Fault::Healthz500 => "healthz500",
            Fault::Slow => "slow",
            Fault::DegradedNode => "degraded-node",
            Fault::Crashloop => "crashloop",
            Fault::OperatorDegraded => "operator-degraded",
            Fault::CertExpiring => "cert-expiring",
            Fault::Malformed => "malformed",
            Fault::Unauthorized => "unauthorized",
            Fault::EndlessBody => "endless-body",
            Fault::Slowloris => "slowloris",
            Fault::RedirectLoop => "redirect-loop",
            Fault::TlsReset => "tls-reset",
        }
    }

    pub fn parse(s: &str) -> Result<Fault, String> {
        ALL_FAULTS
            .iter()
            .copied()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ALL_FAULTS.iter().map(|f| f.as_str()).collect();
                format!("unknown fault {s:?} (known: {})", known.join(", "))
            })
    }
}

/// `KIND=COUNT` from `--fault`.
pub fn parse_fault_arg(s: &str) -> Result<(Fault, usize), String> {
    let (kind, count) = s
        .split_once('=')
        .ok_or_else(|| format!("--fault {s:?}: expected KIND=COUNT"))?;
    let fault = Fault::parse(kind)?;
    let count = count
        .parse()
        .map_err(|_| format!("--fault {s:?}: COUNT must be a number"))?;
    Ok((fault, count))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Vanilla,
    OpenShift,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Vanilla => "kubernetes",
            Flavor::OpenShift => "openshift",
        }
    }
}

/// How a cluster authenticates its clients.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Plain http, no credentials (for tests without TLS).
    None,
    Bearer(String),
    /// The DER of the client certificate the cluster accepts.
    ClientCert(Vec<u8>),
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer",
            Auth::ClientCert(_) => "client-certificate",
        }
    }
}

pub struct Cluster {
    pub id: String,
    pub index: usize,
    pub url: String,
    pub base_flavor: Flavor,
    pub nodes: usize,
    pub pods: usize,
    pub auth: Auth,
    pub faults: Mutex<BTreeSet<Fault>>,
    pub requests: AtomicU64,
}

impl Cluster {
    pub fn faults(&self) -> BTreeSet<Fault> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn has(&self, f: Fault) -> bool {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&f)
    }

    pub fn flavor(&self) -> Flavor {
        if self.has(Fault::OperatorDegraded) {
            Flavor::OpenShift
        } else {
            self.base_flavor
        }
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn summary(&self) -> Value {
        let faults: Vec<_> = self.faults().iter().map(|f| f.as_str()).collect();
        json!({
            "id": self.id,
            "url": self.url,
            "flavor": self.flavor().as_str(),
            "auth": self.auth.kind(),
            "nodes": self.nodes,
            "pods": self.pods,
            "faults": faults,
            "requests": self.requests.load(Ordering::Relaxed),
        })
    }
}

/// Cluster ids: `c-00000`, `c-00001`, … (wider once the fleet needs it).
pub fn cluster_id(prefix: &str, i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(5);
    format!("{prefix}{i:0width$}")
}

/// Spreads `--fault KIND=COUNT` over the fleet from the end of the id range
/// backwards, one fault per cluster, in the order the flags were given, so
/// the first clusters stay healthy. Errors when they do not fit.
pub fn assign_faults(n: usize, faults: &[(Fault, usize)]) -> Result<Vec<Vec<Fault>>, String> {
    let total: usize = faults.iter().map(|(_, c)| c).sum();
    if total > n {
        return Err(format!(
            "--fault asks for {total} faulty clusters but the fleet has {n}"
        ));
    }
    let mut out = vec![Vec::new(); n];
    let mut next = n;
    for &(f, count) in faults {
        for _ in 0..count {
            next -= 1;
            out[next].push(f);
        }
    }
    Ok(out)
}

/// What a request asks of a cluster, from the path under `/clusters/{id}`.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Version,
    Nodes,
    Pods(String),
    ClusterOperators,
    ClusterVersion,
    NotFound,
}

pub fn route(path: &str) -> Endpoint {
    let path = path.trim_end_matches('/');
    match path {
        "/healthz" | "/livez" => return Endpoint::Healthz,
        "/readyz" => return Endpoint::Readyz,
        "/version" => return Endpoint::Version,
        "/api/v1/nodes" => return Endpoint::Nodes,
        "/apis/config.openshift.io/v1/clusteroperators" => return Endpoint::ClusterOperators,
        "/apis/config.openshift.io/v1/clusterversions/version" => return Endpoint::ClusterVersion,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        if let Some((ns, "pods")) = rest.split_once('/') {
            if !ns.is_empty() && !ns.contains('/') {
                return Endpoint::Pods(ns.to_string());
            }
        }
    }
    Endpoint::NotFound
}

/// `limit` and `continue` from a query string.
pub fn page_params(query: &str) -> (Option<usize>, usize) {
    let mut limit = None;
    let mut offset = 0;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("limit", v)) => limit = v.parse().ok().filter(|l| *l > 0),
            Some(("continue", v)) => {
                offset = v
                    .strip_prefix("off-")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    (limit, offset)
}

/// An answer: status, content type, body.
pub struct Answer {
    pub status: u16,
    pub json: bool,
    pub body: String,
}

impl Answer {
    fn json(v: &Value) -> Self {
        Answer {
            status: 200,
            json: true,
            body: v.to_string(),
        }
    }
    /// A Kubernetes `Status` answer, as an API server sends errors.
    pub fn status(status: u16, reason: &str, message: &str) -> Self {
        Answer {
            status,
            json: true,
            body: json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason, "code": status,
            })
            .to_string(),
        }
    }
}

pub const KUBE_VERSION: &str = "v1.30.4";
pub const OPENSHIFT_VERSION: &str = "4.17.3";
pub const NOT_READY_NODE: &str = "worker-0";
pub const CRASHLOOP_POD: &str = "kube-apiserver-guard-0";
pub const CRASHLOOP_CONTAINER: &str = "guard";
pub const DEGRADED_OPERATOR: &str = "authentication";
pub const FAILING_READYZ_CHECK: &str = "etcd";
const MASTERS: usize = 3;

/// Namespaces that hold the simulated control-plane pods.
pub fn pod_namespaces(flavor: Flavor) -> &'static [&'static str] {
    match flavor {
        Flavor::Vanilla => &["kube-system"],
        Flavor::OpenShift => &[
            "kube-system",
            "openshift-apiserver",
            "openshift-etcd",
            "openshift-ingress",
        ],
    }
}

/// The answer of a cluster to an authenticated request (faults that act at
/// the connection level, `down`, `slow`, `unauthorized`, are the server's).
pub fn answer(c: &Cluster, ep: &Endpoint, query: &str, page_cap: usize) -> Answer {
    let flavor = c.flavor();
    let malformed = c.has(Fault::Malformed);
    let bad_json = || Answer {
        status: 200,
        json: true,
        body: "{\"kind\":\"List\",\"items\":[{\"metadata\":".into(),
    };
    match ep {
        Endpoint::Healthz => {
            if c.has(Fault::Healthz500) {
                Answer {
                    status: 500,
                    json: false,
                    body: format!(
                        "[-]{FAILING_READYZ_CHECK} failed: reason withheld\nhealthz check failed\n"
                    ),
                }
            } else {
                Answer {
                    status: 200,
                    json: false,
                    body: "ok".into(),
                }
            }
        }
        Endpoint::Readyz => {
            let failing = c.has(Fault::Healthz500);
            let mut body = String::new();
            for check in [
                "ping",
                "log",
                FAILING_READYZ_CHECK,
                "informer-sync",
                "shutdown",
            ] {
                if failing && check == FAILING_READYZ_CHECK {
                    let _ = writeln!(body, "[-]{check} failed: reason withheld");
                } else {
                    let _ = writeln!(body, "[+]{check} ok");
                }
            }
            body.push_str(if failing {
                "readyz check failed\n"
            } else {
                "readyz check passed\n"
            });
            Answer {
                status: if failing { 500 } else { 200 },
                json: false,
                body,
            }
        }
        Endpoint::Version if malformed => bad_json(),
        Endpoint::Version => Answer::json(&json!({
            "major": "1", "minor": "30", "gitVersion": KUBE_VERSION,
            "gitCommit": "e3c5c7ac2bbd5a4e2fe8ef3d0f1e4b5a6c7d8e9f", "gitTreeState": "clean",
            "buildDate": "2026-09-01T10:00:00Z", "goVersion": "go1.22.5", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        Endpoint::Nodes if malformed => bad_json(),
        Endpoint::Nodes => {
            let (limit, offset) = page_params(query);
            list_page(
                "NodeList",
                c.nodes,
                limit.unwrap_or(usize::MAX).min(page_cap),
                offset,
                |i| node(c, i),
            )
        }
        Endpoint::Pods(_) if malformed => bad_json(),
        Endpoint::Pods(ns) => {
            let namespaces = pod_namespaces(flavor);
            let Some(k) = namespaces.iter().position(|n| n == ns) else {
                return list_page("PodList", 0, 1, 0, |_| Value::Null);
            };
            // Pods are spread over the namespaces; the first takes the rest.
            let per = c.pods / namespaces.len();
            let here = if k == 0 {
                c.pods - per * (namespaces.len() - 1)
            } else {
                per
            };
            let (limit, offset) = page_params(query);
            list_page(
                "PodList",
                here,
                limit.unwrap_or(usize::MAX).min(page_cap),
                offset,
                |i| pod(c, ns, i),
            )
        }
        Endpoint::ClusterOperators | Endpoint::ClusterVersion if flavor == Flavor::Vanilla => {
            Answer::status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
        Endpoint::ClusterOperators if malformed => bad_json(),
        Endpoint::ClusterOperators => {
            let (limit, offset) = page_params(query);
            list_page(
                "ClusterOperatorList",
                OPERATORS.len(),
                limit.unwrap_or(usize::MAX).min(page_cap),
                offset,
                |i| operator(c, OPERATORS[i]),
            )
        }
        Endpoint::ClusterVersion if malformed => bad_json(),
        Endpoint::ClusterVersion => Answer::json(&cluster_version()),
        Endpoint::NotFound => Answer::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn list_page(
    kind: &str,
    total: usize,
    limit: usize,
    offset: usize,
    item: impl Fn(usize) -> Value,
) -> Answer {
    let end = offset.saturating_add(limit).min(total);
    let items: Vec<Value> = (offset.min(total)..end).map(item).collect();
    let mut meta = json!({ "resourceVersion": "73415" });
    if end < total {
        meta["continue"] = json!(format!("off-{end}"));
        meta["remainingItemCount"] = json!(total - end);
    }
    Answer::json(&json!({ "kind": kind, "apiVersion": "v1", "metadata": meta, "items": items }))
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason,
        "message": format!("{type_} is {status}"),
        "lastHeartbeatTime": "2026-11-22T10:00:00Z",
        "lastTransitionTime": "2026-11-01T08:00:00Z",
    })
}

pub fn node_name(i: usize) -> String {
    if i < MASTERS {
        format!("master-{i}")
    } else {
        format!("worker-{}", i - MASTERS)
    }
}

fn node(c: &Cluster, i: usize) -> Value {
    let name = node_name(i);
    let role = if i < MASTERS { "master" } else { "worker" };
    let not_ready = c.has(Fault::DegradedNode) && name == NOT_READY_NODE;
    let (ready, ready_reason) = if not_ready {
        ("False", "KubeletNotReady")
    } else {
        ("True", "KubeletReady")
    };
    let images: Vec<Value> = (0..8)
        .map(|k| {
            json!({
                "names": [format!("quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:{:064x}", (i * 31 + k) as u128)],
                "sizeBytes": 400_000_000 + k * 1_000_000,
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", c.index, i),
            "resourceVersion": "73400",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                format!("node-role.kubernetes.io/{role}"): "",
                "topology.kubernetes.io/zone": format!("eastus-{}", i % 3 + 1),
            },
            "annotations": { "machine.openshift.io/machine": format!("openshift-machine-api/{}-{name}", c.id) },
        },
        "spec": { "providerID": format!("azure:///subscriptions/0000/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{name}", c.id) },
        "status": {
            "capacity": { "cpu": "8", "memory": "32863320Ki", "pods": "250" },
            "allocatable": { "cpu": "7500m", "memory": "31712344Ki", "pods": "250" },
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", ready, ready_reason),
            ],
            "addresses": [
                { "type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250 + 4) },
                { "type": "Hostname", "address": name },
            ],
            "nodeInfo": {
                "kubeletVersion": KUBE_VERSION, "containerRuntimeVersion": "cri-o://1.30.4",
                "osImage": "Red Hat Enterprise Linux CoreOS", "architecture": "amd64",
            },
            "images": images,
        },
    })
}

pub fn pod_name(ns: &str, i: usize) -> String {
    if ns == "kube-system" && i == 0 {
        CRASHLOOP_POD.to_string()
    } else {
        format!("{}-{i}", ns.trim_start_matches("openshift-"))
    }
}

fn pod(c: &Cluster, ns: &str, i: usize) -> Value {
    let name = pod_name(ns, i);
    let crash = c.has(Fault::Crashloop) && ns == "kube-system" && i == 0;
    let container = if i == 0 && ns == "kube-system" {
        CRASHLOOP_CONTAINER.to_string()
    } else {
        "main".to_string()
    };
    let (ready, state, restarts) = if crash {
        (
            "False",
            json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container" } }),
            12,
        )
    } else {
        (
            "True",
            json!({ "running": { "startedAt": "2026-11-01T08:00:00Z" } }),
            i % 3,
        )
    };
    json!({
        "metadata": {
            "name": name, "namespace": ns,
            "uid": format!("{:08x}-1111-4000-8000-{:012x}", c.index, i),
            "labels": { "app": name },
        },
        "spec": {
            "nodeName": node_name(i % c.nodes.max(1)),
            "containers": [{ "name": container, "image": "quay.io/openshift/origin-cli:4.17" }],
        },
        "status": {
            "phase": "Running",
            "podIP": format!("10.128.{}.{}", i / 250 % 250, i % 250 + 2),
            "startTime": "2026-11-01T08:00:00Z",
            "conditions": [
                condition("PodScheduled", "True", ""),
                condition("Initialized", "True", ""),
                condition("ContainersReady", ready, ""),
                condition("Ready", ready, ""),
            ],
            "containerStatuses": [{
                "name": container, "ready": ready == "True", "restartCount": restarts,
                "image": "quay.io/openshift/origin-cli:4.17", "state": state,
            }],
        },
    })
}

pub const OPERATORS: &[&str] = &[
    "authentication",
    "cloud-credential",
    "cluster-autoscaler",
    "config-operator",
    "console",
    "dns",
    "etcd",
    "image-registry",
    "ingress",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "machine-api",
    "machine-config",
    "monitoring",
    "network",
    "node-tuning",
    "openshift-apiserver",
    "operator-lifecycle-manager",
    "service-ca",
    "storage",
];

fn operator(c: &Cluster, name: &str) -> Value {
    let degraded = c.has(Fault::OperatorDegraded) && name == DEGRADED_OPERATOR;
    json!({
        "metadata": { "name": name },
        "status": {
            "conditions": [
                condition("Available", "True", "AsExpected"),
                condition("Progressing", "False", "AsExpected"),
                condition("Degraded", if degraded { "True" } else { "False" },
                    if degraded { "OAuthServerDeployment_UnavailablePod" } else { "AsExpected" }),
                condition("Upgradeable", "True", "AsExpected"),
            ],
            "versions": [{ "name": "operator", "version": OPENSHIFT_VERSION }],
        },
    })
}

fn cluster_version() -> Value {
    json!({
        "metadata": { "name": "version" },
        "spec": { "channel": "stable-4.17", "clusterID": "5c8e0d7e-0000-4000-8000-000000000000" },
        "status": {
            "desired": { "version": OPENSHIFT_VERSION, "image": "quay.io/openshift-release-dev/ocp-release@sha256:0" },
            "history": [
                { "state": "Completed", "version": OPENSHIFT_VERSION, "startedTime": "2026-11-01T08:00:00Z" },
                { "state": "Completed", "version": "4.17.1", "startedTime": "2026-10-01T08:00:00Z" },
            ],
            "conditions": [
                condition("Available", "True", ""),
                condition("Failing", "False", ""),
                condition("Progressing", "False", ""),
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(flavor: Flavor, faults: &[Fault]) -> Cluster {
        Cluster {
            id: "c-00001".into(),
            index: 1,
            url: String::new(),
            base_flavor: flavor,
            nodes: 7,
            pods: 10,
            auth: Auth::None,
            faults: Mutex::new(faults.iter().copied().collect()),
            requests: AtomicU64::new(0),
        }
    }

    #[test]
    fn faults_parse_and_spread_from_the_end() {
        assert_eq!(
            parse_fault_arg("degraded-node=3").unwrap(),
            (Fault::DegradedNode, 3)
        );
        assert!(parse_fault_arg("nope=1").unwrap_err().contains("known"));
        assert!(parse_fault_arg("down").is_err());
        assert!(parse_fault_arg("down=x").is_err());
        for f in ALL_FAULTS {
            assert_eq!(Fault::parse(f.as_str()).unwrap(), *f);
        }
        let a = assign_faults(5, &[(Fault::Down, 1), (Fault::Slow, 2)]).unwrap();
        assert_eq!(
            a,
            vec![
                vec![],
                vec![],
                vec![Fault::Slow],
                vec![Fault::Slow],
                vec![Fault::Down]
            ]
        );
        assert!(assign_faults(2, &[(Fault::Down, 3)]).is_err());
    }

    #[test]
    fn ids_sort_as_numbers() {
        assert_eq!(cluster_id("c-", 7, 300), "c-00007");
        assert_eq!(cluster_id("c-", 7, 200_000), "c-000007");
    }

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Endpoint::Healthz);
        assert_eq!(route("/readyz"), Endpoint::Readyz);
        assert_eq!(
            route("/api/v1/namespaces/kube-system/pods"),
            Endpoint::Pods("kube-system".into())
        );
        assert_eq!(route("/api/v1/namespaces//pods"), Endpoint::NotFound);
        assert_eq!(route("/nope"), Endpoint::NotFound);
    }

    fn decode(a: &Answer) -> Value {
        serde_json::from_str(&a.body).unwrap()
    }

    #[test]
    fn nodes_page_through_every_item_once() {
        let c = cluster(Flavor::Vanilla, &[]);
        let mut names = Vec::new();
        let mut query = "limit=3".to_string();
        loop {
            let v = decode(&answer(&c, &Endpoint::Nodes, &query, 500));
            for n in v["items"].as_array().unwrap() {
                names.push(n["metadata"]["name"].as_str().unwrap().to_string());
            }
            match v["metadata"]["continue"].as_str() {
                Some(cont) => query = format!("limit=3&continue={cont}"),
                None => break,
            }
        }
        let want: Vec<_> = (0..7).map(node_name).collect();
        assert_eq!(names, want);
        // The server caps pages even when the client asks for everything.
        let v = decode(&answer(&c, &Endpoint::Nodes, "", 2));
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn faults_show_in_answers() {
        let healthy = cluster(Flavor::OpenShift, &[]);
        let faulty = cluster(
            Flavor::Vanilla,
            &[
                Fault::DegradedNode,
                Fault::Crashloop,
                Fault::OperatorDegraded,
                Fault::Healthz500,
            ],
        );
        assert_eq!(answer(&healthy, &Endpoint::Healthz, "", 500).status, 200);
        assert_eq!(answer(&faulty, &Endpoint::Healthz, "", 500).status, 500);
        let r = answer(&faulty, &Endpoint::Readyz, "verbose", 500);
        assert!(r.body.contains("[-]etcd failed"), "{}", r.body);
        let nodes = answer(&faulty, &Endpoint::Nodes, "", 500).body;
        assert!(nodes.contains("KubeletNotReady"));
        assert!(!answer(&healthy, &Endpoint::Nodes, "", 500)
            .body
            .contains("KubeletNotReady"));
        let pods = answer(&faulty, &Endpoint::Pods("kube-system".into()), "", 500).body;
        assert!(pods.contains("CrashLoopBackOff"));
        // operator-degraded turns a vanilla cluster into an OpenShift one.
        let ops = answer(&faulty, &Endpoint::ClusterOperators, "", 500);
        assert_eq!(ops.status, 200);
        assert!(ops.body.contains("OAuthServerDeployment_UnavailablePod"));
        let vanilla = cluster(Flavor::Vanilla, &[]);
        assert_eq!(
            answer(&vanilla, &Endpoint::ClusterOperators, "", 500).status,
            404
        );
        assert_eq!(
            answer(&vanilla, &Endpoint::ClusterVersion, "", 500).status,
            404
        );
        let bad = cluster(Flavor::OpenShift, &[Fault::Malformed]);
        assert!(
            serde_json::from_str::<Value>(&answer(&bad, &Endpoint::Version, "", 500).body).is_err()
        );
        assert_eq!(answer(&bad, &Endpoint::Healthz, "", 500).status, 200);
    }

    #[test]
    fn pods_are_split_over_namespaces() {
        let mut c = cluster(Flavor::OpenShift, &[]);
        c.pods = 10;
        let total: usize = pod_namespaces(Flavor::OpenShift)
            .iter()
            .map(|ns| {
                let v = decode(&answer(&c, &Endpoint::Pods(ns.to_string()), "", 500));
                v["items"].as_array().unwrap().len()
            })
            .sum();
        assert_eq!(total, 10);
        let v = decode(&answer(&c, &Endpoint::Pods("elsewhere".into()), "", 500));
        assert!(v["items"].as_array().unwrap().is_empty());
    }
}
