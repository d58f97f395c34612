#!/usr/bin/env bash
# Heap per in-flight check, measured with valgrind's massif: one monitor
# (release build) over CLUSTERS clusters, checked every 10 s with a 150 s
# timeout, run twice: once with every cluster answering, once with HANGING
# of them answering only after 120 s (fleetsim's `slow` fault), so that
# after one interval HANGING checks hang in flight. The difference of the
# two heap peaks divided by HANGING is the heap per in-flight check.
#
#   hack/bench/massif-inflight.sh [CLUSTERS] [HANGING]     # defaults 300 200
#
# Prints one JSON object. Needs valgrind and target/release/{clustermon,fleetsim}.
set -euo pipefail
CLUSTERS=${1:-300}
HANGING=${2:-200}
BIN=${BIN:-target/release}
WAIT=${WAIT:-35}
tmp=$(mktemp -d /tmp/clustermon-massif.XXXXXX)
cleanup() { kill ${sim:-} ${mon:-} 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"; }
trap cleanup EXIT

# peak_heap HANGING: the monitor's heap peak (bytes, with allocator overhead).
peak_heap() {
  local n=$1 dir="$tmp/run-$1"
  mkdir -p "$dir"
  local store="sqlite:$dir/store.db" fault=()
  [ "$n" -gt 0 ] && fault=(--fault "slow=$n" --slow-delay 120s)
  "$BIN/fleetsim" --clusters "$CLUSTERS" --register "$store" "${fault[@]}" \
    >"$dir/fleetsim.out" 2>"$dir/fleetsim.log" &
  sim=$!
  for _ in $(seq 200); do grep -q "listening" "$dir/fleetsim.out" 2>/dev/null && break; sleep 0.1; done
  valgrind --tool=massif --time-unit=ms --max-snapshots=400 --detailed-freq=${DETAILED:-1000000} \
    --massif-out-file="$dir/massif.out" \
    "$BIN/clustermon" run --store "$store" --statsd udp:127.0.0.1:9 --id massif \
    --admin-listen 127.0.0.1:0 --interval 10s --check-timeout 150s --collectors healthz \
    2>"$dir/monitor.log" &
  mon=$!
  sleep "$WAIT"
  kill -TERM "$mon"; wait "$mon" 2>/dev/null || true
  kill "$sim"; wait "$sim" 2>/dev/null || true
  mon=; sim=
  python3 - "$dir/massif.out" <<'EOF'
import re, sys
heap, cur = [], {}
for line in open(sys.argv[1]):
    m = re.match(r"(mem_heap_B|mem_heap_extra_B)=(\d+)", line)
    if m:
        cur[m.group(1)] = int(m.group(2))
        if m.group(1) == "mem_heap_extra_B":
            heap.append(cur["mem_heap_B"] + cur["mem_heap_extra_B"])
print(max(heap))
EOF
}

base=$(peak_heap 0)
hung=$(peak_heap "$HANGING")
python3 -c "
import json
base, hung, n = $base, $hung, $HANGING
print(json.dumps({'clusters': $CLUSTERS, 'hanging': n, 'heap_peak_all_answering_kb': round(base/1024, 1),
  'heap_peak_hanging_kb': round(hung/1024, 1), 'kb_per_inflight_check': round((hung-base)/n/1024, 2)}))"
