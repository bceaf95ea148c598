#!/usr/bin/env bash
# Make sure a headless Chromium is installed, for the report gallery test
# (tests/integration/test_report_chromium.py loads the HTML report in it). Installs Debian's
# `chromium` with apt only when no Chromium-like browser is on PATH AND we run as root on an
# apt system; otherwise does nothing. Idempotent, and silent unless it installs.
set -euo pipefail

for bin in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$bin" >/dev/null 2>&1 && exit 0
done
[ "${EUID:-$(id -u)}" -eq 0 ] || exit 0
command -v apt-get >/dev/null 2>&1 || exit 0

echo "ensure-chromium: installing chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
echo "ensure-chromium: installed chromium" >&2
