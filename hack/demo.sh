#!/usr/bin/env bash
# clustermon demo: a simulated fleet, three monitors on one SQLite file, a
# live status view, then a crash of one monitor and the failover.
# Usage: make demo   (DEMO_CLUSTERS=300 DEMO_SECONDS=25 to tune)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
CLUSTERS=${DEMO_CLUSTERS:-300}
PHASE=${DEMO_SECONDS:-25}
DIR=$(mktemp -d /tmp/clustermon-demo.XXXXXX)
STORE="sqlite:$DIR/store.db"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
    echo "demo: cleaned up"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STATSD_PORT=$(free_port)

echo "demo: starting a fleet of $CLUSTERS simulated clusters (some faulty) in $DIR"
"$BIN/fleetsim" --clusters "$CLUSTERS" --listen 127.0.0.1:0 --register "$STORE" \
    --statsd-listen "127.0.0.1:$STATSD_PORT" --fault healthz500=4 --fault down=3 --fault slow=2 --slow-delay 60s \
    >"$DIR/fleetsim.out" 2>"$DIR/fleetsim.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$DIR/fleetsim.out" 2>/dev/null && break; sleep 0.1; done
SIM=$(sed -n 's/^fleetsim listening on //p' "$DIR/fleetsim.out")
[ -n "$SIM" ] || { echo "demo: fleetsim did not start"; cat "$DIR/fleetsim.log"; exit 1; }

declare -A MON
for m in m1 m2 m3; do
    "$BIN/clustermon" run --store "$STORE" --statsd "udp:127.0.0.1:$STATSD_PORT" --id "$m" \
        --admin-listen 127.0.0.1:0 --interval 10s --check-timeout 5s 2>"$DIR/$m.log" &
    MON[$m]=$!
    PIDS+=($!)
done

view() {
    local title=$1 secs=$2
    for _ in $(seq "$secs"); do
        clear 2>/dev/null || true
        echo "=== clustermon demo: $title ==="
        "$BIN/clustermon" status --store "$STORE" || true
        echo
        curl -sf "$SIM/control/statsd" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("metrics seen by the statsd receiver: %.1f checks/s, %d clusters reporting" % (s["checks_per_s"], s["clusters_reporting"]))
bad = s["unhealthy"]
print("unhealthy clusters (%d):" % len(bad), ", ".join("%s=%s" % (u["id"], u["code"]) for u in bad[:12]))
' || echo "(statsd view unavailable)"
        sleep 1
    done
}

view "three monitors share $CLUSTERS clusters" "$PHASE"
"$BIN/clustermon" status --store "$STORE" --output json | python3 -c '
import json, sys
for m in json.load(sys.stdin)["monitors"]:
    print("demo: %s status page: %s/" % (m["id"], m["admin_url"]))' || true
FIRST=$("$BIN/clustermon" cluster list --store "$STORE" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "demo: clustermon explain $FIRST"
"$BIN/clustermon" explain "$FIRST" --store "$STORE" || true
sleep 3
VICTIM=m2
echo "demo: kill -9 $VICTIM (crash): its buckets move after its heartbeat expires (~10s)"
kill -KILL "${MON[$VICTIM]}"
view "after the crash of $VICTIM" "$PHASE"
echo "demo: SIGTERM m3: graceful handoff, exit 0"
kill -TERM "${MON[m3]}"
wait "${MON[m3]}" && echo "demo: m3 exited with code 0"
view "after m3 left gracefully" 8
echo "demo: done"
