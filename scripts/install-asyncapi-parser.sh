#!/usr/bin/env bash
# Installs the official AsyncAPI parser (npm @asyncapi/parser), pinned, into a directory of its own,
# with the machine's node and npm, for the AsyncAPI validation tests (tests/tests/contract.rs,
# examples/tests/asyncapi.rs). The last line on stdout is its node_modules directory, so:
#   export EVENTBUS_ASYNCAPI_NODE_MODULES="$(scripts/install-asyncapi-parser.sh | tail -n1)"
set -euo pipefail

PARSER_VERSION=3.6.6

log() { echo "install-asyncapi-parser: $*" >&2; }

command -v node >/dev/null || { log "node is not installed"; exit 1; }
command -v npm >/dev/null || { log "npm is not installed"; exit 1; }

dir="${XDG_CACHE_HOME:-$HOME/.cache}/eventbus/asyncapi-parser-${PARSER_VERSION}"
check() { node -e 'require(process.argv[1] + "/node_modules/@asyncapi/parser")' "$dir" >/dev/null 2>&1 </dev/null; }
if ! check; then
  log "installing @asyncapi/parser ${PARSER_VERSION} from the npm registry into $dir"
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"eventbus-asyncapi-parser","private":true}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --silent "@asyncapi/parser@${PARSER_VERSION}" </dev/null >&2)
fi
check || { log "@asyncapi/parser missing in $dir"; exit 1; }
log "@asyncapi/parser $(node -p 'require(process.argv[1] + "/node_modules/@asyncapi/parser/package.json").version' "$dir" </dev/null), node $(node --version </dev/null)"
echo "$dir/node_modules"
