//! The check seam. The engine calls a [`Checker`] for each due cluster; the
//! checker emits the cluster's metrics and returns a short report.
//! [`collect::KubeChecker`] is the production checker: the API server
//! first, then the collectors.

pub mod collect;
pub mod h1;
pub mod kube;
pub mod tls;
pub mod tls_io;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::feed::ClusterEntry;
use crate::metrics::Metrics;

pub struct CheckCtx<'a> {
    pub cluster: &'a ClusterEntry,
    pub metrics: &'a Metrics,
    /// The check must be done by then; the engine cancels it shortly after.
    pub deadline: Instant,
}

/// Outcome of a check, kept for operators (never contains credentials).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    /// A healthy check's is a constant ([`HEALTHY_SUMMARY`]): every cluster
    /// keeps its last report, so it is not allocated each time.
    pub summary: std::borrow::Cow<'static, str>,
    /// Each collector that ran, in order (the API server first).
    pub collectors: Box<[CollectorOutcome]>,
    /// Failing conditions the collectors found, for alerts (`crate::alerts`):
    /// at most [`MAX_CONDITIONS`]. The API server's own state is read from
    /// `collectors` (its outcome, or its absence on a failed check).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A failing condition a collector found: one alert per cluster and
/// `(name, labels)`. Never carries a credential: names and states only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    /// The alert name (`alertnames::*`).
    pub name: &'static str,
    /// The condition's own labels: node, operator, namespace and pod.
    pub labels: Vec<(&'static str, String)>,
    /// One line for humans.
    pub summary: String,
}

/// The summary of a check whose API server answered healthz 200 and whose
/// collectors all passed.
pub const HEALTHY_SUMMARY: &str = "healthz 200";

/// Conditions kept per report; more (hundreds of NotReady nodes) are
/// left out, so one cluster cannot flood Alertmanager.
pub const MAX_CONDITIONS: usize = 64;

/// The alert names of the conditions, and the collector that finds each.
pub mod alertnames {
    pub const API_SERVER_DOWN: &str = "ClusterApiServerDown";
    pub const NODE_NOT_READY: &str = "ClusterNodeNotReady";
    pub const OPERATOR_DEGRADED: &str = "ClusterOperatorDegraded";
    pub const POD_CRASHLOOPING: &str = "ClusterPodCrashLooping";
    pub const CERTIFICATE_EXPIRING: &str = "ClusterCertificateExpiring";

    /// Every alert name with the collector whose outcome says whether the
    /// condition was observed by a check.
    pub const ALL: &[(&str, &str)] = &[
        (API_SERVER_DOWN, "apiserver"),
        (NODE_NOT_READY, "nodes"),
        (OPERATOR_DEGRADED, "clusteroperators"),
        (POD_CRASHLOOPING, "pods"),
        (CERTIFICATE_EXPIRING, "certificate"),
    ];
}

impl CheckReport {
    pub fn failed(summary: impl Into<String>) -> Self {
        Self {
            ok: false,
            summary: summary.into().into(),
            collectors: Box::new([]),
            conditions: Vec::new(),
        }
    }
}

/// One collector's result within a check.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollectorOutcome {
    pub name: &'static str,
    pub ok: bool,
    pub duration_ms: u32,
    /// Why it failed (an error class and status, never a body or a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Box<str>>,
}

#[async_trait]
pub trait Checker: Send + Sync + 'static {
    async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport;
}
