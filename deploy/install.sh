#!/bin/sh
# Install or upgrade the dermtwin gateway on Raspberry Pi OS 64-bit (docs/operator.md).
# Run from a checkout of the release: sudo sh deploy/install.sh
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/dermtwin

case "$(uname -m)" in
  aarch64|x86_64) ;;
  *) echo "dermtwin needs a 64-bit OS (onnxruntime has no wheel for $(uname -m)):" \
          "install Raspberry Pi OS 64-bit" >&2; exit 1 ;;
esac

apt-get install -y --no-install-recommends python3-venv bluez
id dermtwin >/dev/null 2>&1 || \
  useradd --system --home-dir /var/lib/dermtwin --shell /usr/sbin/nologin dermtwin
usermod -a -G bluetooth,dialout dermtwin

mkdir -p "$PREFIX"
if [ "$SRC" != "$PREFIX/src" ]; then
  rm -rf "$PREFIX/src.new" && cp -a "$SRC" "$PREFIX/src.new"
  rm -rf "$PREFIX/src.old" && { [ ! -d "$PREFIX/src" ] || mv "$PREFIX/src" "$PREFIX/src.old"; }
  mv "$PREFIX/src.new" "$PREFIX/src"
fi
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install --quiet -e "$PREFIX/src"
ln -sf "$PREFIX/venv/bin/dermtwin" /usr/local/bin/dermtwin

install -d -m 755 /etc/dermtwin
[ -f /etc/dermtwin/gateway.toml ] || install -m 644 "$SRC/deploy/gateway.toml" /etc/dermtwin/
install -m 644 "$SRC/deploy/dermtwin.service" /etc/systemd/system/dermtwin.service
systemctl daemon-reload
echo "installed $("$PREFIX/venv/bin/dermtwin" --version); edit /etc/dermtwin/gateway.toml," \
     "then: sudo systemctl enable --now dermtwin"
