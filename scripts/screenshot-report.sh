#!/usr/bin/env bash
# Screenshot a report.html in headless Chromium, to check that its plots and tables render.
#
#   scripts/screenshot-report.sh REPORT_HTML OUT.png [WIDTHxHEIGHT]
#
# Installs Debian's `chromium` with apt-get if no Chromium is found (needs root).
# The window defaults to 1280x2000; a taller one captures more of a long report.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 REPORT_HTML OUT.png [WIDTHxHEIGHT]" >&2
  exit 2
fi
html=$1
out=$2
size=${3:-1280x2000}
[[ -f $html ]] || { echo "$0: $html: no such file" >&2; exit 1; }
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || { echo "$0: size must look like 1280x2000, got $size" >&2; exit 2; }

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [[ -z $browser ]]; then
  echo "$0: no Chromium found; installing Debian's chromium" >&2
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  browser=chromium
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out_abs" --window-size="${size/x/,}" \
  "file://$abs_html" >/dev/null 2>&1

[[ -s $out_abs ]] || { echo "$0: Chromium wrote no screenshot" >&2; exit 1; }
echo "$out_abs"
