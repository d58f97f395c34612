//! The check seam. The engine calls a [`Checker`] for each due cluster; the
//! checker emits the cluster's metrics and returns a short report. The
//! healthz checker is the first; the full collector set plugs in here.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::feed::ClusterEntry;
use crate::metrics::{names, Metrics};

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

/// GET `<api server>/healthz`, emitting `apiserver.healthz.code` (the HTTP
/// status, 0 when unreachable or timed out).
pub struct HealthzChecker {
    client: reqwest::Client,
}

impl HealthzChecker {
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            // Connections do not outlive a check: no idle pool.
            .pool_max_idle_per_host(0)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("clustermon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Checker for HealthzChecker {
    async fn check(&self, ctx: CheckCtx<'_>) -> CheckReport {
        let url = format!("{}/healthz", ctx.cluster.api_server.trim_end_matches('/'));
        let res = tokio::time::timeout_at(ctx.deadline, async {
            let resp = self.client.get(&url).send().await?;
            let status = resp.status().as_u16();
            // Read (and discard) a bounded body so the connection closes cleanly.
            let _ = resp.bytes().await;
            Ok::<u16, reqwest::Error>(status)
        })
        .await;
        let (code, summary) = match res {
            Ok(Ok(code)) => (code, format!("healthz {code}")),
            // reqwest errors name the URL, never headers: safe to keep.
            Ok(Err(e)) => (0, format!("healthz unreachable: {}", error_chain(&e))),
            Err(_) => (0, "healthz timed out".to_string()),
        };
        ctx.metrics.gauge(
            names::HEALTHZ_CODE,
            code.into(),
            &ctx.cluster.tags_with(&[]),
        );
        CheckReport {
            ok: code == 200,
            summary,
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
