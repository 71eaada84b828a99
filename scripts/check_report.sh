#!/usr/bin/env bash
# Render the self-contained evaluation report in headless Chromium (offline) to a PNG screenshot.
#   scripts/check_report.sh [reports/report.html] [reports/report.png]
# Needs `chromium` (Debian: apt-get install -y chromium). Every network-using feature is switched off:
# the report must render with nothing but the file itself (images are embedded as base64).
set -euo pipefail
html="${1:-reports/report.html}"
png="${2:-${html%.html}.png}"
[ -f "$html" ] || { echo "error: $html not found (run \`soilmoisture evaluate\` first)" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
tmp="$(dirname "$png")/.$(basename "$png").tmp.png"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --hide-scrollbars \
  --screenshot="$(realpath -m "$tmp")" --window-size="${WINDOW_SIZE:-1400,4000}" \
  "file://$(realpath "$html")" >/dev/null 2>&1
[ -s "$tmp" ] || { echo "error: chromium wrote no screenshot for $html" >&2; exit 1; }
mv -f "$tmp" "$png"
echo "$png"
