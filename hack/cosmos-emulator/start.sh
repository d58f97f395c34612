#!/usr/bin/env bash
# Starts the local Cosmos DB emulator on 127.0.0.1 on a free port and stays in
# the foreground until SIGTERM/SIGINT.
#   stdout line 1: cosmos://127.0.0.1:PORT/DATABASE
#   stdout line 2: the account key (the well-known emulator key)
# Logs go to stderr. DATABASE: first argument, else $COSMOS_EMULATOR_DATABASE,
# else "clustermon" (created at start unless COSMOS_EMULATOR_CREATE_DATABASE=0).
# COSMOS_EMULATOR_PORT pins the port instead of letting the OS choose.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install.sh"
cd "$here"
exec node "$here/serve.js" "$@"
