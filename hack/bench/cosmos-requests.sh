#!/usr/bin/env bash
# Counts the requests (and the emulator's modelled request units) that N
# monitors make against the local Cosmos DB endpoint with M clusters: the
# start-up (feed replay) and a steady window. Feeds docs/cosmos.md.
#   hack/bench/cosmos-requests.sh [MONITORS] [CLUSTERS] [SECONDS]
set -euo pipefail
N=${1:-3}; M=${2:-1000}; SECS=${3:-60}
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/${PROFILE:-debug}"
dir="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
bash "$root/hack/cosmos-emulator/start.sh" measure >"$dir/emu.out" 2>"$dir/emu.log" & pids+=($!)
for _ in $(seq 300); do [[ $(wc -l <"$dir/emu.out") -ge 2 ]] && break; sleep 0.1; done
url=$(sed -n 1p "$dir/emu.out"); export CLUSTERMON_COSMOS_KEY=$(sed -n 2p "$dir/emu.out")
base="http://$(echo "$url" | sed -E 's#cosmos://([^/]+)/.*#\1#')"
"$bin/clustermon" store init --store "$url" >/dev/null
"$bin/fleetsim" --listen 127.0.0.1:0 --plain-http --clusters "$M" --register "$url" >"$dir/fleet.out" 2>"$dir/fleet.log" & pids+=($!)
for _ in $(seq 600); do [[ -s "$dir/fleet.out" ]] && break; sleep 0.1; done
curl -s -XPOST "$base/_emulator/stats/reset" >/dev/null
for i in $(seq "$N"); do
  "$bin/clustermon" run --store "$url" --statsd none --collectors healthz --id "m$i" --admin-listen 127.0.0.1:0 2>"$dir/m$i.log" & pids+=($!)
done
# Start-up: until every monitor logged its replay and the buckets settled.
for _ in $(seq 600); do
  [[ $(grep -l "initial change feed replay done" "$dir"/m*.log 2>/dev/null | wc -l) -ge $N ]] && break; sleep 0.1
done
sleep 6
echo "startup (replay of $M clusters by $N monitors, until settled):"
curl -s "$base/_emulator/stats" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k:v for k,v in d["kinds"].items() if v["count"]}, sort_keys=True)); print("total", d["total"])'
curl -s -XPOST "$base/_emulator/stats/reset" >/dev/null
sleep "$SECS"
echo "steady, per second over ${SECS}s ($N monitors, $M clusters):"
curl -s "$base/_emulator/stats" | SECS=$SECS python3 -c '
import json, os, sys
d = json.load(sys.stdin); s = float(os.environ["SECS"])
for k, v in sorted(d["kinds"].items()):
    if v["count"]:
        print("  %-10s %6.2f req/s %7.2f RU/s" % (k, v["count"] / s, v["charge"] / s))
t = d["total"]
print("  %-10s %6.2f req/s %7.2f RU/s" % ("total", t["count"] / s, t["charge"] / s))'
