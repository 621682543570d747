#!/usr/bin/env bash
# Fetches uPlot from the npm registry into the package (src/trainfleet/ui/static/vendor/):
# the dashboard ships its charting library and loads nothing from a CDN at run time.
# Run it to move to another version (then update VERSION and the digests below).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.6.32
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
target=src/trainfleet/ui/static/vendor
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$target/"
cp "$work/package/LICENSE" "$target/uPlot.LICENSE"
(cd "$target" && sha256sum -c - <<'SUMS'
19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f  uPlot.iife.min.js
df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04  uPlot.min.css
SUMS
)
echo "uPlot $VERSION in $target"
