#!/usr/bin/env bash
# Rewrites cosmosdb-server.patch from the edited files in node_modules:
# diffs them against a pristine copy of the pinned package (from npm's cache).
set -euo pipefail
cd "$(dirname "$0")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack @vercel/cosmosdb-server@1.0.1 --silent >/dev/null && tar xzf vercel-cosmosdb-server-1.0.1.tgz)
mkdir -p "$tmp/a" "$tmp/b"
cp -r "$tmp/package/lib" "$tmp/a/lib"
cp -r node_modules/@vercel/cosmosdb-server/lib "$tmp/b/lib"
(cd "$tmp" && diff -ruN a/lib b/lib || true) | sed -E "s/^((---|\\+\\+\\+) [^\t]+)\t.*/\\1/" >cosmosdb-server.patch
echo "cosmosdb-server.patch: $(grep -c '^+++' cosmosdb-server.patch) files" >&2
