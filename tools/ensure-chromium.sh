#!/usr/bin/env bash
# Makes sure a headless Chromium is present for tests/test_report_browser.py (the clinician
# report is opened in a real browser). Installs the distribution's package with apt where we
# can; where we cannot, says why and exits 0: that test is then skipped with the same reason.
set -uo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
install=(apt-get install -y -qq --no-install-recommends chromium)
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "chromium not found: installing it with apt-get" >&2
    if apt-get update -qq && "${install[@]}" >/dev/null; then exit 0; fi
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "chromium not found: installing it with sudo apt-get" >&2
    if sudo apt-get update -qq && sudo "${install[@]}" >/dev/null; then exit 0; fi
  else
    echo "chromium not installed: apt-get needs root or password-less sudo;" \
         "install it with: sudo apt-get install chromium (the report browser test is skipped)" >&2
    exit 0
  fi
  echo "chromium not installed: apt-get failed (see above); the report browser test is skipped" >&2
  exit 0
fi
echo "chromium not installed: no apt-get on this system; install Chromium from your" \
     "distribution to run the report browser test (it is skipped)" >&2
exit 0
