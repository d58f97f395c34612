//! The check seam. The engine calls a [`Checker`] for each due cluster; the
//! checker emits the cluster's metrics and returns a short report.
//! [`collect::KubeChecker`] is the production checker: the API server
//! first, then the collectors.

pub mod collect;
pub mod kube;
pub mod tls;

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
    pub summary: String,
    /// Each collector that ran, in order (the API server first).
    pub collectors: Box<[CollectorOutcome]>,
}

impl CheckReport {
    pub fn failed(summary: impl Into<String>) -> Self {
        Self {
            ok: false,
            summary: summary.into(),
            collectors: Box::new([]),
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
