//! The status page shows the whole fleet: every live monitor's failing
//! clusters, with their alert state as Alertmanager sees it (firing,
//! pending, silenced, resolved), one human line each and the raw error in a
//! details view; rendered by headless Chromium, screenshot kept in
//! `target/e2e-artifacts/status-page.png`. `clustermon status` prints the
//! same view.

use super::*;

/// `GET /api/status` of a monitor, its fleet-wide failing view.
fn view(admin: &str) -> Option<Value> {
    let (code, body) = http_get(&format!("{admin}/api/status")).ok()?;
    (code == 200).then_some(())?;
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(v["failing"].clone())
}

fn row<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v["failing"].as_array()?.iter().find(|c| c["id"] == id)
}

fn state(v: &Value, id: &str) -> Option<String> {
    row(v, id).and_then(|c| c["state"].as_str().map(str::to_string))
}

#[test]
fn the_status_page_shows_every_monitors_failing_clusters_with_their_alert_state() {
    // cert-expiring and tls-reset are given at start, from the end of the
    // id list: ids[7] has an expiring certificate, ids[6] resets TLS.
    let mut s = setup(
        "alerts-page",
        8,
        &["--fault", "cert-expiring=1", "--fault", "tls-reset=1"],
    );
    let (silenced, down, unauthorized, recovering, late) = (
        s.ids[0].clone(),
        s.ids[1].clone(),
        s.ids[2].clone(),
        s.ids[3].clone(),
        s.ids[4].clone(),
    );
    let (tls_reset, cert) = (s.ids[6].clone(), s.ids[7].clone());
    let silence = json!({
        "matchers": [{"name": "cluster", "value": silenced, "isRegex": false, "isEqual": true}],
        "startsAt": rfc3339(-5),
        "endsAt": rfc3339(3600),
        "createdBy": "clustermon-e2e",
        "comment": "maintenance",
    });
    http(
        "POST",
        &format!("{}/api/v2/silences", s.am.url),
        Some(&silence.to_string()),
    )
    .expect("POST /api/v2/silences");
    s.mons.start("m1");
    s.mons.start("m2");
    // Faults start once the two monitors share the buckets, so each
    // failing cluster is checked by its bucket's owner from then on.
    wait_until(
        "m1 and m2 share the buckets",
        Duration::from_secs(30),
        || buckets(&s.store).filter(|o| balanced(o, &["m1", "m2"])),
    );
    for (id, f) in [
        (&silenced, "down"),
        (&down, "down"),
        (&unauthorized, "unauthorized"),
        (&recovering, "degraded-node"),
    ] {
        s.fleet.set_faults(id, &[f]);
    }
    let urls = wait_until(
        "both monitors advertise their admin API",
        Duration::from_secs(30),
        || {
            let u = admin_urls(&s.store);
            (u.len() == 2).then_some(u)
        },
    );
    let m1 = urls["m1"].clone();

    // Every faulty cluster in m1's view, each with its state; both
    // monitors' reports gathered; Alertmanager's silence read.
    let v = wait_until(
        "the fleet-wide view holds every faulty cluster",
        Duration::from_secs(60),
        || {
            let v = view(&m1)?;
            let firing = [&down, &unauthorized, &recovering, &tls_reset, &cert];
            let ok = firing
                .iter()
                .all(|id| state(&v, id).as_deref() == Some("firing"))
                && state(&v, &silenced).as_deref() == Some("silenced");
            // Once the handoffs of the second monitor's start are over,
            // every row comes from its bucket's owner.
            let owners = buckets(&s.store)?;
            let by_owner = v["failing"].as_array()?.iter().all(|c| {
                let b = c["bucket"].as_u64().unwrap_or(256) as usize;
                owners.get(b).and_then(|o| o.as_deref()) == c["monitor"].as_str()
            });
            (ok && by_owner).then_some(v)
        },
    );
    let mut verdict = Verdict(Vec::new());
    let gathered: Vec<(String, bool)> = v["monitors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["monitor"].as_str().unwrap().to_string(), m["ok"] == true))
        .collect();
    verdict.check(
        gathered == vec![("m1".to_string(), true), ("m2".to_string(), true)],
        format!("both reports gathered: {gathered:?}"),
    );
    verdict.check(
        v["silences"]["ok"] == true,
        format!("silences read: {}", v["silences"]),
    );
    let by: std::collections::BTreeSet<&str> = v["failing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["monitor"].as_str())
        .collect();
    verdict.check(by.len() == 2, format!("rows from both monitors: {by:?}"));
    let summary = |id: &str| {
        row(&v, id)
            .map(|c| c["summary"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for (id, want) in [
        (&tls_reset, "TLS handshake failed"),
        (&unauthorized, "credentials rejected (HTTP 401)"),
        (&cert, "certificate expires in"),
        (&recovering, "Ready="),
    ] {
        let got = summary(id);
        verdict.check(
            got.contains(want),
            format!("{id}: summary {got:?} says {want:?}"),
        );
    }
    for c in v["failing"].as_array().unwrap() {
        let line = c["summary"].as_str().unwrap_or("");
        verdict.check(
            !line.contains("https://")
                && !line.contains("os error")
                && !line.contains("client error"),
            format!(
                "{}: a human line, not a client error chain: {line:?}",
                c["id"]
            ),
        );
    }
    let detail = row(&v, &tls_reset).unwrap()["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    verdict.check(
        detail.starts_with("unreachable: tls"),
        format!("the raw error stays in the details: {detail:?}"),
    );

    // A fault that starts now is pending (one failing check of 2), then
    // fires; one that clears is resolved.
    s.fleet.set_faults(&late, &["down"]);
    wait_until("the new fault pending", Duration::from_secs(20), || {
        (state(&view(&m1)?, &late).as_deref() == Some("pending")).then_some(())
    });
    s.fleet.set_faults(&recovering, &[]);
    let v = wait_until(
        "pending fires, the cleared fault is resolved",
        Duration::from_secs(30),
        || {
            let v = view(&m1)?;
            let resolved = v["resolved"].as_array()?.iter().any(|r| {
                r["cluster"] == recovering.as_str()
                    && r["alert"]["alertname"] == "ClusterNodeNotReady"
            });
            (state(&v, &late).as_deref() == Some("firing")
                && row(&v, &recovering).is_none()
                && resolved)
                .then_some(v)
        },
    );

    // The page, as a browser renders it, from the other monitor too.
    for (mon, url) in &urls {
        let dom = chromium_dom(&format!("{url}/"), s.dir.path());
        for id in [&silenced, &down, &unauthorized, &tls_reset, &cert, &late] {
            verdict.check(
                dom.contains(&format!("data-cluster=\"{id}\"")),
                format!("{mon}'s page lists {id}"),
            );
        }
        verdict.check(
            dom.contains("data-state=\"silenced\""),
            format!("{mon}'s page shows a silenced cluster"),
        );
        verdict.check(
            dom.contains("data-state=\"firing\""),
            format!("{mon}'s page shows firing clusters"),
        );
        verdict.check(
            dom.contains(&format!("data-resolved=\"{recovering}\"")),
            format!("{mon}'s page lists the resolved alert"),
        );
        verdict.check(
            dom.contains("TLS handshake failed"),
            format!("{mon}'s page has the human line"),
        );
        verdict.check(
            dom.contains("<details"),
            format!("{mon}'s page has the details view"),
        );
        verdict.check(
            dom.contains("data-loaded=\"true\""),
            format!("{mon}'s page loaded its data"),
        );
        let cells = dom.matches("class=\"cell\"").count();
        verdict.check(
            cells == 256,
            format!("{mon}'s page: {cells} bucket cells, want 256"),
        );
        verdict.check(
            !dom.contains("data-owner=\"\""),
            format!("{mon}'s page: no unassigned bucket"),
        );
        for m in ["m1", "m2"] {
            verdict.check(
                dom.contains(&format!("data-monitor=\"{m}\""))
                    && dom.contains(&format!("data-owner=\"{m}\"")),
                format!("{mon}'s page lists {m} and its buckets"),
            );
        }
    }
    let shot = chromium_screenshot(&format!("{m1}/"), s.dir.path(), "status-page.png");
    verdict.check(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        format!("screenshot at {}", shot.display()),
    );
    eprintln!("status page screenshot: {}", shot.display());

    // The command line shows the same view.
    let (code, out, err) = clustermon(&["status", "--store", &s.store]);
    verdict.check(code == 0, format!("status exit {code}: {err}"));
    verdict.check(
        out.contains("failing clusters:") && out.contains(&silenced) && out.contains("silenced"),
        format!("status prints the fleet's failing clusters: {out}"),
    );
    let j = clustermon_json(&["status", "--store", &s.store]).expect("status --output json");
    let n = j["failing"]["failing"].as_array().map_or(0, Vec::len);
    verdict.check(n >= 6, format!("status json lists {n} failing clusters"));
    let total = v["failing_total"].as_u64().unwrap_or(0);
    verdict.check(total >= 6, format!("failing_total {total}"));

    // A monitor that accepts and never answers (SIGSTOP): the page still
    // answers within its 1.5 s bound per monitor (plus 1 s), names m2 as
    // not gathered, never as healthy, and keeps m1's rows.
    s.mons.get("m2").signal("STOP");
    let t = Instant::now();
    let stopped = view(&m1);
    let took = t.elapsed();
    s.mons.get("m2").signal("CONT");
    eprintln!("status page with m2 stopped: answered in {took:?}");
    verdict.check(
        took <= Duration::from_millis(2500),
        format!("/api/status with a stopped peer answered in {took:?} (bound 1.5 s + 1 s)"),
    );
    match stopped {
        Some(v) => {
            let m2 = v["monitors"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["monitor"] == "m2"))
                .cloned();
            verdict.check(
                m2.as_ref().is_some_and(|m| m["ok"] == false),
                format!("the stopped m2 is named, not ok: {m2:?}"),
            );
            let m1_rows = v["failing"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|c| c["monitor"] == "m1").count());
            verdict.check(
                m1_rows > 0,
                format!("m1's failing rows still shown: {m1_rows}"),
            );
        }
        None => verdict.check(
            false,
            "/api/status answered with a stopped peer".to_string(),
        ),
    }
    verdict.finish("the fleet-wide status page");
}
