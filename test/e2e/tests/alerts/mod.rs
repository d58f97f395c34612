//! Alerts on a real Alertmanager (Debian's `prometheus-alertmanager`,
//! installed by `make test`): fleetsim's faults fire with the right labels,
//! a silence suppresses notifications, a recovery resolves, and a drain or
//! a kill -9 of the owner neither flaps nor duplicates a notification.
//! Alertmanager sends to a webhook receiver in the test (std only) that
//! records every notification. Settings: interval 3 s, `--alert-after 2`,
//! `--check-timeout 5s`, so a firing alert's endsAt is now + (2 + 2)·3 s +
//! 14 s (failover) + 5 s = 31 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clustermon_e2e::*;
use serde_json::{json, Value};

const AM_BIN: &str = "/usr/bin/prometheus-alertmanager";
const MON_ARGS: &[&str] = &[
    "--interval",
    "3s",
    "--alert-after",
    "2",
    "--check-timeout",
    "5s",
    "--alert-labels",
    "team=sre,env=e2e",
];

/// Alertmanager's notifications as the webhook received them.
struct Webhook {
    url: String,
    got: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Webhook {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let got: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let g = got.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        g.lock().unwrap().push((Instant::now(), v));
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { url, got }
    }

    /// (cluster, alertname, status) of every alert of every notification.
    fn notified(&self) -> Vec<(String, String, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, n)| n["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                (
                    a["labels"]["cluster"].as_str().unwrap_or("").to_string(),
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn count(&self, cluster: &str, status: &str) -> usize {
        self.notified()
            .iter()
            .filter(|(c, _, s)| c == cluster && s == status)
            .count()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Alertmanager routing config of the test (README shows it too).
fn am_config(webhook: &str) -> String {
    format!(
        "route:
  receiver: clustermon
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: clustermon
    webhook_configs:
      - url: {webhook}
        send_resolved: true
"
    )
}

struct Alertmanager {
    _proc: Proc,
    url: String,
}

impl Alertmanager {
    fn start(dir: &Path, webhook: &Webhook) -> Self {
        assert!(
            Path::new(AM_BIN).exists(),
            "{AM_BIN} missing: run hack/install-test-deps.sh (Debian package prometheus-alertmanager)"
        );
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(&cfg, am_config(&webhook.url)).unwrap();
        let data = dir.join("alertmanager-data");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(AM_BIN);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null());
        let proc = Proc::spawn("alertmanager", &mut cmd, dir);
        let ready = format!("{url}/-/ready");
        wait_until("alertmanager ready", Duration::from_secs(30), || {
            matches!(http_get(&ready), Ok((200, _))).then_some(())
        });
        Self { _proc: proc, url }
    }

    /// Active alerts (firing or silenced), as GET /api/v2/alerts gives them.
    fn alerts(&self) -> Vec<Value> {
        get_json(&format!("{}/api/v2/alerts", self.url))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn alert_of(&self, cluster: &str, name: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["labels"]["cluster"] == cluster && a["labels"]["alertname"] == name)
    }
}

/// GET as HTTP/1.0 (see `prometheus::get`), parsed as JSON.
fn get_json(url: &str) -> Option<Value> {
    clustermon_e2e::prometheus::get(url).and_then(|b| serde_json::from_str(&b).ok())
}

/// RFC 3339 (UTC) of now + `ahead_s`, for the silences API.
fn rfc3339(ahead_s: i64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + ahead_s;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

struct Setup {
    dir: TempDir,
    store: String,
    _statsd: Statsd,
    fleet: Fleet,
    mons: Monitors,
    am: Alertmanager,
    hook: Webhook,
    ids: Vec<String>,
}

fn setup(name: &str, clusters: usize, fleet_args: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let statsd = Statsd::start();
    let n = clusters.to_string();
    let mut args = vec!["--clusters", &n];
    args.extend_from_slice(fleet_args);
    let fleet = Fleet::start(dir.path(), &store, &args);
    let ids: Vec<String> = fleet
        .clusters()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let hook = Webhook::start();
    let am = Alertmanager::start(dir.path(), &hook);
    let mut margs: Vec<&str> = MON_ARGS.to_vec();
    let am_url = am.url.clone();
    margs.extend(["--alertmanager-url", &am_url]);
    let mons = Monitors::new(dir.path(), &store, &statsd, &margs);
    Setup {
        dir,
        store,
        _statsd: statsd,
        fleet,
        mons,
        am,
        hook,
        ids,
    }
}

#[test]
fn faulty_clusters_fire_with_the_right_labels() {
    let dir_probe = TempDir::new("alerts-labels-creds");
    let creds = dir_probe.path().join("secrets.jsonl");
    let creds_arg = creds.display().to_string();
    let mut s = setup(
        "alerts-labels",
        8,
        &[
            "--fault",
            "cert-expiring=1",
            "--credentials-out",
            &creds_arg,
        ],
    );
    s.mons.start("m1");
    let t0 = Instant::now();
    let faults = [
        ("down", "ClusterApiServerDown"),
        ("degraded-node", "ClusterNodeNotReady"),
        ("crashloop", "ClusterPodCrashLooping"),
        ("operator-degraded", "ClusterOperatorDegraded"),
    ];
    for (i, (f, _)) in faults.iter().enumerate() {
        s.fleet.set_faults(&s.ids[i], &[f]);
    }
    let mut want: Vec<(String, &str)> = faults
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (s.ids[i].clone(), *a))
        .collect();
    // cert-expiring takes the last id (fleetsim gives faults from the end).
    want.push((s.ids[7].clone(), "ClusterCertificateExpiring"));
    let all = wait_until(
        "every faulty cluster's alert in Alertmanager",
        Duration::from_secs(60),
        || {
            let a = s.am.alerts();
            want.iter()
                .all(|(c, n)| {
                    a.iter().any(|x| {
                        x["labels"]["cluster"] == c.as_str() && x["labels"]["alertname"] == *n
                    })
                })
                .then_some(a)
        },
    );
    eprintln!(
        "all 5 alerts active {:?} after the monitor started",
        t0.elapsed()
    );
    let mut v = Verdict(Vec::new());
    v.check(
        all.len() == want.len(),
        format!(
            "only the faulty clusters alert: {} alerts, want {}",
            all.len(),
            want.len()
        ),
    );
    for a in &all {
        let l = &a["labels"];
        let name = l["alertname"].as_str().unwrap_or("");
        v.check(
            l["team"] == "sre" && l["env"] == "e2e",
            format!("{name}: static labels {l}"),
        );
        v.check(
            l["fleet"] == "sim",
            format!("{name}: the document's label fleet=sim {l}"),
        );
        v.check(
            l.get("monitor").is_none(),
            format!("{name}: nothing monitor-specific {l}"),
        );
        let own = match name {
            "ClusterNodeNotReady" => vec!["node"],
            "ClusterPodCrashLooping" => vec!["namespace", "pod"],
            "ClusterOperatorDegraded" => vec!["operator"],
            _ => vec![],
        };
        for k in own {
            v.check(
                l[k].as_str().is_some_and(|x| !x.is_empty()),
                format!("{name}: label {k} in {l}"),
            );
        }
        let url = a["annotations"]["explain_url"].as_str().unwrap_or("");
        v.check(
            url.starts_with("http://127.0.0.1:") && url.contains("/debug/clusters/"),
            format!("{name}: explain_url {url}"),
        );
        v.check(
            !a["annotations"]["summary"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            format!("{name}: summary"),
        );
        eprintln!(
            "{name}: labels {l} summary {:?}",
            a["annotations"]["summary"]
        );
    }
    // The explain URL answers, and names the cluster.
    let a0 = &all[0];
    let url = a0["annotations"]["explain_url"].as_str().unwrap_or("");
    let c = a0["labels"]["cluster"].as_str().unwrap_or("");
    v.check(
        matches!(http_get(url), Ok((200, ref b)) if b.contains(c)),
        format!("GET {url}"),
    );
    // Notified once each.
    wait_for(Duration::from_secs(10), || {
        s.hook.notified().len() >= want.len()
    });
    for (c, n) in &want {
        let k = s
            .hook
            .notified()
            .iter()
            .filter(|(cc, nn, st)| cc == c && nn == n && st == "firing")
            .count();
        v.check(k == 1, format!("{c} {n}: {k} firing notifications, want 1"));
    }
    // No credential anywhere in Alertmanager's alerts or its notifications.
    let mut secrets = Vec::new();
    for line in std::fs::read_to_string(&creds).unwrap_or_default().lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = c["token"].as_str() {
            secrets.push(t.to_string());
        }
        if let Some(k) = c["clientKey"].as_str() {
            secrets.extend(
                k.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string),
            );
        }
    }
    let seen = format!(
        "{}{:?}",
        Value::Array(s.am.alerts()),
        s.hook.got.lock().unwrap()
    );
    v.check(
        secrets.len() >= 8,
        format!("{} secrets to look for", secrets.len()),
    );
    let leaked = secrets.iter().filter(|x| seen.contains(x.as_str())).count();
    v.check(
        leaked == 0,
        format!("{leaked} credentials in alerts or notifications"),
    );
    let _ = &s.dir;
    v.finish("faulty clusters fire with the right labels");
}

#[test]
fn a_silence_created_through_the_api_suppresses_notifications() {
    let mut s = setup("alerts-silence", 4, &[]);
    let (silenced, control) = (s.ids[0].clone(), s.ids[1].clone());
    let body = json!({
        "matchers": [{"name": "cluster", "value": silenced, "isRegex": false, "isEqual": true}],
        "startsAt": rfc3339(-5),
        "endsAt": rfc3339(3600),
        "createdBy": "clustermon-e2e",
        "comment": "maintenance",
    });
    let id = http(
        "POST",
        &format!("{}/api/v2/silences", s.am.url),
        Some(&body.to_string()),
    )
    .expect("POST /api/v2/silences");
    eprintln!("silence {id}");
    s.mons.start("m1");
    s.fleet.set_faults(&silenced, &["down"]);
    s.fleet.set_faults(&control, &["down"]);
    wait_until(
        "the control cluster notified",
        Duration::from_secs(60),
        || (s.hook.count(&control, "firing") == 1).then_some(()),
    );
    let a = wait_until(
        "the silenced alert held by Alertmanager",
        Duration::from_secs(20),
        || s.am.alert_of(&silenced, "ClusterApiServerDown"),
    );
    // Three more re-sends of the silenced alert reach Alertmanager (each
    // post moves its updatedAt): the window in which a notification would
    // have gone out, measured in checks rather than slept.
    let mut seen = std::collections::BTreeSet::new();
    wait_until(
        "three re-sends of the silenced alert",
        Duration::from_secs(30),
        || {
            if let Some(u) = s.am.alert_of(&silenced, "ClusterApiServerDown") {
                seen.insert(u["updatedAt"].as_str().unwrap_or("").to_string());
            }
            (seen.len() >= 4).then_some(())
        },
    );
    let mut v = Verdict(Vec::new());
    v.check(
        a["status"]["state"] == "suppressed",
        format!("state {}", a["status"]),
    );
    v.check(
        a["status"]["silencedBy"]
            .as_array()
            .is_some_and(|x| !x.is_empty()),
        format!("silencedBy {}", a["status"]),
    );
    let n = s
        .hook
        .notified()
        .iter()
        .filter(|(c, _, _)| *c == silenced)
        .count();
    v.check(
        n == 0,
        format!("{n} notifications for the silenced cluster"),
    );
    let k = s.hook.count(&control, "firing");
    v.check(k == 1, format!("control: {k} firing notifications, want 1"));
    v.finish("a silence suppresses notifications");
}

#[test]
fn recovery_through_fleetsim_resolves_the_alert() {
    let mut s = setup("alerts-recovery", 4, &[]);
    let c = s.ids[2].clone();
    s.mons.start("m1");
    s.fleet.set_faults(&c, &["healthz500"]);
    let t = Instant::now();
    wait_until("firing notification", Duration::from_secs(60), || {
        (s.hook.count(&c, "firing") == 1).then_some(())
    });
    eprintln!("fault set → firing notification: {:?}", t.elapsed());
    s.fleet.set_faults(&c, &[]);
    let t = Instant::now();
    wait_until("resolved notification", Duration::from_secs(30), || {
        (s.hook.count(&c, "resolved") == 1).then_some(())
    });
    let took = t.elapsed();
    eprintln!("fault cleared → resolved notification: {took:?}");
    let mut v = Verdict(Vec::new());
    // Resolved at the first healthy check: within an interval and a bit.
    v.check(
        took < Duration::from_secs(10),
        format!("resolved after {took:?}"),
    );
    v.check(
        s.am.alert_of(&c, "ClusterApiServerDown").is_none(),
        "no longer active in Alertmanager",
    );
    thread::sleep(Duration::from_secs(7));
    let (f, r) = (s.hook.count(&c, "firing"), s.hook.count(&c, "resolved"));
    v.check(
        f == 1 && r == 1,
        format!("{f} firing, {r} resolved notifications: want 1 and 1"),
    );
    v.finish("recovery resolves the alert");
}

/// The admin URL in an alert's explain_url → the monitor that sent it last.
fn sender_of(a: &Value, urls: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let u = a["annotations"]["explain_url"].as_str()?;
    urls.iter()
        .find(|(_, au)| u.starts_with(au.as_str()))
        .map(|(id, _)| id.clone())
}

#[test]
fn a_drain_and_a_kill_of_the_owner_neither_flap_nor_duplicate() {
    let mut s = setup("alerts-handoff", 12, &[]);
    for m in ["m1", "m2", "m3"] {
        s.mons.start(m);
    }
    let store = s.store.clone();
    wait_until("256 buckets over m1..m3", Duration::from_secs(30), || {
        buckets(&store).filter(|o| balanced(o, &["m1", "m2", "m3"]))
    });
    let urls = admin_urls(&store);
    let faulty: Vec<String> = s.ids[..8].to_vec();
    for c in &faulty {
        s.fleet.set_faults(c, &["down"]);
    }
    let firing = |s: &Setup| -> Vec<Value> {
        s.am.alerts()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == "ClusterApiServerDown")
            .collect()
    };
    wait_until("8 alerts firing", Duration::from_secs(60), || {
        (firing(&s).len() == 8).then_some(())
    });
    wait_for(Duration::from_secs(10), || s.hook.notified().len() >= 8);
    let owners = |s: &Setup| -> Vec<(String, Option<String>)> {
        firing(s)
            .iter()
            .map(|a| {
                (
                    a["labels"]["cluster"].as_str().unwrap_or("").to_string(),
                    sender_of(a, &urls),
                )
            })
            .collect()
    };
    let before = owners(&s);
    eprintln!("senders before: {before:?}");

