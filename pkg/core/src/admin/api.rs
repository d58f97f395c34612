//! The admin API's answers, defined once: the server (`admin::serve`)
//! encodes them, the command line (`clustermon check`, `drain`, `explain`)
//! decodes them. Errors are JSON too: [`ErrorAnswer`].

use serde::{Deserialize, Serialize};

use crate::schedule::LastCheck;

/// `POST /admin/check/{id}` (200), and a cluster's `last_check` in
/// `GET /debug/clusters/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub id: String,
    pub started_ms: i64,
    pub duration_ms: u64,
    pub ok: bool,
    pub summary: String,
    pub collectors: Vec<CollectorAnswer>,
}

/// One collector of a check, in the order they ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectorAnswer {
    pub name: String,
    pub ok: bool,
    pub duration_ms: u32,
    /// Why it failed (an error class and status, never a body or a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckAnswer {
    pub fn new(id: &str, last: &LastCheck) -> Self {
        Self {
            id: id.to_string(),
            started_ms: last.started_ms,
            duration_ms: last.duration_ms,
            ok: last.report.ok,
            summary: last.report.summary.to_string(),
            collectors: last
                .report
                .collectors
                .iter()
                .map(|c| CollectorAnswer {
                    name: c.name.to_string(),
                    ok: c.ok,
                    duration_ms: c.duration_ms,
                    error: c.error.as_deref().map(str::to_string),
                })
                .collect(),
        }
    }
}

/// `POST /admin/drain` (200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    pub monitor: String,
    pub draining: bool,
    /// Until then this monitor still checks what is due in its old buckets.
    pub handoff_at_ms: i64,
}

/// Any answer that is not a success, as JSON: what went wrong, in one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// The cluster the request named, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub error: String,
}

/// Where a failing cluster stands with its alerts. Declared in the status
/// page's order (worst first), which `Ord` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// At least one alert fires (unsilenced).
    Firing,
    /// Failing, fewer than `--alert-after` consecutive checks.
    Pending,
    /// Firing, and Alertmanager holds every firing alert under a silence.
    Silenced,
    /// The check failed, but no alert condition is known to fail (a
    /// collector could not run: nothing to alert on yet).
    NotAlerting,
    /// Fired, then seen clear by the monitor that sent it.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Silenced => "silenced",
            Self::Firing => "firing",
            Self::NotAlerting => "not_alerting",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert of a cluster, as its monitor tracks it (`crate::alerts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAnswer {
    pub alertname: String,
    /// The condition's own labels (node, operator, namespace/pod).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub state: AlertState,
    /// Consecutive failing checks, capped at `alert_after`.
    pub failing_checks: u32,
    /// The first failing check of the series.
    pub starts_ms: i64,
    /// When it was seen clear (resolved alerts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_ms: Option<i64>,
    pub summary: String,
}

/// A cluster whose last check failed, with what a human needs first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailingCluster {
    pub id: String,
    #[serde(default)]
    pub bucket: Option<u8>,
    /// The monitor whose check this is.
    pub monitor: String,
    pub last_check_ms: i64,
    /// The cluster's alert state: the worst of its alerts.
    pub state: AlertState,
    /// One line for humans ([`crate::status::human_summary`]).
    pub summary: String,
    /// The check's own summary, error chain included (the details view).
    pub detail: String,
    pub collectors: Vec<CollectorAnswer>,
    #[serde(default)]
    pub alerts: Vec<AlertAnswer>,
}

/// A cluster's alert that fired and was seen clear, kept for an hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedAlert {
    pub cluster: String,
    pub monitor: String,
    pub alert: AlertAnswer,
}

/// The header of a `GET /healthz/live` answer that gives the due time
/// (Unix ms of the shared grid) before which this monitor's scheduler has
/// handled every check: a lease holder that must move this monitor's
/// buckets without its heartbeat (it cannot reach the store) catches up
/// from there, not from the last heartbeat (`liveness::checks_missed_since`).
/// Absent when nothing is pending.
pub const HANDLED_THROUGH_HEADER: &str = "clustermon-handled-through";

/// The last probe of a peer's admin endpoint (`GET /healthz/live`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    pub peer: String,
    /// `alive`, `refused`, `timeout` or `error`.
    pub outcome: String,
    pub at_ms: i64,
}

/// `GET /api/monitor`: what one monitor knows of its own clusters, for the
/// fleet-wide view that any monitor (or `clustermon status`) gathers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorReport {
    pub monitor: String,
    pub version: String,
    pub generated_at_ms: i64,
    pub ready: bool,
    #[serde(default)]
    pub not_ready: Vec<String>,
    /// Consecutive failing checks before an alert fires (`--alert-after`).
    pub alert_after: u32,
    pub probes: Vec<ProbeAnswer>,
    /// Failing clusters: firing first, then pending, then the rest; at most
    /// the `limit` asked for.
    pub failing: Vec<FailingCluster>,
    /// How many failing clusters there are, listed or not.
    pub failing_total: usize,
    pub resolved: Vec<ResolvedAlert>,
}

/// How asking one monitor for its report went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatherOutcome {
    pub monitor: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub failing_total: usize,
    #[serde(default)]
    pub probes: Vec<ProbeAnswer>,
}

impl GatherOutcome {
    /// A monitor's report came.
    pub fn answered(report: &MonitorReport) -> Self {
        Self {
            failing_total: report.failing_total,
            probes: report.probes.clone(),
            ..Self::answered_by(&report.monitor)
        }
    }

    /// A source without a report of its own (Alertmanager) answered.
    pub fn answered_by(source: &str) -> Self {
        Self {
            monitor: source.to_string(),
            ok: true,
            error: None,
            failing_total: 0,
            probes: Vec::new(),
        }
    }

    /// No answer, and why.
    pub fn failed(source: String, error: String) -> Self {
        Self {
            monitor: source,
            ok: false,
            error: Some(error),
            failing_total: 0,
            probes: Vec::new(),
        }
    }
}

/// Every live monitor's failing clusters, merged: the fleet-wide view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetFailing {
    /// At most one entry per cluster (the latest check wins during a
    /// handoff), worst state first.
    pub failing: Vec<FailingCluster>,
    /// Failing clusters the monitors reported in all, listed or not.
    pub failing_total: usize,
    pub resolved: Vec<ResolvedAlert>,
    /// One per live monitor: whether its report came; a missing report
    /// means the view lacks that monitor's clusters.
    pub monitors: Vec<GatherOutcome>,
    /// Whether Alertmanager's silences could be read (`None`: no
    /// `--alertmanager-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silences: Option<GatherOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format the CLI reads (and older CLIs read): field names stay.
    #[test]
    fn answers_round_trip_with_their_documented_fields() {
        let a = CheckAnswer {
            id: "c1".into(),
            started_ms: 5,
            duration_ms: 7,
            ok: false,
            summary: "apiserver: timed out".into(),
            collectors: vec![CollectorAnswer {
                name: "apiserver".into(),
                ok: false,
                duration_ms: 7,
                error: Some("timed out".into()),
            }],
        };
        let v = serde_json::to_value(&a).unwrap();
        for k in [
            "id",
            "started_ms",
            "duration_ms",
            "ok",
            "summary",
            "collectors",
        ] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        assert_eq!(serde_json::from_value::<CheckAnswer>(v).unwrap(), a);
        let e: ErrorAnswer = serde_json::from_str(r#"{"error":"busy"}"#).unwrap();
        assert_eq!(e.id, None);
        let d = DrainAnswer {
            monitor: "m1".into(),
            draining: true,
            handoff_at_ms: 9,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DrainAnswer>(&text).unwrap(), d);
    }
}
