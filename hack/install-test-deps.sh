#!/usr/bin/env bash
# Installs what `make test` needs beyond the Rust toolchain, only when missing:
# Debian packages (node/npm, patch, chromium) and the local Cosmos DB endpoint's npm
# package with the project's patch. Safe to run again; quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v patch >/dev/null || need+=(patch)
command -v flock >/dev/null || need+=(util-linux)
# The status page e2e test renders it in headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  echo "install-test-deps: installing ${need[*]} from Debian" >&2
  sudo_=""
  [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
./hack/cosmos-emulator/install.sh
