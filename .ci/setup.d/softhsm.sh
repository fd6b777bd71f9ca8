#!/usr/bin/env bash
# Install SoftHSM2 (a PKCS#11 token in software) for the HSM-protection tests in
# tests/kms_hsm.rs. Tests create their own token in a temporary directory through
# SOFTHSM2_CONF, so nothing here touches a system token. Idempotent and fast when installed.
set -euo pipefail
if command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ]; then
  echo "softhsm2 already installed: $(softhsm2-util --version)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing on a fresh machine: update once, then install.
if ! apt-get install -y --no-install-recommends softhsm2 >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y --no-install-recommends softhsm2
fi
softhsm2-util --version
