#!/usr/bin/env bash
# Installs the comparison servers' dependencies from package-lock.json, and
# Debian's redis-server for socket.io's Redis adapter across nodes.
# Idempotent: a no-op when node_modules already matches the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v npm >/dev/null || { echo "install.sh: npm not found (Node.js >= 20 needed)" >&2; exit 1; }
# npm writes node_modules/.package-lock.json after a successful install.
if [[ -f node_modules/.package-lock.json && node_modules/.package-lock.json -nt package-lock.json ]] \
  && node -e 'require.resolve("ws"); require.resolve("socket.io"); require("uwebsockets");
     require.resolve("@socket.io/redis-adapter"); require.resolve("redis")' 2>/dev/null; then
  :
else
  npm ci --no-audit --no-fund --loglevel=error --prefer-offline >/dev/null
fi
if ! command -v redis-server >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
