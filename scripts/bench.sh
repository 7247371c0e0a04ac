#!/usr/bin/env bash
# The speed benchmarks in one command: the consume matrix (bench_consume), the publish ratios
# (bench_publish) and start-up and memory at scale (bench_scale), each eventbus against raw
# async-nats doing the same work on the same server in the same run. Installs a pinned
# nats-server (and 2.10 for the matrix's 2.10 columns) when none is given. Arguments and
# BENCH_* variables are read by each benchmark (see their docs in tests/src/bin).
#   scripts/bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  NATS_SERVER_BIN="$(scripts/install-nats-server.sh </dev/null | tail -n1)"
  export NATS_SERVER_BIN
fi
if [ -z "${NATS_SERVER_210_BIN:-}" ]; then
  NATS_SERVER_210_BIN="$(scripts/install-nats-server.sh --v2.10 </dev/null | tail -n1)"
  export NATS_SERVER_210_BIN
fi
cargo build -q --release -p eventbus-tests --bin bench_consume --bin bench_publish --bin bench_scale
for bench in bench_consume bench_publish bench_scale; do
  echo "== $bench"
  "target/release/$bench"
done
