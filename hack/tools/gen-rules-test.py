#!/usr/bin/env python3
"""Generates deploy/prometheus/clustermon-rules.test.yaml, the promtool unit
tests of deploy/prometheus/clustermon-rules.yaml: a healthy two-monitor
fleet raises no alert; each fault raises its alert (labels and rendered
annotations exact) and no other. `make test` checks the file is current and
runs `promtool test rules` on it."""
import json
import pathlib
import sys
import json
N=40  # samples at 15s: 10 minutes
def const(v): return f"{v}x{N}"
def ramp(step): return f"0+{step}x{N}"
def healthy():
    s={}
    for inst,mon,owned,master in [("a:9464","m1",128,1),("b:9464","m2",128,0)]:
        L=f'instance="{inst}",job="clustermon",monitor="{mon}"'
        s[f'up{{instance="{inst}",job="clustermon"}}']=const(1)
        s[f'clustermon_monitor_buckets_owned{{{L}}}']=const(owned)
        s[f'clustermon_monitor_master{{{L}}}']=const(master)
        s[f'clustermon_monitor_store_healthy{{{L}}}']=const(1)
        s[f'clustermon_monitor_schedule_lag{{{L}}}']=const(40)
        s[f'clustermon_monitor_changefeed_lag{{{L}}}']=const(1500)
        s[f'clustermon_monitor_buckets_pending{{{L}}}']=const(0)
        s[f'clustermon_monitor_master_invalid{{{L}}}']=const(0)
        s[f'clustermon_monitor_clock_skewed{{{L}}}']=const(0)
        s[f'clustermon_monitor_secrets_refused{{{L},file="admin-token-file"}}']=const(0)
        s[f'clustermon_monitor_checks_started_total{{{L}}}']=ramp(100)
        s[f'clustermon_monitor_sync_sent_total{{{L},result="ok"}}']=const(3)
    return s
B='instance="b:9464",job="clustermon",monitor="m2"'
ALL=["ClustermonBucketsUnassigned","ClustermonNoMaster","ClustermonNoMonitorUp","ClustermonMonitorDown",
 "ClustermonStoreUnreachable","ClustermonStoreUnreachableEverywhere","ClustermonCutOffFromStore",
 "ClustermonChecksSkipped","ClustermonChecksLate","ClustermonChangeFeedStale","ClustermonBucketsNotRead",
 "ClustermonMasterDocumentInvalid","ClustermonClockSkewed","ClustermonSecretFileRefused","ClustermonMetricsDropped","ClustermonAlertsNotDelivered"]
RB="docs/runbook.md#"
cases=[]
def case(name, change, alert, labels, summary, runbook, at="8m", also=None):
    cases.append((name, change, alert, labels, summary, runbook, at, also or []))
def set_(k,v): return lambda s: s.__setitem__(k,v)
def chain(*fs):
    def f(s):
        for g in fs: g(s)
    return f
def delete(prefix):
    def f(s):
        for k in [k for k in s if k.startswith(prefix)]: del s[k]
    return f
case("a monitor holds fewer buckets than its share and nobody has the rest",
     set_(f'clustermon_monitor_buckets_owned{{{B}}}', const(100)),
     "ClustermonBucketsUnassigned", {"severity":"critical"},
     "Only 228 of 256 buckets are owned: the clusters of the others are not checked.", RB+"unassigned-buckets")
case("the lease holder lost the lease and nobody took it",
     set_('clustermon_monitor_master{instance="a:9464",job="clustermon",monitor="m1"}', const(0)),
     "ClustermonNoMaster", {"severity":"critical"},
     "No monitor holds the master lease: buckets do not move (crash, join, drain).", RB+"master-flapping")
case("every target is down",
     chain(set_('up{instance="a:9464",job="clustermon"}', const(0)), set_('up{instance="b:9464",job="clustermon"}', const(0))),
     "ClustermonNoMonitorUp", {"severity":"critical"},
     "No clustermon monitor answers its /metrics: no cluster is checked.", RB+"a-monitor-is-down",
     also=["ClustermonMonitorDown"])
case("one target is down",
     set_('up{instance="b:9464",job="clustermon"}', const(0)),
     "ClustermonMonitorDown", {"severity":"warning","instance":"b:9464","job":"clustermon"},
     "b:9464 does not answer its /metrics: its buckets have moved to the others, or it is hung.", RB+"a-monitor-is-down")
case("one monitor's store calls fail",
     set_(f'clustermon_monitor_store_healthy{{{B}}}', const(0)),
     "ClustermonStoreUnreachable", {"severity":"warning","instance":"b:9464"},
     "b:9464's store calls fail: it checks on with its last assignment.", RB+"store-unreachable")
case("no monitor reaches the store (nobody holds the lease then: no NoMaster alert)",
     chain(set_('clustermon_monitor_store_healthy{instance="a:9464",job="clustermon",monitor="m1"}', const(0)),
           set_(f'clustermon_monitor_store_healthy{{{B}}}', const(0)),
           set_('clustermon_monitor_master{instance="a:9464",job="clustermon",monitor="m1"}', const(0))),
     "ClustermonStoreUnreachableEverywhere", {"severity":"critical"},
     "No monitor reaches the store: checks go on with the last assignment; new clusters and moves wait.", RB+"store-unreachable",
     also=["ClustermonStoreUnreachable"])
case("a monitor applied a pushed table",
     set_(f'clustermon_monitor_sync_applied_total{{{B}}}', "0x20 1x20"),
     "ClustermonCutOffFromStore", {"severity":"warning","instance":"b:9464"},
     "b:9464 is cut off from the store (its peers are not): its buckets moved to them.", RB+"a-monitor-is-down", at="6m")
