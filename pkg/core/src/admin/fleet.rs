//! The fleet-wide view of failing clusters: each monitor answers for its own
//! clusters (`GET /api/monitor`, [`monitor_report`]); the status page's
//! monitor (or `clustermon status`) asks every live monitor and merges
//! ([`gather`], then the pure [`crate::status::merge_reports`]), marking the
//! alerts Alertmanager holds under a silence ([`silenced`]).
//!
//! Every request has a timeout and every answer a size bound: a peer that
//! hangs or floods costs the page one "unreachable" row, nothing more.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;

use super::api::{
    CheckAnswer, FailingCluster, FleetFailing, GatherOutcome, MonitorReport, ProbeAnswer,
    ResolvedAlert,
};
use crate::alerts::sender::SendConfig;
use crate::engine::EngineHandles;
use crate::http::root_cause;
use crate::model::MonitorDoc;
use crate::status::{cluster_state, human_summary, merge_reports, sort_failing};

/// Failing clusters listed per monitor, and in the merged view, unless
/// asked otherwise (`?limit=`).
pub const DEFAULT_LIMIT: usize = 200;
/// The most a caller may ask for.
pub const MAX_LIMIT: usize = 5_000;
/// How long a peer or Alertmanager has to answer.
pub const GATHER_TIMEOUT: Duration = Duration::from_millis(1_500);
/// The largest answer read from a peer or from Alertmanager.
const MAX_ANSWER: usize = 16 << 20;

/// `GET /api/monitor`: this monitor's failing clusters (the last check
/// failed, or found an alert condition) with their alerts, its recently
/// resolved alerts and its last peer probes.
pub fn monitor_report(engine: &EngineHandles, limit: usize) -> MonitorReport {
    let now = engine.clock.now_ms();
    let me = engine.me.to_string();
    let mut failing: Vec<FailingCluster> = engine
        .last_checks
        .iter()
        .filter(|e| e.value().failing_or_alerting())
        .filter_map(|e| {
            let (id, last) = (e.key(), e.value().last());
            // Only clusters this monitor still holds (a dropped bucket's
            // last checks go with its clusters).
            let entry = engine.map.get(id)?;
            let alerts = engine.alerts.alerts_of(id);
            Some(FailingCluster {
                id: id.to_string(),
                bucket: Some(entry.bucket),
                monitor: me.clone(),
                last_check_ms: last.started_ms,
                state: cluster_state(&alerts),
                summary: human_summary(&last.report),
                detail: last.report.summary.to_string(),
                collectors: CheckAnswer::new(id, &last).collectors,
                alerts,
            })
        })
        .collect();
    sort_failing(&mut failing);
    let failing_total = failing.len();
    failing.truncate(limit);
    let mut resolved: Vec<ResolvedAlert> = engine
        .alerts
        .recently_resolved(now)
        .into_iter()
        .map(|(cluster, alert)| ResolvedAlert {
            cluster: cluster.to_string(),
            monitor: me.clone(),
            alert,
        })
        .collect();
    resolved.truncate(limit);
    let not_ready = engine.not_ready();
    MonitorReport {
        monitor: me,
        version: engine.version.clone(),
        generated_at_ms: now,
        ready: not_ready.is_empty(),
        not_ready,
        alert_after: engine.alerts.after(),
        probes: probes(engine),
        failing,
        failing_total,
        resolved,
    }
}

/// The last probe of each peer, as the membership loop recorded it.
pub fn probes(engine: &EngineHandles) -> Vec<ProbeAnswer> {
    engine
        .probes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(peer, r)| ProbeAnswer {
            peer: peer.clone(),
            outcome: r.outcome.as_str().to_string(),
            at_ms: r.at_ms,
        })
        .collect()
}

/// The HTTP client for gathering: no proxy, no redirects, bounded time.
pub fn client(peer_ca: &[reqwest::Certificate]) -> Option<reqwest::Client> {
    crate::http::client_builder()
        .tls_certs_merge(peer_ca.iter().cloned())
        .connect_timeout(GATHER_TIMEOUT)
        .timeout(GATHER_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()
}

/// Reads an answer's body up to `MAX_ANSWER` bytes.
async fn body(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| {
        if e.is_timeout() {
            format!(
                "the answer did not end within {}",
                humantime::format_duration(GATHER_TIMEOUT)
            )
        } else {
            format!("reading the answer: {}", root_cause(&e))
        }
    })? {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("answer larger than {MAX_ANSWER} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn request_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!(
            "no answer within {}",
            humantime::format_duration(GATHER_TIMEOUT)
        )
    } else {
        root_cause(e)
    }
}

