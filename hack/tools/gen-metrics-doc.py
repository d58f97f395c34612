#!/usr/bin/env python3
"""Regenerates docs/metrics.md from the CATALOG in pkg/core/src/metrics/mod.rs.
The core's unit test fails when the page misses a metric; run this to fix it."""
import re, pathlib
root = pathlib.Path(__file__).resolve().parents[2]
src = (root / "pkg/core/src/metrics/mod.rs").read_text()
consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', src))
rows = re.findall(r'MetricDef \{\s*name: (\w+),\s*kind: (\w+),\s*tags: (CLUSTER_TAGS|"[^"]*"),\s*help: "((?:[^"\\]|\\.)*)",?\s*\}', src)
kinds = {"Gauge": "gauge", "Counter": "counter", "Timer": "timer (ms)"}
out = []
for name, kind, tags, help_ in rows:
    tags = "resourceId, labels" if tags == "CLUSTER_TAGS" else tags.strip('"')
    out.append((consts[name], kinds[kind], tags, help_))
per = [r for r in out if not r[0].startswith("monitor.") or r[2].startswith("resourceId")]
self_ = [r for r in out if r not in per]
def table(rs):
    s = "| metric | type | tags | meaning |\n|---|---|---|---|\n"
    for n, k, t, h in rs:
        s += f"| `{n}` | {k} | {t} | {h} |\n"
    return s
doc = (root / "hack/tools/metrics-doc-head.md").read_text()
doc += "\n## Per-cluster metrics\n\n" + table(per)
doc += "\n## Self metrics\n\nEmitted by every monitor once per heartbeat interval (counters as they happen).\n\n" + table(self_)
(root / "docs/metrics.md").write_text(doc)
print(f"docs/metrics.md: {len(out)} metrics")