case("a monitor skips checks as late",
     set_(f'clustermon_monitor_checks_skipped_total{{{B},reason="late"}}', ramp(5)),
     "ClustermonChecksSkipped", {"severity":"warning","instance":"b:9464","reason":"late"},
     "b:9464 skips due checks (late).", RB+"checks-skipped-or-late")
case("a monitor starts checks 40 s late",
     set_(f'clustermon_monitor_schedule_lag{{{B}}}', const(40000)),
     "ClustermonChecksLate", {"severity":"warning","instance":"b:9464"},
     "b:9464 starts checks more than 30 s after they are due.", RB+"checks-skipped-or-late")
case("a monitor's change feed has not reached its end for 5 minutes",
     set_(f'clustermon_monitor_changefeed_lag{{{B}}}', "300000x40"),
     "ClustermonChangeFeedStale", {"severity":"warning","instance":"b:9464"},
     "b:9464 has not read the change feed to its end for over 2 minutes: new and changed clusters wait.", RB+"change-feed-lag")
case("a monitor cannot read 3 of its buckets",
     set_(f'clustermon_monitor_buckets_pending{{{B}}}', const(3)),
     "ClustermonBucketsNotRead", {"severity":"warning","instance":"b:9464"},
     "b:9464 has 3 buckets whose documents it could not read: their clusters are not checked.", RB+"buckets-not-read-a-monitors-share")
case("the master document stays invalid",
     set_(f'clustermon_monitor_master_invalid{{{B}}}', const(1)),
     "ClustermonMasterDocumentInvalid", {"severity":"warning"},
     "The master document does not decode and is not repaired: something else writes it.", RB+"master-document-invalid")
case("a monitor's clock is off",
     set_(f'clustermon_monitor_clock_skewed{{{B}}}', const(1)),
     "ClustermonClockSkewed", {"severity":"warning","instance":"b:9464"},
     "b:9464's clock is off from the fleet's: it takes no bucket.", RB+"clock-skew")
case("a monitor refused its changed admin token file",
     set_(f'clustermon_monitor_secrets_refused{{{B},file="admin-token-file"}}', "0x8 1x32"),
     "ClustermonSecretFileRefused", {"severity":"warning","instance":"b:9464","file":"admin-token-file"},
     "b:9464 refused the new content of its --admin-token-file: the previous one stays in effect.", RB+"a-secret-file-is-refused")
case("a monitor's statsd queue overflows",
     set_(f'clustermon_monitor_metrics_dropped_total{{{B},reason="queue_full"}}', ramp(10)),
     "ClustermonMetricsDropped", {"severity":"warning","instance":"b:9464","reason":"queue_full"},
     "b:9464 loses metrics (queue_full): dashboards have holes.", RB+"first-five-minutes", at="12m")
case("Alertmanager refuses a monitor's alerts",
     set_(f'clustermon_monitor_alerts_failed_total{{{B}}}', ramp(1)),
     "ClustermonAlertsNotDelivered", {"severity":"critical","instance":"b:9464"},
     "b:9464 cannot deliver cluster alerts to Alertmanager.", RB+"alerts-missing-late-or-flapping", at="12m")
case("a monitor drops alerts",
     set_(f'clustermon_monitor_alerts_dropped_total{{{B},reason="queue_full"}}', ramp(1)),
     "ClustermonAlertsNotDelivered", {"severity":"critical","instance":"b:9464"},
     "b:9464 cannot deliver cluster alerts to Alertmanager.", RB+"alerts-missing-late-or-flapping", at="12m")

N2 = 60  # constant series stretched to 15 minutes
out=[]
out.append("# Generated by hack/tools/gen-rules-test.py: edit that, not this.\n# promtool unit tests of clustermon-rules.yaml (`make test` runs\n# `promtool test rules` on this file). A healthy two-monitor fleet raises\n# nothing; each fault below raises its alert, and only the alerts named.\n# Samples every 15 s; counters as totals.")
out.append("rule_files:\n  - clustermon-rules.yaml\nevaluation_interval: 15s\ntests:")
def emit(name, series, evals):
    out.append(f"  # {name}")
    out.append("  - interval: 15s\n    input_series:")
    for k,v in series.items():
        v2=v
        # extend to 60 samples (15 minutes)
        if v2.endswith(f"x{N}") and " " not in v2: v2=v2[:-len(str(N))]+str(N2)
        out.append(f"      - series: '{k}'\n        values: '{v2}'")
    out.append("    alert_rule_test:")
    for at, alert, exp in evals:
        out.append(f"      - eval_time: {at}\n        alertname: {alert}")
        if not exp:
            out.append("        exp_alerts: []")
        else:
            out.append("        exp_alerts:")
            for labels, ann in exp:
                out.append("          - exp_labels:")
                for k,v in labels.items(): out.append(f"              {k}: {json.dumps(v)}")
                out.append("            exp_annotations:")
                for k,v in ann.items(): out.append(f"              {k}: {json.dumps(v)}")
emit("a healthy fleet raises nothing", healthy(), [("14m", a, []) for a in ALL])
for name, change, alert, labels, summary, runbook, at, also in cases:
    s=healthy(); change(s)
    evals=[("30s", alert, []), (at, alert, [(labels, {"summary":summary,"runbook":runbook})])]
    for a in ALL:
        if a!=alert and a not in also:
            evals.append((at, a, []))
    emit(name, s, evals)
text = "\n".join(out) + "\n"
path = pathlib.Path(__file__).resolve().parents[2] / "deploy/prometheus/clustermon-rules.test.yaml"
if sys.argv[1:] == ["--check"]:
    if path.read_text() != text:
        sys.exit(f"{path} is not what hack/tools/gen-rules-test.py makes: run it")
else:
    path.write_text(text)
    print(f"{path.name}: {len(cases) + 1} tests")