/// GET `req`, then the body of a 2xx answer, bounded by `MAX_ANSWER`.
async fn get_bounded(req: reqwest::RequestBuilder) -> Result<Vec<u8>, String> {
    let r = req.send().await.map_err(|e| request_error(&e))?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status().as_u16()));
    }
    body(r).await
}

/// Asks one monitor for its report.
pub async fn fetch_report(
    client: &reqwest::Client,
    admin_url: &str,
    limit: usize,
) -> Result<MonitorReport, String> {
    let url = format!(
        "{}/api/monitor?limit={limit}",
        admin_url.trim_end_matches('/')
    );
    let bytes = get_bounded(client.get(url)).await?;
    // The serde error names the field, never a value.
    crate::decode::json_slice::<MonitorReport>(&bytes, &[])
        .map_err(|e| format!("invalid report: {e}"))
}

/// The (cluster, alertname) pairs Alertmanager holds under a silence. Every
/// `--alertmanager-url` gets every alert, so the first that answers says it.
pub async fn silenced(
    client: &reqwest::Client,
    alertmanagers: &[SendConfig],
) -> Result<HashSet<(String, String)>, String> {
    let mut last = "no Alertmanager".to_string();
    for am in alertmanagers {
        let mut req = client.get(format!(
            "{}/api/v2/alerts?active=false&silenced=true&inhibited=false&unprocessed=false",
            am.base_url
        ));
        if let Some(t) = &am.token {
            req = req.bearer_auth(t.get().expose());
        }
        let bytes = match get_bounded(req).await {
            Ok(b) => b,
            Err(e) => {
                last = format!("Alertmanager: {e}");
                continue;
            }
        };
        let alerts: Vec<serde_json::Value> = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                last = "Alertmanager: the answer is not a JSON array of alerts".into();
                continue;
            }
        };
        return Ok(alerts
            .iter()
            .filter(|a| {
                a["status"]["silencedBy"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            })
            .filter_map(|a| {
                Some((
                    a["labels"]["cluster"].as_str()?.to_string(),
                    a["labels"]["alertname"].as_str()?.to_string(),
                ))
            })
            .collect());
    }
    Err(last)
}

/// The fleet-wide view: this monitor's report and every other live
/// monitor's (asked at once, each bounded by [`GATHER_TIMEOUT`]), merged,
/// with Alertmanager's silences marked.
pub async fn gather(
    engine: &EngineHandles,
    client: Option<&reqwest::Client>,
    live: &[MonitorDoc],
    limit: usize,
) -> FleetFailing {
    const NO_CLIENT: &str = "this monitor has no HTTP client";
    let me = &*engine.me;
    let peers = live.iter().filter(|m| m.id != me);
    let asks = peers.map(|m| async move {
        let r = match client {
            None => Err(NO_CLIENT.to_string()),
            Some(_) if m.admin_url.is_empty() => {
                Err("no admin URL advertised (--admin-advertise)".to_string())
            }
            Some(c) => fetch_report(c, &m.admin_url, limit).await,
        };
        (m.id.clone(), r)
    });
    let silences = async {
        match client {
            _ if engine.alertmanagers.is_empty() => None,
            None => Some(Err(NO_CLIENT.to_string())),
            Some(c) => Some(silenced(c, &engine.alertmanagers).await),
        }
    };
    let (answers, silences) = futures::join!(join_all(asks), silences);
    let mine = monitor_report(engine, limit);
    let mut outcomes = vec![GatherOutcome::answered(&mine)];
    let mut reports = vec![mine];
    for (id, r) in answers {
        match r {
            Ok(mut report) => {
                // A report speaks for the monitor it was asked of.
                report.monitor.clone_from(&id);
                for c in &mut report.failing {
                    c.monitor.clone_from(&id);
                }
                for r in &mut report.resolved {
                    r.monitor.clone_from(&id);
                }
                outcomes.push(GatherOutcome::answered(&report));
                reports.push(report);
            }
            Err(e) => outcomes.push(GatherOutcome::failed(id, e)),
        }
    }
    let (set, silences) = match silences {
        None => (HashSet::new(), None),
        Some(Ok(set)) => (set, Some(GatherOutcome::answered_by("alertmanager"))),
        Some(Err(e)) => (
            HashSet::new(),
            Some(GatherOutcome::failed("alertmanager".into(), e)),
        ),
    };
    let mut view = merge_reports(&reports, &set, limit);
    outcomes.sort_by(|a, b| a.monitor.cmp(&b.monitor));
    view.monitors = outcomes;
    view.silences = silences;
    view
}
