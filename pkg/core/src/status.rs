//! The fleet's state as operators see it, computed from store reads by a
//! pure function (the `status` and `buckets` commands print it).

use serde::Serialize;

use crate::admin::api::{AlertAnswer, AlertState, FailingCluster, FleetFailing, MonitorReport};
use crate::check::CheckReport;
use crate::model::{MasterDoc, MonitorDoc};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MasterStatus {
    pub id: String,
    pub lease_expires_in_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorStatus {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub heartbeat_age_s: f64,
    pub buckets: u32,
    pub draining: bool,
    pub checks_per_s: f64,
    pub cache_size: u64,
    pub ready: bool,
    pub admin_url: String,
    pub failing: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetStatus {
    pub master: Option<MasterStatus>,
    pub generation: u64,
    pub monitors: Vec<MonitorStatus>,
    pub unassigned_buckets: u32,
    pub clusters: u64,
}

/// Owner of each bucket; a bucket whose owner is not live counts as unassigned.
pub fn bucket_owners(master: Option<&MasterDoc>, live: &[MonitorDoc]) -> Vec<Option<String>> {
    let empty = MasterDoc::empty();
    let doc = master.cloned().map(MasterDoc::normalised).unwrap_or(empty);
    doc.buckets
        .into_iter()
        .map(|b| b.owner.filter(|o| live.iter().any(|m| &m.id == o)))
        .collect()
}

pub fn fleet_status(
    master: Option<&MasterDoc>,
    live: &[MonitorDoc],
    clusters: u64,
    now_ms: i64,
) -> FleetStatus {
    let owners = bucket_owners(master, live);
    let count = |id: &str| owners.iter().filter(|o| o.as_deref() == Some(id)).count() as u32;
    FleetStatus {
        master: master.and_then(|m| {
            m.lease_held_at(now_ms).map(|id| MasterStatus {
                id: id.to_string(),
                lease_expires_in_s: (m.lease_expires_ms - now_ms) as f64 / 1000.0,
            })
        }),
        generation: master.map_or(0, |m| m.generation),
        monitors: live
            .iter()
            .map(|m| MonitorStatus {
                id: m.id.clone(),
                hostname: m.hostname.clone(),
                version: m.version.clone(),
                heartbeat_age_s: ((now_ms - m.heartbeat_at_ms).max(0)) as f64 / 1000.0,
                buckets: count(&m.id),
                draining: m.draining,
                checks_per_s: m.stats.checks_per_s,
                cache_size: m.stats.cache_size,
                ready: m.stats.ready,
                admin_url: m.admin_url.clone(),
                failing: m.stats.failing,
            })
            .collect(),
        unassigned_buckets: owners.iter().filter(|o| o.is_none()).count() as u32,
        clusters,
    }
}

// ---- the fleet-wide view of failing clusters (pure) ----

/// Removes an OS error number ("Connection refused (os error 111)") and a
/// documentation link some libraries append (": https://docs.rs/…").
fn no_os_error(s: &str) -> &str {
    let s = match s.find(": http") {
        Some(i) => &s[..i],
        None => s,
    };
    match s.find(" (os error") {
        Some(i) => &s[..i],
        None => s,
    }
}

/// A connection the server ended without an answer, in any library's words.
fn closed_early(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.contains("close_notify")
        || l.contains("eof")
        || l.contains("connection closed")
        || l.contains("closed before")
        || l.contains("connection reset")
}

/// "HTTP 403" and friends, said for humans.
fn http_words(code: &str) -> String {
    match code.parse::<u16>() {
        Ok(401) => "credentials rejected (HTTP 401)".into(),
        Ok(403) => "access denied to the monitor's credentials (HTTP 403)".into(),
        Ok(c) => format!("HTTP {c}"),
        Err(_) => format!("HTTP {code}"),
    }
}

/// Why the TLS handshake failed, said for humans (rustls' words otherwise).
fn tls_words(why: &str) -> String {
    let w = no_os_error(why);
    let l = w.to_ascii_lowercase();
    let said = if l.contains("unknownissuer") || l.contains("unknown issuer") {
        "the server's certificate is not signed by the cluster's CA"
    } else if l.contains("expired") {
        "the server's certificate has expired"
    } else if l.contains("notvalidforname") || l.contains("not valid for name") {
        "the server's certificate is not valid for the API server's name"
    } else if closed_early(&l) {
        "connection closed by the server"
    } else {
        return format!("TLS handshake failed: {w}");
    };
    format!("TLS handshake failed: {said}")
}

/// One error of the API server (a `KubeError`'s text), said for humans;
/// `what` names the path asked (none: the collector's name says it).
fn api_error_words(e: &str, what: Option<&str>) -> String {
    let from = what.map_or(String::new(), |w| format!(" from {w}"));
    let to = what.map_or(String::new(), |w| format!(" to {w}"));
    if e == "timed out" {
        return format!("no answer{from} within the check timeout");
    }
    if let Some(rest) = e.strip_prefix("unreachable: ") {
        if let Some(w) = rest.strip_prefix("tls: ") {
            return tls_words(w);
        }
        if let Some(w) = rest.strip_prefix("connect: ") {
            if let Some(t) = w.strip_prefix("not connected within ") {
                return format!("no TCP/TLS connection within {t} (connect timeout)");
            }
            let w = no_os_error(w);
            if w.to_ascii_lowercase().contains("refused") {
                return "connection refused: nothing listens at the API server's address".into();
            }
            return format!("cannot connect: {w}");
        }
        if let Some(w) = rest.strip_prefix("request: ") {
            if closed_early(w) {
                return format!("the server closed the connection without answering{to}");
            }
            return format!("the request{to} failed: {}", no_os_error(w));
        }
        return format!("unreachable: {}", no_os_error(rest));
    }
    if let Some(code) = e.strip_prefix("HTTP ") {
        return format!("{}{from}", http_words(code));
    }
    if let Some(w) = e.strip_prefix("configuration: ") {
        return format!("unusable credentials or TLS settings ({w})");
    }
    if let Some(w) = e.strip_prefix("invalid response: ") {
        return format!("unexpected answer{from}: {w}");
    }
    e.to_string()
}

/// The API server's outcome: "healthz 500" or a request error.
fn healthz_words(e: &str, what: &str) -> String {
    match e.strip_prefix("healthz ") {
        Some(rest) => {
            let (code, note) = rest.split_once(':').unwrap_or((rest, ""));
            let mut l = format!("{} from /healthz", http_words(code.trim()));
            if !note.is_empty() {
                l.push_str(&format!(" ({})", note.trim()));
            }
            l
        }
        None => api_error_words(e, Some(what)),
    }
}

/// The one line an SRE reads first about a failing check: what is wrong,
/// in words ("TLS handshake failed: connection closed by the server",
/// "HTTP 500 from /readyz", "API server certificate expires in 3 days").
/// The raw summary stays in the details view.
pub fn human_summary(report: &CheckReport) -> String {
    let outcome = |name: &str| report.collectors.iter().find(|c| c.name == name);
    match outcome("apiserver") {
        None if !report.ok => {
            // The check failed before or without the API server's outcome:
            // a timeout, credentials that could not be opened, a panic.
            return healthz_words(&report.summary, "the API server");
        }
        Some(api) if !api.ok => {
            let mut line = healthz_words(api.error.as_deref().unwrap_or("failed"), "/healthz");
            if let Some(r) = outcome("readyz").filter(|r| !r.ok) {
                let re = r.error.as_deref().unwrap_or("failed");
                let words = match re.strip_prefix("failing: ") {
                    Some(checks) => format!("/readyz reports failing: {checks}"),
                    None => api_error_words(re, Some("/readyz")),
                };
                // The same answer from both: said once.
                match line.strip_suffix(" from /healthz") {
                    Some(same) if words == format!("{same} from /readyz") => {
                        line = format!("{same} from /healthz and /readyz");
                    }
                    _ => {
                        line.push_str("; ");
                        line.push_str(&words);
                    }
                }
            }
            return line;
        }
        _ => {}
    }
    if let Some(first) = report.conditions.first() {
        let more = report.conditions.len() - 1;
        return if more == 0 {
            first.summary.clone()
        } else {
            format!("{} (and {more} more)", first.summary)
        };
    }
    let failed: Vec<String> = report
        .collectors
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            let e = c.error.as_deref().unwrap_or("failed");
            match (c.name, e.strip_prefix("failing: ")) {
                ("readyz", Some(checks)) => format!("/readyz reports failing: {checks}"),
                _ => format!("cannot read {}: {}", c.name, api_error_words(e, None)),
            }
        })
        .collect();
    match failed.as_slice() {
        [] if report.ok => "healthy".into(),
        [] => report.summary.to_string(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// A cluster's state from its alerts: the worst one wins (a cluster whose
/// every firing alert is silenced is `Silenced`, not `Pending`); a failing
/// check without any alert condition is `NotAlerting`.
pub fn cluster_state(alerts: &[AlertAnswer]) -> AlertState {
    let has = |s: AlertState| alerts.iter().any(|a| a.state == s);
    if has(AlertState::Firing) {
        AlertState::Firing
    } else if has(AlertState::Silenced) {
        AlertState::Silenced
    } else if has(AlertState::Pending) {
        AlertState::Pending
    } else {
        AlertState::NotAlerting
    }
}

/// Order on the page: worst state first (`AlertState`'s order: firing,
/// pending, silenced, not alerting), then the oldest series, then the id.
pub fn sort_failing(v: &mut [FailingCluster]) {
    let since = |c: &FailingCluster| {
        c.alerts
            .iter()
            .map(|a| a.starts_ms)
            .min()
            .unwrap_or(c.last_check_ms)
    };
    v.sort_by(|a, b| {
        a.state
            .cmp(&b.state)
            .then(since(a).cmp(&since(b)))
            .then(a.id.cmp(&b.id))
    });
}

/// Merges the monitors' reports into one view: one entry per cluster (the
/// latest check wins: during a handoff both monitors may report it), alerts
/// that Alertmanager silences marked, worst first, at most `limit` listed.
pub fn merge_reports(
    reports: &[MonitorReport],
    silenced: &std::collections::HashSet<(String, String)>,
    limit: usize,
) -> FleetFailing {
    let mut by_id: std::collections::HashMap<&str, &FailingCluster> = Default::default();
    for r in reports {
        for c in &r.failing {
            let e = by_id.entry(&c.id).or_insert(c);
            if c.last_check_ms > e.last_check_ms {
                *e = c;
            }
        }
    }
    let mut failing: Vec<FailingCluster> = by_id
        .into_values()
        .map(|c| {
            let mut c = c.clone();
            for a in &mut c.alerts {
                if a.state == AlertState::Firing
                    && silenced.contains(&(c.id.clone(), a.alertname.clone()))
                {
                    a.state = AlertState::Silenced;
                }
            }
            c.state = cluster_state(&c.alerts);
            c
        })
        .collect();
    sort_failing(&mut failing);
    let failing_total = reports
        .iter()
        .map(|r| r.failing_total)
        .sum::<usize>()
        .max(failing.len());
    failing.truncate(limit);
    let mut resolved: Vec<_> = reports
        .iter()
        .flat_map(|r| r.resolved.iter().cloned())
        .collect();
    resolved.sort_by_key(|r| std::cmp::Reverse(r.alert.ends_ms));
    resolved.truncate(limit);
    FleetFailing {
        failing,
        failing_total,
        resolved,
        monitors: Vec::new(),
        silences: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BucketAssignment;
    use crate::store::contract::monitor;

    #[test]
    fn dead_owners_count_as_unassigned_and_expired_lease_has_no_master() {
        let mut doc = MasterDoc::empty();
        doc.lease_owner = Some("a".into());
        doc.lease_expires_ms = 5_000;
        doc.generation = 3;
        for b in 0..100 {
            doc.buckets[b] = BucketAssignment::owned_by("a");
        }
        for b in 100..200 {
            doc.buckets[b] = BucketAssignment::owned_by("dead");
        }
        let mut a = monitor("a", 10_000);
        a.heartbeat_at_ms = 1_000;
        let s = fleet_status(Some(&doc), &[a], 7, 2_000);
        assert_eq!(
            s.master,
            Some(MasterStatus {
                id: "a".into(),
                lease_expires_in_s: 3.0
            })
        );
        assert_eq!(s.unassigned_buckets, 156);
        assert_eq!(s.monitors[0].buckets, 100);
        assert_eq!(s.monitors[0].heartbeat_age_s, 1.0);
        assert_eq!(s.clusters, 7);
        assert_eq!(s.generation, 3);
        assert_eq!(fleet_status(Some(&doc), &[], 0, 5_000).master, None);
        let j = serde_json::to_value(&s).unwrap();
        for k in [
            "master",
            "generation",
            "monitors",
            "unassigned_buckets",
            "clusters",
        ] {
            assert!(j.get(k).is_some(), "status json has {k}");
        }
    }
}

/// `clustermon explain`: who checks a cluster, and if nobody, why, in plain
/// words. Computed from store reads and (when reachable) the owner's own
/// view of the cluster; a pure function of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub id: String,
    pub bucket: Option<u8>,
    pub state: Option<String>,
    pub owner: Option<String>,
    pub owner_alive: bool,
    pub owner_ready: Option<bool>,
    pub owner_draining: bool,
    /// The owner's record of its last check (time, result per collector).
    pub last_check: Option<serde_json::Value>,
    /// Unix milliseconds of the next scheduled check, from the owner.
    pub next_due: Option<i64>,
    pub checked: bool,
    pub reason: Option<String>,
}

/// What the store holds for the cluster.
pub enum Doc<'a> {
    Missing,
    Invalid(String),
    Valid(&'a crate::model::ClusterDoc),
}

pub fn explain(
    id: &str,
    doc: Doc<'_>,
    master: Option<&MasterDoc>,
    live: &[MonitorDoc],
    owner_view: Option<&serde_json::Value>,
) -> Explanation {
    let mut e = Explanation {
        id: id.to_string(),
        bucket: None,
        state: None,
        owner: None,
        owner_alive: false,
        owner_ready: None,
        owner_draining: false,
        last_check: None,
        next_due: None,
        checked: false,
        reason: None,
    };
    let doc = match doc {
        Doc::Missing => {
            e.reason = Some("no such cluster: the store has no document with this id".into());
            return e;
        }
        Doc::Invalid(why) => {
            e.reason = Some(format!(
                "invalid document ({why}): monitors skip it and keep the last valid version, if any"
            ));
            return e;
        }
        Doc::Valid(d) => d,
    };
    e.bucket = Some(doc.bucket);
    e.state = Some(doc.provisioning_state.as_str().to_string());
    let b = master
        .map(|m| {
            m.buckets
                .get(usize::from(doc.bucket))
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    e.owner = b.owner.clone();
    let owner_doc = b
        .owner
        .as_deref()
        .and_then(|o| live.iter().find(|m| m.id == o));
    e.owner_alive = owner_doc.is_some();
    e.owner_ready = owner_doc.map(|m| m.stats.ready);
    e.owner_draining = owner_doc.is_some_and(|m| m.draining);
    if let Some(v) = owner_view {
        e.last_check = v.get("last_check").filter(|l| !l.is_null()).cloned();
        e.next_due = v.get("next_due_ms").and_then(serde_json::Value::as_i64);
    }
    e.reason = if !doc.provisioning_state.is_checkable() {
        Some(format!(
            "state is {}: clusters are checked only outside Creating and Deleting",
            doc.provisioning_state.as_str()
        ))
    } else if b.owner.is_none() {
        Some(format!(
            "bucket {} is unassigned: no live monitor owns it (is any monitor running and holding the master lease?)",
            doc.bucket
        ))
    } else if let (Some(o), None) = (b.owner.as_deref(), owner_doc) {
        Some(format!(
            "owner {o} is dead (no live heartbeat): its buckets move to live monitors after the heartbeat TTL"
        ))
    } else if e.owner_draining {
        Some(format!(
            "owner {} is draining: bucket {} is being handed to another monitor",
            b.owner.as_deref().unwrap_or_default(),
            doc.bucket
        ))
    } else if e.owner_ready == Some(false) {
        Some(format!(
            "owner {} is alive but not ready (store, assignment or initial feed replay)",
            b.owner.as_deref().unwrap_or_default()
        ))
    } else if owner_view.is_some_and(|v| v.get("known") == Some(&serde_json::Value::Bool(false))) {
        Some(format!(
            "owner {} does not have this cluster in its cache yet (change feed lag)",
            b.owner.as_deref().unwrap_or_default()
        ))
    } else {
        None
    };
    e.checked = e.reason.is_none();
    e
}

#[cfg(test)]
mod explain_tests {
    use super::*;
    use crate::model::{BucketAssignment, ProvisioningState};
    use crate::store::contract::{cluster, monitor};

    fn fleet() -> (MasterDoc, Vec<MonitorDoc>) {
        let mut m = MasterDoc::empty();
        m.buckets[1] = BucketAssignment::owned_by("a");
        m.buckets[2] = BucketAssignment::owned_by("dead");
        m.buckets[3] = BucketAssignment::owned_by("d");
        let mut a = monitor("a", 10_000);
        a.stats.ready = true;
        let mut d = monitor("d", 10_000);
        d.draining = true;
        d.stats.ready = true;
        (m, vec![a, d])
    }

    #[test]
    fn every_reason_in_plain_words() {
        let (m, live) = fleet();
        let ex = |doc: Doc<'_>, view: Option<&serde_json::Value>| {
            explain("x", doc, Some(&m), &live, view)
        };
        let r = ex(Doc::Missing, None);
        assert!(!r.checked && r.reason.unwrap().contains("no such cluster"));
        let r = ex(Doc::Invalid("missing field `apiServer`".into()), None);
        assert!(r.reason.unwrap().contains("invalid document"));

        let owned = cluster("x", 1);
        let view =
            serde_json::json!({"known": true, "next_due_ms": 42, "last_check": {"ok": true}});
        let r = ex(Doc::Valid(&owned), Some(&view));
        assert!(r.checked, "{r:?}");
        assert_eq!(r.reason, None);
        assert_eq!(
            (r.owner.as_deref(), r.owner_alive, r.next_due),
            (Some("a"), true, Some(42))
        );
        assert!(r.last_check.is_some());

        let mut creating = cluster("x", 1);
        creating.provisioning_state = ProvisioningState::Creating;
        assert!(ex(Doc::Valid(&creating), None)
            .reason
            .unwrap()
            .contains("state is Creating"));
        let unassigned = cluster("x", 9);
        assert!(ex(Doc::Valid(&unassigned), None)
            .reason
            .unwrap()
            .contains("bucket 9 is unassigned"));
        let dead = cluster("x", 2);
        let r = ex(Doc::Valid(&dead), None);
        assert!(!r.owner_alive && r.reason.unwrap().contains("owner dead is dead"));
        let draining = cluster("x", 3);
        assert!(ex(Doc::Valid(&draining), None)
            .reason
            .unwrap()
            .contains("draining"));
        let unknown = serde_json::json!({"known": false});
        assert!(ex(Doc::Valid(&owned), Some(&unknown))
            .reason
            .unwrap()
            .contains("cache"));
        let r = explain("x", Doc::Valid(&owned), None, &live, None);
        assert!(
            r.reason.unwrap().contains("unassigned"),
            "no master document at all"
        );
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use crate::check::{CollectorOutcome, Condition};

    fn outcome(name: &'static str, error: Option<&str>) -> CollectorOutcome {
        CollectorOutcome {
            name,
            ok: error.is_none(),
            duration_ms: 1,
            error: error.map(Into::into),
        }
    }

    fn report(summary: &str, collectors: Vec<CollectorOutcome>) -> CheckReport {
        CheckReport {
            ok: collectors.iter().all(|c| c.ok) && !collectors.is_empty(),
            summary: summary.to_string().into(),
            collectors: collectors.into_boxed_slice(),
            conditions: Vec::new(),
        }
    }

    /// The raw texts the checker produces (kube.rs, collect.rs), each with
    /// the line a human reads instead.
    #[test]
    fn raw_check_errors_become_one_human_line() {
        let cases: Vec<(CheckReport, &str)> = vec![
            (
                CheckReport::failed("timed out"),
                "no answer from the API server within the check timeout",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some(
                            "unreachable: tls: received corrupt message of type InvalidContentType",
                        ),
                    )],
                ),
                "TLS handshake failed: received corrupt message of type InvalidContentType",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("unreachable: tls: tls handshake eof"),
                    )],
                ),
                "TLS handshake failed: connection closed by the server",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("unreachable: tls: invalid peer certificate: UnknownIssuer"),
                    )],
                ),
                "TLS handshake failed: the server's certificate is not signed by the cluster's CA",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("unreachable: connect: Connection refused (os error 111)"),
                    )],
                ),
                "connection refused: nothing listens at the API server's address",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("unreachable: connect: not connected within 5s"),
                    )],
                ),
                "no TCP/TLS connection within 5s (connect timeout)",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("unreachable: request: connection reset by peer (os error 104)"),
                    )],
                ),
                "the server closed the connection without answering to /healthz",
            ),
            (
                report("x", vec![outcome("apiserver", Some("unreachable: request: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof"))]),
                "the server closed the connection without answering to /healthz",
            ),
            (
                report("x", vec![outcome("apiserver", Some("unreachable: request: broken pipe (os error 32)"))]),
                "the request to /healthz failed: broken pipe",
            ),
            (
                report("x", vec![outcome("apiserver", Some("healthz 401")), outcome("readyz", Some("HTTP 401"))]),
                "credentials rejected (HTTP 401) from /healthz and /readyz",
            ),
            (
                report(
                    "healthz 500",
                    vec![
                        outcome("apiserver", Some("healthz 500")),
                        outcome("readyz", Some("failing: etcd,poststarthook")),
                    ],
                ),
                "HTTP 500 from /healthz; /readyz reports failing: etcd,poststarthook",
            ),
            (
                report(
                    "x",
                    vec![
                        outcome("apiserver", Some("healthz 503")),
                        outcome("readyz", Some("HTTP 500")),
                    ],
                ),
                "HTTP 503 from /healthz; HTTP 500 from /readyz",
            ),
            (
                report(
                    "x",
                    vec![outcome(
                        "apiserver",
                        Some("healthz 302: redirect not followed"),
                    )],
                ),
                "HTTP 302 from /healthz (redirect not followed)",
            ),
            (
                report(
                    "x",
                    vec![
                        outcome("apiserver", None),
                        outcome("nodes", Some("HTTP 403")),
                    ],
                ),
                "cannot read nodes: access denied to the monitor's credentials (HTTP 403)",
            ),
            (
                report(
                    "x",
                    vec![
                        outcome("apiserver", None),
                        outcome("nodes", Some("timed out")),
                        outcome("pods", Some("HTTP 500")),
                    ],
                ),
                "cannot read nodes: no answer within the check timeout (and 1 more)",
            ),
            (
                CheckReport::failed("configuration: caBundle: not PEM"),
                "unusable credentials or TLS settings (caBundle: not PEM)",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(human_summary(&r), want, "from {:?}", r.collectors);
        }
        let mut r = report(
            "healthz 200",
            vec![outcome("apiserver", None), outcome("certificate", None)],
        );
        r.conditions = vec![Condition {
            name: crate::check::alertnames::CERTIFICATE_EXPIRING,
            labels: Vec::new(),
            summary: "API server certificate expires in 3 days".into(),
        }];
        assert_eq!(
            human_summary(&r),
            "API server certificate expires in 3 days"
        );
        r.conditions.push(r.conditions[0].clone());
        assert_eq!(
            human_summary(&r),
            "API server certificate expires in 3 days (and 1 more)"
        );
    }

    fn alert(name: &str, state: AlertState, starts_ms: i64) -> AlertAnswer {
        AlertAnswer {
            alertname: name.into(),
            labels: Default::default(),
            state,
            failing_checks: 1,
            starts_ms,
            ends_ms: None,
            summary: String::new(),
        }
    }

    fn failing(id: &str, monitor: &str, last: i64, alerts: Vec<AlertAnswer>) -> FailingCluster {
        FailingCluster {
            id: id.into(),
            bucket: Some(1),
            monitor: monitor.into(),
            last_check_ms: last,
            state: cluster_state(&alerts),
            summary: String::new(),
            detail: String::new(),
            collectors: Vec::new(),
            alerts,
        }
    }

    fn monitor_report(id: &str, failing: Vec<FailingCluster>) -> MonitorReport {
        MonitorReport {
            monitor: id.into(),
            version: "v".into(),
            generated_at_ms: 0,
            ready: true,
            not_ready: Vec::new(),
            alert_after: 3,
            probes: Vec::new(),
            failing_total: failing.len(),
            failing,
            resolved: Vec::new(),
        }
    }

    #[test]
    fn the_state_is_the_worst_alert_and_silences_count_only_when_all_are_silenced() {
        use AlertState::*;
        assert_eq!(cluster_state(&[]), NotAlerting);
        assert_eq!(cluster_state(&[alert("A", Pending, 0)]), Pending);
        assert_eq!(
            cluster_state(&[alert("A", Pending, 0), alert("B", Firing, 0)]),
            Firing
        );
        assert_eq!(
            cluster_state(&[alert("A", Silenced, 0), alert("B", Firing, 0)]),
            Firing
        );
        assert_eq!(
            cluster_state(&[alert("A", Silenced, 0), alert("B", Pending, 0)]),
            Silenced
        );
    }

    #[test]
    fn merged_reports_keep_the_latest_check_per_cluster_mark_silences_and_rank() {
        use AlertState::*;
        let m1 = monitor_report(
            "m1",
            vec![
                failing("handed", "m1", 100, vec![alert("Down", Pending, 50)]),
                failing("quiet", "m1", 100, vec![]),
            ],
        );
        let m2 = monitor_report(
            "m2",
            vec![
                failing("handed", "m2", 200, vec![alert("Down", Firing, 50)]),
                failing("silent", "m2", 100, vec![alert("Down", Firing, 10)]),
                failing("old", "m2", 100, vec![alert("Down", Firing, 5)]),
            ],
        );
        let silenced = [("silent".to_string(), "Down".to_string())]
            .into_iter()
            .collect();
        let v = merge_reports(&[m1, m2], &silenced, 10);
        let got: Vec<(&str, &str, AlertState)> = v
            .failing
            .iter()
            .map(|c| (c.id.as_str(), c.monitor.as_str(), c.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("old", "m2", Firing),
                ("handed", "m2", Firing),
                ("silent", "m2", Silenced),
                ("quiet", "m1", NotAlerting),
            ]
        );
        assert_eq!(v.failing_total, 5, "as the monitors counted them");
        let v = merge_reports(&v_reports(), &Default::default(), 1);
        assert_eq!(v.failing.len(), 1, "at most the limit listed");
        assert_eq!(v.failing_total, 2);
    }

    fn v_reports() -> Vec<MonitorReport> {
        vec![monitor_report(
            "m1",
            vec![failing("a", "m1", 1, vec![]), failing("b", "m1", 1, vec![])],
        )]
    }
}
