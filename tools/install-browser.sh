#!/usr/bin/env bash
# Chromium and chromedriver, for the report's PNGs (kaleido) and the browser tests.
# Installs Debian's packages only where they are missing and apt-get is there; quiet otherwise.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "install Chromium and chromedriver for the report PNGs and browser tests" >&2
fi
