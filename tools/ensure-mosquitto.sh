#!/usr/bin/env bash
# Makes sure the mosquitto broker binary is present: tests and the demo start their own
# instance on a free loopback port. Installs it with apt where we can, otherwise says how.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
install=(apt-get install -y -qq mosquitto mosquitto-clients)
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "mosquitto not found: installing it with apt-get" >&2
    apt-get update -qq && "${install[@]}" >/dev/null && exit 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "mosquitto not found: installing it with sudo apt-get" >&2
    sudo apt-get update -qq && sudo "${install[@]}" >/dev/null && exit 0
  fi
fi
cat >&2 <<'MSG'
mosquitto (the MQTT broker) is not installed and could not be installed automatically.
Install it, then run make again:
  Debian/Ubuntu/Raspberry Pi OS:  sudo apt-get install mosquitto mosquitto-clients
  Fedora:                         sudo dnf install mosquitto
  macOS (Homebrew):               brew install mosquitto
MSG
exit 1
