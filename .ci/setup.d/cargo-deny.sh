#!/usr/bin/env bash
# cargo-deny for tests/supply_chain.rs (licenses, bans, sources; deny.toml). Built from
# crates.io into .ci/tools/cargo-deny (a few minutes on a fresh machine). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=.ci/tools/cargo-deny
if [ -x "$root/bin/cargo-deny" ]; then echo "cargo-deny: $($root/bin/cargo-deny --version)"; exit 0; fi
if command -v cargo-deny >/dev/null 2>&1; then
  mkdir -p "$root/bin" && ln -sf "$(command -v cargo-deny)" "$root/bin/cargo-deny"
  echo "cargo-deny: $($root/bin/cargo-deny --version) (already installed)"; exit 0
fi
cargo install cargo-deny --locked --version 0.20.2 --root "$root" --quiet
echo "cargo-deny: $($root/bin/cargo-deny --version)"
