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
            summary: last.report.summary.clone(),
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
