#!/usr/bin/env bash
# Installs what `make test` needs beyond the Rust toolchain, only when missing:
# Debian packages (node/npm, patch, chromium, faketime, python3, postgresql,
# prometheus-alertmanager, prometheus for promtool, openssl) and the local
# Cosmos DB endpoint's npm package with the project's patch. Safe to run
# again; quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v patch >/dev/null || need+=(patch)
command -v flock >/dev/null || need+=(util-linux)
# The status page e2e test renders it in headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
# The chaos suite runs a monitor under libfaketime (a skewed wall clock)
# and corrupts the SQLite store from python3's sqlite3 module.
[[ -e /usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
command -v python3 >/dev/null || need+=(python3)
# The PostgreSQL store's tests start a private server (hack/postgres/start.sh).
command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The alerts e2e tests post to a real Alertmanager.
[[ -x /usr/bin/prometheus-alertmanager ]] || need+=(prometheus-alertmanager)
# deploy/prometheus's alerting rules are checked and unit-tested by promtool.
command -v promtool >/dev/null || need+=(prometheus)
# The admin-API-over-HTTPS e2e test makes its CA and certificate with openssl.
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  echo "install-test-deps: installing ${need[*]} from Debian" >&2
  sudo_=""
  [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
./hack/cosmos-emulator/install.sh
