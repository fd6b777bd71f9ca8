#!/usr/bin/env bash
# SQLite's own checksum VFS (ext/misc/cksumvfs.c), built as a loadable extension for
# tests/stacked_cksumvfs.rs, which stacks it above tde in real clients. The source comes from
# Debian's sqlite3 source package (the same 3.40.1 as the sqlite3 shell and /usr/bin/python3);
# it is built, not vendored. Result: .ci/tools/cksumvfs.so. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
out=.ci/tools/cksumvfs.so
if [ -f "$out" ]; then echo "cksumvfs: $out"; exit 0; fi
mkdir -p .ci/tools/sqlite-src
if ! ls .ci/tools/sqlite-src/sqlite3-*/ext/misc/cksumvfs.c >/dev/null 2>&1; then
  if ! ls /etc/apt/sources.list.d/*src* >/dev/null 2>&1; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
  fi
  apt-get update -qq
  command -v dpkg-source >/dev/null || apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
  (cd .ci/tools/sqlite-src && apt-get source -qq sqlite3 >/dev/null 2>&1)
fi
[ -f /usr/include/sqlite3ext.h ] || apt-get install -y -qq --no-install-recommends libsqlite3-dev >/dev/null
command -v gcc >/dev/null || apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
src=$(ls .ci/tools/sqlite-src/sqlite3-*/ext/misc/cksumvfs.c | head -1)
gcc -O2 -fPIC -shared -o "$out" "$src"
echo "cksumvfs: built $out from $src"
