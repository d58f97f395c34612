#!/usr/bin/env bash
# Stops the server start.sh started in DIR (fast shutdown: sessions are cut,
# as in a crash of the primary or a fail-over). Quiet if it is not running.
set -euo pipefail
dir=${1:?usage: stop.sh DIR}
[[ -s $dir/data/PG_VERSION ]] || exit 0
bin=""
for d in /usr/local/bin /usr/lib/postgresql/*/bin; do
  [[ -x $d/pg_ctl ]] && { bin=$d; break; }
done
run=()
[[ $(id -u) -eq 0 ]] && run=(runuser -u postgres --)
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 status >/dev/null 2>&1 || exit 0
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
