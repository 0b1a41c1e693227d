#!/usr/bin/env bash
# Makes sure the console's browser test can run, and prints the folder that holds its Node
# packages: Debian's Chromium (installed with apt-get when missing) and playwright-core from npm,
# pinned, into a cache folder of its own (never a download of Playwright's own browser).
set -euo pipefail
PLAYWRIGHT_CORE_VERSION=1.65.1
NODE_DIR=${SWITCHYARD_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/node}
if [ ! -x /usr/bin/chromium ]; then
  echo "[browser] installing Debian's chromium" >&2
  (apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; })
fi
if ! node -e "const v = require('$NODE_DIR/node_modules/playwright-core/package.json').version; \
    process.exit(v === '$PLAYWRIGHT_CORE_VERSION' ? 0 : 1)" 2>/dev/null; then
  echo "[browser] installing playwright-core $PLAYWRIGHT_CORE_VERSION" >&2
  mkdir -p "$NODE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
fi
echo "$NODE_DIR"
