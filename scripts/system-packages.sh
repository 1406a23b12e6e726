#!/usr/bin/env bash
# Debian packages the project needs beyond Python: Chromium and its driver for the browser tests
# (Playwright drives Debian's /usr/bin/chromium; it never downloads a browser of its own), and wrk, the load
# generator of `make bench`.
set -euo pipefail
if [ -x /usr/bin/chromium ] && command -v wrk >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Install Debian's chromium, chromium-driver (browser tests) and wrk (make bench)." >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver wrk >/dev/null
