#!/usr/bin/env bash
# Installs the comparison servers' dependencies from package-lock.json.
# Idempotent: a no-op when node_modules already matches the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v npm >/dev/null || { echo "install.sh: npm not found (Node.js >= 20 needed)" >&2; exit 1; }
# npm writes node_modules/.package-lock.json after a successful install.
if [[ -f node_modules/.package-lock.json && node_modules/.package-lock.json -nt package-lock.json ]] \
  && node -e 'require.resolve("ws"); require.resolve("socket.io")' 2>/dev/null; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error --prefer-offline >/dev/null
