#!/usr/bin/env bash
# Installs the pinned @vercel/cosmosdb-server and applies the project patch.
# Idempotent: does nothing when node_modules carries a stamp for the same
# patch and lock file. All output goes to stderr.
set -euo pipefail
cd "$(dirname "$0")"

PKG=node_modules/@vercel/cosmosdb-server
STAMP=node_modules/.clustermon-cosmosdb-server.patched
PATCH_FILE=cosmosdb-server.patch

sum="$(cat "$PATCH_FILE" package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ -d "$PKG" && -f "$STAMP" && "$(cat "$STAMP")" == "$sum" ]]; then
  exit 0
fi

# Several tests may start the emulator at once on a fresh clone: one installs.
exec 9>.install.lock
flock 9
if [[ -d "$PKG" && -f "$STAMP" && "$(cat "$STAMP")" == "$sum" ]]; then
  exit 0
fi

echo "install.sh: installing @vercel/cosmosdb-server and applying $PATCH_FILE" >&2
# npm ci starts from a clean node_modules, so the patch always meets pristine files
npm ci --prefer-offline --no-audit --no-fund --ignore-scripts 1>&2

version="$(node -p 'require("./node_modules/@vercel/cosmosdb-server/package.json").version')"
if [[ "$version" != "1.0.1" ]]; then
  echo "install.sh: expected @vercel/cosmosdb-server 1.0.1, got $version" >&2
  exit 1
fi

if ! (cd "$PKG" && patch -p1 --forward --batch --no-backup-if-mismatch -r - <"../../../$PATCH_FILE") 1>&2; then
  echo "install.sh: ERROR: $PATCH_FILE does not apply to @vercel/cosmosdb-server $version" >&2
  exit 1
fi
echo "$sum" >"$STAMP"
echo "install.sh: done" >&2
