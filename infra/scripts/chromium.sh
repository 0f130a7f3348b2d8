#!/usr/bin/env bash
# Headless Chromium for the web page's browser test (tests/test_fleet_web.py).
#   chromium.sh ensure   install Debian's chromium package if no chromium is on PATH
#   chromium.sh path     print the browser's path (exit 1 if none)
# `make test` runs `ensure`, so a clean clone (CI runs as root) gets the browser.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

find_chromium() {
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

case "${1:-ensure}" in
  ensure)
    if path="$(find_chromium)"; then
      log "chromium: $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
      exit 0
    fi
    apt_install_no_autostart chromium
    path="$(find_chromium)" || die "chromium still missing after apt-get install chromium"
    log "chromium: installed $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
    ;;
  path)
    find_chromium
    ;;
  *)
    die "usage: $0 ensure|path"
    ;;
esac
