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
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    pub ok: bool,
    pub summary: String,
}

#[async_trait]
pub trait Checker: Send + Sync + 'static {
    async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport;
}
