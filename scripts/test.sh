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

# Best effort: an old server (Debian's 2.9.10, via apt, so root only) for the version check;
# without one that test prints a note and passes (it fails in CI, see .ci/run).
if [ -z "${NATS_SERVER_OLD_BIN:-}" ] && { [ "$(id -u)" = 0 ] || dpkg -s nats-server >/dev/null 2>&1; }; then
  if old="$(scripts/install-nats-server.sh --old </dev/null 2>/dev/null | tail -n1)" && [ -x "$old" ]; then
    NATS_SERVER_OLD_BIN="$old"
    export NATS_SERVER_OLD_BIN
    echo "old server for the version check: $NATS_SERVER_OLD_BIN"
  else
    echo "note: could not install Debian's nats-server; the old-server test will be skipped"
  fi
fi

# Best effort: a nats-server 2.10 (PyPI, into a venv of its own) for append's version check;
# without one that test prints a note and passes (it fails in CI, see .ci/run).
if [ -z "${NATS_SERVER_210_BIN:-}" ]; then
  if v210="$(scripts/install-nats-server.sh --v2.10 </dev/null 2>/dev/null | tail -n1)" && [ -x "$v210" ]; then
    NATS_SERVER_210_BIN="$v210"
    export NATS_SERVER_210_BIN
    echo "2.10 server for append's version check: $NATS_SERVER_210_BIN"
  else
    echo "note: could not install nats-server 2.10; append's version-check test will be skipped"
  fi
fi

# Best effort: the official CloudEvents SDK for Python with nats-py (PyPI, into a venv of their own)
# for the interoperability tests (tests/tests/cloudevents.rs); without them those tests print a
# note and pass (they fail in CI, see .ci/run).
if [ -z "${EVENTBUS_FOREIGN_PYTHON:-}" ]; then
  if py="$(scripts/install-foreign-clients.sh </dev/null 2>/dev/null | tail -n1)" && [ -x "$py" ]; then
    EVENTBUS_FOREIGN_PYTHON="$py"
    export EVENTBUS_FOREIGN_PYTHON
    echo "CloudEvents SDK for the interoperability tests: $EVENTBUS_FOREIGN_PYTHON"
  else
    echo "note: could not install the CloudEvents SDK for Python; its interoperability tests will be skipped"
  fi
fi

# Best effort: the official AsyncAPI parser (npm @asyncapi/parser, with the machine's node) for the
# AsyncAPI validation tests; without it those tests print a note and pass (they fail in CI, see
# .ci/run).
if [ -z "${EVENTBUS_ASYNCAPI_NODE_MODULES:-}" ]; then
  if modules="$(scripts/install-asyncapi-parser.sh </dev/null 2>/dev/null | tail -n1)" && [ -d "$modules" ]; then
    EVENTBUS_ASYNCAPI_NODE_MODULES="$modules"
    export EVENTBUS_ASYNCAPI_NODE_MODULES
    echo "AsyncAPI parser for the validation tests: $EVENTBUS_ASYNCAPI_NODE_MODULES"
  else
    echo "note: could not install @asyncapi/parser; the AsyncAPI validation tests will be skipped"
  fi
fi

cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
cargo nextest run --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
