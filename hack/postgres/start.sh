#!/usr/bin/env bash
# Starts a private PostgreSQL for tests: `start.sh DIR [PORT]` runs initdb in
# DIR/data (once) and pg_ctl start on 127.0.0.1:PORT (a free port when PORT is
# omitted or 0). Trust auth on 127.0.0.1 for every user, plus one password
# user `clustermon_pw` (password in DIR/password) that must authenticate by
# SCRAM. Prints `postgres://postgres@127.0.0.1:PORT/postgres` on stdout and
# returns once the server answers. Restartable: run it again after stop.sh
# with the same DIR (the port is kept in DIR/port).
set -euo pipefail
dir=${1:?usage: start.sh DIR [PORT]}
port=${2:-0}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=""
for d in /usr/local/bin /usr/lib/postgresql/*/bin; do
  [[ -x $d/initdb && -x $d/pg_ctl ]] && { bin=$d; break; }
done
[[ -n $bin ]] || { echo "postgres/start.sh: initdb not found: run hack/install-test-deps.sh" >&2; exit 1; }
# initdb and postgres refuse to run as root: run them as nobody's equivalent.
run=()
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown -R postgres "$dir"
  run=(runuser -u postgres --)
  "${run[@]}" test -x "$dir" || {
    echo "postgres/start.sh: user postgres cannot reach $dir: make its parent directories searchable (chmod o+x), e.g. not under a mktemp -d" >&2
    exit 1
  }
fi
if [[ $port == 0 && -s $dir/port ]]; then
  port=$(cat "$dir/port")
elif [[ $port == 0 ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
echo "$port" >"$dir/port"
if [[ ! -s $dir/data/PG_VERSION ]]; then
  head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password"
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --locale=C.UTF-8 -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  cat >"$dir/data/pg_hba.conf" <<HBA
local all all trust
host all clustermon_pw 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
HBA
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  chown -R "$(stat -c %u "$dir/data")" "$dir"
fi
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 60 start >/dev/null \
  || { tail -20 "$dir/server.log" >&2; exit 1; }
# The password user (idempotent).
pw=$(cat "$dir/password")
psql -X -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clustermon_pw') THEN
    CREATE ROLE clustermon_pw LOGIN SUPERUSER PASSWORD '$pw';
  END IF;
END \$\$;
SQL
echo "postgres://postgres@127.0.0.1:$port/postgres"
