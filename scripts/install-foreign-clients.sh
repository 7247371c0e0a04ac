#!/usr/bin/env bash
# Installs the foreign clients of the CloudEvents interoperability tests (tests/tests/cloudevents.rs):
# the official CloudEvents SDK for Python and nats-py, pinned, into a venv of their own.
# The last line on stdout is the venv's python, so:
#   export EVENTBUS_FOREIGN_PYTHON="$(scripts/install-foreign-clients.sh | tail -n1)"
set -euo pipefail

CLOUDEVENTS_VERSION=2.2.0
NATS_PY_VERSION=2.16.0

log() { echo "install-foreign-clients: $*" >&2; }

venv="${XDG_CACHE_HOME:-$HOME/.cache}/eventbus/foreign-clients-ce${CLOUDEVENTS_VERSION}-nats${NATS_PY_VERSION}"
py="$venv/bin/python"
if ! "$py" -c 'import cloudevents, nats' >/dev/null 2>&1 </dev/null; then
  log "installing cloudevents ${CLOUDEVENTS_VERSION} and nats-py ${NATS_PY_VERSION} from PyPI into $venv"
  python3 -m venv "$venv" >&2
  "$py" -m pip install --quiet --disable-pip-version-check \
    "cloudevents==${CLOUDEVENTS_VERSION}" "nats-py==${NATS_PY_VERSION}" </dev/null >&2
fi
"$py" -c 'import cloudevents, nats' </dev/null || { log "cloudevents or nats-py missing in $venv"; exit 1; }
log "$("$py" -c 'import importlib.metadata as m; print("cloudevents", m.version("cloudevents"), "nats-py", m.version("nats-py"))')"
echo "$py"
