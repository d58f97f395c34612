//! The Alertmanager v2 payload of one alert (`POST /api/v2/alerts` takes a
//! JSON array of these): labels, annotations, `startsAt`, `endsAt`,
//! `generatorURL`.
//!
//! Labels, in order of precedence: `alertname`, `cluster` (the id), the
//! condition's own labels; then the static `--alert-labels`; then the
//! cluster document's labels as the metric tags carry them (already bounded
//! by `metrics::labels`: 16 labels, 64/128 bytes, 400 bytes in all). Names
//! become Prometheus label names (`[A-Za-z_][A-Za-z0-9_]*`, others `_`); a
//! name taken by a label of higher precedence is left out. Nothing
//! monitor-specific is a label, so an alert keeps its identity (its
//! fingerprint) when another monitor takes the cluster over. Annotations: a
//! one-line `summary` and `explain_url` (the owner's admin API). No
//! credential is ever read here: a cluster entry's tags and id, and the
//! check's summaries (which never carry one).

use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Map, Value};

use super::state::{Out, Phase};
use crate::metrics::labels::MAX_LABEL_VALUE_BYTES;

/// A summary annotation is one line of at most this many bytes.
pub const MAX_SUMMARY_BYTES: usize = 300;

/// What an alert's payload is built from, besides the state machine's output.
pub struct Context<'a> {
    pub cluster: &'a str,
    /// The cluster's tags (`ClusterEntry::tags`: `resourceId` first, then labels).
    pub cluster_tags: &'a crate::metrics::labels::Tags,
    pub static_labels: &'a [(String, String)],
    /// This monitor's admin URL (`EngineConfig::admin_url`).
    pub admin_url: &'a str,
}

/// A Prometheus label name: ASCII letters, digits and `_`, not starting
/// with a digit; empty stays empty (left out).
pub fn label_name(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// One line, at most `max` bytes (cut at a character boundary).
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The explain view of a cluster on this monitor's admin API.
pub fn explain_url(admin_url: &str, cluster: &str) -> String {
    let mut id = String::with_capacity(cluster.len());
    for b in cluster.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}/debug/clusters/{id}", admin_url.trim_end_matches('/'))
}

/// The labels of an alert (see the module's doc for the precedence).
pub fn labels(out: &Out, ctx: &Context<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: String, v: &str| {
        if !k.is_empty() && !m.contains_key(&k) {
            m.insert(k, Value::String(one_line(v, MAX_LABEL_VALUE_BYTES)));
        }
    };
    put("alertname".into(), out.key.alertname);
    put("cluster".into(), ctx.cluster);
    for (k, v) in &out.key.labels {
        put(label_name(k), v);
    }
    for (k, v) in ctx.static_labels {
        put(label_name(k), v);
    }
    for (k, v) in ctx.cluster_tags.iter().skip(1) {
        put(label_name(k), v);
    }
    m
}

/// The JSON of one alert.
pub fn alert(out: &Out, ctx: &Context<'_>) -> Value {
    let url = explain_url(ctx.admin_url, ctx.cluster);
    let summary = match out.phase {
        Phase::Firing => one_line(&out.summary, MAX_SUMMARY_BYTES),
        Phase::Resolved => one_line(&format!("resolved: {}", out.summary), MAX_SUMMARY_BYTES),
    };
    json!({
        "labels": labels(out, ctx),
        "annotations": { "summary": summary, "explain_url": url },
        "startsAt": rfc3339(out.starts_ms),
        "endsAt": rfc3339(out.ends_ms),
        "generatorURL": url,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::state::Key;
    use super::*;
    use crate::metrics::labels::{cluster_tags, Tags, LABEL_TAGS_BUDGET, MAX_LABEL_TAGS};
    use proptest::prelude::*;

    fn out(phase: Phase) -> Out {
        Out {
            key: Key {
                alertname: "ClusterNodeNotReady",
                labels: vec![("node", "worker-1".into())],
            },
            phase,
            starts_ms: 1_700_000_000_000,
            ends_ms: 1_700_000_344_000,
            summary: "node worker-1: Ready=False".into(),
        }
    }

    #[test]
    fn the_payload_has_the_v2_fields_and_labels_in_precedence() {
        let mut doc = BTreeMap::new();
        doc.insert("region".to_string(), "westeurope".to_string());
        doc.insert("app.kubernetes.io/name".to_string(), "x".to_string());
        doc.insert("cluster".to_string(), "not-the-id".to_string());
        doc.insert("env".to_string(), "doc".to_string());
        let tags = Tags::new(&cluster_tags("c-1", &doc).0);
        let statics = vec![("env".to_string(), "prod".to_string())];
        let ctx = Context {
            cluster: "c-1",
            cluster_tags: &tags,
            static_labels: &statics,
            admin_url: "http://10.0.0.5:9464/",
        };
        let v = alert(&out(Phase::Firing), &ctx);
        assert_eq!(
            v["labels"],
            json!({
                "alertname": "ClusterNodeNotReady",
                "cluster": "c-1",
                "node": "worker-1",
                "env": "prod",
                "region": "westeurope",
                "app_kubernetes_io_name": "x",
            })
        );
        assert_eq!(v["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["endsAt"], "2023-11-14T22:19:04.000Z");
        assert_eq!(
            v["annotations"]["explain_url"],
            "http://10.0.0.5:9464/debug/clusters/c-1"
        );
        assert_eq!(v["generatorURL"], v["annotations"]["explain_url"]);
        assert_eq!(v["annotations"]["summary"], "node worker-1: Ready=False");
        let r = alert(&out(Phase::Resolved), &ctx);
        assert_eq!(
            r["annotations"]["summary"],
            "resolved: node worker-1: Ready=False"
        );
    }

    proptest! {
        /// Whatever the document's labels and the condition's values: every
        /// label name is a Prometheus name, at most 3 fixed + statics + 16
        /// document labels, each value one line of at most 128 bytes, the
        /// summary one line. (No credential is an input here; `mod.rs`'s
        /// tests put a canary in a cluster's credentials.)
        #[test]
        fn labels_are_bounded_and_valid(
            doc in proptest::collection::btree_map("[a-zA-Z0-9./_ -]{0,80}", "\\PC{0,200}", 0..40),
            node in "\\PC{0,300}",
            summary in "(\\PC|\n){0,600}",
        ) {
            let tags = Tags::new(&cluster_tags("c-1", &doc).0);
            let mut o = out(Phase::Firing);
            o.key.labels = vec![("node", node)];
            o.summary = summary;
            let ctx = Context { cluster: "c-1", cluster_tags: &tags, static_labels: &[], admin_url: "http://a" };
            let v = alert(&o, &ctx);
            let labels = v["labels"].as_object().unwrap();
            prop_assert!(labels.len() <= 3 + MAX_LABEL_TAGS);
            let mut doc_bytes = 0;
            for (k, val) in labels {
                prop_assert!(!k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()));
                prop_assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                let s = val.as_str().unwrap();
                prop_assert!(s.len() <= MAX_LABEL_VALUE_BYTES && !s.contains('\n'));
                if !["alertname", "cluster", "node"].contains(&k.as_str()) {
                    doc_bytes += k.len() + s.len();
                }
            }
            prop_assert!(doc_bytes <= LABEL_TAGS_BUDGET);
            let s = v["annotations"]["summary"].as_str().unwrap();
            prop_assert!(s.len() <= MAX_SUMMARY_BYTES && !s.contains('\n'));
        }
    }
}