    // 1. Drain (graceful stop) of the monitor that sends the most alerts.
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for (_, o) in &before {
        *count.entry(o.clone().unwrap_or_default()).or_default() += 1;
    }
    let drained = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(m, _)| m.clone())
        .unwrap();
    let t = Instant::now();
    s.mons.get(&drained).signal("TERM");
    s.mons.get(&drained).wait_exit(Duration::from_secs(20));
    let after_drain = wait_until(
        "every alert re-sent by a remaining owner after the drain",
        Duration::from_secs(45),
        || {
            let o = owners(&s);
            (o.len() == 8
                && o.iter()
                    .all(|(_, m)| m.as_deref().is_some_and(|m| m != drained)))
            .then_some(o)
        },
    );
    eprintln!(
        "drain of {drained}: alerts taken over in {:?}: {after_drain:?}",
        t.elapsed()
    );

    // 2. kill -9 of the monitor sending the most now.
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for (_, o) in &after_drain {
        *count.entry(o.clone().unwrap_or_default()).or_default() += 1;
    }
    let killed = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(m, _)| m.clone())
        .unwrap();
    let ends_before_kill = firing(&s)
        .iter()
        .filter_map(|a| a["endsAt"].as_str().map(str::to_string))
        .max()
        .unwrap_or_default();
    let t = Instant::now();
    s.mons.get(&killed).crash();
    let survivor: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != drained && *m != killed)
        .collect();
    let after_kill = wait_until(
        "every alert re-sent by the survivor after kill -9",
        Duration::from_secs(60),
        || {
            let o = owners(&s);
            (o.len() == 8 && o.iter().all(|(_, m)| m.as_deref() == Some(survivor[0]))).then_some(o)
        },
    );
    let taken = t.elapsed();
    eprintln!("kill -9 of {killed}: alerts re-sent by {} in {taken:?} (latest endsAt before the kill {ends_before_kill}): {after_kill:?}", survivor[0]);
    // Past the endsAt the killed owner set (31 s after its last send): had
    // nobody re-fired, Alertmanager would have resolved by now.
    thread::sleep(Duration::from_secs(32).saturating_sub(taken));
    thread::sleep(Duration::from_secs(3));

    let mut v = Verdict(Vec::new());
    v.check(
        firing(&s).len() == 8,
        format!("8 alerts still active: {}", firing(&s).len()),
    );
    for c in &faulty {
        let (f, r) = (s.hook.count(c, "firing"), s.hook.count(c, "resolved"));
        v.check(
            f == 1 && r == 0,
            format!("{c}: {f} firing and {r} resolved notifications, want 1 and 0"),
        );
    }
    eprintln!(
        "notifications: {} in all for 8 alerts",
        s.hook.notified().len()
    );
    v.finish("a drain and a kill -9 neither flap nor duplicate");
}

mod status_page;
