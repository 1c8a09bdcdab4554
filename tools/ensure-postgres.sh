#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries (initdb, postgres, pg_ctl) are present for
# tests/test_sink_postgres.py, which starts a throwaway server of its own in a temporary data
# directory (`dermtwin sink` itself needs only a reachable server and the `sink` extra).
# Installs the distribution's package with apt where we can; prints where the binaries are.
# Where it cannot install them it says why and exits 0: that test is then skipped.
# Debian keeps the binaries off PATH, in /usr/lib/postgresql/<major>/bin.
set -uo pipefail

find_bin_dir() {
  if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/postgres" ]; then
    echo "$found"
    return 0
  fi
  return 1
}

if dir=$(find_bin_dir); then
  echo "PostgreSQL server binaries: $dir ($("$dir/postgres" --version))"
  exit 0
fi
install=(apt-get install -y -qq --no-install-recommends postgresql)
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "PostgreSQL not found: installing it with apt-get" >&2
    apt-get update -qq && "${install[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "PostgreSQL not found: installing it with sudo apt-get" >&2
    sudo apt-get update -qq && sudo "${install[@]}" >/dev/null
  else
    echo "PostgreSQL not installed: apt-get needs root or password-less sudo; install it" \
         "with: sudo apt-get install postgresql (the sink's PostgreSQL test is skipped)" >&2
    exit 0
  fi
  if dir=$(find_bin_dir); then
    echo "PostgreSQL server binaries: $dir ($("$dir/postgres" --version))"
    exit 0
  fi
  echo "PostgreSQL not installed: apt-get failed (see above); the sink's PostgreSQL test" \
       "is skipped" >&2
  exit 0
fi
echo "PostgreSQL not installed: no apt-get on this system; install the PostgreSQL server" \
     "from your distribution to run the sink's PostgreSQL test (it is skipped)" >&2
exit 0
