#!/usr/bin/env bash
# The README's quickstart command: installs a pinned nats-server if none is found, starts one
# with JetStream on a free loopback port and a temporary store, runs an example against it
# (examples/src/bin/<name>.rs; default: quickstart), and stops the server again.
#   scripts/quickstart.sh [example-name]      e.g. scripts/quickstart.sh bank_account
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

example="${1:-quickstart}"
if [ ! -f "examples/src/bin/$example.rs" ]; then
  echo "quickstart: no example \`$example\`; there are: $(ls examples/src/bin | sed 's/\.rs$//' | tr '\n' ' ')" >&2
  exit 2
fi

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  NATS_SERVER_BIN="$(scripts/install-nats-server.sh </dev/null | tail -n1)"
fi
store="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$NATS_SERVER_BIN" -js -a 127.0.0.1 -p "$port" --store_dir "$store" >"$store/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$store"' EXIT
for _ in $(seq 1 100); do
  grep -q "Server is ready" "$store/server.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$store/server.log"; exit 1; }
  sleep 0.1
done
EVENTBUS_URL="nats://127.0.0.1:$port" cargo run -q -p eventbus-examples --bin "$example"
