#!/usr/bin/env bash
# Install the real browser the dashboard tests drive: Debian's chromium and its WebDriver
# (chromium-driver: /usr/bin/chromium, /usr/bin/chromedriver); idempotent. No browser build is
# downloaded by a test tool: selenium talks to this chromedriver directly.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
apt_install install-browser chromium chromium-driver fonts-dejavu-core
echo "install-browser: $(chromedriver --version 2>/dev/null | head -1)"
