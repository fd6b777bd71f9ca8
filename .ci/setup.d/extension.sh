#!/usr/bin/env bash
# Clients for tests/extension.rs, which loads the extension libtde.so (crate ext/) into real
# SQLite clients:
#   - Debian's sqlite3 shell at /usr/bin/sqlite3 (apt package sqlite3),
#   - /usr/bin/python3 with its sqlite3 module (Debian's python3 can load extensions; the pyenv
#     python on PATH cannot),
#   - Node.js better-sqlite3@12 in .ci/tools/node/node_modules (v13 needs Node 22 and crashes
#     on the machine's Node 20).
# Idempotent, and quick when everything is present. apt-get update runs only if an install
# fails without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  echo "apt-get install $*"
  if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@"
  fi
}

# 1. The sqlite3 shell.
if [ -x /usr/bin/sqlite3 ]; then
  echo "sqlite3 shell: $(/usr/bin/sqlite3 -version | cut -d' ' -f1)"
else
  apt_install sqlite3
fi

# 2. Debian's python3 with sqlite3 extension loading.
py_check='import sqlite3; sqlite3.Connection.enable_load_extension; print(sqlite3.sqlite_version)'
if v=$(/usr/bin/python3 -c "$py_check" 2>/dev/null); then
  echo "/usr/bin/python3 sqlite3 module: SQLite $v"
else
  apt_install python3
  /usr/bin/python3 -c "$py_check"
fi

# 3. Node.js and better-sqlite3@12.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
node_dir=.ci/tools/node
node_check="const v = require('better-sqlite3/package.json').version;
if (!v.startsWith('12.')) throw new Error('better-sqlite3 ' + v + ' is not 12.x');
const D = require('better-sqlite3'); new D(':memory:').close(); console.log(v);"
if v=$(NODE_PATH="$node_dir/node_modules" node -e "$node_check" 2>/dev/null); then
  echo "better-sqlite3 $v at $node_dir (node $(node --version))"
else
  mkdir -p "$node_dir"
  # No prebuilt binaries can be downloaded here: build from source at once (node-gyp, with the
  # headers of the installed Node) instead of waiting for prebuild-install to time out.
  npm_config_build_from_source=true JOBS=max \
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error better-sqlite3@12
  NODE_PATH="$node_dir/node_modules" node -e "$node_check"
fi
