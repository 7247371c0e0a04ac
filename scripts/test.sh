#!/usr/bin/env bash
# The README's test command: installs a pinned nats-server if none is found, then runs every
# test of the workspace (unit, integration against real nats-server processes, trybuild, doc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  NATS_SERVER_BIN="$(scripts/install-nats-server.sh </dev/null | tail -n1)"
  export NATS_SERVER_BIN
fi
echo "using $("$NATS_SERVER_BIN" --version </dev/null) at $NATS_SERVER_BIN"

cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
cargo nextest run --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
